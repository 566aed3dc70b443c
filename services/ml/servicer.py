"""MLService over gRPC: validate, delegate to the MLCore."""

from __future__ import annotations

from grpc import aio

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
        spec.check_detect(request)
        return await self.core.detect_anomalies(request)

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
