"""The compiled fast path of ingest (native/, Rust through PyO3): an IngestMetrics request's
protobuf bytes as they arrived (`platformq_native.encode_ingest_request`, `encode_usual_request`
here: its series and rows, or the REST body the gateway put in `json_body`, read in place; no
message is built). It takes a batch in its usual shape with every point acceptable, parses, checks
and encodes it without the GIL, and gives what the Python path (`ingest.validate` or
`json_body.validate_and_encode`, then `EncodedBatch.encode`) gives; any other batch returns None and
the Python path takes it and words its errors. Both are compared with the Python path on generated
requests and bodies (tests/unit/test_ingest_native.py)."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable

import numpy as np
import platformq_native

from libs.bus.events import event_head
from libs.storage import EncodedBatch, SeriesKey
from services.realtime.ingest import ValidatedBatch

ParsedBatch = tuple[ValidatedBatch, EncodedBatch | None]
"""A batch's validated form and its accepted points encoded for the store (None when none was)."""

INLINE_MAX_BYTES = 128 * 1024
"""Batches under this go through a compiled fast path on the event loop itself (at most about 0.4
ms of work); larger ones in a thread, the loop free meanwhile. The thread's hand-off cost more than
the parse of a TSBS columnar body of 97 KB: `benchmarks.ingest_rest`'s columnar load through the
stack (a probe, three runs alternated) went 2.29, 1.71, 1.72 -> 2.44, 2.78, 2.42 M points/s and
the serving process's CPU 0.51-0.67 -> 0.38-0.50 µs a point."""


def batch_of(found: tuple, tenant: str) -> ParsedBatch:
    """The validated batch and its encoding, from a fast path's answer: (datasource, accepted
    points, keys as (metric, ((key, value), ...)), then native int64 lengths, int64 times, float64
    values and uint64 series ids as bytearrays, and the WAL record's `series` entries)."""
    datasource, accepted, keys, lengths, ts, values, sids, records = found
    batch_id = uuid.uuid4().hex
    payload = event_head(tenant, datasource, batch_id, int(time.time() * 1000)) + records
    return ValidatedBatch(datasource, accepted=accepted), EncodedBatch.of_columns(
        tenant,
        datasource,
        batch_id,
        payload,
        list(itertools.starmap(SeriesKey, keys)),
        np.frombuffer(lengths, dtype=np.int64),
        np.frombuffer(ts, dtype=np.int64),
        np.frombuffer(values, dtype=np.float64),
        np.frombuffer(sids, dtype=np.uint64),
    )


async def off_the_loop_when_large(
    encode: Callable[[bytes, int, str], ParsedBatch | None], data: bytes, now_ms: int, tenant: str
) -> ParsedBatch | None:
    """A fast path's `encode` of `data`: on the event loop under INLINE_MAX_BYTES, else in a thread."""
    if len(data) < INLINE_MAX_BYTES:
        return encode(data, now_ms, tenant)
    return await asyncio.to_thread(encode, data, now_ms, tenant)


def encode_usual_request(data: bytes, now_ms: int, tenant: str) -> ParsedBatch | None:
    """A serialised `IngestMetricsRequest` with every point acceptable (columnar series and rows
    with epoch-millisecond times, or a REST body in `json_body` alone in its usual shapes),
    encoded for the store; None for any other request (an RFC 3339 `timestamp`, a point to refuse,
    an unknown field)."""
    found = platformq_native.encode_ingest_request(data, now_ms)
    return None if found is None else batch_of(found, tenant)
