"""The stream hub on the in-process bus: channels, frame shapes, overflow to lagged to closed,
replay with since and gaps, the stream types' filters. Existence checks that would ask another
service go to an address nothing serves (a missing unix socket): "cannot check, accept"."""

from __future__ import annotations

import asyncio
import time

import pytest
from google.protobuf import json_format

from libs.bus import InProcessBus
from libs.config import load_settings
from libs.errors import InvalidArgument
from libs.selfmetrics import SelfMetrics
from libs.streams import Cursor, StreamHub, SubscriptionClosed, parse_subscription
from libs.streams.frames import Frame
from libs.streams.subscriber import CLOSE_GOING_AWAY, CLOSE_TOO_SLOW
from platformq.analytics.v1 import common_pb2, events_pb2
from platformq.analytics.v1 import realtime_service_pb2 as pb

NOWHERE = "unix:/nonexistent/streams-test.sock"


@pytest.fixture
async def hub(tmp_path):
    bus = InProcessBus()
    settings = load_settings(
        data_dir=tmp_path,
        ws_client_queue_frames=4,
        ws_client_max_dropped=10,
        stream_replay_frames=3,
        ws_heartbeat_seconds=5,
    )
    streams = StreamHub(settings, bus, SelfMetrics(), lambda _: NOWHERE)
    yield streams, bus
    await streams.close()
    await bus.close()


def spec(stream_type: str, stream_id: str, **fields):
    return parse_subscription(pb.SubscribeRequest(stream_type=stream_type, stream_id=stream_id, **fields))


def batch(*series: tuple[str, dict, list[int], list[float]], datasource: str = "platform_metrics"):
    event = events_pb2.MetricsBatchEvent(
        tenant="default", datasource=datasource, source=datasource, batch_id="b"
    )
    for name, labels, ts, values in series:
        event.series.append(common_pb2.Series(name=name, labels=labels, timestamps_ms=ts, values=values))
    return event


async def frame_of(subscriber, timeout: float = 5) -> Frame:
    return await asyncio.wait_for(subscriber.next(), timeout)


def sample(streams: StreamHub, name: str, **labels: str) -> float | None:
    return streams.metrics.registry.get_sample_value(name, labels)


def same_as_proto_json(frame: Frame) -> bool:
    """The hand-built body is exactly what MessageToDict prints for the frame's message."""
    return frame.body == json_format.MessageToDict(frame.message(), preserving_proto_field_name=True)


async def test_subscribers_of_one_key_share_a_channel_and_the_same_frame(hub):
    streams, bus = hub
    a = await streams.subscribe(spec("metrics", "cpu", labels={"service_name": "auth"}))
    b = await streams.subscribe(spec("metrics", "cpu", labels={"service_name": "auth"}))
    other = await streams.subscribe(spec("metrics", "cpu", labels={"service_name": "billing"}))
    assert len(streams.channels) == 2
    for subscriber in (a, b, other):
        assert (await frame_of(subscriber)).kind == "hello"
    await bus.publish(
        "simulation.metrics.platform_metrics",
        batch(
            ("cpu", {"service_name": "auth"}, [1000, 2000], [1.5, 0.0]),
            ("cpu", {"service_name": "db"}, [1000], [9.0]),
            ("mem", {"service_name": "auth"}, [1000], [7.0]),
        ),
    )
    first, second = await frame_of(a), await frame_of(b)
    assert first is second  # built and encoded once for the channel
    assert first.body["series"] == [
        {
            "metric": "cpu",
            "group": {"service_name": "auth"},
            "points": [{"timestamp_ms": "1000", "value": 1.5}, {"timestamp_ms": "2000"}],
        }
    ]
    assert same_as_proto_json(first)
    assert other.idle  # billing's filter matched nothing (the batch was handled for every channel at once)


async def test_hello_carries_the_understood_request_and_every_frame_matches_the_proto_json(hub):
    streams, bus = hub
    sub = await streams.subscribe(spec("metrics", "cpu", step="10s"))
    hello = await frame_of(sub)
    assert hello.body["request"] == {
        "stream_type": "metrics",
        "stream_id": "cpu",
        "step": "10s",
        "aggregation": "avg",
        "datasource": "platform_metrics",
    }
    assert hello.body["heartbeat_seconds"] == 5 and Cursor.parse(hello.body["cursor"]).epoch == streams.epoch
    assert same_as_proto_json(hello)
    t0 = 1_795_000_000_000
    await bus.publish(
        "simulation.metrics.platform_metrics",
        batch(("cpu", {"host": "h1"}, [t0 + 1_000, t0 + 5_000, t0 + 12_000], [1, 3, 8])),
    )
    bucket = await frame_of(sub)  # the bucket at t0, closed by the point at t0 + 12 s
    assert bucket.body["series"] == [
        {
            "metric": "cpu",
            "group": {"host": "h1"},
            "aggregation": "avg",
            "points": [{"timestamp_ms": str(t0), "value": 2.0}],
        }
    ]
    assert same_as_proto_json(bucket)


async def test_a_slow_subscriber_is_dropped_then_lagged_then_closed_and_never_delays_others(hub):
    streams, _ = hub
    slow = await streams.subscribe(spec("anomalies", "all"))
    fast = await streams.subscribe(spec("anomalies", "all"))
    channel = streams.channels[slow.spec.key]
    assert (await frame_of(slow)).kind == "hello" and (await frame_of(fast)).kind == "hello"
    for i in range(6):  # 4 fit, 2 dropped
        channel.publish(channel.data(anomaly={"metric": f"m{i}"}), 0.0)
        assert (await frame_of(fast)).body["anomaly"] == {"metric": f"m{i}"}
    assert slow.dropped == 2
    got = [await frame_of(slow) for _ in range(5)]
    assert [f.body.get("anomaly", {}).get("metric") for f in got[:4]] == ["m0", "m1", "m2", "m3"]
    assert got[4].body["type"] == "lagged" and got[4].body["dropped"] == "2" and same_as_proto_json(got[4])
    for i in range(4 + 10):  # fills the slow queue, then 10 drops in a row close it; fast keeps up
        channel.publish(channel.data(anomaly={"metric": f"n{i}"}), 0.0)
        assert (await frame_of(fast)).body["anomaly"] == {"metric": f"n{i}"}
    closing = await frame_of(slow)
    assert closing.kind == "closing" and closing.close_code == CLOSE_TOO_SLOW
    assert "10 frames dropped in a row" in closing.body["reason"]
    with pytest.raises(SubscriptionClosed):
        await slow.next()
    closed = sample(streams, "analytics_stream_clients_closed_total", reason="lagged")
    dropped = sample(streams, "analytics_stream_frames_dropped_total", stream_type="anomalies")
    assert (closed, dropped) == (1, 12)


async def test_a_lagged_notice_marks_the_hole_before_the_next_frame(hub):
    streams, _ = hub
    sub = await streams.subscribe(spec("alerts", "all"))
    channel = streams.channels[sub.spec.key]
    await frame_of(sub)
    for i in range(5):
        channel.publish(channel.data(alert={"name": f"a{i}"}), 0.0)
    assert (await frame_of(sub)).body["alert"] == {"name": "a0"}
    channel.publish(channel.data(alert={"name": "a5"}), 0.0)
    kinds = [(await frame_of(sub)).body for _ in range(5)]
    assert [b.get("alert", {}).get("name", b["type"]) for b in kinds] == ["a1", "a2", "a3", "lagged", "a5"]


async def test_a_subscriber_far_behind_is_closed(hub):
    streams, _ = hub
    sub = await streams.subscribe(spec("alerts", "all"))
    channel = streams.channels[sub.spec.key]
    for i in range(3):
        channel.publish(channel.data(alert={"name": f"a{i}"}), 0.0)
    # The queue is full and its oldest frame is an hour old at `now`.
    sub.offer(Frame(channel.data(alert={"name": "late"})), now=time.monotonic() + 3600)
    frames = [await frame_of(sub)]
    assert frames[0].kind == "closing" and "behind the stream" in frames[0].body["reason"]


async def test_resume_with_since_gets_what_was_missed_then_live_frames(hub):
    streams, _ = hub
    first = await streams.subscribe(spec("alerts", "all"))
    channel = streams.channels[first.spec.key]
    await frame_of(first)
    channel.publish(channel.data(alert={"name": "a0"}), 0.0)
    cursor = (await frame_of(first)).body["cursor"]
    streams.unsubscribe(first)
    channel.publish(channel.data(alert={"name": "a1"}), 0.0)
    channel.publish(channel.data(alert={"name": "a2"}), 0.0)
    resumed = await streams.subscribe(spec("alerts", "all", since=cursor))
    assert streams.channels[resumed.spec.key] is channel  # kept for the replay window
    assert (await frame_of(resumed)).kind == "hello"
    assert [(await frame_of(resumed)).body["alert"]["name"] for _ in range(2)] == ["a1", "a2"]
    channel.publish(channel.data(alert={"name": "a3"}), 0.0)
    assert (await frame_of(resumed)).body["alert"]["name"] == "a3"


async def test_a_cursor_older_than_the_window_or_from_another_instance_gets_a_gap_first(hub):
    streams, _ = hub
    sub = await streams.subscribe(spec("alerts", "all"))
    channel = streams.channels[sub.spec.key]
    channel.publish(channel.data(alert={"name": "a0"}), 0.0)
    old = channel.window[0].body["cursor"]
    for i in range(1, 5):  # the window keeps 3
        channel.publish(channel.data(alert={"name": f"a{i}"}), 0.0)
    late = await streams.subscribe(spec("alerts", "all", since=old))
    frames = [await frame_of(late) for _ in range(5)]
    assert [f.kind for f in frames] == ["hello", "gap", "data", "data", "data"]
    assert "older than the replay window" in frames[1].body["reason"] and same_as_proto_json(frames[1])
    assert [f.body["alert"]["name"] for f in frames[2:]] == ["a2", "a3", "a4"]
    stranger = await streams.subscribe(spec("alerts", "all", since=str(Cursor("0" * 12, 3))))
    frames = [await frame_of(stranger) for _ in range(2)]
    assert frames[1].kind == "gap" and "another server instance" in frames[1].body["reason"]


def test_a_cursor_this_service_did_not_give_is_refused_naming_since():
    with pytest.raises(InvalidArgument, match="since: 'yesterday' is not a cursor"):
        spec("metrics", "cpu", since="yesterday")


async def test_anomaly_streams_follow_a_simulation_a_datasource_or_all(hub):
    streams, bus = hub
    by_sim = await streams.subscribe(spec("anomalies", "sim-1"))
    by_source = await streams.subscribe(spec("anomalies", "lab"))
    everything = await streams.subscribe(spec("anomalies", "all", labels={"host": "h1"}))
    for sub in (by_sim, by_source, everything):
        await frame_of(sub)
    event = events_pb2.AnomalyEvent(
        metric="cpu",
        datasource="platform_metrics",
        labels={"simulation_id": "sim-1", "host": "h1"},
        score=0.97,
    )
    await bus.publish("anomalies.platform_metrics", event)
    await bus.publish("anomalies.lab", events_pb2.AnomalyEvent(metric="temp", datasource="lab", score=0.9))
    frame = await frame_of(by_sim)
    assert frame.body["anomaly"]["labels"] == {"simulation_id": "sim-1", "host": "h1"} and same_as_proto_json(
        frame
    )
    assert (await frame_of(by_source)).body["anomaly"]["metric"] == "temp"
    assert (await frame_of(everything)).body["anomaly"]["metric"] == "cpu"
    assert everything.idle  # the lab anomaly has no host=h1


async def test_dashboard_streams_match_the_id_or_the_type_and_alert_streams_the_name(hub):
    streams, bus = hub
    dashboard = await streams.subscribe(spec("dashboard", "service-metrics"))
    alerts = await streams.subscribe(spec("alerts", "SlowBatchQuery"))
    await frame_of(dashboard), await frame_of(alerts)
    panel = common_pb2.Panel(
        title="latency", metric="latency", series=[common_pb2.SeriesResult(metric="latency")]
    )
    await bus.publish(
        "dashboard.updates.other", events_pb2.DashboardUpdateEvent(dashboard_id="x", dashboard_type="y")
    )
    await bus.publish(
        "dashboard.updates.d1",
        events_pb2.DashboardUpdateEvent(dashboard_id="d1", dashboard_type="service-metrics", panels=[panel]),
    )
    await bus.publish("alerts.CacheHitRateLow", events_pb2.AlertEvent(name="CacheHitRateLow", state="firing"))
    await bus.publish("alerts.SlowBatchQuery", events_pb2.AlertEvent(name="SlowBatchQuery", state="firing"))
    frame = await frame_of(dashboard)
    assert frame.body["panels"][0]["title"] == "latency" and same_as_proto_json(frame)
    frame = await frame_of(alerts)
    assert frame.body["alert"] == {"name": "SlowBatchQuery", "state": "firing"} and same_as_proto_json(frame)


async def test_closing_the_hub_closes_every_subscriber_with_a_reason(hub):
    streams, _ = hub
    sub = await streams.subscribe(spec("metrics", "cpu"))
    await frame_of(sub)
    await streams.close()
    closing = await frame_of(sub)
    assert (closing.kind, closing.close_code) == ("closing", CLOSE_GOING_AWAY)
    assert "shutting down" in closing.body["reason"]


async def test_subscribers_are_counted(hub):
    streams, _ = hub
    subs = [await streams.subscribe(spec("metrics", "cpu")) for _ in range(3)]
    assert sample(streams, "analytics_stream_subscribers", stream_type="metrics") == 3
    for sub in subs:
        streams.unsubscribe(sub)
    assert sample(streams, "analytics_stream_subscribers", stream_type="metrics") == 0


async def test_a_quiet_stream_gets_heartbeats(tmp_path):
    bus = InProcessBus()
    streams = StreamHub(load_settings(data_dir=tmp_path, ws_heartbeat_seconds=0.1), bus, SelfMetrics(), str)
    sub = await streams.subscribe(spec("alerts", "all"))
    try:
        assert (await frame_of(sub)).kind == "hello"
        beat = await frame_of(sub)
        assert beat.kind == "heartbeat" and same_as_proto_json(beat)
    finally:
        await streams.close()
        await bus.close()


async def test_a_channel_without_subscribers_is_dropped_after_the_replay_window(tmp_path):
    bus = InProcessBus()
    settings = load_settings(data_dir=tmp_path, stream_replay_seconds=0.2, ws_heartbeat_seconds=0.2)
    streams = StreamHub(settings, bus, SelfMetrics(), str)
    try:
        sub = await streams.subscribe(spec("alerts", "all"))
        streams.unsubscribe(sub)
        assert spec("alerts", "all").key in streams.channels  # kept for resuming clients
        deadline = time.monotonic() + 5
        while streams.channels:
            assert time.monotonic() < deadline, "the idle channel was never dropped"
            await asyncio.sleep(0.05)
    finally:
        await streams.close()
        await bus.close()


async def test_sent_frames_record_how_long_they_waited_in_the_queue(hub):
    streams, bus = hub
    sub = await streams.subscribe(spec("metrics", "cpu"))
    sub.count_sent()  # the hello is not a queued data frame: no delay to record
    assert (await frame_of(sub)).kind == "hello"
    await bus.publish("simulation.metrics.platform_metrics", batch(("cpu", {"h": "1"}, [1000], [1.0])))
    assert (await frame_of(sub)).kind == "data"
    sub.count_sent()
    count = sample(streams, "analytics_stream_send_delay_seconds_count", stream_type="metrics")
    delay = sample(streams, "analytics_stream_send_delay_seconds_sum", stream_type="metrics")
    assert count >= 1 and 0 <= delay < 5
    assert sample(streams, "analytics_stream_frames_sent_total", stream_type="metrics") == 2
