"""The REST body parser as it runs in a worker process of `json_body.JsonBodies`.

Imported by the worker processes only (the pool pickles `validate_in_worker` by name). Each worker
keeps one decoder and its known-good series for its life, so a series seen before skips its checks
there as it does in the serving process."""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from functools import cache

from services.realtime.ingest import KnownGoodSeries, ValidatedBatch
from services.realtime.json_body import JsonIngestDecoder

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """The pool's initializer: the kernel kills this worker when the serving process dies, even by
    SIGKILL (Linux's PR_SET_PDEATHSIG), so no worker outlives the process it parsed for."""
    if sys.platform.startswith("linux"):
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the parent died before the line above
        os.kill(os.getpid(), signal.SIGKILL)


@cache
def _decoder() -> tuple[JsonIngestDecoder, KnownGoodSeries]:
    return JsonIngestDecoder(), KnownGoodSeries()


def validate_in_worker(data: bytes, now_ms: int) -> ValidatedBatch:
    """The validated batch of a JSON body (InvalidArgument naming the field for a bad one)."""
    decoder, known = _decoder()
    return decoder.validate(data, known, now_ms)
