"""REST ingest through the real Envoy: the body passes through the gateway untouched and the realtime
service parses it. Both body forms store the same points, usual bodies are read by the compiled
parser (as Envoy sends them), a bad body is a 400 naming the field and stores nothing, and
acknowledged points survive a SIGKILL of the service."""

from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.conftest import own_stack, stack_env
from tests.e2e.test_gateway import http
from tests.e2e.test_prometheus import EXPORT, get_text
from tests.helpers import descendants

HOSTS = ("h1", "h2", "h3")


def _series(now: int, metric: str = "rest_probe", points: int = 50) -> list[dict]:
    """Columnar series: one per host, `points` points a second apart ending at `now`."""
    ts = [now - 1000 * (points - 1 - i) for i in range(points)]
    return [
        {
            "name": metric,
            "labels": {"host": h},
            "timestamps_ms": ts,
            "values": [i * 1.5 + k for i in range(points)],
        }
        for k, h in enumerate(HOSTS)
    ]


def _rows(series: list[dict]) -> list[dict]:
    """The same points as rows, time-major, half with RFC 3339 times and int64-as-string epochs."""
    rows = []
    for j in range(len(series[0]["timestamps_ms"])):
        for s in series:
            ts = s["timestamps_ms"][j]
            when = (
                {
                    "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(ts // 1000))
                    + f".{ts % 1000:03d}Z"
                }
                if j % 2
                else {"timestamp_ms": str(ts)}
            )
            rows.append({"name": s["name"], "value": s["values"][j], "labels": s["labels"], **when})
    return rows


def _stored(stack, datasource: str) -> list[list]:
    body = {
        "sql": "SELECT metric, labels.host AS host, ts, value FROM metrics WHERE datasource = ? ORDER BY 1, 2, 3",
        "params": [datasource],
    }
    status, _, reply = http(stack, "POST", "/api/v1/query", json.dumps(body))
    assert status == 200, reply
    return reply["rows"]


def _expected(series: list[dict]) -> list[list]:
    return sorted(
        [s["name"], s["labels"]["host"], ts, v]
        for s in series
        for ts, v in zip(s["timestamps_ms"], s["values"], strict=True)
    )


def test_both_body_forms_store_the_same_points(stack):
    now = int(time.time() * 1000) // 1000 * 1000
    series = _series(now)
    status, _, reply = http(
        stack, "POST", "/api/v1/metrics/ingest", json.dumps({"datasource": "e2e_rest_cols", "series": series})
    )
    assert (status, reply) == (200, {"accepted": "150", "rejected": "0", "errors": []})
    status, _, reply = http(
        stack,
        "POST",
        "/api/v1/metrics/ingest",
        json.dumps({"datasource": "e2e_rest_rows", "points": _rows(series)}),
    )
    assert (status, reply) == (200, {"accepted": "150", "rejected": "0", "errors": []})

    columns, rows = _stored(stack, "e2e_rest_cols"), _stored(stack, "e2e_rest_rows")
    assert [r[1:] for r in columns] == [[h, ts, v] for _, h, ts, v in _expected(series)]
    assert rows == columns


def _parsed(stack) -> dict[str, float]:
    """analytics_ingest_parser_batches_total by parser, from the export through the gateway."""
    status, _, text = get_text(stack, EXPORT)
    assert status == 200, text
    counts = {"compiled": 0.0, "python": 0.0}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "analytics_ingest_parser_batches_total":
                counts[sample.labels["parser"]] += sample.value
    return counts


def test_usual_bodies_through_the_gateway_take_the_compiled_parser(stack):
    # Envoy's transcoder writes json_body twice (empty, then with the body): the fast path must
    # still read it, or every REST batch pays protobuf's parse and the Python path.
    now = int(time.time() * 1000) // 1000 * 1000
    series = _series(now, "parser_probe")
    usual_rows = [{**r, "timestamp_ms": int(r["timestamp_ms"])} for r in _rows(series) if "timestamp_ms" in r]
    bodies = [{"series": series}, {"points": usual_rows}, {"points": _rows(series)}]
    before = _parsed(stack)
    for body in bodies:
        status, _, reply = http(
            stack, "POST", "/api/v1/metrics/ingest", json.dumps({"datasource": "e2e_rest_parser", **body})
        )
        assert status == 200, reply
    after = _parsed(stack)
    # The third body has RFC 3339 times, which only the Python path reads.
    assert after["python"] - before["python"] == 1, (before, after)
    assert after["compiled"] - before["compiled"] >= 2, (before, after)


def test_proto3_json_spellings_the_transcoder_took_are_still_accepted(stack):
    # lowerCamelCase names, int64 and doubles as strings: what protobuf's own JSON printer writes.
    now = int(time.time() * 1000)
    body = {
        "datasource": "e2e_rest_camel",
        "series": [{"name": "m", "timestampsMs": [str(now - 1), str(now)], "values": ["1.5", 2]}],
        "points": [{"name": "m", "value": "NaN", "timestampMs": str(now - 2)}],
    }
    status, _, reply = http(stack, "POST", "/api/v1/metrics/ingest", json.dumps(body))
    assert status == 200, reply
    assert (reply["accepted"], reply["rejected"]) == ("2", "1")
    assert [e["field"] for e in reply["errors"]] == ["points[0].value"]
    assert [r[2:] for r in _stored(stack, "e2e_rest_camel")] == [[now - 1, 1.5], [now, 2.0]]


GOOD = '{"name": "m", "labels": {"host": "h1"}, "timestamps_ms": [NOW], "values": [1]}'
GOOD_ROW = '{"name": "m", "value": 1, "timestamp_ms": NOW}'


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # Each body starts with a good series or row: a 400 must not have stored it.
        ('{"series": [GOOD, {"name": "m", "timestamps_ms": [1], "values": [1]}', "body: is not valid JSON"),
        (
            '{"series": [GOOD, {"name": "m", "timestamps_ms": [1, 2], "values": [1, "x"]}]}',
            "series[1].values[1]: ",
        ),
        (
            '{"series": [GOOD, {"name": "m", "timestamps_ms": [1, true], "values": [1, 2]}]}',
            "series[1].timestamps_ms[1]: ",
        ),
        (
            '{"points": [GOOD_ROW, {"name": "m", "value": 1, "timestamp_ms": 1, "colour": "red"}]}',
            "points[1].colour: ",
        ),
        ('{"points": [GOOD_ROW], "extra": 1}', "extra: "),
        ('{"points": [GOOD_ROW], "json_body": {"data": "e30="}}', "json_body: "),
    ],
)
def test_a_bad_body_is_a_400_naming_the_field_and_stores_nothing(stack, body, expected):
    now = str(int(time.time() * 1000))
    body = body.replace("GOOD_ROW", GOOD_ROW).replace("GOOD", GOOD).replace("NOW", now)
    body = '{"datasource": "e2e_rest_bad", ' + body[1:]
    status, _, reply = http(stack, "POST", "/api/v1/metrics/ingest", body)
    assert status == 400, reply
    assert reply["message"].startswith(expected), reply
    status, _, meta = http(stack, "GET", "/api/v1/analytics/metadata/e2e_rest_bad")
    assert status == 404, meta


def _serve_all(launcher_pid: int) -> int:
    for pid in descendants(launcher_pid):
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        if b"serve" in cmdline and b"all" in cmdline:
            return pid
    raise AssertionError("no `serve all` process under the launcher")


def _multiprocessing_children(serve_pid: int, what: bytes = b"multiprocessing") -> set[int]:
    """Processes multiprocessing started under `serve_pid`: the workers parsing large REST bodies
    (`what`=b"spawn_main") and its resource tracker."""
    return {pid for pid in descendants(serve_pid) if what in Path(f"/proc/{pid}/cmdline").read_bytes()}


def test_acknowledged_rest_points_survive_sigkill_of_the_service(tmp_path):
    env = stack_env(tmp_path / "data", DEMO="0")
    now = int(time.time() * 1000) // 1000 * 1000
    series = _series(now, "crash_probe", points=200)
    # A body over INLINE_MAX_BYTES (64 KiB), which a worker process parses (INGEST_JSON_WORKERS=1).
    large = [{**s, "labels": {"host": f"{s['labels']['host']}-{k}"}} for k in range(40) for s in series[:1]]
    acknowledged = []
    with own_stack(env) as first:
        for i, s in enumerate(series):
            body = (
                {"datasource": "e2e_rest_crash", "series": [s]}
                if i % 2 == 0
                else {"datasource": "e2e_rest_crash", "points": _rows([s])}
            )
            status, _, reply = http(first, "POST", "/api/v1/metrics/ingest", json.dumps(body))
            assert (status, reply["accepted"]) == (200, "200"), reply
            acknowledged.append(s)
        body = json.dumps({"datasource": "e2e_rest_crash", "points": _rows(large)})
        assert len(body) > 64 * 1024
        status, _, reply = http(first, "POST", "/api/v1/metrics/ingest", body)
        assert (status, reply["accepted"]) == (200, str(40 * 200)), reply
        acknowledged += large
        serve = _serve_all(first.process.pid)
        assert len(_multiprocessing_children(serve, b"spawn_main")) == 1
        workers = _multiprocessing_children(serve)
        # No SIGTERM, no flush: only the WAL holds the points. The launcher then stops Envoy and exits.
        os.kill(serve, signal.SIGKILL)
        first.process.wait(timeout=60)
        # The worker (and multiprocessing's resource tracker) do not outlive the process they served.
        deadline = time.monotonic() + 10
        while any(Path(f"/proc/{pid}").exists() for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    with own_stack(env) as second:
        assert _stored(second, "e2e_rest_crash") == _expected(acknowledged)
