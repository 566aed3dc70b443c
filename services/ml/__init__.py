"""ml: anomaly detection (on request and on the live stream), forecasting, predictive maintenance
and online training.

The detectors' modules are imported when the ml service is built, not when another service's
process imports this package; the heavy libraries behind them load later still, at first use
(numba with the `auto` detector's first score, MLflow with the first model logged)."""

from __future__ import annotations

from libs.grpc_server import ServiceBinding
from platformq.analytics.v1 import ml_service_pb2, ml_service_pb2_grpc
from services.context import ServiceContext

FULL_NAME = ml_service_pb2.DESCRIPTOR.services_by_name["MLService"].full_name


def binding(context: ServiceContext) -> ServiceBinding:
    """Build the ML core and servicer; its start opens the anomaly store and the live scorer."""
    from services.ml.anomalies import AnomalyDetection, detector_configs
    from services.ml.anomaly_store import AnomalyStore, store_path
    from services.ml.core import MLCore
    from services.ml.forecasting.component import Forecasting, forecast_configs
    from services.ml.history import HistoryClient
    from services.ml.maintenance.component import Maintenance
    from services.ml.maintenance.store import MaintenanceStore
    from services.ml.maintenance.store import store_path as maintenance_path
    from services.ml.online.bindings import StreamTrainer, parse_bindings
    from services.ml.online.learning import OnlineConfig, OnlineLearning
    from services.ml.servicer import MLServicer
    from services.ml.stream import StreamConfig, StreamScorer
    from services.ml.tracking import ModelTracking
    from services.ml.versions import ConfigVersions

    s = context.settings
    store = AnomalyStore(store_path(s.data_dir), s.anomaly_retention_days)
    # MLflow itself is imported on the first model logged, never on the start-up path.
    tracking = ModelTracking(s.mlflow_tracking_uri, s.data_dir)
    # The registry versions of the detector and forecasting configurations every answer carries.
    versions = ConfigVersions(tracking, {**detector_configs(), **forecast_configs()})
    history = HistoryClient(lambda: context.address_of("query-router"), 4 * s.max_request_bytes)
    detection = AnomalyDetection(
        store, history, context.cache, s.ml_cache_ttl_seconds, context.metrics, versions=versions
    )
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
        scorer = StreamScorer(context.bus, store, history, config, context.metrics, tracking, versions)
    online = OnlineLearning(
        OnlineConfig(
            s.data_dir,
            s.online_track_samples,
            s.online_track_seconds,
            s.online_max_samples,
            s.online_max_models,
        ),
        tracking,
    )
    bindings = parse_bindings(s.online_bindings)  # a bad ONLINE_BINDINGS stops start-up, naming the entry
    trainer = (
        StreamTrainer(
            context.bus,
            online,
            bindings,
            s.bus_max_redeliveries,
            s.ml_stream_max_backlog_bytes,
            context.metrics,
        )
        if bindings
        else None
    )
    maintenance_store = MaintenanceStore(maintenance_path(s.data_dir))
    maintenance = Maintenance(
        maintenance_store, tracking, history, context.bus, context.cache, s.ml_cache_ttl_seconds
    )
    forecasting = Forecasting(
        history,
        context.bus,
        context.cache,
        s.ml_cache_ttl_seconds,
        tracking,
        s.forecast_workers,
        versions=versions,
        max_series=s.forecast_max_series,
    )
    servicer = MLServicer(
        MLCore(detection, scorer, online=online, maintenance=maintenance, forecasting=forecasting),
        forecast_max_horizon=s.forecast_max_horizon,
    )

    async def start() -> None:
        store.open()
        maintenance_store.open()
        await tracking.start()
        versions.start()  # in the background, and only when the MLflow store exists already
        if scorer is not None:
            await scorer.start()
        if trainer is not None:
            await trainer.start()

    async def stop() -> None:
        if scorer is not None:
            await scorer.stop()
        await online.stop()
        await forecasting.close()
        await versions.close()
        await history.close()
        store.close()
        maintenance_store.close()
        await tracking.close()

    return ServiceBinding(
        name="ml",
        full_name=FULL_NAME,
        register=lambda server: ml_service_pb2_grpc.add_MLServiceServicer_to_server(servicer, server),
        start=start,
        stop=stop,
    )
