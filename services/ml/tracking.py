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
    data: bytes | None = await tracking.load_artifact(name, version=None, artifact="model.pkl")  # latest when None
    await tracking.close()

Default store: a local MLflow store under DATA_DIR (no server); MLFLOW_TRACKING_URI points at a
server instead. Every ML answer's `model_version` is the version string log_model returned.
"""

from __future__ import annotations

from pathlib import Path

from libs.errors import NotBuilt

_WHY = "model tracking is being built (issue 8)"


class ModelTracking:
    """MLflow tracking and registry (placeholder: the MLflow helper implements it)."""

    def __init__(self, tracking_uri: str, data_dir: Path) -> None:
        self.tracking_uri = tracking_uri
        self.data_dir = data_dir

    async def start(self) -> None:
        """Prepare the store (lazily)."""

    async def log_model(
        self,
        name: str,
        *,
        params: dict[str, object],
        metrics: dict[str, float],
        artifacts: dict[str, bytes],
        tags: dict[str, str] | None = None,
    ) -> str:
        """Log a run with its artifact files and register a new version of `name`."""
        raise NotBuilt(_WHY)

    async def log_run(
        self,
        experiment: str,
        *,
        params: dict[str, object],
        metrics: dict[str, float],
        tags: dict[str, str] | None = None,
    ) -> str:
        """Log a run without a model (e.g. a forecast backtest summary); returns the run id."""
        raise NotBuilt(_WHY)

    async def load_artifact(
        self, name: str, version: str | None = None, artifact: str = "model.pkl"
    ) -> bytes | None:
        """An artifact of a registered version (the latest when `version` is None), or None."""
        raise NotBuilt(_WHY)

    async def close(self) -> None:
        """Release resources."""
