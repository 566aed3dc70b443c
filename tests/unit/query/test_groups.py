"""QueryRouter's series selection and grouping (vectorised over the catalog) against a brute-force
grouping of the same random label sets: same series, same group numbers, same keys."""

from __future__ import annotations

import re

import numpy as np
import pytest

from libs.cache import TtlCache
from libs.errors import InvalidArgument
from libs.storage import AcceptedSeries
from libs.storage.keys import SeriesKey, series_id
from services.query_router.core import Limits, QueryRouter
from services.query_router.spec import LabelMatch
from tests.helpers import opened_store

METRICS = ("m0", "m1", "m2")
LABELS = {"sim": [f"s{i}" for i in range(40)], "svc": [f"v{i}" for i in range(6)], "zone": ["a", "b", "c"]}


@pytest.fixture
async def store(tmp_path):
    store = opened_store(tmp_path)
    yield store
    await store.close()


def _random_keys(rng: np.random.Generator, count: int) -> list[SeriesKey]:
    keys = set()
    while len(keys) < count:
        labels = {k: str(rng.choice(values)) for k, values in LABELS.items() if rng.random() < 0.7}
        keys.add(SeriesKey.of(str(rng.choice(METRICS)), labels))
    return sorted(keys)


def _matches(labels: dict[str, str], f: LabelMatch) -> bool:
    actual = labels.get(f.label, "")  # a missing label equals "", as in PromQL
    if f.op == "=":
        return actual == f.values[0]
    if f.op == "!=":
        return actual != f.values[0]
    if f.op == "in":
        return actual in f.values
    return re.fullmatch(f.values[0], actual) is not None


def _brute_force(every_series, metrics, filters, group_by, limit):
    """(series id, group number, group key) of each chosen series, by the definition;
    `every_series` is (id, metric, labels) sorted by id."""
    numbers: dict[tuple[str, tuple[str, ...]], int] = {}
    rows = []
    for sid, metric, labels in every_series:
        if metric not in metrics or not all(_matches(labels, f) for f in filters):
            continue
        group = (metric, tuple(labels.get(label, "") for label in group_by))
        rows.append((sid, numbers.setdefault(group, len(numbers)), group))
    kept = set(sorted(numbers)[:limit] if limit else numbers)
    return [row for row in rows if row[2] in kept], list(numbers)


def _random_filters(rng: np.random.Generator) -> list[LabelMatch]:
    filters = []
    for _ in range(rng.integers(0, 3)):
        label = str(rng.choice([*LABELS, "absent"]))
        values = [*LABELS.get(label, ["x"]), ""]
        op = str(rng.choice(["=", "!=", "in", "regex"]))
        if op == "in":
            picked = tuple(str(v) for v in rng.choice(values, size=min(3, len(values)), replace=False))
        elif op == "regex":
            picked = (str(rng.choice(["s1.*", "v[0-2]", "a|b", ".*", ""])),)
        else:
            picked = (str(rng.choice(values)),)
        filters.append(LabelMatch(label, op, picked))
    return filters


async def test_grouping_equals_a_brute_force_grouping_of_random_label_sets(store):
    rng = np.random.default_rng(11)
    keys = _random_keys(rng, 3000)
    ts = np.array([1_767_225_600_000], dtype=np.int64)
    await store.ingest("default", "ds", [AcceptedSeries(k, ts, np.ones(1)) for k in keys])
    every_series = sorted((series_id(k.metric, k.labels), k.metric, k.label_map) for k in keys)
    router = QueryRouter(store, TtlCache(), Limits(max_series=10**6))
    snapshot = store.snapshot("default", "ds")
    checked_groups = 0
    for case in range(120):
        metrics = tuple(str(m) for m in rng.choice(METRICS, size=rng.integers(1, 4), replace=False))
        filters = _random_filters(rng)
        group_by = tuple(str(g) for g in rng.permutation(list(LABELS))[: rng.integers(0, 4)])
        limit = int(rng.choice([0, 1, 5]))
        groups = router._groups(snapshot, metrics, filters, group_by, limit)
        rows, numbers = _brute_force(every_series, metrics, filters, group_by, limit)
        got = list(
            zip(
                groups.selection["series_id"].to_pylist(),
                groups.selection["gid"].to_pylist(),
                [groups.keys[g] for g in groups.selection["gid"].to_pylist()],
                strict=True,
            )
        )
        assert got == rows, (case, metrics, filters, group_by, limit)
        assert groups.keys == numbers, (case, metrics, filters, group_by, limit)
        checked_groups += len(numbers)
    assert checked_groups > 1000  # the random cases do select and group many series


async def test_more_groups_than_max_series_without_a_limit_is_refused(store):
    keys = [SeriesKey.of("m", {"sim": f"s{i}"}) for i in range(30)]
    ts = np.array([1_767_225_600_000], dtype=np.int64)
    await store.ingest("default", "ds", [AcceptedSeries(k, ts, np.ones(1)) for k in keys])
    router = QueryRouter(store, TtlCache(), Limits(max_series=20))
    snapshot = store.snapshot("default", "ds")
    with pytest.raises(InvalidArgument) as caught:
        router._groups(snapshot, ("m",), [], ("sim",), 0)
    assert caught.value.field == "limit"
    assert len(router._groups(snapshot, ("m",), [], ("sim",), 20).keys) == 30
    assert len(router._groups(snapshot, ("m",), [], (), 0).keys) == 1
    with pytest.raises(InvalidArgument) as caught:
        router._groups(snapshot, ("m",), [], ("nope",), 0)
    assert caught.value.field == "group_by[0]"
