"""query-router: plans queries onto engines, runs them in parallel, merges and caches."""

from __future__ import annotations

from libs.grpc_server import ServiceBinding
from platformq.analytics.v1 import query_service_pb2, query_service_pb2_grpc
from services.context import ServiceContext
from services.query_router.core import Limits, QueryRouter
from services.query_router.servicer import QueryServicer

FULL_NAME = query_service_pb2.DESCRIPTOR.services_by_name["QueryService"].full_name


def binding(context: ServiceContext) -> ServiceBinding:
    """Build the query-router's core and servicer, ready to be added to a server."""
    settings = context.settings
    limits = Limits(
        max_points_per_series=settings.query_max_points_per_series,
        max_series=settings.query_max_series,
        sql_max_rows=settings.sql_max_rows,
        max_request_bytes=settings.max_request_bytes,
        cache_ttl_seconds=settings.query_cache_ttl_seconds,
        max_raw_points=settings.query_max_raw_points,
        query_timeout_seconds=settings.query_timeout_seconds,
        query_memory_limit=settings.query_memory_limit,
        query_threads=settings.query_threads,
    )
    store = context.ensure_store()
    # The engines' modules (their clients: trino, sqlglot, pydruid) are imported only when configured.
    # TRINO_HOST set: user SQL and batch fragments run on Trino over the same segments.
    trino = None
    if settings.trino_host:
        from services.query_router.trino import TrinoEngine, TrinoSettings

        trino = TrinoEngine(TrinoSettings(settings.trino_host, settings.trino_port), store.segments_root)
    # DRUID_BROKER_URL set: the loader mirrors the segments into Druid, timeseries and realtime
    # fragments over the hours it holds run on the broker.
    druid = loader = None
    if settings.druid_broker_url:
        from services.query_router.druid import DruidEngine, DruidMirror, DruidSettings
        from services.query_router.druid_loader import DruidLoader, LoaderSettings, druid_urls

        broker, overlord = druid_urls(
            settings.druid_broker_url, settings.druid_overlord_url, settings.druid_coordinator_url
        )
        mirror = DruidMirror()
        druid = DruidEngine(DruidSettings(broker), mirror)
        loader = DruidLoader(store, mirror, LoaderSettings(overlord))
    router = QueryRouter(store, context.cache, limits, context.metrics, trino=trino, druid=druid)
    servicer = QueryServicer(router)

    async def start() -> None:
        await router.start()
        if loader is not None:
            await loader.start()

    async def stop() -> None:
        if loader is not None:
            await loader.stop()
        await router.stop()

    return ServiceBinding(
        name="query-router",
        full_name=FULL_NAME,
        register=lambda server: query_service_pb2_grpc.add_QueryServiceServicer_to_server(servicer, server),
        start=start,
        stop=stop,
    )
