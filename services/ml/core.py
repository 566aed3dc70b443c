"""The ML core: anomaly detection (requests, stored anomalies, the live scorer), forecasting,
predictive maintenance and online learning, each delegated to its component. No gRPC here."""

from __future__ import annotations

from dataclasses import replace

from libs.errors import NotFound
from libs.storage import DEFAULT_TENANT
from platformq.analytics.v1 import ml_service_pb2 as pb
from services.ml.anomalies import AnomalyDetection
from services.ml.forecasting.component import Forecasting
from services.ml.forecasting.spec import ForecastSpec
from services.ml.maintenance import spec as maintenance_spec
from services.ml.maintenance.component import Maintenance
from services.ml.online.learning import OnlineLearning
from services.ml.online.spec import PredictSpec, TrainSpec
from services.ml.spec import DetectSpec, ListSpec
from services.ml.stream import StreamScorer


def tenant_model(tenant: str, name: str) -> str:
    """The name an online model of `tenant` is kept and registered under: the default tenant's (and
    the stream bindings') as named, another tenant's prefixed with `<tenant>~` ('~' is in neither a
    tenant id nor a model name, so two tenants' names never meet)."""
    return name if tenant == DEFAULT_TENANT else f"{tenant}~{name}"


class MLCore:
    """Scores anomalies on request and on the live stream, forecasts, predicts failures, learns online."""

    def __init__(
        self,
        detection: AnomalyDetection,
        scorer: StreamScorer | None,
        *,
        online: OnlineLearning,
        maintenance: Maintenance,
        forecasting: Forecasting,
    ) -> None:
        self.detection = detection
        self.scorer = scorer
        self.online = online
        self.maintenance = maintenance
        self.forecasting = forecasting

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

    async def forecast(
        self, spec: ForecastSpec, tenant: str, timeout: float | None = None
    ) -> pb.ForecastResponse:
        """Forecast stored or inline series, with intervals, backtest error and threshold crossing."""
        return await self.forecasting.forecast(spec, tenant, timeout)

    async def predict_maintenance(
        self, spec: maintenance_spec.PredictSpec, tenant: str, timeout: float | None = None
    ) -> pb.PredictMaintenanceResponse:
        """Predict remaining useful life from an entity's stored (or inline) history."""
        return await self.maintenance.predict(spec, tenant, timeout)

    async def train_maintenance(
        self, spec: maintenance_spec.TrainSpec, tenant: str, timeout: float | None = None
    ) -> pb.TrainMaintenanceResponse:
        """Train and register a remaining-useful-life model."""
        return await self.maintenance.train(spec, tenant, timeout)

    async def train_online(
        self, spec: TrainSpec, timeout: float | None = None, tenant: str = DEFAULT_TENANT
    ) -> pb.TrainOnlineResponse:
        """Learn a batch of samples with one of the tenant's online models (created on first use)."""
        response = await self.online.train(
            replace(spec, model_name=tenant_model(tenant, spec.model_name)), timeout
        )
        response.model_name = spec.model_name
        return response

    async def predict_online(
        self, spec: PredictSpec, timeout: float | None = None, tenant: str = DEFAULT_TENANT
    ) -> pb.PredictOnlineResponse:
        """Predict with one of the tenant's online models, learning nothing."""
        try:
            response = await self.online.predict(
                replace(spec, model_name=tenant_model(tenant, spec.model_name)), timeout
            )
        except NotFound:
            # Said with the name the caller knows, not the tenant-prefixed one it is kept under.
            raise NotFound(
                f"no online model {spec.model_name!r}: train it first (TrainOnline)", "model_name"
            ) from None
        response.model_name = spec.model_name
        return response
