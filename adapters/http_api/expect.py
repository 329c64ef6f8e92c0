"""`Expect:` — refused in the error shape unless `100-continue`, whose interim answer waits.

aiohttp looks at `Expect` before any middleware (`Application._handle` calls the route's
`expect_handler`): its default handler answered any value but `100-continue` with a
`text/plain` 417 `Unknown Expect: <the header, echoed>` (a secret pasted there came back), and
answered `100-continue` with `100 Continue` at once — before the admission budget or the
credential was looked at, inviting an unauthenticated client to send its body.

The one rule: nothing of the request is echoed, and a body is invited only once the request
may be served. So:

* `guard_expect` wraps the server's request handler (outside the app, so it also covers the
  404/405 of routes that do not exist): an `Expect` other than `100-continue` (any case) is
  answered `417 {"error": "expectation_failed", "detail": <fixed>}`, the connection closed
  (the body is never read), and reported to `on_refused` (the app counts it as `unmatched`);
* every route is registered with `defer_continue` as its expect handler, which sends nothing;
  `send_continue` sends `100 Continue` when a handler first reads the body (`read_json_object`
  in middleware.py), that is after the per-IP admission and the credential check passed. A
  client refused before that gets its 401/429 without ever being invited to send the body.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Final

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11
from rustynet.adapters.http_api.errors import ApiError, error_response

CONTINUE: Final = "100-continue"
EXPECTATION_FAILED: Final = ApiError(
    417, "expectation_failed", 'the only expectation supported is "Expect: 100-continue"'
)
_INTERIM: Final = b"HTTP/1.1 100 Continue\r\n\r\n"

RequestHandlerFn = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
OnRefused = Callable[[str, int], None]  # (method, status) of a request refused here


def expects_continue(request: web.BaseRequest) -> bool:
    """True when the request carries `Expect: 100-continue` (any case)."""
    return request.headers.get(hdrs.EXPECT, "").lower() == CONTINUE


def guard_expect(handler: RequestHandlerFn, on_refused: OnRefused) -> RequestHandlerFn:
    """`handler` behind the refusal of every expectation but `100-continue`."""

    async def handle(request: web.BaseRequest) -> web.StreamResponse:
        expect = request.headers.get(hdrs.EXPECT, "")
        if expect and expect.lower() != CONTINUE:
            on_refused(request.method, EXPECTATION_FAILED.status)
            response = error_response(EXPECTATION_FAILED)
            response.force_close()  # the body (if any) is not read
            return response
        return await handler(request)

    return handle


async def defer_continue(_request: web.Request) -> None:
    """Route expect handler: no `100 Continue` yet (`send_continue` sends it)."""
    return


async def send_continue(request: web.BaseRequest) -> None:
    """Invite the body (`100 Continue`) if the client waits for it; call before reading it."""
    if request.version == HttpVersion11 and expects_continue(request):
        await request.writer.write(_INTERIM)
        request.writer.output_size = 0  # as aiohttp: the response proper has not started
