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

from libs.storage import EncodedBatch, SeriesMemo
from services.realtime.ingest import KnownGoodSeries, ValidatedBatch
from services.realtime.json_body import JsonIngestDecoder, validate_and_encode

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


def validate_in_worker(data: bytes, now_ms: int, tenant: str) -> tuple[ValidatedBatch, EncodedBatch | None]:
    """`validate_and_encode` of a JSON body with this worker's decoder and memos."""
    return validate_and_encode(*_decoder(), data, now_ms, tenant)
