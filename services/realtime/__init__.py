"""realtime: durable ingest, the hot tier, segments, and live subscriptions for the ws bridge."""

from __future__ import annotations

from typing import TYPE_CHECKING

from platformq.analytics.v1 import realtime_service_pb2

if TYPE_CHECKING:
    from libs.grpc_server import ServiceBinding
    from services.context import ServiceContext

FULL_NAME = realtime_service_pb2.DESCRIPTOR.services_by_name["RealtimeService"].full_name


def binding(context: ServiceContext) -> ServiceBinding:
    """Build the realtime core and servicer, ready to be added to a server."""
    # Imported here, not with the package: the REST body worker processes import this package
    # (json_worker) and need none of the server, the service context or the store.
    from libs.grpc_server import ServiceBinding
    from platformq.analytics.v1 import realtime_service_pb2_grpc
    from services.realtime.core import RealtimeCore
    from services.realtime.servicer import RealtimeServicer

    # Distributed: the replica validates and publishes to Pulsar; the store's consumer writes.
    store = None if context.distributed else context.ensure_store()
    core = RealtimeCore(
        store,
        context.bus,
        context.after_write,
        context.metrics,
        hub=context.stream_hub(),
        json_workers=context.settings.ingest_json_workers,
    )
    servicer = RealtimeServicer(core)

    async def stop() -> None:
        core.close()

    return ServiceBinding(
        name="realtime",
        full_name=FULL_NAME,
        register=lambda server: realtime_service_pb2_grpc.add_RealtimeServiceServicer_to_server(
            servicer, server
        ),
        stop=stop,
    )
