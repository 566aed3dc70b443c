"""Registry versions of model configurations: `ModelTracking.register_config` on the local store
(one version per distinct configuration, found again after a restart) and `ConfigVersions` (one
resolution per configuration however many requests wait, "unregistered" when MLflow fails, a
request's deadline)."""

from __future__ import annotations

import asyncio

import pytest

from libs.errors import DeadlineExceeded, Unavailable
from services.ml.anomalies import detector_config, detector_configs
from services.ml.forecasting.component import forecast_config
from services.ml.tracking import CONFIG_ARTIFACT, FINGERPRINT_TAG, ModelTracking, config_fingerprint
from services.ml.versions import ConfigVersions
from tests.unit.ml.test_tracking import _client


async def test_a_configuration_is_registered_once_and_found_again_after_a_restart(data_dir):
    params = {"method": "auto", "candidates": "auto_theta,mstl", "windows": 2}
    tracking = ModelTracking("", data_dir)
    await tracking.start()
    first = await tracking.register_config("forecast-auto", params=params)
    again = await tracking.register_config("forecast-auto", params=dict(reversed(params.items())))
    await tracking.close()
    assert first == again == "forecast-auto/1"  # key order is not a change

    restarted = ModelTracking("", data_dir)
    await restarted.start()
    assert await restarted.register_config("forecast-auto", params=params) == "forecast-auto/1"
    changed = await restarted.register_config("forecast-auto", params={**params, "windows": 3})
    assert changed == "forecast-auto/2"
    # back to the first configuration: its version, not a third one
    assert await restarted.register_config("forecast-auto", params=params) == "forecast-auto/1"
    assert await restarted.load_artifact("forecast-auto", "1", CONFIG_ARTIFACT) is not None
    await restarted.close()

    client = _client(data_dir)
    versions = client.search_model_versions("name = 'forecast-auto'")
    assert sorted(int(v.version) for v in versions) == [1, 2]
    one = client.get_model_version("forecast-auto", "1")
    assert one.tags[FINGERPRINT_TAG] == config_fingerprint(params)
    assert client.get_run(one.run_id).data.params["candidates"] == "auto_theta,mstl"


class CountingTracking:
    """register_config that counts calls, can fail, and can be held until released."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def register_config(self, name, *, params) -> str:
        self.calls.append(name)
        await self.gate.wait()
        if self.fail:
            raise Unavailable("model tracking (OSError): store unreachable")
        return f"{name}/{len(self.calls)}"


async def test_concurrent_requests_share_one_resolution_then_read_memory() -> None:
    tracking = CountingTracking()
    tracking.gate.clear()
    versions = ConfigVersions(tracking, {"anomaly-zscore": lambda: {"method": "zscore"}})
    waiting = [asyncio.ensure_future(versions.version("anomaly-zscore", 10)) for _ in range(5)]
    await asyncio.sleep(0)
    tracking.gate.set()
    assert await asyncio.gather(*waiting) == ["anomaly-zscore/1"] * 5
    assert await versions.version("anomaly-zscore") == "anomaly-zscore/1"
    assert tracking.calls == ["anomaly-zscore"]
    await versions.close()


async def test_mlflow_failing_gives_unregistered_and_a_later_retry(monkeypatch) -> None:
    tracking = CountingTracking()
    tracking.fail = True
    versions = ConfigVersions(tracking, {"forecast-mstl": lambda: {"method": "mstl"}})
    assert await versions.version("forecast-mstl") == "forecast-mstl/unregistered"
    assert await versions.version("forecast-mstl") == "forecast-mstl/unregistered"
    assert len(tracking.calls) == 1  # not retried on every request
    monkeypatch.setattr("services.ml.versions.RETRY_SECONDS", 0.0)
    tracking.fail = False
    assert await versions.version("forecast-mstl") == "forecast-mstl/2"
    await versions.close()


async def test_a_request_deadline_ends_its_wait_not_the_resolution() -> None:
    tracking = CountingTracking()
    tracking.gate.clear()
    versions = ConfigVersions(tracking, {"anomaly-mad": lambda: {"method": "mad"}})
    with pytest.raises(DeadlineExceeded):
        await versions.version("anomaly-mad", timeout=0.01)
    tracking.gate.set()
    assert await versions.version("anomaly-mad", timeout=10) == "anomaly-mad/1"
    assert tracking.calls == ["anomaly-mad"]
    await versions.close()


def test_configurations_name_their_parameters_and_library_releases() -> None:
    auto = detector_config("auto")
    assert auto["method"] == "auto" and auto["param.LONG_WINDOW"] == 512 and "library.numba" in auto
    assert detector_config("isolation_forest")["param.N_ESTIMATORS"] == 100
    assert set(detector_configs()) == {
        f"anomaly-{m}"
        for m in (
            "auto",
            "zscore",
            "mad",
            "seasonal",
            "isolation_forest",
            "holt_winters",
            "prophet",
            "online",
        )
    }
    forecast = forecast_config("auto")
    assert forecast["library.statsforecast"] == "2.1.1" and forecast["methods.STL_JUMPS"].startswith("{")
    assert "backtest.MAX_WINDOWS" in forecast and "library.prophet" in forecast
    assert "seasonal_naive" in forecast["methods.STATISTICAL"]
    assert "library.prophet" not in forecast_config("mstl")
    assert config_fingerprint(forecast) != config_fingerprint(forecast_config("mstl"))
