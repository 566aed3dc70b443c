"""The realtime core: durable ingest, hot tier, segments and live subscriptions. No gRPC here."""

from __future__ import annotations

from libs.errors import NotBuilt

_PIPELINE = "it arrives with the metrics pipeline (write-ahead log, hot tier and segments)"


class RealtimeCore:
    """Accepts metric batches durably and serves live updates."""

    async def ingest(self, request: object) -> object:
        """Make a batch durable and queryable."""
        raise NotBuilt(f"metric ingest is not built yet: {_PIPELINE}")

    async def subscribe(self, stream_type: str, stream_id: str) -> object:
        """Follow one live stream."""
        raise NotBuilt("live subscriptions are not built yet: they arrive with the streaming issue")
