"""One server interceptor shared by every service: it reads the caller's identity (tenant and scopes,
libs/identity.py), refuses a call whose scopes do not allow the method (PERMISSION_DENIED naming the
missing scope), and turns domain errors into gRPC statuses. Requests reach it as bytes: it parses
them, or hands them on unparsed to a method marked `takes_serialized`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from grpc import aio

from libs.errors import AnalyticsError, InvalidArgument
from libs.identity import (
    SCOPE_BY_REQUEST,
    PermissionDenied,
    identity_from_metadata,
    required_scope,
    set_current_identity,
)
from libs.limits import TenantLimits, Throttled

log = logging.getLogger(__name__)

OWN_METHOD_PREFIX = "/platformq.analytics.v1."


async def _abort_for(exc: BaseException, context: aio.ServicerContext, method: str) -> None:
    if isinstance(exc, Throttled):
        # The gateway turns it into the HTTP header of the 429 (a trailers-only answer's metadata
        # are its headers).
        context.set_trailing_metadata((("retry-after", str(exc.retry_after)),))
    if isinstance(exc, AnalyticsError):
        await context.abort(exc.status, exc.message)
    # Anything else is a bug: log it with its trace, tell the client nothing internal.
    log.exception("unhandled error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the service log")


@dataclass(frozen=True)
class SerializedRequest:
    """A request as the bytes it arrived in, for a servicer method marked `takes_serialized` that
    reads them itself (a compiled reader of the wire format): `message()` is the request message,
    parsed as for any other method."""

    data: bytes
    deserializer: Callable[[bytes], Any] | None
    method: str

    def message(self) -> Any:
        """The request message (InvalidArgument when the bytes are not one, as `_decoded`)."""
        return _decoded(self.deserializer, self.data, self.method)


def takes_serialized(method: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Mark a unary servicer method to get its request as a `SerializedRequest`, not parsed: for a
    method whose handler has a faster reader of the bytes than the message (realtime's
    IngestMetrics: services/realtime/native.py). Its scope must not depend on the request."""
    method.takes_serialized = True  # type: ignore[attr-defined]
    return method


def _decoded(deserializer: Callable[[bytes], Any] | None, raw: Any, method: str) -> Any:
    """A request message from its bytes: what grpc would do before the handler, except that bytes
    which are not the message (Envoy's transcoder writes such for some JSON, e.g. an object where
    a map wants a number) are a 400 naming the message, not an UNKNOWN from inside grpc."""
    if deserializer is None or not isinstance(raw, bytes):
        return raw
    try:
        return deserializer(raw)
    except DecodeError as exc:
        name = method.rsplit("/", 1)[-1]
        raise InvalidArgument(f"the request is not a valid {name} request ({exc})", "body") from None


async def _decoded_stream(
    deserializer: Callable[[bytes], Any] | None, messages: AsyncIterator[Any], method: str
) -> AsyncIterator[Any]:
    async for raw in messages:
        yield _decoded(deserializer, raw, method)


def _admit(
    method: str, request: Any, context: aio.ServicerContext, auth_mode: str, limits: TenantLimits
) -> str:
    """Make the caller's identity the call's, when its scopes allow `method` for `request` and its
    tenant is within its rate; returns the tenant."""
    identity = identity_from_metadata(context.invocation_metadata(), auth_mode)
    needed = required_scope(method, request)
    if needed is not None and not identity.allows(needed):
        raise PermissionDenied(f"missing scope '{needed}': {method.rsplit('/', 1)[-1]} needs it", "scope")
    limits.rate.check(identity.tenant)
    # Set in the call's own task: the servicer, and the peer calls it makes, see this caller only.
    set_current_identity(identity)
    return identity.tenant


@dataclass(frozen=True)
class _Call:
    """What every wrapped handler does before the servicer runs: decode, admit, take a slot."""

    method: str
    auth_mode: str
    limits: TenantLimits
    deserializer: Callable[[bytes], Any] | None
    streamed_request: bool
    serialized: bool = False

    @contextmanager
    def admitted(self, request: Any, context: aio.ServicerContext) -> Iterator[Any]:
        """The decoded request (a `SerializedRequest` for a method that `takes_serialized`), inside
        the caller's concurrency slot when the method has one."""
        if self.streamed_request:
            request = _decoded_stream(self.deserializer, request, self.method)
        elif self.serialized:
            request = SerializedRequest(request, self.deserializer, self.method)
        else:
            request = _decoded(self.deserializer, request, self.method)
        # A client stream's messages are not read yet, nor a serialized request: the method's scope
        # cannot depend on them.
        unread = self.streamed_request or self.serialized
        tenant = _admit(self.method, None if unread else request, context, self.auth_mode, self.limits)
        slots = self.limits.slots_for(self.method)
        with slots.slot(tenant) if slots is not None else nullcontext():
            yield request


def _wrap_unary(fn: Callable[..., Awaitable[Any]], call: _Call) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: aio.ServicerContext) -> Any:
        try:
            with call.admitted(request, context) as decoded:
                return await fn(decoded, context)
        except aio.AbortError:
            raise
        except Exception as exc:
            await _abort_for(exc, context, call.method)

    return handler


def _wrap_streaming(fn: Callable[..., AsyncIterator[Any]], call: _Call) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            with call.admitted(request, context) as decoded:
                async for item in fn(decoded, context):
                    yield item
        except aio.AbortError:
            raise
        except Exception as exc:
            await _abort_for(exc, context, call.method)

    return handler


class ExceptionToStatusInterceptor(aio.ServerInterceptor):
    """Admits each call of ours by its identity and scope (`auth_mode`: AUTH_MODE, "none" or
    "jwt"), then maps AnalyticsError subclasses to their status and message; anything else to
    INTERNAL."""

    def __init__(self, auth_mode: str = "none", limits: TenantLimits | None = None) -> None:
        self.auth_mode = auth_mode
        self.limits = limits or TenantLimits.of(0, 1, 0, 0)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        # Only our own async servicers: stock health and reflection handle their own errors.
        if handler is None or not method.startswith(OWN_METHOD_PREFIX):
            return handler
        # Requests reach the wrapper as bytes and are decoded there, so a body that is not the
        # message gets a 400 (see _decoded).
        common = {"request_deserializer": None, "response_serializer": handler.response_serializer}
        decode = handler.request_deserializer

        def call(streamed_request: bool, serialized: bool = False) -> _Call:
            return _Call(method, self.auth_mode, self.limits, decode, streamed_request, serialized)

        if handler.unary_unary:
            serialized = getattr(handler.unary_unary, "takes_serialized", False)
            if serialized and method in SCOPE_BY_REQUEST:
                raise TypeError(f"{method} takes its request serialized but its scope depends on it")
            return grpc.unary_unary_rpc_method_handler(
                _wrap_unary(handler.unary_unary, call(False, serialized)), **common
            )
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(
                _wrap_unary(handler.stream_unary, call(True)), **common
            )
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_streaming(handler.unary_stream, call(False)), **common
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_streaming(handler.stream_stream, call(True)), **common
            )
        return handler
