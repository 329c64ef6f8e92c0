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

The hook: aiohttp has no public option for the handler class, so `RejectingAppRunner` builds
the same `web.Server` the `AppRunner` would (same request factory and handler args) as a
`RejectingServer`, whose protocol factory makes `RejectingRequestHandler`s; its request
handler is the app's behind `guard_expect` (expect.py: a JSON 417 for an `Expect` other than
`100-continue`, reported to `on_rejected` like a parser refusal).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any, Final

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from rustynet.adapters.http_api.errors import (
    HTTP_EXCEPTION_CODES,
    INTERNAL,
    ApiError,
    error_response,
)
from rustynet.adapters.http_api.expect import guard_expect
from rustynet.adapters.http_api.middleware import route_template

OnRejected = Callable[[str, int], None]  # (method, status) of a request the parser refused

REJECTED_DETAIL: Final = "malformed HTTP request"
_log = logging.getLogger("rustynet.http")


def rejection_error(status: int) -> ApiError:
    """The fixed answer for a request refused with `status` outside the app (never echoes)."""
    if status >= 500:
        return INTERNAL
    return ApiError(status, HTTP_EXCEPTION_CODES.get(status, "bad_request"), REJECTED_DETAIL)


class RejectingRequestHandler(RequestHandler):
    """aiohttp's connection handler with a `handle_error` that says and logs nothing of the
    request."""

    def __init__(self, manager: web.Server, *, on_rejected: OnRejected, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._on_rejected = on_rejected

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,  # noqa: ARG002 - quotes the request: never used
    ) -> web.StreamResponse:
        """The JSON error for a request the parser (or, for a 5xx, the app) could not serve."""
        if request.writer.output_size > 0:  # as aiohttp: a started response cannot be replaced
            raise ConnectionError("response already started; closing the connection")
        error = rejection_error(status)
        if error.status >= 500:  # a bug: the metrics middleware has counted it already
            _log.error(
                "http.request_failed",
                extra={"route": route_template(request), "error_type": type(exc).__name__},
                exc_info=exc,
            )
        else:
            _log.warning(
                "http.request_rejected",
                extra={"status": error.status, "error_type": type(exc).__name__},
            )
            self._on_rejected(request.method, error.status)
        response = error_response(error)
        response.force_close()
        return response


class RejectingServer(web.Server):
    """`web.Server` whose connections are `RejectingRequestHandler`s."""

    def __init__(self, handler: Any, *, on_rejected: OnRejected, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._on_rejected = on_rejected

    def __call__(self) -> RequestHandler:
        """Protocol factory: one handler per accepted connection."""
        return RejectingRequestHandler(
            self, loop=self._loop, on_rejected=self._on_rejected, **self._kwargs
        )


class RejectingAppRunner(web.AppRunner):
    """`web.AppRunner` serving the app through `RejectingServer`."""

    def __init__(self, app: web.Application, *, on_rejected: OnRejected, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._on_rejected = on_rejected

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs the app's startup, freezes it
        return RejectingServer(
            guard_expect(plain.request_handler, self._on_rejected),
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            on_rejected=self._on_rejected,
            **plain._kwargs,  # the handler args the AppRunner computed (private, stable)
        )
