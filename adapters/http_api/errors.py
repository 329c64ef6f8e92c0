"""The ONE table from failures to HTTP: status, `{"error", "detail"}` JSON, `Retry-After`.

The one rule: every failure leaves through `map_exception` and nothing else decides a status.
Use-case errors (rustynet.application.errors) carry their API code and, through
`status_of`, their status (walking the class hierarchy, so a new subclass inherits its base's
answer). aiohttp's own HTTP exceptions (404 for an unknown route, 405, 413 from the server's
body cap) get the same JSON shape. Anything else is a bug or an outage: 500 `internal` (503
when the store is unreachable) with a fixed detail — never the exception text or a trace.
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from rustynet.application.errors import (
    ApplicationError,
    RateLimited,
    ValidationError,
    status_of,
)
from rustynet.ports.store import StoreConflict, StoreUnavailable, UnitOfWorkAborted

JSON_CONTENT_TYPE: Final = "application/json"
# Every response's `Server` header (create_app sets it; error_response too, for the answers
# given outside the app): aiohttp's default names the Python and aiohttp versions.
SERVER_NAME: Final = "rustynet"


class ApiError(Exception):
    """An answer decided in the adapter itself (guards, caps), or a mapped failure."""

    def __init__(
        self,
        status: int,
        code: str,
        detail: str,
        *,
        pointer: str | None = None,
        retry_after: int | None = None,
        allow: str | None = None,
    ) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        self.pointer = pointer
        self.retry_after = retry_after
        self.allow = allow


# aiohttp's HTTP exceptions (router and server caps) → API error code.
HTTP_EXCEPTION_CODES: Final[dict[int, str]] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "payload_too_large",
    415: "unsupported_media_type",
    417: "expectation_failed",
    429: "rate_limited",
}

# Infrastructure failures: the client may retry; the detail names no internals.
INFRASTRUCTURE: Final[dict[type[Exception], ApiError]] = {
    StoreUnavailable: ApiError(503, "unavailable", "the control plane is temporarily unavailable"),
    StoreConflict: ApiError(503, "unavailable", "concurrent update; retry the request"),
    UnitOfWorkAborted: ApiError(503, "unavailable", "concurrent update; retry the request"),
}
INTERNAL: Final = ApiError(500, "internal", "internal error")


def map_exception(exc: BaseException) -> ApiError:  # noqa: PLR0911 - one branch per kind of failure
    """The API answer for any exception raised while handling a request."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, ApplicationError):
        status = status_of(exc)
        if status >= 500:
            return INTERNAL
        pointer = exc.problems[0].pointer if isinstance(exc, ValidationError) else None
        retry_after = exc.retry_after if isinstance(exc, RateLimited) else None
        return ApiError(status, exc.code, exc.detail, pointer=pointer, retry_after=retry_after)
    if isinstance(exc, web.HTTPMethodNotAllowed):
        allow = ", ".join(sorted(exc.allowed_methods))
        return ApiError(405, "method_not_allowed", "method not allowed", allow=allow)
    if isinstance(exc, web.HTTPException) and exc.status in HTTP_EXCEPTION_CODES:
        return ApiError(exc.status, HTTP_EXCEPTION_CODES[exc.status], exc.reason)
    for klass in type(exc).__mro__:
        if klass in INFRASTRUCTURE:
            return INFRASTRUCTURE[klass]
    return INTERNAL


def error_body(error: ApiError) -> dict[str, str]:
    """The JSON error document."""
    body = {"error": error.code, "detail": error.detail}
    if error.pointer is not None:
        body["pointer"] = error.pointer
    return body


def error_response(error: ApiError) -> web.Response:
    """The response for `error` (with `Retry-After` on 429)."""
    headers = {"Server": SERVER_NAME}
    if error.retry_after is not None:
        headers["Retry-After"] = str(error.retry_after)
    if error.allow is not None:
        headers["Allow"] = error.allow
    return web.json_response(error_body(error), status=error.status, headers=headers)
