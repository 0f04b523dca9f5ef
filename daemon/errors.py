"""The HTTP edge's error translation, request ids and per-request log line, as one middleware.

Handlers raise `protocols.errors.RelayError`s (or let aiohttp raise 404/405/413); this middleware
renders them in the calling API's envelope — chosen per route with `@error_envelope(...)`, so an
OpenAI route can get the OpenAI shape — and never lets a traceback reach a client. It is also the
one place that knows a request's final status, so it writes the access line.
"""

from __future__ import annotations

import logging
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler, Middleware

from claude_relay.protocols.errors import (
    ApiError,
    AuthenticationError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    RateLimitError,
    RelayError,
    RequestTooLargeError,
)

log = logging.getLogger(__name__)
# Its own name, so the per-request lines can be filtered or routed apart from diagnostics.
access_log = logging.getLogger("claude_relay.access")

ErrorRenderer = Callable[[RelayError, str | None], dict[str, Any]]
"""Builds an API's error body from an error and the request id (`protocols.*.error_body`)."""

_H = TypeVar("_H", bound=Handler)

REQUEST_ID_HEADER: Final = "request-id"  # the header the Anthropic API and SDK use
_ENVELOPE_ATTR: Final = "__claude_relay_error_envelope__"


@dataclass(slots=True)
class RequestInfo:
    """Per-request facts for the access line; handlers fill in what only they know."""

    request_id: str
    started: float  # time.monotonic()
    model: str | None = None
    stream: bool | None = None
    stream_error: str | None = None  # error type sent as an SSE event after a 200 was committed
    quiet: bool = False  # health probes log at DEBUG so a monitor does not flood the log


REQUEST_INFO_KEY: Final = web.RequestKey("request_info", RequestInfo)


class RequestTimeoutError(InvalidRequestError):
    """The client did not send its request body in time (daemon.transport)."""

    status = 408


class UnsupportedMediaTypeError(InvalidRequestError):
    """A body the relay does not read: not JSON, or compressed (daemon.guard)."""

    status = 415


def request_info(request: web.Request) -> RequestInfo:
    return request[REQUEST_INFO_KEY]


def new_request_id() -> str:
    return "req_" + secrets.token_hex(12)


def error_envelope(renderer: ErrorRenderer) -> Callable[[_H], _H]:
    """Route-level marker: errors from this handler are rendered with `renderer`."""

    def mark(handler: _H) -> _H:
        setattr(handler, _ENVELOPE_ATTR, renderer)
        return handler

    return mark


def _renderer_for(request: web.Request, default: ErrorRenderer) -> ErrorRenderer:
    # Unmatched requests (404/405) have a system route whose handler carries no marker.
    handler = request.match_info.route.handler
    marked: ErrorRenderer | None = getattr(handler, _ENVELOPE_ATTR, None)
    return marked if marked is not None else default


def retry_after_header(err: RelayError) -> dict[str, str]:
    # The header takes whole seconds; rounding down could invite a retry that is still too early.
    if err.retry_after is None:
        return {}
    return {"retry-after": str(max(0, math.ceil(err.retry_after)))}


def error_response(err: RelayError, request_id: str, renderer: ErrorRenderer) -> web.Response:
    return web.Response(
        status=err.status,
        body=orjson.dumps(renderer(err, request_id)),
        content_type="application/json",
        headers=retry_after_header(err),
    )


_BY_STATUS: Final[dict[int, type[RelayError]]] = {
    400: InvalidRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    408: RequestTimeoutError,
    413: RequestTooLargeError,
    415: UnsupportedMediaTypeError,
    429: RateLimitError,
}


def _from_http_exception(exc: web.HTTPException, request: web.Request) -> RelayError:
    where = f"{request.method} {request.path}"
    if isinstance(exc, web.HTTPNotFound):
        message = f"{where}: not found"
    elif isinstance(exc, web.HTTPMethodNotAllowed):
        allowed = ", ".join(sorted(exc.allowed_methods))
        message = f"{where}: method not allowed (allowed: {allowed})"
    elif isinstance(exc, web.HTTPRequestEntityTooLarge):
        message = f"request body exceeds the maximum size of {request.client_max_size} bytes"
    else:
        message = exc.reason
    cls = _BY_STATUS.get(exc.status, InvalidRequestError if exc.status < 500 else ApiError)
    err = cls(message)
    err.status = exc.status  # e.g. 405 keeps its status but reads as invalid_request_error
    return err


def _log_access(request: web.Request, info: RequestInfo, status: int) -> None:
    duration_ms = round((time.monotonic() - info.started) * 1000, 1)
    level = logging.DEBUG if info.quiet else logging.INFO
    access_log.log(
        level,
        "%s %s %s %.1fms",
        request.method,
        request.path,
        status,
        duration_ms,
        extra={
            "request_id": info.request_id,
            "status": status,
            "duration_ms": duration_ms,
            "stream": info.stream,
            "model": info.model,
            "stream_error": info.stream_error,
        },
    )


def make_error_middleware(default: ErrorRenderer) -> Middleware:
    """The middleware; `default` renders errors of unmarked and unmatched routes."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        info = RequestInfo(new_request_id(), time.monotonic())
        request[REQUEST_INFO_KEY] = info
        status = 499  # nginx's "client closed request": what the line says if we are cancelled
        try:
            try:
                response = await handler(request)
            except RelayError as err:
                response = error_response(err, info.request_id, _renderer_for(request, default))
            except web.HTTPException as exc:
                if exc.status < 400:  # redirects and the like are answers, not errors
                    exc.headers[REQUEST_ID_HEADER] = info.request_id
                    status = exc.status
                    raise
                response = error_response(
                    _from_http_exception(exc, request),
                    info.request_id,
                    _renderer_for(request, default),
                )
                if "Allow" in exc.headers:
                    response.headers["Allow"] = exc.headers["Allow"]
            except ConnectionResetError:
                # The client left while we read its body or wrote a reply: nobody to answer, and
                # not our failure, so no traceback.
                response = web.Response(status=499)
            except Exception:
                log.exception(
                    "unhandled error in %s %s",
                    request.method,
                    request.path,
                    extra={"request_id": info.request_id},
                )
                response = error_response(
                    ApiError("internal error"), info.request_id, _renderer_for(request, default)
                )
            # A stream sends its headers at prepare(); the SSE writer sets the id before that.
            if not response.prepared:
                response.headers[REQUEST_ID_HEADER] = info.request_id
            status = response.status
            return response
        finally:
            _log_access(request, info, status)

    return middleware
