"""The REST body parser as it runs in a worker process of `json_body.JsonBodies`.

Imported by the worker processes only (the pool pickles `validate_in_worker` by name). Each worker
keeps one decoder, its known-good series and its memo of series ids and record headers for its life,
so a series seen before skips its checks and hashing there as it does in the serving process."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from functools import cache

from libs.storage import SeriesMemo
from services.realtime.ingest import KnownGoodSeries
from services.realtime.json_body import BodyInSlot, JsonIngestDecoder, ParsedBody, validate_and_encode

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """The pool's initializer: the kernel kills this worker when the serving process dies, even by
    SIGKILL (Linux's PR_SET_PDEATHSIG), so no worker outlives the process it parsed for."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the line above
        os.kill(os.getpid(), signal.SIGKILL)


@cache
def _decoder() -> tuple[JsonIngestDecoder, KnownGoodSeries, SeriesMemo]:
    return JsonIngestDecoder(), KnownGoodSeries(), SeriesMemo()


def validate_in_worker(body: bytes | BodyInSlot, now_ms: int, tenant: str) -> ParsedBody:
    """`validate_and_encode` of a JSON body (given, or in a slot of the serving process) with this
    worker's decoder and memos."""
    data = body.read() if isinstance(body, BodyInSlot) else body
    return validate_and_encode(*_decoder(), data, now_ms, tenant)
