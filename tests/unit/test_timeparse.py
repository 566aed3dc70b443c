import pytest

from libs.errors import InvalidArgument
from libs.timeparse import (
    format_time_ms,
    parse_duration_ms,
    parse_interval_ms,
    parse_iso_duration_ms,
    parse_time_ms,
)


@pytest.mark.parametrize(
    ("text", "ms"),
    [
        ("1h", 3_600_000),
        ("15m", 900_000),
        ("90s", 90_000),
        ("1h30m", 5_400_000),
        ("7d", 604_800_000),
        ("250ms", 250),
        ("PT5M", 300_000),
        ("P1D", 86_400_000),
    ],
)
def test_durations(text, ms):
    assert parse_duration_ms(text, "time_range") == ms


@pytest.mark.parametrize("text", ["", "1", "h", "1x", "-1h", "1h-", "0s", "P1M", "PT"])
def test_bad_durations_name_the_field(text):
    with pytest.raises(InvalidArgument) as err:
        parse_duration_ms(text, "time_range")
    assert err.value.field == "time_range"
    assert err.value.message.startswith("time_range: ")


def test_iso_duration_with_fraction_and_weeks():
    assert parse_iso_duration_ms("PT1.5S", "granularity") == 1_500
    assert parse_iso_duration_ms("P1W", "granularity") == 604_800_000


def test_times_and_intervals():
    assert parse_time_ms("2024-01-01", "start") == 1_704_067_200_000
    assert parse_time_ms("2024-01-01T00:00:00Z", "start") == 1_704_067_200_000
    assert parse_time_ms("2024-01-01T01:00:00+01:00", "start") == 1_704_067_200_000
    assert parse_interval_ms("2024-01-01/2024-01-02", "intervals[0]") == (
        1_704_067_200_000,
        1_704_153_600_000,
    )
    assert parse_interval_ms("2024-01-01/PT1H", "intervals[0]") == (1_704_067_200_000, 1_704_070_800_000)
    assert format_time_ms(1_704_067_200_000) == "2024-01-01T00:00:00.000Z"


@pytest.mark.parametrize("text", ["2024-01-02/2024-01-01", "2024-01-01", "yesterday/today"])
def test_bad_intervals(text):
    with pytest.raises(InvalidArgument) as err:
        parse_interval_ms(text, "intervals[0]")
    assert err.value.field == "intervals[0]"
