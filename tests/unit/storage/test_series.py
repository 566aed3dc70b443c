import re
import tracemalloc

import numpy as np

from libs.storage.keys import SeriesKey, series_id
from libs.storage.series import SeriesCatalog


def _catalog() -> SeriesCatalog:
    catalog = SeriesCatalog()
    for metric, labels in [
        ("cpu", {"host": "a", "region": "eu"}),
        ("cpu", {"host": "b", "region": "us"}),
        ("cpu", {"host": "c"}),
        ("mem", {"host": "a", "region": "eu"}),
    ]:
        catalog.add(series_id(metric, labels), SeriesKey.of(metric, labels))
    return catalog


def _hosts(catalog: SeriesCatalog, *matchers) -> list[str]:
    return sorted(catalog.by_id[s].label_map["host"] for s in catalog.select(["cpu"], matchers))


def test_series_ids_are_stable_and_label_order_free():
    assert series_id("cpu", {"a": "1", "b": "2"}) == series_id("cpu", {"b": "2", "a": "1"})
    assert series_id("cpu", {"a": "1"}) != series_id("cpu", {"a": "2"})
    assert 0 <= series_id("cpu", {"a": "1"}) < 2**64


def test_matchers_follow_promql():
    catalog = _catalog()
    assert _hosts(catalog) == ["a", "b", "c"]
    assert _hosts(catalog, ("region", "=", ("eu",))) == ["a"]
    assert _hosts(catalog, ("region", "!=", ("eu",))) == ["b", "c"]
    assert _hosts(catalog, ("region", "=", ("",))) == ["c"]  # a missing label equals ""
    assert _hosts(catalog, ("region", "in", ("eu", "us"))) == ["a", "b"]
    assert _hosts(catalog, ("host", "regex", ("a|b",))) == ["a", "b"]
    assert _hosts(catalog, ("host", "regex", ("a|",))) == ["a"]  # anchored: "" only for a missing label
    assert _hosts(catalog, ("region", "=", ("eu",)), ("host", "=", ("b",))) == []
    assert catalog.label_keys(catalog.by_id) == {"host", "region"}


# ---- the compact catalog and its label index -------------------------------------------------


def _random_catalog(rng, n: int) -> tuple[SeriesCatalog, dict[int, SeriesKey]]:
    """A catalog of `n` random series (some keys missing) and the same series as a plain dict."""
    catalog = SeriesCatalog()
    truth: dict[int, SeriesKey] = {}
    for i in range(n):
        labels = {"sim": f"s{rng.integers(0, n // 5 + 1)}", "svc": f"v{rng.integers(0, 7)}", "i": str(i)}
        if rng.random() < 0.3:
            del labels["svc"]
        if rng.random() < 0.2:
            labels["zone"] = f"z{rng.integers(0, 3)}"
        metric = f"m{rng.integers(0, 3)}"
        key = SeriesKey.of(metric, labels)
        sid = series_id(metric, labels)
        catalog.add(sid, key)
        catalog.add(sid, key)  # a series seen again is not added twice
        truth[sid] = key
    return catalog, truth


def _matches(actual: str, op: str, values: tuple[str, ...]) -> bool:
    """PromQL's matchers, written out independently of the catalog."""
    return {
        "=": lambda: actual == values[0],
        "!=": lambda: actual != values[0],
        "in": lambda: actual in values,
        "regex": lambda: re.fullmatch(values[0], actual) is not None,
    }[op]()


def _brute_force(truth: dict[int, SeriesKey], metrics, matchers) -> list[int]:
    chosen = []
    for sid, key in truth.items():
        labels = key.label_map
        if key.metric in metrics and all(_matches(labels.get(k, ""), op, vs) for k, op, vs in matchers):
            chosen.append(sid)
    return sorted(chosen)


def _random_matchers(rng):
    matchers = []
    for _ in range(rng.integers(0, 3)):
        label = ["sim", "svc", "zone", "nope"][rng.integers(0, 4)]
        value = f"{label[0]}{rng.integers(0, 8)}" if label != "svc" else f"v{rng.integers(0, 8)}"
        op = ["=", "!=", "in", "regex"][rng.integers(0, 4)]
        if op == "in":
            matchers.append((label, op, (value, f"v{rng.integers(0, 8)}")))
        elif op == "regex":
            matchers.append((label, op, (["v[0-3]", "s1.*", "z1|", ".*"][rng.integers(0, 4)],)))
        else:
            matchers.append((label, op, (value if rng.random() < 0.9 else "",)))
    return matchers


def test_lookup_by_label_equals_a_brute_force_scan():
    rng = np.random.default_rng(7)
    # 5,000 series: the index is rebuilt several times, so lookups mix indexed rows and the tail.
    catalog, truth = _random_catalog(rng, 5_000)
    assert len(catalog) == len(truth)
    for _ in range(300):
        metrics = [f"m{m}" for m in rng.choice(4, size=rng.integers(1, 3), replace=False)]
        matchers = _random_matchers(rng)
        assert catalog.select(metrics, matchers) == _brute_force(truth, metrics, matchers), (
            metrics,
            matchers,
        )


def test_keys_views_and_groups_answer_what_was_added():
    rng = np.random.default_rng(11)
    catalog, truth = _random_catalog(rng, 3_000)
    assert dict(catalog.by_id) == truth
    assert catalog.by_id == truth
    assert all(catalog.key(sid) == key for sid, key in truth.items())
    assert catalog.by_metric == {
        m: {sid for sid, k in truth.items() if k.metric == m} for m in {k.metric for k in truth.values()}
    }
    svc = catalog.label_values["svc"]
    assert {v: svc[v] for v in svc} == {
        v: {sid for sid, k in truth.items() if k.label_map.get("svc") == v}
        for v in {k.label_map["svc"] for k in truth.values() if "svc" in k.label_map}
    }
    assert catalog.cardinality("svc") == len(svc) and catalog.cardinality("nope") == 0
    assert catalog.label_names() == ["i", "sim", "svc", "zone"]
    assert catalog.series_per_metric() == {m: len(s) for m, s in catalog.by_metric.items()}
    sids = np.array(sorted(truth), dtype=np.uint64)
    gids, keys = catalog.groups(sids, ("svc",))
    want = [(truth[int(s)].metric, (truth[int(s)].label_map.get("svc", ""),)) for s in sids]
    assert [keys[g] for g in gids] == want
    assert len(keys) == len(set(want))
    assert catalog.rows_of(np.array([sids[0], 12345], dtype=np.uint64))[1] == -1


def _bytes_per_series(n: int) -> float:
    """Memory the catalog holds per series for `n` churning series (10 per simulation)."""
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    catalog = SeriesCatalog()
    for i in range(n):
        labels = {"simulation_id": f"sim-{i // 10:08d}", "service_name": f"svc-{i % 10}"}
        catalog.add(series_id("load", labels), SeriesKey.of("load", labels), saved=True)
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    assert len(catalog) == n
    return held / n


def test_memory_per_series_is_bounded_by_a_constant():
    small, large = _bytes_per_series(10_000), _bytes_per_series(100_000)
    # The per-series cost does not grow with the catalog (doubling capacities can add up to 2x),
    # and stays far below a dict-and-set catalog's ~1.5 KB per series.
    assert large <= 1.5 * small
    assert large < 300, large


def test_the_arrow_export_equals_the_keys():
    rng = np.random.default_rng(5)
    catalog, truth = _random_catalog(rng, 2_000)
    ids = catalog.ids().tolist()
    keys = ["i", "nope", "sim", "svc", "zone"]
    struct = catalog.arrow(keys).to_pylist()
    assert [r["series_id"] for r in struct] == ids
    assert [r["metric"] for r in struct] == [truth[sid].metric for sid in ids]
    assert [r["labels"] for r in struct] == [{k: truth[sid].label_map.get(k) for k in keys} for sid in ids]
    as_map = catalog.arrow(None).to_pylist()
    assert [r["labels"] for r in as_map] == [list(truth[sid].labels) for sid in ids]
    assert SeriesCatalog().arrow([]).to_pylist() == []
    # Some rows, in any order, repeated: the same answers for those rows.
    rows = rng.choice(len(ids), size=300, replace=True)
    picked = [ids[r] for r in rows.tolist()]
    some = catalog.arrow(keys, rows).to_pylist()
    assert [r["series_id"] for r in some] == picked
    assert [r["labels"] for r in some] == [{k: truth[sid].label_map.get(k) for k in keys} for sid in picked]
    some_map = catalog.arrow(None, rows).to_pylist()
    assert [(r["metric"], r["labels"]) for r in some_map] == [
        (truth[sid].metric, list(truth[sid].labels)) for sid in picked
    ]
    assert catalog.arrow(None, rows[:0]).to_pylist() == []


def _labels(b: int, i: int) -> dict[str, str]:
    base = {"sim": f"s{(b * 400 + i) // 3}"}
    if b % 3 == 0:
        return base  # one shape for the whole batch
    if b % 3 == 1:
        return {**base, **({f"extra{b % 4}": str(i)} if i % 4 == 0 else {})}  # one or two labels
    return {**base, ("alpha" if i % 2 else "zeta"): str(i)}  # two labels each, named differently


def test_add_many_gives_the_rows_add_gives_one_by_one():
    # Batches of one label shape, of mixed shapes, of equal lengths under other names; new label
    # keys mid-batch, a new series named twice, known series again; enough batches to pass several
    # index rebuilds.
    one_by_one, batched = SeriesCatalog(), SeriesCatalog()
    for b in range(12):
        keys = [SeriesKey.of("cpu" if i % 5 else "mem", _labels(b, i)) for i in range(400)]
        keys += [*keys[:50], keys[7]]  # repeats within the batch
        sids = np.array([series_id(k.metric, k.labels) for k in keys], dtype=np.uint64)
        expected = [one_by_one.add(int(s), k) for s, k in zip(sids, keys, strict=True)]
        assert batched.add_many(sids, keys).tolist() == expected
        assert batched.add_many(sids[:100], keys[:100]).tolist() == expected[:100]  # all known now
    assert len(batched) == len(one_by_one) > 3_000
    assert batched.keys_of(batched.ids()) == one_by_one.keys_of(one_by_one.ids())
    assert batched.unsaved == one_by_one.unsaved
    matchers = [("extra1", "=", ("0",)), ("sim", "regex", ("s1.*",)), ("extra3", "!=", ("",))]
    for matcher in [*matchers, ("alpha", "=", ("3",)), ("zeta", "!=", ("",))]:
        assert batched.select(["cpu", "mem"], [matcher]) == one_by_one.select(["cpu", "mem"], [matcher])
