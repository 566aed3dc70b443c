"""The query router's core: plans and runs queries. Knows nothing of gRPC."""

from __future__ import annotations

from libs.errors import NotBuilt
from services.query_router.spec import QuerySpec, TimeseriesSpec

_PIPELINE = "it arrives with the metrics pipeline (storage, engines, routing and cache)"


class QueryRouter:
    """Plans queries onto engines, runs the fragments, merges and caches the answers."""

    async def query(self, spec: QuerySpec) -> object:
        """Run a unified query."""
        raise NotBuilt(f"query execution is not built yet: {_PIPELINE}")

    async def query_timeseries(self, spec: TimeseriesSpec) -> object:
        """Run a Druid-style timeseries query."""
        raise NotBuilt(f"timeseries queries are not built yet: {_PIPELINE}")

    async def explain(self, spec: QuerySpec) -> object:
        """Return the plan of a query without running it."""
        raise NotBuilt(f"query planning is not built yet: {_PIPELINE}")

    async def capabilities(self) -> object:
        """List engines, modes, aggregations, granularities and limits."""
        raise NotBuilt(f"capabilities are not built yet: {_PIPELINE}")

    async def metadata(self, datasource: str) -> object:
        """Describe one datasource."""
        raise NotBuilt(f"datasource metadata is not built yet: {_PIPELINE}")
