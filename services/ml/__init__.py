"""ml: anomaly detection (on request and on the live stream), forecasting, predictive maintenance
and online training.

The detectors pull in numba, pandas and friends: they are imported when the ml service is built,
not when another service's process imports this package."""

from __future__ import annotations

from libs.grpc_server import ServiceBinding
from platformq.analytics.v1 import ml_service_pb2, ml_service_pb2_grpc
from services.context import ServiceContext

FULL_NAME = ml_service_pb2.DESCRIPTOR.services_by_name["MLService"].full_name


def binding(context: ServiceContext) -> ServiceBinding:
    """Build the ML core and servicer; its start opens the anomaly store and the live scorer."""
    from services.ml.anomalies import AnomalyDetection
    from services.ml.anomaly_store import AnomalyStore, store_path
    from services.ml.core import MLCore
    from services.ml.history import HistoryClient
    from services.ml.servicer import MLServicer
    from services.ml.stream import StreamConfig, StreamScorer

    s = context.settings
    store = AnomalyStore(store_path(s.data_dir), s.anomaly_retention_days)
    history = HistoryClient(lambda: context.address_of("query-router"), 4 * s.max_request_bytes)
    detection = AnomalyDetection(store, history, context.cache, s.ml_cache_ttl_seconds, context.metrics)
    context.metrics.model_quality.attach(detection.model_quality)
    scorer = None
    if s.anomaly_stream:
        config = StreamConfig(
            data_dir=s.data_dir,
            max_state_bytes=s.ml_state_max_bytes,
            idle_seconds=s.ml_state_idle_seconds,
            checkpoint_seconds=s.ml_checkpoint_seconds,
            max_redeliveries=s.bus_max_redeliveries,
            max_backlog_bytes=s.ml_stream_max_backlog_bytes,
        )
        scorer = StreamScorer(context.bus, store, history, config, context.metrics)
    servicer = MLServicer(MLCore(detection, scorer))

    async def start() -> None:
        store.open()
        if scorer is not None:
            await scorer.start()

    async def stop() -> None:
        if scorer is not None:
            await scorer.stop()
        await history.close()
        store.close()

    return ServiceBinding(
        name="ml",
        full_name=FULL_NAME,
        register=lambda server: ml_service_pb2_grpc.add_MLServiceServicer_to_server(servicer, server),
        start=start,
        stop=stop,
    )
