"""The Dashboards component over the stand-in peers of test_scopes: keys, cache, CRUD with
warnings, and the live refresh publishing on the in-process bus."""

from __future__ import annotations

import asyncio

import pytest
from google.protobuf import json_format

from libs.bus import Envelope
from libs.config import load_settings
from libs.errors import FailedPrecondition, NotFound, Unavailable
from platformq.analytics.v1 import events_pb2
from platformq.analytics.v1 import monitoring_service_pb2 as pb
from services.context import ServiceContext
from services.monitoring.dashboard_refresh import DashboardRefresher, topic_for
from services.monitoring.dashboards import Dashboards
from tests.unit.test_dashboards_panels import SEED
from tests.unit.test_scopes import StandInReader, platform_data


class UnreachableReader(StandInReader):
    """Stand-in for a query-router that does not answer."""

    async def sql(self, sql, params, timeout=None):
        raise Unavailable("the query-router did not answer: UNAVAILABLE")

    async def metadata(self, datasource, timeout=None):
        raise Unavailable("the query-router did not answer: UNAVAILABLE")


class SqlCountingReader(StandInReader):
    """The stand-in, counting SQL reads."""

    sql_reads = 0

    async def sql(self, sql, params, timeout=None):
        self.sql_reads += 1
        return await super().sql(sql, params, timeout)


async def make(tmp_path, reader=None, **settings) -> Dashboards:
    context = ServiceContext(load_settings(data_dir=tmp_path, **settings))
    boards = Dashboards(context, reader or StandInReader({"platform_metrics": platform_data()}))
    await asyncio.to_thread(boards.store.open)
    return boards


@pytest.fixture
async def boards(tmp_path):
    b = await make(tmp_path)
    yield b
    await b.stop()


def seed() -> pb.CreateDashboardRequest:
    return json_format.ParseDict(SEED, pb.CreateDashboardRequest())


async def test_a_builtin_type_answers_with_panels_of_every_service(boards):
    reply = await boards.get("platform-overview")
    assert reply.dashboard.id == "builtin:platform-overview" and reply.dashboard.builtin
    cpu = next(p for p in reply.panels if p.metric == "cpu_usage")
    assert [s.group["service_name"] for s in cpu.series] == ["api-gateway", "auth-service", "billing-service"]
    assert cpu.step == "30s" and cpu.aggregation == "avg" and not cpu.warning
    assert reply.computed_at_ms > 0


async def test_computing_a_dashboard_reads_no_sql(tmp_path):
    # Panels are metrics queries and the datasource's contents come from GetMetadata: the background
    # refresh must not start DuckDB in a process that serves metrics only.
    reader = SqlCountingReader({"platform_metrics": platform_data()})
    boards = await make(tmp_path, reader)
    try:
        for kind in ("platform-overview", "service-metrics", "resource-utilization", "simulation"):
            assert (await boards.get(kind)).panels
        assert reader.sql_reads == 0
    finally:
        await boards.stop()


async def test_the_seed_body_creates_a_dashboard_with_warnings(boards):
    created = await boards.create(seed())
    assert created.dashboard.id and created.dashboard.name == "Service Performance"
    assert created.dashboard.refresh_interval == 30
    assert created.warnings == [
        "metric 'latency' has no stored data in platform_metrics",
        "metric 'throughput' has no stored data in platform_metrics",
        "service 'analytics-service' has no data in platform_metrics over the last 24h",
    ]
    by_id = await boards.get(created.dashboard.id)
    by_type = await boards.get("service-metrics")  # a stored dashboard of the type wins over the built-in
    assert by_id.dashboard == by_type.dashboard == created.dashboard
    assert [p.title for p in by_id.panels][-2:] == [
        "auth-service · error_rate",
        "analytics-service · error_rate",
    ]
    builtin = await boards.get("builtin:service-metrics")
    assert builtin.dashboard.builtin and builtin.dashboard.name == "Service metrics"


async def test_unknown_keys_are_not_found_naming_the_type(boards):
    with pytest.raises(NotFound) as err:
        await boards.get("no-such-board")
    assert (
        err.value.field == "type"
        and "'no-such-board' is neither a dashboard id nor a dashboard type" in err.value.reason
    )


async def test_panel_data_is_cached_for_the_ttl(boards):
    first = await boards.get("simulation")
    queries = len(boards.reader.queries)
    second = await boards.get("simulation")
    assert second.computed_at_ms == first.computed_at_ms and len(boards.reader.queries) == queries
    assert boards.context.cache.hits["dashboard"] == 1


async def test_an_answer_without_data_is_not_cached_so_the_first_batch_shows_at_once(tmp_path):
    reader = StandInReader({})
    boards = await make(tmp_path, reader=reader)
    cold = await boards.get("platform-overview")
    assert not any(p.series for p in cold.panels) and "does not exist yet" in cold.panels[0].warning
    reader.data["platform_metrics"] = platform_data()  # the demo's first batch lands
    warm = await boards.get("platform-overview")
    assert any(p.series for p in warm.panels)
    await boards.stop()


async def test_a_ttl_of_zero_recomputes_every_time(tmp_path):
    boards = await make(tmp_path, dashboard_cache_ttl_seconds=0)
    await boards.get("simulation")
    queries = len(boards.reader.queries)
    await boards.get("simulation")
    assert len(boards.reader.queries) == 2 * queries
    await boards.stop()


async def test_update_and_delete_a_stored_dashboard(boards):
    created = (await boards.create(seed())).dashboard
    await boards.get(created.id)
    change = pb.UpdateDashboardRequest(
        id=created.id,
        name="Errors",
        type="platform-overview",
        config=pb.DashboardConfig(metrics=["error_rate"]),
    )
    updated = await boards.update(change)
    assert (updated.dashboard.name, updated.dashboard.type, updated.warnings) == (
        "Errors",
        "platform-overview",
        [],
    )
    assert (
        updated.dashboard.updated_at_ms > created.updated_at_ms and updated.dashboard.refresh_interval == 30
    )
    reply = await boards.get(created.id)  # a new version is never answered from the old one's cache
    assert [p.title for p in reply.panels] == ["error_rate by service"]
    listed = await boards.list(pb.ListDashboardsRequest())
    assert [d.id for d in listed.dashboards][:5] == [f"builtin:{d.type}" for d in listed.dashboards[:5]]
    assert listed.dashboards[5].id == created.id
    assert [
        d.id for d in (await boards.list(pb.ListDashboardsRequest(type="platform-overview"))).dashboards
    ] == [
        "builtin:platform-overview",
        created.id,
    ]
    assert (await boards.delete(created.id)).id == created.id
    with pytest.raises(NotFound) as err:
        await boards.delete(created.id)
    assert err.value.field == "id"
    with pytest.raises(NotFound):
        await boards.update(change)


async def test_builtins_cannot_be_changed_or_deleted(boards):
    with pytest.raises(FailedPrecondition) as err:
        await boards.update(pb.UpdateDashboardRequest(id="builtin:simulation", name="x", type="simulation"))
    assert err.value.field == "id" and "built-in" in err.value.reason
    with pytest.raises(FailedPrecondition):
        await boards.delete("builtin:simulation")


async def test_an_unreachable_query_router_fails_a_read_but_not_a_create(tmp_path):
    boards = await make(tmp_path, UnreachableReader({}))
    with pytest.raises(Unavailable):
        await boards.get("platform-overview")
    created = await boards.create(seed())
    assert created.dashboard.id and created.warnings[0].startswith(
        "the configuration could not be checked against stored data: "
    )
    await boards.stop()


async def test_live_refresh_publishes_every_dashboard_on_its_topic(tmp_path):
    boards = await make(tmp_path, dashboard_min_refresh_seconds=0.1)
    created = (await boards.create(seed())).dashboard
    events: dict[str, events_pb2.DashboardUpdateEvent] = {}
    done = asyncio.Event()

    async def collect(envelope: Envelope) -> None:
        events[envelope.topic] = envelope.decode(events_pb2.DashboardUpdateEvent)
        if len(events) == 6:
            done.set()

    await boards.context.bus.subscribe("dashboard.updates.*", "test", collect)
    await boards.refresher.start()
    await asyncio.wait_for(done.wait(), 30)
    queries = len(boards.reader.queries)
    await boards.get(created.id)  # the refresh filled the cache: no query to answer it
    assert len(boards.reader.queries) == queries
    await boards.stop()
    assert set(events) == {
        *(
            f"dashboard.updates.builtin-{t}"
            for t in ("platform-overview", "service-metrics", "service-comparison")
        ),
        *(f"dashboard.updates.builtin-{t}" for t in ("resource-utilization", "simulation")),
        f"dashboard.updates.{created.id}",
    }
    mine = events[f"dashboard.updates.{created.id}"]
    assert (mine.tenant, mine.dashboard_id, mine.dashboard_type) == ("default", created.id, "service-metrics")
    assert len(mine.panels) == 6 and mine.timestamp_ms > 0
    assert topic_for("builtin:simulation") == "dashboard.updates.builtin-simulation"


async def eventually(predicate, what: str, timeout: float = 10.0) -> None:
    """Poll `predicate` on the event loop until it holds; fail naming `what` after `timeout` s."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


async def test_a_dashboard_still_refreshing_skips_its_turn_and_a_failure_is_not_fatal(tmp_path):
    boards = await make(tmp_path)
    started, release = asyncio.Event(), asyncio.Event()
    calls: list[str] = []
    board = pb.Dashboard(id="d1", type="simulation", refresh_interval=30, updated_at_ms=1)

    async def listing():
        return [board]

    async def compute(dashboard, timeout):
        calls.append(dashboard.id)
        if len(calls) == 1:
            started.set()
            await release.wait()
            raise Unavailable("the query-router did not answer")
        return [], None

    refresher = DashboardRefresher(listing, compute, boards.context.bus, 0.1, 2, "default")
    await refresher.turn()
    await asyncio.wait_for(started.wait(), 5)
    board.updated_at_ms = 2  # changed while refreshing: due at once, but one is in flight
    await refresher.turn()
    assert (calls, refresher.skipped) == (["d1"], 1)
    release.set()
    await eventually(lambda: refresher.failed == 1, "the failed refresh to be counted")

    async def next_turn_publishes() -> None:
        # Each turn sees a new version (due at once); it starts once the failed one has ended.
        while refresher.published == 0:
            board.updated_at_ms += 1
            await refresher.turn()
            await asyncio.sleep(0.01)

    await asyncio.wait_for(next_turn_publishes(), 10)
    assert calls == ["d1", "d1"] and refresher.failed == 1
    await refresher.stop()
    await boards.stop()
