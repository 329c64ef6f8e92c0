"""Every HTTP error of the relay in the one JSON shape, echoing nothing of the request.

The one rule: whatever refuses an HTTP request on the relay — the router (404, 405), the
WebSocket handshake (400 "No WebSocket UPGRADE hdr…", the header's value quoted), a full relay
(503), an `Expect` other than `100-continue` (417), the HTTP parser (400, rejections.py) —
answers `{"error": "<code>", "detail": "<fixed text>"}` as `application/json`, with the same
codes as the control API (docs/control-api.md) and a detail chosen by the status alone, never
aiohttp's text. Every response names the server `rustynet`, not aiohttp's
`Python/3.x aiohttp/3.y` (`server_header`, and `error_response` for answers given outside the
app).

The control API has its own error table (rustynet.adapters.http_api.errors); adapters do not
import each other, so this small table is the relay's.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import hdrs, web
from aiohttp.typedefs import Handler

SERVER_NAME: Final = "rustynet"
CONTINUE: Final = "100-continue"
# status → (code, fixed detail)
ERRORS: Final[dict[int, tuple[str, str]]] = {
    400: ("bad_request", "bad request"),
    404: ("not_found", "not found"),
    405: ("method_not_allowed", "method not allowed"),
    413: ("payload_too_large", "request body too large"),
    417: ("expectation_failed", 'the only expectation supported is "Expect: 100-continue"'),
    429: ("rate_limited", "too many handshakes from this address; retry later"),
    500: ("internal", "internal error"),
    503: ("unavailable", "the relay is full; retry later"),
}

RequestHandlerFn = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


def error_response(
    status: int, *, detail: str | None = None, allow: str | None = None
) -> web.Response:
    """The JSON error for `status` (an unlisted 4xx is `bad_request`, 5xx `internal`)."""
    fallback = ERRORS[400] if status < 500 else ERRORS[500]
    code, fixed = ERRORS.get(status, fallback)
    headers = {hdrs.SERVER: SERVER_NAME}
    if allow is not None:
        headers[hdrs.ALLOW] = allow
    return web.json_response(
        {"error": code, "detail": detail or fixed}, status=status, headers=headers
    )


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """aiohttp's HTTP errors (router, WebSocket handshake, relay full) → the JSON shape."""
    try:
        return await handler(request)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, allow=exc.headers.get(hdrs.ALLOW))


async def server_header(_request: web.Request, response: web.StreamResponse) -> None:
    """`on_response_prepare`: every response of the app says `Server: rustynet`."""
    response.headers[hdrs.SERVER] = SERVER_NAME


def guard_expect(handler: RequestHandlerFn, on_refused: Callable[[], None]) -> RequestHandlerFn:
    """`handler` behind a JSON 417 (connection closed, `on_refused` told) for an `Expect`
    other than `100-continue`; aiohttp's own 417 is `text/plain` and quotes the header."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        expect = request.headers.get(hdrs.EXPECT, "")
        if expect and expect.lower() != CONTINUE:
            on_refused()
            response = error_response(417)
            response.force_close()
            return response
        return await handler(request)

    return handle
