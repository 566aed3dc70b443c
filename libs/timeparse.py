"""Parsing of the time values users send: "1h" lookbacks, RFC 3339 times, ISO-8601 durations
and intervals. Each parser raises InvalidArgument naming the field."""

from __future__ import annotations

import math
import re
from datetime import UTC, datetime

from libs.errors import InvalidArgument

_UNIT_MS = {
    "ms": 1,
    "s": 1_000,
    "m": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 604_800_000,
    "y": 31_536_000_000,
}
_SHORT = re.compile(r"(\d+)(ms|s|m|h|d|w|y)")
_ISO_DURATION = re.compile(
    r"P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?"
)


def parse_duration_ms(text: str, field: str) -> int:
    """Parse "90s", "15m", "1h30m", "7d" (Prometheus style) or an ISO duration "PT5M" into ms."""
    value = text.strip()
    if not value:
        raise InvalidArgument("must not be empty", field)
    if value.startswith("P"):
        return parse_iso_duration_ms(value, field)
    pos, total = 0, 0
    for match in _SHORT.finditer(value):
        if match.start() != pos:
            break
        total += int(match.group(1)) * _UNIT_MS[match.group(2)]
        pos = match.end()
    if pos != len(value) or total <= 0:
        raise InvalidArgument(
            f"{text!r} is not a duration; use a number and a unit (ms, s, m, h, d, w, y) such as '1h'",
            field,
        )
    return total


def parse_iso_duration_ms(text: str, field: str) -> int:
    """Parse a fixed-length ISO-8601 duration (weeks, days, hours, minutes, seconds) into ms."""
    match = _ISO_DURATION.fullmatch(text.strip())
    if not match or not any(match.groupdict().values()):
        raise InvalidArgument(
            f"{text!r} is not a fixed ISO-8601 duration such as 'PT5M' or 'P1D' "
            "(months and years have no fixed length: use the granularity names 'month' or 'year')",
            field,
        )
    parts = {k: float(v) if v else 0.0 for k, v in match.groupdict().items()}
    ms = (
        parts["w"] * _UNIT_MS["w"]
        + parts["d"] * _UNIT_MS["d"]
        + parts["h"] * _UNIT_MS["h"]
        + parts["m"] * _UNIT_MS["m"]
        + parts["s"] * _UNIT_MS["s"]
    )
    if ms <= 0:
        raise InvalidArgument(f"{text!r} is a zero duration", field)
    return int(ms)


def parse_time_ms(text: str, field: str) -> int:
    """Parse an RFC 3339 / ISO-8601 time (a date alone means midnight UTC) into epoch ms.

    A time without an offset is taken as UTC.
    """
    value = text.strip()
    if not value:
        raise InvalidArgument("must not be empty", field)
    try:
        parsed = datetime.fromisoformat(value.replace("z", "Z"))
    except ValueError:
        raise InvalidArgument(
            f"{text!r} is not an RFC 3339 time such as '2026-11-28T08:00:00Z'", field
        ) from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    # floor, not truncation: a time a fraction of a millisecond before 1970 stays negative
    return math.floor(parsed.timestamp() * 1000)


def parse_interval_ms(text: str, field: str) -> tuple[int, int]:
    """Parse a Druid/ISO-8601 interval "start/end" or "start/PT1H" into [start, end) epoch ms."""
    start_text, sep, end_text = text.partition("/")
    if not sep:
        raise InvalidArgument(
            f"{text!r} is not an interval 'start/end' such as '2024-01-01/2024-01-02'", field
        )
    start = parse_time_ms(start_text, field)
    end = (
        start + parse_iso_duration_ms(end_text, field)
        if end_text.startswith("P")
        else parse_time_ms(end_text, field)
    )
    if end <= start:
        raise InvalidArgument(f"interval {text!r} ends before it starts", field)
    return start, end


def format_time_ms(ms: int) -> str:
    """Format epoch ms as RFC 3339 UTC with millisecond precision."""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


NICE_STEPS_MS = (
    1_000,
    5_000,
    10_000,
    15_000,
    30_000,
    60_000,
    120_000,
    300_000,
    600_000,
    900_000,
    1_800_000,
    3_600_000,
    7_200_000,
    10_800_000,
    21_600_000,
    43_200_000,
    86_400_000,
    604_800_000,
)
"""Round bucket widths, from a second to a week."""


def round_step_ms(range_ms: int, target_points: int) -> int:
    """The smallest round step giving at most `target_points` buckets over `range_ms`."""
    for step in NICE_STEPS_MS:
        if range_ms / step <= target_points:
            return step
    return NICE_STEPS_MS[-1]
