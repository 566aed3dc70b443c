"""What the services of one process share: the store, the bus and the cache, built once."""

from __future__ import annotations

from dataclasses import dataclass, field

from libs.bus import Bus, InProcessBus
from libs.cache import TtlCache
from libs.config import Settings
from libs.storage.store import MetricStore, StoreConfig


def store_config(settings: Settings) -> StoreConfig:
    """The store's knobs from the settings."""
    return StoreConfig(
        data_dir=settings.data_dir,
        hot_max_points=settings.hot_max_points,
        hot_flush_points=settings.hot_flush_points,
        hot_flush_seconds=settings.hot_flush_seconds,
        retention_days=settings.retention_by_datasource,
        default_retention_days=settings.retention_days,
    )


@dataclass
class ServiceContext:
    """Shared resources of a process; the store is opened by `start` when a service needs it."""

    settings: Settings
    bus: Bus = field(default_factory=InProcessBus)
    store: MetricStore | None = None
    cache: TtlCache | None = None

    def __post_init__(self) -> None:
        self.cache = TtlCache(max_entries=self.settings.cache_max_entries)

    def ensure_store(self) -> MetricStore:
        """The process's store (created on first use; opened in `start`)."""
        if self.store is None:
            self.store = MetricStore(store_config(self.settings))
        return self.store

    async def start(self) -> None:
        """Open the store (replaying the WAL) and start its background work."""
        if self.store is not None:
            self.store.open()
            await self.store.start()

    async def close(self) -> None:
        """Flush the store into segments and stop the bus."""
        if self.store is not None:
            await self.store.close()
        await self.bus.close()
