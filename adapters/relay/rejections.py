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

The aiohttp hook is shared with the control API (`rustynet.adapters.support.rejections`); the
relay gives it `Rejections.answer` and its own `guard_expect`.
"""

from __future__ import annotations

from typing import Any, Final

import attrs
import structlog
from aiohttp import web
from aiohttp.web_request import BaseRequest
from rustynet.adapters.relay.errors import error_response, guard_expect
from rustynet.adapters.support.rejections import RejectingAppRunner

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

    def answer(
        self,
        request: BaseRequest,  # noqa: ARG002 - never looked at: nothing of it is echoed
        status: int,
        exc: BaseException | None,
    ) -> web.StreamResponse:
        """The fixed JSON error for a request the parser (or a handler) could not serve."""
        _log.warning("relay.request_rejected", status=status, error_type=type(exc).__name__)
        self.count += 1
        return error_response(status, detail=None if status >= 500 else REJECTED_DETAIL)


REJECTIONS_KEY: Final = web.AppKey("relay_rejections", Rejections)


def rejecting_runner(app: web.Application, **kwargs: Any) -> web.AppRunner:
    """An `AppRunner` (`kwargs` as aiohttp's) whose parser refusals and unsupported
    expectations are answered and counted by the app's `Rejections`."""
    rejections = app[REJECTIONS_KEY]
    return RejectingAppRunner(
        app,
        answer=rejections.answer,
        guard=lambda handler: guard_expect(handler, rejections.refused),
        **kwargs,
    )
