"""Domain errors. Cores raise these; one interceptor maps each to one gRPC status."""

from __future__ import annotations

import grpc


class AnalyticsError(Exception):
    """Base of every domain error: a reason, and the field it concerns when there is one."""

    status: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, reason: str, field: str | None = None) -> None:
        self.reason = reason
        self.field = field
        super().__init__(self.message)

    @property
    def message(self) -> str:
        """The text a client sees: "<field>: <reason>", or the reason alone."""
        return f"{self.field}: {self.reason}" if self.field else self.reason

    def __reduce__(self) -> tuple[type[AnalyticsError], tuple[str, str | None]]:
        # Raised in a worker process (REST bodies are parsed there): the reason and field cross intact.
        return type(self), (self.reason, self.field)


class InvalidArgument(AnalyticsError):
    """The request names a bad value; the field says which."""

    status = grpc.StatusCode.INVALID_ARGUMENT


class NotFound(AnalyticsError):
    """The request names something that does not exist."""

    status = grpc.StatusCode.NOT_FOUND


class FailedPrecondition(AnalyticsError):
    """The request is valid but the system is not in a state to run it."""

    status = grpc.StatusCode.FAILED_PRECONDITION


class ResourceExhausted(AnalyticsError):
    """A limit was reached (memory, rate, size)."""

    status = grpc.StatusCode.RESOURCE_EXHAUSTED


class Unavailable(AnalyticsError):
    """A dependency (engine, bus, peer service) cannot be reached now; retrying may work."""

    status = grpc.StatusCode.UNAVAILABLE


class DeadlineExceeded(AnalyticsError):
    """The work took longer than allowed."""

    status = grpc.StatusCode.DEADLINE_EXCEEDED


class NotBuilt(AnalyticsError):
    """The capability behind this RPC is not built yet; the reason names it."""

    status = grpc.StatusCode.UNIMPLEMENTED


class ConfigError(Exception):
    """Configuration is missing or invalid; start-up stops with this message."""


def connection_failure(exc: BaseException) -> str:
    """What a client may be told of a failed connection to a server of ours: its kind, never the
    address or the library's text (those go to the log)."""
    text = str(exc).lower()
    for needle, kind in (
        ("refused", "connection refused"),
        ("timed out", "timed out"),
        ("timeout", "timed out"),
        ("name or service not known", "host not found"),
        ("no route", "no route to host"),
        ("reset", "connection reset"),
    ):
        if needle in text:
            return kind
    return f"connection failed ({type(exc).__name__})"
