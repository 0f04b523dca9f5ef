"""One error tree for the whole relay, bound to HTTP statuses and both APIs' error types.

Raised anywhere below the HTTP edge; the daemon's per-protocol middleware renders it as the
Anthropic envelope `{"type":"error","error":{...}}` or the OpenAI envelope `{"error":{...}}`, and a
mid-stream failure becomes an SSE error event. Nothing here knows about HTTP libraries.
"""

from __future__ import annotations


class RelayError(Exception):
    status: int = 500
    anthropic_type: str = "api_error"
    openai_type: str = "server_error"
    openai_code: str | None = None

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        retry_after: float | None = None,
        category: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        # a fixed word for what went wrong, for places that must not show the message
        # (unauthenticated /v1/health: the message may name paths or screen text)
        self.category = category


class InvalidRequestError(RelayError):
    status = 400
    anthropic_type = "invalid_request_error"
    openai_type = "invalid_request_error"


class AuthenticationError(RelayError):
    status = 401
    anthropic_type = "authentication_error"
    openai_type = "authentication_error"
    openai_code = "invalid_api_key"


class PermissionDeniedError(RelayError):
    status = 403
    anthropic_type = "permission_error"
    openai_type = "permission_error"


class NotFoundError(RelayError):
    status = 404
    anthropic_type = "not_found_error"
    openai_type = "not_found_error"


class RequestTooLargeError(RelayError):
    status = 413
    anthropic_type = "request_too_large"
    openai_type = "invalid_request_error"


class RateLimitError(RelayError):
    status = 429
    anthropic_type = "rate_limit_error"
    openai_type = "rate_limit_error"
    openai_code = "rate_limit_exceeded"


class ApiError(RelayError):
    status = 500
    anthropic_type = "api_error"
    openai_type = "server_error"


class TimeoutError_(RelayError):
    status = 504
    anthropic_type = "timeout_error"
    openai_type = "timeout_error"


class OverloadedError(RelayError):
    status = 529
    anthropic_type = "overloaded_error"
    openai_type = "server_error"
    openai_code = "overloaded"


class ServiceUnavailableError(RelayError):
    """The relay itself cannot serve (claude missing, shutting down)."""

    status = 503
    anthropic_type = "api_error"
    openai_type = "server_error"


EXCERPT_CHARS = 60


def excerpt(value: object, limit: int = EXCERPT_CHARS) -> str:
    """`repr(value)` cut to about `limit` characters: an error names what it refused without
    echoing a 150 KB input back (or a secret pasted by mistake in full)."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… ({len(text)} characters)"
