"""Requests the HTTP parser rejects: a JSON 400 that echoes nothing, one access line, one count.

aiohttp answers a request its parser refuses (a header line over 8 KiB, too many headers, an
invalid header byte, bad bytes in the URL, Content-Length together with Transfer-Encoding)
from `RequestHandler.handle_error`, outside every middleware. Left alone it logs a traceback
whose message quotes the raw offending bytes, sends `text/plain` with that same message (an
`Authorization: Bearer rnk_...` line echoed back whole), and the access logger then failed on
the route-less request (no access line, no metric).

The one rule: nothing of a refused request leaves the server or reaches a log. This module
serves the app with a `RequestHandler` whose `handle_error` answers the documented error shape
with a FIXED detail (`{"error": "bad_request", "detail": "malformed HTTP request"}`, connection
closed), logs one warning carrying only the status and the exception's type (no message, no
traceback), and reports the rejection to `on_rejected` (the app counts it under the route label
`unmatched`); the access logger writes its usual line with route `unmatched`. A 5xx reaching
`handle_error` (an exception that escaped the middleware: a bug) gets the fixed `internal`
answer and an error log with the trace, which the redacting log handler scrubs.

The hook (`rustynet.adapters.support.rejections`, shared with the relay) serves the app through
a runner whose connections answer with `RejectionAnswer`; the app's request handler runs
behind `guard_expect` (expect.py: a JSON 417 for an `Expect` other than `100-continue`,
reported to `on_rejected` like a parser refusal).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

import attrs
import structlog
from aiohttp import web
from aiohttp.web_request import BaseRequest
from rustynet.adapters.http_api.errors import (
    HTTP_EXCEPTION_CODES,
    INTERNAL,
    ApiError,
    error_response,
)
from rustynet.adapters.http_api.expect import guard_expect
from rustynet.adapters.http_api.middleware import route_template
from rustynet.adapters.support.rejections import RejectingAppRunner

OnRejected = Callable[[str, int], None]  # (method, status) of a request the parser refused

REJECTED_DETAIL: Final = "malformed HTTP request"
_log = structlog.get_logger("rustynet.http")


def rejection_error(status: int) -> ApiError:
    """The fixed answer for a request refused with `status` outside the app (never echoes)."""
    if status >= 500:
        return INTERNAL
    return ApiError(status, HTTP_EXCEPTION_CODES.get(status, "bad_request"), REJECTED_DETAIL)


@attrs.frozen
class RejectionAnswer:
    """The control API's answer to a request refused outside the app (`support.rejections`)."""

    on_rejected: OnRejected

    def __call__(
        self, request: BaseRequest, status: int, exc: BaseException | None
    ) -> web.StreamResponse:
        """The fixed JSON error; one log line without the request; counted unless a 5xx."""
        error = rejection_error(status)
        if error.status >= 500:  # a bug: the metrics middleware has counted it already
            _log.error(
                "http.request_failed",
                route=route_template(request),
                error_type=type(exc).__name__,
                exc_info=exc,
            )
        else:
            _log.warning(
                "http.request_rejected",
                status=error.status,
                error_type=type(exc).__name__,
            )
            self.on_rejected(request.method, error.status)
        return error_response(error)


def rejecting_runner(
    app: web.Application, *, on_rejected: OnRejected, **kwargs: Any
) -> web.AppRunner:
    """An `AppRunner` (`kwargs` as aiohttp's) whose parser refusals and unsupported
    expectations get the fixed JSON answers and are reported to `on_rejected`."""
    return RejectingAppRunner(
        app,
        answer=RejectionAnswer(on_rejected),
        guard=lambda handler: guard_expect(handler, on_rejected),
        **kwargs,
    )
