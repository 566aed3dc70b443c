"""What follows a durable write of metrics, in both run modes, in one place, and the names of the
metrics topics it publishes on."""

from __future__ import annotations

from libs.bus import Bus, Serialized
from libs.cache import TtlCache


def metrics_topic(datasource: str) -> str:
    """The bus topic of a datasource's ingested batches (their events' `source` is the datasource)."""
    return f"simulation.metrics.{datasource}"


METRICS_TOPICS = metrics_topic("*")
"""The pattern of every datasource's metrics topic, for subscribers."""


class AfterWrite:
    """Called once a batch is durable in the store: drops the cached answers over the written
    span of the datasource and, where the batch entered this process (mode all), publishes it on
    `simulation.metrics.<datasource>`. In distributed mode the realtime replica publishes before any
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
        publish: Serialized | None = None,
    ) -> None:
        """The batch of `datasource` spanning [lo, hi] ms was stored; `publish` is its event (a
        `MetricsBatchEvent`'s bytes) when it is to be published."""
        if self.cache is not None:
            self.cache.invalidate(tenant, datasource, lo, hi)
        if publish is not None:
            await self.bus.publish(metrics_topic(datasource), publish, key=datasource)
