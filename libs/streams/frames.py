"""Stream frames: a SubscribeResponse built once as a dict shaped exactly like
`json_format.MessageToDict(frame, preserving_proto_field_name=True)`, encoded to JSON once and
parsed into the proto only when a gRPC subscriber asks for it; and the opaque resume cursors."""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from google.protobuf import json_format

from libs.errors import InvalidArgument
from platformq.analytics.v1 import realtime_service_pb2 as pb

_CURSOR = re.compile(r"([0-9a-f]{12})-([0-9a-f]{1,16})")


@dataclass(frozen=True)
class Cursor:
    """A position in one hub's frame sequence; `epoch` identifies the hub instance (a restarted or
    different hub has another), so a stale cursor is detected rather than misread."""

    epoch: str
    seq: int

    def __str__(self) -> str:
        return f"{self.epoch}-{self.seq:x}"

    @classmethod
    def parse(cls, text: str, field: str = "since") -> Cursor:
        """The cursor `text` names; anything this service did not hand out is InvalidArgument."""
        match = _CURSOR.fullmatch(text.strip())
        if match is None:
            raise InvalidArgument(f"{text!r} is not a cursor from a frame of this service", field)
        return cls(match.group(1), int(match.group(2), 16))


def now_ms() -> int:
    """Wall time in epoch milliseconds."""
    return int(time.time() * 1000)


def number(value: float) -> float | str:
    """A double as protobuf's JSON mapping prints it (non-finite values are strings)."""
    if math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


def points_dict(points: Iterable[tuple[int, float]]) -> list[dict[str, Any]]:
    """DataPoints as MessageToDict prints them: int64 as strings, zero values left out."""
    out = []
    append = out.append
    for ts, value in points:
        if ts and value and -math.inf < value < math.inf:  # the common case, on the hot path
            append({"timestamp_ms": str(ts), "value": value})
            continue
        point: dict[str, Any] = {}
        if ts:
            point["timestamp_ms"] = str(ts)
        if value or math.copysign(1.0, value) < 0:
            point["value"] = number(value)
        append(point)
    return out


def series_dict(
    metric: str, group: Mapping[str, str], aggregation: str, points: Iterable[tuple[int, float]]
) -> dict[str, Any]:
    """One SeriesResult as MessageToDict prints it."""
    out: dict[str, Any] = {}
    if metric:
        out["metric"] = metric
    if group:
        out["group"] = dict(group)
    if aggregation:
        out["aggregation"] = aggregation
    listed = points_dict(points)
    if listed:
        out["points"] = listed
    return out


def message_dict(message: Any) -> dict[str, Any]:
    """A protobuf message as the frames carry it (proto field names, proto3 JSON mapping)."""
    return json_format.MessageToDict(message, preserving_proto_field_name=True)


class Frame:
    """One frame. `text` and `message()` are computed once and shared by every subscriber the
    frame goes to. `seq` is the hub sequence number of data frames (0 for control frames);
    `close_code` is set on closing frames (the WebSocket close code).

    A published data frame is `seal`ed: only its JSON text is kept (the replay windows hold many
    frames; as dicts they would be millions of objects for the cyclic collector to walk, and its
    full collections stalled every stream for up to a second at 1,000 clients)."""

    __slots__ = ("_body", "_message", "_text", "close_code", "created", "kind", "seq")

    def __init__(self, body: dict[str, Any], seq: int = 0, close_code: int = 0) -> None:
        self._body: dict[str, Any] | None = body
        self.kind: str = body["type"]
        """hello, data, lagged, gap, heartbeat or closing."""
        self.seq = seq
        self.close_code = close_code
        self.created = time.monotonic()
        self._text: str | None = None
        self._message: pb.SubscribeResponse | None = None

    @property
    def body(self) -> dict[str, Any]:
        """The frame as a JSON object (parsed back from the text once sealed)."""
        return self._body if self._body is not None else json.loads(self.text)

    @property
    def text(self) -> str:
        """The frame as compact JSON."""
        if self._text is None:
            self._text = json.dumps(self._body, separators=(",", ":"), ensure_ascii=False)
        return self._text

    def seal(self) -> None:
        """Keep the text only."""
        self._text = self.text
        self._body = None

    def message(self) -> pb.SubscribeResponse:
        """The frame as a SubscribeResponse (for gRPC subscribers)."""
        if self._message is None:
            self._message = json_format.ParseDict(self.body, pb.SubscribeResponse())
        return self._message


def control(kind: str, stream_type: str, stream_id: str, **fields: Any) -> dict[str, Any]:
    """The body of a frame of `kind`, with the given extra fields (already in JSON form)."""
    body: dict[str, Any] = {
        "stream_type": stream_type,
        "stream_id": stream_id,
        "timestamp_ms": str(now_ms()),
        "type": kind,
    }
    body.update({k: v for k, v in fields.items() if v})
    return body


def closing_frame(stream_type: str, stream_id: str, code: int, reason: str) -> Frame:
    """A closing frame saying why; the transport then closes with `code`."""
    return Frame(control("closing", stream_type, stream_id, reason=reason), close_code=code)


def lagged_frame(stream_type: str, stream_id: str, dropped: int) -> Frame:
    """Tells a client that caught up how many frames it lost while it was slow."""
    return Frame(control("lagged", stream_type, stream_id, dropped=str(dropped)))


def heartbeat_frame(stream_type: str, stream_id: str) -> Frame:
    """Sent when a stream has been idle for a heartbeat period (or to answer a ping)."""
    return Frame(control("heartbeat", stream_type, stream_id))
