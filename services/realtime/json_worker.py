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
from services.realtime.json_body import (
    AnswerInSlot,
    BodyInSlot,
    JsonIngestDecoder,
    validate_and_encode,
)
from services.realtime.native import ParsedBatch

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


def validate_in_worker(body: bytes | BodyInSlot, now_ms: int, tenant: str) -> ParsedBatch | AnswerInSlot:
    """`validate_and_encode` of a JSON body with this worker's decoder and memos. A body given in
    a slot of the serving process is answered in that slot (`BodyInSlot.answer`): the pool's pipe
    then carries a few bytes instead of the pickled batch, 64 KiB at a time with a switch between
    the processes for each."""
    if not isinstance(body, BodyInSlot):
        return validate_and_encode(*_decoder(), body, now_ms, tenant)
    return body.answer(validate_and_encode(*_decoder(), body.read(), now_ms, tenant))
