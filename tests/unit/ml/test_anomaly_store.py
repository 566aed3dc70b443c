"""The anomaly store: kept once, every filter, pages, feedback and precision, peers, retention,
tenants kept apart, and everything still there after a restart."""

from __future__ import annotations

import math
import sqlite3
import threading
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from services.ml import anomaly_store
from services.ml.anomaly_store import AnomalyFilter, AnomalyRecord, AnomalyStore, anomaly_id, store_path

T0 = 1_700_000_040_000  # a whole minute
MINUTE_MS = 60_000
DAY_MS = 86_400_000


def _record(metric: str = "cpu", ts: int = T0, **changes: object) -> AnomalyRecord:
    record = AnomalyRecord(
        tenant="default",
        datasource="demo",
        metric=metric,
        labels={"service": "api", "host": "h1"},
        timestamp_ms=ts,
        value=97.0,
        score=4.0,
        method="zscore",
        expected=40.0,
        lower=20.0,
        upper=60.0,
        deviation=57.0,
        threshold=3.0,
        model_version="zscore-1",
        contributions={},
        source="stream",
        detected_at_ms=ts + 1000,
    )
    return replace(record, **changes)


def _host(host: str, ts: int = T0, **changes: object) -> AnomalyRecord:
    return _record(ts=ts, labels={"service": "api", "host": host}, **changes)


def _id(r: AnomalyRecord) -> str:
    return anomaly_id(r.tenant, r.datasource, r.metric, r.labels, r.timestamp_ms, r.method)


def _ids(store: AnomalyStore, **filters: object) -> list[str]:
    return [r.id for r in store.list(AnomalyFilter(**filters))[0]]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[AnomalyStore]:
    s = AnomalyStore(store_path(tmp_path))
    s.open()
    yield s
    s.close()


def test_anomaly_ids_are_stable_and_label_order_free():
    a = anomaly_id("default", "demo", "cpu", {"a": "1", "b": "2"}, T0, "zscore")
    assert a == anomaly_id("default", "demo", "cpu", {"b": "2", "a": "1"}, T0, "zscore")
    assert len(a) == 16 and int(a, 16) >= 0
    assert a != anomaly_id("other", "demo", "cpu", {"a": "1", "b": "2"}, T0, "zscore")
    assert a != anomaly_id("default", "demo", "cpu", {"a": "1", "b": "2"}, T0, "iforest")


def test_an_anomaly_is_kept_once_per_series_timestamp_and_method(store: AnomalyStore, tmp_path: Path):
    first = _record(labels={"service": "api", "host": "h1"})
    assert store.add([first]) == 1
    assert store.add([replace(first, labels={"host": "h1", "service": "api"}, score=9.0)]) == 0
    assert store.add([first, replace(first, method="iforest")]) == 1
    listed = store.list(AnomalyFilter())[0]
    assert sorted(r.method for r in listed) == ["iforest", "zscore"]
    kept = store.get("default", _id(first))
    assert kept is not None and kept.score == 4.0  # the first one stays
    assert replace(kept, id="", peers=0, peer_series=0) == first
    assert store_path(tmp_path).exists()


def test_every_filter(store: AnomalyStore):
    records = [
        _record("cpu", T0, labels={"host": "h1", "simulation_id": "s1"}, score=2.0),
        _record("cpu", T0 + MINUTE_MS, labels={"host": "h2", "simulation_id": "s1"}, score=5.0),
        _record("cpu", T0 + 2 * MINUTE_MS, labels={"host": "h1", "simulation_id": "s2"}, method="iforest"),
        _record("mem", T0 + 3 * MINUTE_MS, labels={"host": "h1", "simulation_id": "s1"}, score=8.0),
        _record("cpu", T0 + 4 * MINUTE_MS, datasource="plant", labels={"host": "h1", "simulation_id": "s1"}),
    ]
    store.add(records)
    a, b, c, d, e = (_id(r) for r in records)
    assert _ids(store) == [e, d, c, b, a]
    assert _ids(store, metric="cpu") == [e, c, b, a]
    assert _ids(store, datasource="plant") == [e]
    assert _ids(store, datasource="demo", metric="cpu") == [c, b, a]
    assert _ids(store, labels={"simulation_id": "s1"}) == [e, d, b, a]
    assert _ids(store, labels={"simulation_id": "s1", "host": "h1"}) == [e, d, a]
    assert _ids(store, labels={"simulation_id": "s3"}) == []
    assert _ids(store, labels={"rack": "r1"}) == []
    assert _ids(store, start_ms=T0 + MINUTE_MS, end_ms=T0 + 3 * MINUTE_MS) == [c, b]  # end excluded
    assert _ids(store, start_ms=T0 + 3 * MINUTE_MS) == [e, d]
    assert _ids(store, min_score=5.0) == [d, b]
    assert _ids(store, method="iforest") == [c]
    assert _ids(store, metric="cpu", labels={"simulation_id": "s1"}, min_score=3.0, method="zscore") == [e, b]


def test_tenants_never_see_each_other(store: AnomalyStore):
    mine, theirs = _record(), _record(tenant="acme")
    store.add([mine, theirs])
    assert _ids(store) == [_id(mine)]
    assert _ids(store, tenant="acme") == [_id(theirs)]
    assert _ids(store, tenant="acme", labels={"host": "h1"}) == [_id(theirs)]
    assert _ids(store, tenant="nobody") == []
    assert store.get("acme", _id(mine)) is None
    with pytest.raises(KeyError):
        store.set_feedback("acme", _id(mine), "true_positive")
    assert store.count_since("acme", 0) == 1
    assert store.list(AnomalyFilter(tenant="acme"))[0][0].peers == 0


@pytest.mark.parametrize(
    ("labels", "series_path_rows"),
    [({}, 20_000), ({"service": "api"}, 0), ({"host": "h3"}, 20_000)],
    ids=["time index", "time index, filtered", "series index"],
)
def test_pages_cover_everything_exactly_once_newest_first(
    store: AnomalyStore, labels: dict[str, str], series_path_rows: int, monkeypatch: pytest.MonkeyPatch
):
    monkeypatch.setattr(anomaly_store, "SERIES_PATH_ROWS", series_path_rows)
    # 30 hosts, 4 anomalies each, several at the same timestamp: ties are ordered by id.
    store.add(_host(f"h{i}", T0 + (i % 3) * 1000 + k * MINUTE_MS) for i in range(30) for k in range(4))
    everything, cursor = store.list(AnomalyFilter(labels=labels, limit=1000))
    assert cursor == "" and len(everything) == (4 if "host" in labels else 120)
    seen, cursor = [], ""
    while True:
        page, cursor = store.list(AnomalyFilter(labels=labels, limit=7, cursor=cursor))
        assert len(page) <= 7
        seen.extend(page)
        if not cursor:
            break
    assert [r.id for r in seen] == [r.id for r in everything]
    assert len({r.id for r in seen}) == len(everything)
    keys = [(r.timestamp_ms, r.id) for r in seen]
    assert keys == sorted(keys, reverse=True)


def test_bad_cursor_and_limit_are_refused(store: AnomalyStore):
    for cursor in ("nonsense", "bm90OmFjdXJzb3I=", "MTIzOlpaWlpaWlpaWlpaWlpaWlo="):
        with pytest.raises(ValueError, match=r"^cursor: "):
            store.list(AnomalyFilter(cursor=cursor))
    with pytest.raises(ValueError, match=r"^limit: "):
        store.list(AnomalyFilter(limit=0))


def test_feedback_is_set_replaced_and_checked(store: AnomalyStore):
    record = _record()
    store.add([record])
    marked = store.set_feedback("default", _id(record), "true_positive", "real outage")
    assert (marked.feedback, marked.feedback_comment) == ("true_positive", "real outage")
    store.set_feedback("default", _id(record), "false_positive")
    again = store.get("default", _id(record))
    assert again is not None and (again.feedback, again.feedback_comment) == ("false_positive", "")
    assert store.list(AnomalyFilter())[0][0].feedback == "false_positive"
    with pytest.raises(KeyError):
        store.set_feedback("default", "0123456789abcdef", "true_positive")
    with pytest.raises(ValueError, match=r"^verdict: "):
        store.set_feedback("default", _id(record), "maybe")


def test_feedback_counts_and_precision_by_method(store: AnomalyStore):
    h1 = [_host("h1", T0 + k * MINUTE_MS) for k in range(5)]
    h2 = [_host("h2", T0 + k * MINUTE_MS, method="iforest") for k in range(3)]
    store.add([*h1, *h2, _host("h3", method="mad")])
    for r, verdict in zip(
        h1, ["true_positive", "true_positive", "true_positive", "false_positive"], strict=False
    ):
        store.set_feedback("default", _id(r), verdict)
    store.set_feedback("default", _id(h2[0]), "false_positive")
    assert store.feedback_counts("default", "demo", "cpu", {"host": "h1", "service": "api"}) == (3, 1)
    assert store.feedback_counts("default", "demo", "cpu", {"service": "api", "host": "h2"}) == (0, 1)
    assert store.feedback_counts("default", "demo", "cpu", {"host": "h9"}) == (0, 0)
    precision = store.precision_by_method("default")
    assert set(precision) == {"zscore", "iforest", "mad"}
    z = precision["zscore"]
    assert (z.anomalies, z.true_positive, z.false_positive, z.precision) == (5, 3, 1, 0.75)
    assert precision["iforest"].precision == 0.0 and precision["iforest"].anomalies == 3
    assert precision["mad"].precision is None
    assert store.precision_by_method("acme") == {}


def test_peers_are_sibling_series_anomalous_in_the_same_minute(store: AnomalyStore):
    store.add([_host("h1", T0 + 5_000), _host("h2", T0 + 30_000)])
    assert [r.peers for r in store.list(AnomalyFilter())[0]] == [1, 1]
    store.add(
        [
            _host("h3", T0 + 59_999),
            _host("h3", T0 + 10_000, method="iforest"),  # the same series again: still one peer
            _record("mem", T0, labels={"service": "api", "host": "h9"}),  # another metric
            _record(ts=T0, labels={"host": "h8"}),  # other label keys
            _record(ts=T0, labels={"service": "api", "host": "h7"}, datasource="plant"),  # elsewhere
            _host("h4", T0 + MINUTE_MS),  # the next minute
        ]
    )
    by_series = {
        (r.metric, r.datasource, r.labels["host"], r.method): r for r in store.list(AnomalyFilter())[0]
    }
    for host in ("h1", "h2", "h3"):
        sibling = by_series[("cpu", "demo", host, "zscore")]
        assert (sibling.peers, sibling.peer_series) == (2, 3), host  # h4 counts in the population only
    assert by_series[("cpu", "demo", "h4", "zscore")].peers == 0
    assert by_series[("mem", "demo", "h9", "zscore")].peers == 0
    assert by_series[("cpu", "demo", "h8", "zscore")].peer_series == 0
    assert by_series[("cpu", "plant", "h7", "zscore")].peers == 0
    assert store.get("default", _id(_host("h1", T0 + 5_000))).peers == 2


def test_retention_drops_old_anomalies_and_their_series(tmp_path: Path):
    now = T0 + 10 * DAY_MS
    store = AnomalyStore(tmp_path / "a.sqlite3", retention_days=2)
    store.open()
    store.add([_host("h1", now - 3 * DAY_MS), _host("h2", now - DAY_MS), _host("h3", now - 3 * DAY_MS)])
    assert store.purge(now) == 2
    assert store.purge(now) == 0
    remaining = store.list(AnomalyFilter())[0]
    assert [r.labels["host"] for r in remaining] == ["h2"]
    assert remaining[0].peer_series == 0  # purged series are no longer peers
    store.close()

    forever = AnomalyStore(tmp_path / "b.sqlite3")
    forever.open()
    forever.add([_host("h1", 0)])
    assert forever.purge(now) == 0
    assert len(forever.list(AnomalyFilter())[0]) == 1
    forever.close()


def test_count_since_counts_by_detection_time(store: AnomalyStore):
    store.add([_host("h1", T0, detected_at_ms=T0), _host("h2", T0, detected_at_ms=T0 + 10)])
    assert [store.count_since("default", t) for t in (T0, T0 + 1, T0 + 10, T0 + 11)] == [2, 1, 1, 0]


def test_a_reopened_store_keeps_anomalies_and_feedback(tmp_path: Path):
    path = store_path(tmp_path)
    first = AnomalyStore(path)
    first.open()
    records = [
        _host("h1", contributions={"cpu": 0.7, "mem": 0.3}, source="request"),
        _host("h2", expected=math.nan, lower=-math.inf),
    ]
    first.add(records)
    first.set_feedback("default", _id(records[0]), "true_positive", "confirmed")
    before = first.list(AnomalyFilter())[0]
    first.close()

    again = AnomalyStore(path)
    again.open()
    after = again.list(AnomalyFilter())[0]
    assert [r.id for r in after] == [r.id for r in before]
    assert after[1] == before[1] and after[1].feedback == "true_positive"
    assert after[1].contributions == {"cpu": 0.7, "mem": 0.3} and after[1].source == "request"
    assert math.isnan(after[0].expected) and after[0].lower == -math.inf
    assert again.add(records) == 0
    again.close()
    assert sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_two_stores_on_one_file_and_concurrent_writers(tmp_path: Path):
    path = store_path(tmp_path)
    a, b = AnomalyStore(path), AnomalyStore(path)
    a.open()
    b.open()

    def write(store: AnomalyStore, host: str) -> None:
        for k in range(20):
            store.add([_host(host, T0 + k * MINUTE_MS)])

    threads = [threading.Thread(target=write, args=(s, f"h{i}")) for i, s in enumerate([a, b, a, b])]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(a.list(AnomalyFilter(limit=1000))[0]) == len(b.list(AnomalyFilter(limit=1000))[0]) == 80
    a.close()
    b.close()


def test_records_need_a_known_source(store: AnomalyStore):
    with pytest.raises(ValueError, match=r"^source: "):
        store.add([_record(source="batch")])
