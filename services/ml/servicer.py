"""MLService over gRPC: validate, delegate to the MLCore, for the caller's tenant."""

from __future__ import annotations

from grpc import aio

from libs.identity import current_identity
from platformq.analytics.v1 import ml_service_pb2 as pb
from platformq.analytics.v1 import ml_service_pb2_grpc
from services.ml import spec
from services.ml.core import MLCore
from services.ml.forecasting.spec import forecast_from_proto
from services.ml.online import spec as online_spec


class MLServicer(ml_service_pb2_grpc.MLServiceServicer):
    """Thin transport layer over MLCore."""

    def __init__(self, core: MLCore, *, forecast_max_horizon: int) -> None:
        self.core = core
        self.forecast_max_horizon = forecast_max_horizon

    async def DetectAnomalies(
        self, request: pb.DetectAnomaliesRequest, context: aio.ServicerContext
    ) -> pb.DetectAnomaliesResponse:
        # The history reads this request makes end with it: they get its remaining deadline.
        return await self.core.detect_anomalies(
            spec.detect_from_proto(request), current_identity().tenant, context.time_remaining()
        )

    async def ListAnomalies(
        self, request: pb.ListAnomaliesRequest, context: aio.ServicerContext
    ) -> pb.ListAnomaliesResponse:
        return await self.core.list_anomalies(spec.list_from_proto(request), current_identity().tenant)

    async def GetAnomalyStats(
        self, request: pb.GetAnomalyStatsRequest, context: aio.ServicerContext
    ) -> pb.GetAnomalyStatsResponse:
        return await self.core.anomaly_stats(current_identity().tenant)

    async def SubmitAnomalyFeedback(
        self, request: pb.SubmitAnomalyFeedbackRequest, context: aio.ServicerContext
    ) -> pb.SubmitAnomalyFeedbackResponse:
        spec.check_feedback(request)
        return await self.core.anomaly_feedback(
            request.id, request.feedback, request.comment, current_identity().tenant
        )

    async def Forecast(
        self, request: pb.ForecastRequest, context: aio.ServicerContext
    ) -> pb.ForecastResponse:
        return await self.core.forecast(
            forecast_from_proto(request, self.forecast_max_horizon),
            current_identity().tenant,
            context.time_remaining(),
        )

    async def PredictMaintenance(
        self, request: pb.PredictMaintenanceRequest, context: aio.ServicerContext
    ) -> pb.PredictMaintenanceResponse:
        return await self.core.predict_maintenance(
            spec.maintenance_from_proto(request), current_identity().tenant, context.time_remaining()
        )

    async def TrainMaintenance(
        self, request: pb.TrainMaintenanceRequest, context: aio.ServicerContext
    ) -> pb.TrainMaintenanceResponse:
        # Fitting runs in a worker thread and stops when the request's deadline passes.
        return await self.core.train_maintenance(
            spec.train_maintenance_from_proto(request), current_identity().tenant, context.time_remaining()
        )

    async def TrainOnline(
        self, request: pb.TrainOnlineRequest, context: aio.ServicerContext
    ) -> pb.TrainOnlineResponse:
        # A model busy with another update is waited for until this request's deadline at most.
        return await self.core.train_online(
            online_spec.train_from_proto(request), context.time_remaining(), current_identity().tenant
        )

    async def PredictOnline(
        self, request: pb.PredictOnlineRequest, context: aio.ServicerContext
    ) -> pb.PredictOnlineResponse:
        return await self.core.predict_online(
            online_spec.predict_from_proto(request), context.time_remaining(), current_identity().tenant
        )
