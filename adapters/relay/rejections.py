"""Requests the relay's HTTP parser rejects: a fixed JSON 400 that echoes nothing, one count.

aiohttp answers a request its parser refuses (a header line over 8 KiB, too many headers, an
invalid header byte, bad bytes in the URL, Content-Length with Transfer-Encoding) from
`RequestHandler.handle_error`, outside the app: it logs a traceback quoting the raw offending
bytes and sends them back as `text/plain` (an `Authorization` line included).

The one rule: nothing of a refused request leaves the relay or reaches a log. The relay is
served by `RejectingAppRunner`, whose connections answer such a request with
`{"error": "bad_request", "detail": "malformed HTTP request"}` (connection closed), log one
`relay.request_rejected` event with the status and exception type only, and count it in
`rustynet_relay_rejected_requests_total`. A 5xx reaching `handle_error` (an exception escaped
a handler) is answered `{"error": "internal", ...}` and logged with its type only. The app's
request handler runs behind `guard_expect` (errors.py): an `Expect` other than `100-continue`
gets the JSON 417, counted in the same metric.

The control API has the same hook (rustynet.adapters.http_api.rejections); adapters do not
import each other, so the ~30 lines of aiohttp plumbing are repeated here on purpose.
"""

from __future__ import annotations

import asyncio
from typing import Any, Final

import attrs
import structlog
from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from rustynet.adapters.relay.errors import error_response, guard_expect

REJECTED_DETAIL: Final = "malformed HTTP request"
_log = structlog.get_logger("rustynet.relay")


@attrs.define
class Rejections:
    """How many requests the relay refused outside the app: from `handle_error`, or an
    `Expect` other than `100-continue` (metrics)."""

    count: int = 0

    def refused(self) -> None:
        """Count one refusal."""
        self.count += 1


REJECTIONS_KEY: Final = web.AppKey("relay_rejections", Rejections)


class RejectingRequestHandler(RequestHandler):
    """aiohttp's connection handler with a `handle_error` that echoes and logs nothing."""

    def __init__(self, manager: web.Server, *, rejections: Rejections, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._rejections = rejections

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,  # noqa: ARG002 - quotes the request: never used
    ) -> web.StreamResponse:
        """The fixed JSON error for a request the parser (or a handler) could not serve."""
        if request.writer.output_size > 0:  # as aiohttp: a started response cannot be replaced
            raise ConnectionError("response already started; closing the connection")
        _log.warning("relay.request_rejected", status=status, error_type=type(exc).__name__)
        self._rejections.count += 1
        response = error_response(status, detail=None if status >= 500 else REJECTED_DETAIL)
        response.force_close()
        return response


class RejectingServer(web.Server):
    """`web.Server` whose connections are `RejectingRequestHandler`s."""

    def __init__(self, handler: Any, *, rejections: Rejections, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._rejections = rejections

    def __call__(self) -> RequestHandler:
        """Protocol factory: one handler per accepted connection."""
        return RejectingRequestHandler(
            self, loop=self._loop, rejections=self._rejections, **self._kwargs
        )


class RejectingAppRunner(web.AppRunner):
    """`web.AppRunner` serving the relay app through `RejectingServer`."""

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs the app's startup, freezes it
        rejections = self._app[REJECTIONS_KEY]
        return RejectingServer(
            guard_expect(plain.request_handler, rejections.refused),
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            rejections=rejections,
            **plain._kwargs,  # the handler args the AppRunner computed (private, stable)
        )
