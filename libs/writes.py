"""What follows a durable write of metrics, in both run modes, in one place."""

from __future__ import annotations

from libs.bus import Bus
from libs.cache import TtlCache
from platformq.analytics.v1 import events_pb2


class AfterWrite:
    """Called once a batch is durable in the store: drops the cached answers over the written
    span of the datasource and, where the batch entered this process (mode all), publishes it on
    `simulation.metrics.<source>`. In distributed mode the realtime replica publishes before any
    store write (Pulsar is its durability), and the store's consumer calls this without publishing."""

    def __init__(self, cache: TtlCache | None, bus: Bus) -> None:
        self.cache = cache
        self.bus = bus

    async def __call__(
        self,
        tenant: str,
        datasource: str,
        lo: int,
        hi: int,
        publish: events_pb2.MetricsBatchEvent | None = None,
    ) -> None:
        """The batch of `datasource` spanning [lo, hi] ms was stored; `publish` is its event when it
        is to be published."""
        if self.cache is not None:
            self.cache.invalidate(tenant, datasource, lo, hi)
        if publish is not None:
            await self.bus.publish(f"simulation.metrics.{publish.source}", publish, key=datasource)
