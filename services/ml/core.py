"""The ML core: anomaly detection (requests, stored anomalies, the live scorer); forecasting,
maintenance and online learning arrive with their issue. No gRPC here."""

from __future__ import annotations

from libs.errors import NotBuilt
from platformq.analytics.v1 import ml_service_pb2 as pb
from services.ml.anomalies import AnomalyDetection
from services.ml.spec import DetectSpec, ListSpec
from services.ml.stream import StreamScorer

_ML = "it arrives with the forecasting, maintenance and online-learning issue (MLflow tracking)"


class MLCore:
    """Scores anomalies on request and on the live stream; forecasts and trains (not built yet)."""

    def __init__(self, detection: AnomalyDetection, scorer: StreamScorer | None) -> None:
        self.detection = detection
        self.scorer = scorer

    async def detect_anomalies(
        self, spec: DetectSpec, tenant: str, timeout: float | None = None
    ) -> pb.DetectAnomaliesResponse:
        """Score a snapshot, a stored selection or inline series."""
        return await self.detection.detect(spec, tenant, timeout)

    async def list_anomalies(self, spec: ListSpec, tenant: str) -> pb.ListAnomaliesResponse:
        """One page of stored anomalies."""
        return await self.detection.list(spec, tenant)

    async def anomaly_stats(self, tenant: str) -> pb.GetAnomalyStatsResponse:
        """Precision per method from feedback."""
        return await self.detection.stats(tenant)

    async def anomaly_feedback(
        self, anomaly_id: str, verdict: str, comment: str, tenant: str
    ) -> pb.SubmitAnomalyFeedbackResponse:
        """Store a verdict and tighten the series' live threshold at once."""
        response = await self.detection.feedback(anomaly_id, verdict, comment, tenant)
        if self.scorer is not None:
            a = response.anomaly
            key = (tenant, a.datasource, a.metric, tuple(sorted(a.labels.items())))
            self.scorer.threshold_changed(key, response.series_threshold)
        return response

    async def forecast(self, request: object) -> object:
        """Forecast a series."""
        raise NotBuilt(f"forecasting is not built yet: {_ML}")

    async def predict_maintenance(self, request: object) -> object:
        """Predict remaining useful life."""
        raise NotBuilt(f"predictive maintenance is not built yet: {_ML}")

    async def train_online(self, request: object) -> object:
        """Update an online model."""
        raise NotBuilt(f"online training is not built yet: {_ML}")
