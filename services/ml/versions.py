"""Registry versions of the model configurations the ml service answers with.

Each forecasting method and each anomaly detector, with its parameters and the library releases
behind it, is a registered MLflow model ("forecast-auto", "anomaly-auto", ...). The version of a
configuration is registered once (`ModelTracking.register_config`, found again by its fingerprint
tag after a restart; a changed configuration registers a new version) and kept here in memory, so
an answer's `model_version` is "<name>/<version>" without MLflow on the request's path.

A configuration is resolved on its first use, in the background: requests (and the live scorer)
that need it meanwhile wait for that one resolution, never start another. When the MLflow store
already exists (a restart) or is a server, every configuration is resolved in the background as
soon as the service starts, so the first request finds its version ready; a fresh DATA_DIR creates
the store on the first use instead (seconds of CPU that a process that never forecasts or detects
would spend for nothing). If MLflow fails, answers carry "<name>/unregistered" and the resolution
is retried at the next use after RETRY_SECONDS.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as package_version
from pathlib import Path
from types import ModuleType

from libs.errors import DeadlineExceeded, Unavailable
from services.ml.tracking import ModelTracking

log = logging.getLogger(__name__)

RETRY_SECONDS = 60.0
"""After a failed resolution, answers say "unregistered" for this long before MLflow is tried again."""

Params = dict[str, object]


def module_constants(module: ModuleType, prefix: str) -> dict[str, object]:
    """A module's public upper-case constants (numbers, strings, and tuples or dicts of them, as
    text): the parameters a model configuration names, so changing any registers a new version."""
    out: dict[str, object] = {}
    for key, value in sorted(vars(module).items()):
        if not key.isupper() or key.startswith("_"):
            continue
        if isinstance(value, (bool, int, float, str)):
            out[f"{prefix}{key}"] = value
        elif isinstance(value, (tuple, list)) and all(isinstance(v, (bool, int, float, str)) for v in value):
            out[f"{prefix}{key}"] = ",".join(str(v) for v in value)
        elif isinstance(value, dict) and all(isinstance(v, (bool, int, float, str)) for v in value.values()):
            out[f"{prefix}{key}"] = json.dumps(value, sort_keys=True, default=str)
    return out


def release(library: str) -> str:
    """The installed release of a library (its distribution name), without importing it."""
    try:
        return package_version(library)
    except PackageNotFoundError:
        return "not installed"


def unregistered(name: str) -> str:
    """The model_version of a configuration MLflow could not register (or when there is no tracking)."""
    return f"{name}/unregistered"


class ConfigVersions:
    """Configuration name -> registry version, resolved once per process; see the module docstring."""

    def __init__(self, tracking: ModelTracking | None, configs: dict[str, Callable[[], Params]]) -> None:
        self.tracking = tracking
        self.configs = configs  # every configuration this service answers with, by registered name
        self._versions: dict[str, str] = {}
        self._resolving: dict[str, asyncio.Task[str]] = {}
        self._failed_at: dict[str, float] = {}
        self._warmup: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Resolve every configuration in the background when that is cheap (see the module docstring)."""
        if self.tracking is not None and store_exists(self.tracking):
            self._warmup = asyncio.create_task(self._resolve_all(), name="ml-config-versions")

    async def close(self) -> None:
        """Stop waiting for resolutions (an MLflow call in progress ends with the tracking's close)."""
        tasks = [t for t in (self._warmup, *self._resolving.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def version(self, name: str, timeout: float | None = None) -> str:
        """The registry version of configuration `name` ("<name>/<n>"), waiting at most `timeout`
        seconds for its resolution (DeadlineExceeded after that; the resolution goes on)."""
        known = self._versions.get(name)
        if known is not None:
            return known
        if self.tracking is None:
            return unregistered(name)
        task = self._resolving.get(name)
        if task is None:
            failed = self._failed_at.get(name)
            if failed is not None and time.monotonic() - failed < RETRY_SECONDS:
                return unregistered(name)
            task = asyncio.create_task(self._resolve(name), name=f"ml-config-version-{name}")
            self._resolving[name] = task
        try:
            # Shielded: one request giving up does not cancel what other requests wait for.
            return await asyncio.wait_for(asyncio.shield(task), timeout)
        except TimeoutError:
            raise DeadlineExceeded(f"the deadline passed while registering {name} in MLflow") from None

    def known(self) -> dict[str, str]:
        """The versions resolved so far."""
        return dict(self._versions)

    async def _resolve_all(self) -> None:
        for name in self.configs:
            await self.version(name)

    async def _resolve(self, name: str) -> str:
        try:
            # A configuration builder may import its model's module (numba, pandas): off the loop.
            params = await asyncio.to_thread(self.configs[name])
            version = await self.tracking.register_config(name, params=params)
        except Unavailable as exc:
            log.warning("model configuration not registered", extra={"model": name, "error": exc.reason})
            self._failed_at[name] = time.monotonic()
            return unregistered(name)
        except Exception:  # a misconfigured store or a broken builder: answers go on, marked unregistered
            log.warning("model configuration not registered", extra={"model": name}, exc_info=True)
            self._failed_at[name] = time.monotonic()
            return unregistered(name)
        finally:
            self._resolving.pop(name, None)
        self._versions[name] = version
        self._failed_at.pop(name, None)
        return version


def store_exists(tracking: ModelTracking) -> bool:
    """True when the MLflow store needs no creating: a server or database, or a SQLite file already made."""
    uri = tracking.tracking_uri
    return not uri.startswith("sqlite:///") or Path(uri.removeprefix("sqlite:///")).exists()
