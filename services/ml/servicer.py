"""MLService over gRPC: validate, delegate to the MLCore."""

from __future__ import annotations

from grpc import aio

from libs.storage.store import DEFAULT_TENANT
from platformq.analytics.v1 import ml_service_pb2 as pb
from platformq.analytics.v1 import ml_service_pb2_grpc
from services.ml import spec
from services.ml.core import MLCore


class MLServicer(ml_service_pb2_grpc.MLServiceServicer):
    """Thin transport layer over MLCore."""

    def __init__(self, core: MLCore) -> None:
        self.core = core

    async def DetectAnomalies(
        self, request: pb.DetectAnomaliesRequest, context: aio.ServicerContext
    ) -> pb.DetectAnomaliesResponse:
        # The history reads this request makes end with it: they get its remaining deadline.
        return await self.core.detect_anomalies(
            spec.detect_from_proto(request), DEFAULT_TENANT, context.time_remaining()
        )

    async def ListAnomalies(
        self, request: pb.ListAnomaliesRequest, context: aio.ServicerContext
    ) -> pb.ListAnomaliesResponse:
        return await self.core.list_anomalies(spec.list_from_proto(request), DEFAULT_TENANT)

    async def GetAnomalyStats(
        self, request: pb.GetAnomalyStatsRequest, context: aio.ServicerContext
    ) -> pb.GetAnomalyStatsResponse:
        return await self.core.anomaly_stats(DEFAULT_TENANT)

    async def SubmitAnomalyFeedback(
        self, request: pb.SubmitAnomalyFeedbackRequest, context: aio.ServicerContext
    ) -> pb.SubmitAnomalyFeedbackResponse:
        spec.check_feedback(request)
        return await self.core.anomaly_feedback(request.id, request.feedback, request.comment, DEFAULT_TENANT)

    async def Forecast(
        self, request: pb.ForecastRequest, context: aio.ServicerContext
    ) -> pb.ForecastResponse:
        spec.check_forecast(request)
        return await self.core.forecast(request)

    async def PredictMaintenance(
        self, request: pb.PredictMaintenanceRequest, context: aio.ServicerContext
    ) -> pb.PredictMaintenanceResponse:
        spec.check_maintenance(request)
        return await self.core.predict_maintenance(request)

    async def TrainOnline(
        self, request: pb.TrainOnlineRequest, context: aio.ServicerContext
    ) -> pb.TrainOnlineResponse:
        spec.check_train(request)
        return await self.core.train_online(request)
