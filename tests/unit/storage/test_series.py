from libs.storage.series import SeriesCatalog, SeriesKey, series_id


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
