"""Model tracking and registry in MLflow for the ml service.

Interface (fixed; other modules call exactly this):

    tracking = ModelTracking(tracking_uri: str, data_dir: Path)
    await tracking.start()      # nothing heavy at import; mlflow is imported lazily here or on first use
    version: str = await tracking.log_model(
        name,                   # registered model name, e.g. "rul-fd001", "online-latency", "forecast-auto"
        params={...},           # str -> str|int|float
        metrics={...},          # str -> float
        artifacts={"model.pkl": b"..."},   # file name -> bytes, stored with the run
        tags={...},             # optional
    )                           # logs a run, registers a new version; returns "<name>/<version>", e.g. "rul-fd001/3"
    run_id: str = await tracking.log_run(experiment, params={...}, metrics={...}, tags={...})
    version: str = await tracking.register_config(name, params={...})
                                # the version registered for exactly these params (by a fingerprint tag);
                                # registers one (a run, a config.json artifact) when none is; "<name>/<version>"
    data: bytes | None = await tracking.load_artifact(name, version=None, artifact="model.pkl")  # latest when None
    await tracking.close()

Default store: a local MLflow store under DATA_DIR (no server); MLFLOW_TRACKING_URI points at a
server instead. Every ML answer's `model_version` is the version string log_model returned.

How: the local store is SQLite (`DATA_DIR/mlflow/mlflow.db`, the registry needs a database-backed
store) with artifacts under `DATA_DIR/mlflow/artifacts`. MLflow is imported on first use, in the
one worker thread every MLflow call runs on: its import costs seconds and its calls block, so
neither touches start-up or the event loop, and one thread serialises the writes (SQLite's single
writer, version numbers of concurrent registrations). `MlflowClient` is used explicitly: MLflow's
fluent API keeps a process-global active run.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from libs.errors import Unavailable

ARTIFACT_DIR = "model"  # run-relative folder holding a registered version's files
MAX_PARAM_CHARS = 6000  # MLflow rejects longer parameter values
BATCH = 100  # params (and metrics) per log_batch call
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
FINGERPRINT_TAG = "fingerprint"
"""The tag of a configuration's registered version: the hash of its parameters (register_config)."""
CONFIG_ARTIFACT = "config.json"


def local_tracking_uri(data_dir: Path) -> str:
    """The default store: SQLite under DATA_DIR/mlflow."""
    return f"sqlite:///{(data_dir / 'mlflow' / 'mlflow.db').resolve()}"


def local_artifact_root(data_dir: Path) -> Path:
    """Where the default store keeps artifacts."""
    return (data_dir / "mlflow" / "artifacts").resolve()


class ModelTracking:
    """MLflow tracking and registry: logs runs, registers model versions, loads their artifacts."""

    def __init__(self, tracking_uri: str, data_dir: Path) -> None:
        # A server chooses where artifacts go; any other store keeps them under DATA_DIR (MLflow's
        # own default would be ./mlruns in the working directory).
        self.local = not tracking_uri.startswith(("http://", "https://"))
        self.tracking_uri = tracking_uri or local_tracking_uri(data_dir)
        self.data_dir = data_dir
        self._executor: ThreadPoolExecutor | None = None
        self._client: Any = None  # an MlflowClient, built on the worker thread on first use
        self._experiments: dict[str, str] = {}  # experiment name -> id, touched on the worker only

    async def start(self) -> None:
        """Make the local store's folders; MLflow itself is imported on first use."""
        if self.local:
            await asyncio.to_thread(local_artifact_root(self.data_dir).mkdir, parents=True, exist_ok=True)
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="mlflow")

    async def close(self) -> None:
        """Let a log in progress finish, then stop the worker thread."""
        if self._executor is not None:
            executor, self._executor = self._executor, None
            await asyncio.to_thread(executor.shutdown, True)

    async def log_model(
        self,
        name: str,
        *,
        params: dict[str, object],
        metrics: dict[str, float],
        artifacts: dict[str, bytes],
        tags: dict[str, str] | None = None,
    ) -> str:
        """Log a run with its artifact files and register a new version of `name`; returns
        "<name>/<version>"."""
        _check_name(name)
        for file in artifacts:
            if Path(file).name != file or file in ("", ".", ".."):
                raise ValueError(f"artifact file name {file!r} must be a plain file name")
        return await self._call(self._log_model, name, params, metrics, artifacts, tags or {})

    async def log_run(
        self,
        experiment: str,
        *,
        params: dict[str, object],
        metrics: dict[str, float],
        tags: dict[str, str] | None = None,
    ) -> str:
        """Log a run without a model (e.g. a forecast backtest summary); returns the run id."""
        _check_name(experiment)
        return await self._call(self._log_run, experiment, params, metrics, tags or {})

    async def register_config(self, name: str, *, params: dict[str, object]) -> str:
        """The registered version of `name` whose parameters are exactly `params`, found by a
        fingerprint tag (their hash); when no version has it, a run with the parameters and a
        `config.json` artifact is logged and registered as a new version. Returns
        "<name>/<version>": a restart with the same parameters finds the same version."""
        _check_name(name)
        fingerprint = config_fingerprint(params)
        return await self._call(self._register_config, name, params, fingerprint)

    async def load_artifact(
        self, name: str, version: str | None = None, artifact: str = "model.pkl"
    ) -> bytes | None:
        """An artifact of a registered version (the latest when `version` is None), or None.

        `version` is a number ("3") or the string log_model returned ("rul-fd001/3")."""
        _check_name(name)
        if version is not None and "/" in version:
            prefix, _, version = version.rpartition("/")
            if prefix != name:
                return None
        if version is not None and not version.isdigit():
            return None
        return await self._call(self._load_artifact, name, version, artifact)

    # ---- on the worker thread ---------------------------------------------------------------
    async def _call(self, fn: Any, *args: Any) -> Any:
        if self._executor is None:
            raise RuntimeError("ModelTracking is not started")
        return await asyncio.get_running_loop().run_in_executor(self._executor, _guarded, fn, args)

    def _mlflow(self) -> Any:
        if self._client is None:
            # A service does not report usage to MLflow's telemetry endpoint, nor draw progress
            # bars in its log; these variables are MLflow's only switches for both.
            os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            from mlflow.tracking import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri, registry_uri=self.tracking_uri)
        return self._client

    def _experiment(self, name: str) -> str:
        known = self._experiments.get(name)
        if known is not None:
            return known
        client = self._mlflow()
        found = client.get_experiment_by_name(name)
        if found is not None:
            experiment_id = found.experiment_id
        else:
            location = (local_artifact_root(self.data_dir) / name).as_uri() if self.local else None
            try:
                experiment_id = client.create_experiment(name, artifact_location=location)
            except _mlflow_error():
                # Another process (a replica, the first request's twin) created it meanwhile.
                found = client.get_experiment_by_name(name)
                if found is None:
                    raise
                experiment_id = found.experiment_id
        self._experiments[name] = experiment_id
        return experiment_id

    def _new_run(
        self, experiment: str, params: dict[str, object], metrics: dict[str, float], tags: dict[str, str]
    ) -> Any:
        from mlflow.entities import Metric, Param

        client = self._mlflow()
        run = client.create_run(self._experiment(experiment), tags={k: str(v) for k, v in tags.items()})
        now = int(time.time() * 1000)
        metric_list = [Metric(k, float(v), now, 0) for k, v in metrics.items()]
        param_list = [Param(k, str(v)[:MAX_PARAM_CHARS]) for k, v in params.items()]
        # MLflow takes at most 100 params and 1,000 entries in all per batch.
        for i in range(0, max(len(metric_list), len(param_list)), BATCH):
            client.log_batch(
                run.info.run_id, metrics=metric_list[i : i + BATCH], params=param_list[i : i + BATCH]
            )
        return run

    def _log_run(
        self, experiment: str, params: dict[str, object], metrics: dict[str, float], tags: dict[str, str]
    ) -> str:
        run = self._new_run(experiment, params, metrics, tags)
        self._mlflow().set_terminated(run.info.run_id, "FINISHED")
        return run.info.run_id

    def _log_model(
        self,
        name: str,
        params: dict[str, object],
        metrics: dict[str, float],
        artifacts: dict[str, bytes],
        tags: dict[str, str],
    ) -> str:
        client = self._mlflow()
        run = self._new_run(name, params, metrics, tags)
        run_id = run.info.run_id
        try:
            with tempfile.TemporaryDirectory(prefix="mlflow-") as tmp:
                folder = Path(tmp) / ARTIFACT_DIR
                folder.mkdir()
                for file, data in artifacts.items():
                    (folder / file).write_bytes(data)
                client.log_artifacts(run_id, str(folder), artifact_path=ARTIFACT_DIR)
            if not client.search_registered_models(f"name = '{name}'", max_results=1):
                client.create_registered_model(name)
            version = client.create_model_version(
                name,
                source=f"{run.info.artifact_uri}/{ARTIFACT_DIR}",
                run_id=run_id,
                tags={k: str(v) for k, v in tags.items()},
            )
        except BaseException:
            client.set_terminated(run_id, "FAILED")
            raise
        client.set_terminated(run_id, "FINISHED")
        return f"{name}/{version.version}"

    def _register_config(self, name: str, params: dict[str, object], fingerprint: str) -> str:
        client = self._mlflow()
        if client.search_registered_models(f"name = '{name}'", max_results=1):
            # The lowest version with the fingerprint: replicas that registered one concurrently
            # agree on it after a restart.
            found = client.search_model_versions(
                f"name = '{name}' and tags.{FINGERPRINT_TAG} = '{fingerprint}'",
                max_results=1,
                order_by=["version_number ASC"],
            )
            if found:
                return f"{name}/{found[0].version}"
        config = json.dumps(params, sort_keys=True, indent=2, default=str).encode()
        return self._log_model(name, params, {}, {CONFIG_ARTIFACT: config}, {FINGERPRINT_TAG: fingerprint})

    def _load_artifact(self, name: str, version: str | None, artifact: str) -> bytes | None:
        client = self._mlflow()
        if version is None:
            latest = client.search_model_versions(
                f"name = '{name}'", max_results=1, order_by=["version_number DESC"]
            )
            if not latest:
                return None
            chosen = latest[0]
        else:
            try:
                chosen = client.get_model_version(name, version)
            except _mlflow_error() as exc:
                if _missing(exc):
                    return None
                raise
        with tempfile.TemporaryDirectory(prefix="mlflow-") as tmp:
            try:
                path = client.download_artifacts(chosen.run_id, f"{ARTIFACT_DIR}/{artifact}", tmp)
            except (OSError, _mlflow_error()) as exc:
                if _missing(exc):
                    return None
                raise
            return Path(path).read_bytes()


def config_fingerprint(params: dict[str, object]) -> str:
    """The hash of a configuration's parameters (key order does not matter)."""
    text = json.dumps(params, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def _guarded(fn: Any, args: tuple[Any, ...]) -> Any:
    """Run an MLflow call; a store or server that fails answers Unavailable (retrying may work)."""
    try:
        return fn(*args)
    except (OSError, _mlflow_error()) as exc:
        raise Unavailable(f"model tracking ({type(exc).__name__}): {exc}") from exc


def _mlflow_error() -> type[Exception]:
    from mlflow.exceptions import MlflowException

    return MlflowException


def _missing(exc: Exception) -> bool:
    code = getattr(exc, "error_code", "")
    return (
        isinstance(exc, FileNotFoundError) or code == "RESOURCE_DOES_NOT_EXIST" or "No such file" in str(exc)
    )


def _check_name(name: str) -> None:
    # "/" would break "<name>/<version>"; quotes would break MLflow's filter strings.
    if not _NAME.match(name):
        raise ValueError(f"model or experiment name {name!r} must match {_NAME.pattern}")
