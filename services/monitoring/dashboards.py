"""dashboards (being built in the monitoring issue)."""

from __future__ import annotations

from libs.errors import NotBuilt
from services.context import ServiceContext


class Dashboards:
    """Placeholder until dashboards land: every call answers UNIMPLEMENTED."""

    def __init__(self, context: ServiceContext, *parts: object) -> None:
        self.context = context

    async def start(self) -> None:
        """Nothing to start yet."""

    async def stop(self) -> None:
        """Nothing to stop yet."""

    async def close(self) -> None:
        """Nothing to close yet."""

    def __getattr__(self, name: str) -> object:
        async def not_built(*args: object) -> object:
            raise NotBuilt("dashboards are not built yet")

        return not_built
