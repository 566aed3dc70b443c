"""The ML core: detectors, forecasters, maintenance models, online learning. No gRPC here."""

from __future__ import annotations

from libs.errors import NotBuilt

_ML = "it arrives with the ML issue (detectors, forecasters, MLflow tracking)"


class MLCore:
    """Scores, forecasts and trains models."""

    async def detect_anomalies(self, request: object) -> object:
        """Score a snapshot or series for anomalies."""
        raise NotBuilt(f"anomaly detection is not built yet: {_ML}")

    async def forecast(self, request: object) -> object:
        """Forecast a series."""
        raise NotBuilt(f"forecasting is not built yet: {_ML}")

    async def predict_maintenance(self, request: object) -> object:
        """Predict remaining useful life."""
        raise NotBuilt(f"predictive maintenance is not built yet: {_ML}")

    async def train_online(self, request: object) -> object:
        """Update an online model."""
        raise NotBuilt(f"online training is not built yet: {_ML}")
