"""Prometheus series selectors for `match[]`: what parses, what each matcher selects, and the
400 reasons (field `match[]`) for what does not."""

import pytest

from libs.errors import InvalidArgument
from services.monitoring.selectors import MAX_SELECTORS, parse_selector, parse_selectors

SERIES = {
    "cpu": {"__name__": "cpu_usage", "service_name": "auth-service", "host": "h1"},
    "cpu2": {"__name__": "cpu_usage", "service_name": "billing", "host": "h2"},
    "mem": {"__name__": "memory_usage", "service_name": "auth-service"},
    "dotted": {"__name__": "cpu.usage", "env": "prod"},
}


def selected(text: str) -> set[str]:
    selector = parse_selector(text)
    return {key for key, labels in SERIES.items() if selector.matches(labels)}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cpu_usage", {"cpu", "cpu2"}),
        ("cpu_usage{}", {"cpu", "cpu2"}),
        ('cpu_usage{service_name="auth-service"}', {"cpu"}),
        ('cpu_usage{service_name!="auth-service"}', {"cpu2"}),
        ('{service_name=~"auth.*"}', {"cpu", "mem"}),
        ('{service_name!~"auth.*", __name__=~".+"}', {"cpu2", "dotted"}),
        ('{__name__=~"cpu.*"}', {"cpu", "cpu2", "dotted"}),
        # Regular expressions are anchored at both ends, as in Prometheus.
        ('{__name__=~"usage"}', set()),
        ('{__name__=~"memory|cpu_usage"}', {"cpu", "cpu2"}),
        ('{__name__=~"(?i)CPU_USAGE"}', {"cpu", "cpu2"}),
        # A missing label is "": `host=""` selects the series without one.
        ('{host="", __name__=~".+"}', {"mem", "dotted"}),
        ('{host!=""}', {"cpu", "cpu2"}),
        # Prometheus 3's quoted metric name, and whitespace and a trailing comma anywhere.
        ('{"cpu.usage"}', {"dotted"}),
        ('{ "cpu.usage" , env = "prod" , }', {"dotted"}),
        (" cpu_usage { host = 'h2' } ", {"cpu2"}),
        ("cpu_usage{host=`h1`}", {"cpu"}),
    ],
)
def test_matchers_select_like_prometheus(text, expected):
    assert selected(text) == expected


def test_string_escapes_are_go_escapes_except_in_backquotes():
    assert parse_selector(r'x{a="q\"uote\n\x41\u00e9\101"}').matchers[1].value == 'q"uote\nAé\x41'
    assert parse_selector(r"x{a=`raw\n`}").matchers[1].value == r"raw\n"


def test_equal_values_say_which_datasource_a_selector_pins():
    assert parse_selector('cpu{datasource="sensors"}').equal_values("datasource") == {"sensors"}
    assert parse_selector('cpu{datasource=~"s.*"}').equal_values("datasource") is None


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "expected a metric name or '{'"),
        ("cpu{", "unterminated label matchers"),
        ('cpu{a="x"', "unterminated label matchers"),
        ('cpu{a=="x"}', "expected a quoted string"),
        ("cpu{a=x}", "expected a quoted string"),
        ('cpu{a~"x"}', "expected an operator"),
        ('cpu{a="x" b="y"}', "expected ',' or '}'"),
        ('cpu{a="x}', "unterminated quoted string"),
        (r'cpu{a="\q"}', "unknown escape sequence \\q"),
        ('cpu{a=~"("}', "is not a valid regular expression for a"),
        ('cpu{__name__="mem"}', "the metric name is given twice"),
        ('{"a", "b"}', "the metric name is given twice"),
        ("cpu mem", "unexpected 'm' after the selector"),
        ("1cpu", "expected a metric name or '{'"),
        ('{a=""}', "at least one matcher that does not match the empty string"),
        ('{a=~".*", b!="x"}', "at least one matcher that does not match the empty string"),
    ],
)
def test_a_bad_selector_is_refused_naming_match_and_the_reason(text, reason):
    with pytest.raises(InvalidArgument) as err:
        parse_selector(text)
    assert err.value.field == "match[]"
    assert reason in err.value.reason
    assert repr(text) in err.value.reason


def test_the_number_and_size_of_selectors_are_bounded():
    assert len(parse_selectors(["a"] * MAX_SELECTORS)) == MAX_SELECTORS
    with pytest.raises(InvalidArgument, match="at most 100 selectors"):
        parse_selectors(["a"] * (MAX_SELECTORS + 1))
    with pytest.raises(InvalidArgument, match="at most 4096 characters"):
        parse_selector("a" * 5000)
