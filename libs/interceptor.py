"""One server interceptor that turns domain errors into gRPC statuses, shared by every service."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from libs.errors import AnalyticsError

log = logging.getLogger(__name__)

OWN_METHOD_PREFIX = "/platformq.analytics.v1."


async def _abort_for(exc: BaseException, context: aio.ServicerContext, method: str) -> None:
    if isinstance(exc, AnalyticsError):
        await context.abort(exc.status, exc.message)
    # Anything else is a bug: log it with its trace, tell the client nothing internal.
    log.exception("unhandled error in %s", method, exc_info=exc)
    await context.abort(grpc.StatusCode.INTERNAL, f"internal error in {method}; see the service log")


def _wrap_unary(fn: Callable[..., Awaitable[Any]], method: str) -> Callable[..., Awaitable[Any]]:
    async def handler(request: Any, context: aio.ServicerContext) -> Any:
        try:
            return await fn(request, context)
        except aio.AbortError:
            raise
        except Exception as exc:
            await _abort_for(exc, context, method)

    return handler


def _wrap_streaming(fn: Callable[..., AsyncIterator[Any]], method: str) -> Callable[..., AsyncIterator[Any]]:
    async def handler(request: Any, context: aio.ServicerContext) -> AsyncIterator[Any]:
        try:
            async for item in fn(request, context):
                yield item
        except aio.AbortError:
            raise
        except Exception as exc:
            await _abort_for(exc, context, method)

    return handler


class ExceptionToStatusInterceptor(aio.ServerInterceptor):
    """Maps AnalyticsError subclasses to their status and message; anything else to INTERNAL."""

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
        common = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(_wrap_unary(handler.unary_unary, method), **common)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(_wrap_unary(handler.stream_unary, method), **common)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                _wrap_streaming(handler.unary_stream, method), **common
            )
        if handler.stream_stream:
            return grpc.stream_stream_rpc_method_handler(
                _wrap_streaming(handler.stream_stream, method), **common
            )
        return handler
