"""The aiohttp hook that lets a server answer, itself, the requests its HTTP parser refuses.

aiohttp answers a request its parser refuses (a header line over 8 KiB, too many headers, an
invalid header byte, bad bytes in the URL, Content-Length together with Transfer-Encoding)
from `RequestHandler.handle_error`, outside every middleware: it logs a traceback quoting the
raw offending bytes and sends them back as `text/plain` (an `Authorization` line included).
aiohttp has no public option for the handler class, so `RejectingAppRunner` builds the same
`web.Server` the `AppRunner` would (same request factory and handler args) as a
`RejectingServer`, whose protocol factory makes `RejectingRequestHandler`s. Their
`handle_error` asks the server's `Answer` for the response (a fixed JSON error that echoes
nothing; the answer also logs and counts the refusal) and closes the connection. The app's
request handler is wrapped by the server's `guard` (its `Expect` check) on the way.

The control API (`rustynet.adapters.http_api.rejections`) and the relay
(`rustynet.adapters.relay.rejections`) each give their own answer and guard.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

RequestHandlerFn = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]
# (request, status, exception) -> the response to a request refused outside the app; it must
# not echo anything of the request, and logs and counts the refusal as its server does.
Answer = Callable[[BaseRequest, int, BaseException | None], web.StreamResponse]
Guard = Callable[[RequestHandlerFn], RequestHandlerFn]


class RejectingRequestHandler(RequestHandler):
    """aiohttp's connection handler with a `handle_error` that says nothing of the request."""

    def __init__(self, manager: web.Server, *, answer: Answer, **kwargs: Any) -> None:
        super().__init__(manager, **kwargs)
        self._answer = answer

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,  # noqa: ARG002 - quotes the request: never used
    ) -> web.StreamResponse:
        """The server's answer for a request the parser (or, for a 5xx, the app) could not
        serve; the connection is closed after it."""
        if request.writer.output_size > 0:  # as aiohttp: a started response cannot be replaced
            raise ConnectionError("response already started; closing the connection")
        response = self._answer(request, status, exc)
        response.force_close()
        return response


class RejectingServer(web.Server):
    """`web.Server` whose connections are `RejectingRequestHandler`s."""

    def __init__(self, handler: Any, *, answer: Answer, **kwargs: Any) -> None:
        super().__init__(handler, **kwargs)
        self._answer = answer

    def __call__(self) -> RequestHandler:
        """Protocol factory: one handler per accepted connection."""
        return RejectingRequestHandler(self, loop=self._loop, answer=self._answer, **self._kwargs)


class RejectingAppRunner(web.AppRunner):
    """`web.AppRunner` serving the app through `RejectingServer`, its handler behind `guard`."""

    def __init__(
        self, app: web.Application, *, answer: Answer, guard: Guard, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._answer = answer
        self._guard = guard

    async def _make_server(self) -> web.Server:
        plain = await super()._make_server()  # runs the app's startup, freezes it
        return RejectingServer(
            self._guard(plain.request_handler),
            request_factory=plain.request_factory,
            handler_cancellation=plain.handler_cancellation,
            loop=asyncio.get_running_loop(),
            answer=self._answer,
            **plain._kwargs,  # the handler args the AppRunner computed (private, stable)
        )
