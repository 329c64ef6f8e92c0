"""The `rustynet-relay` HTTPS server: WebSocket sessions at `/v1/relay`, `/healthz`, `/metrics`.

The one rule: the adapter never buffers without bound and never says why it refused. Each
session has a bounded send queue drained by its own writer task (a slow destination gets
frames dropped and counted by `RelayService.forward`), unauthenticated connections get
`handshake_timeout` seconds, and every rejection is the same close (4401, "unauthorized").
Before the upgrade each source (IPv4 address / IPv6 /64) spends a handshake token
(`RelayService.admit_handshake`); over its budget it gets the JSON 429, no signature checked.
The data path does no JSON, no logging and one copy per frame (header + memoryview slice).

TLS is the caller's: serve the app on an `ssl.SSLContext` that allows TLS 1.3 only (bootstrap
uses `rustynet.adapters.http_api.tls.server_ssl_context`). `make_runner` turns the access log
off: a relay logs sessions, not requests; every HTTP error (router, WebSocket handshake, relay
full, an unsupported `Expect`, a request the HTTP parser refuses) is the fixed JSON shape of
errors.py and echoes nothing (rejections.py for the parser's).

Messages larger than `max_frame_bytes` but within the WebSocket message cap (twice the frame
limit, at least 64 KiB) are dropped and counted as oversize; beyond the cap aiohttp closes the
connection (1009), so a peer cannot make the relay hold an arbitrarily large message.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import struct
from collections.abc import Callable, Sequence
from typing import Final

import structlog
from aiohttp import WSCloseCode, WSMsgType, web
from prometheus_client import CollectorRegistry
from rustynet.adapters.relay.errors import error_middleware, server_header
from rustynet.adapters.relay.metrics import RelayCollector
from rustynet.adapters.relay.rejections import REJECTIONS_KEY, Rejections, rejecting_runner
from rustynet.adapters.relay.udp_sessions import UdpRelay
from rustynet.adapters.support.prometheus import CONTENT_TYPE, app_registry, render

from rustynet.application.relay import RelayService, Session
from rustynet.domain.relay import (
    BATCH,
    MAX_BATCH_BYTES,
    FrameError,
    RelayAuthFailed,
    split_batch,
)

PATH: Final = "/v1/relay"
UNAUTHORIZED_CODE: Final = 4401
UNAUTHORIZED_REASON: Final = b"unauthorized"
MIN_MESSAGE_CAP: Final = 64 * 1024
HEARTBEAT: Final = 30.0  # seconds; finds half-open TCP connections
SERVICE_KEY: Final = web.AppKey("relay_service", RelayService)
SOCKETS_KEY: Final[web.AppKey[set[web.WebSocketResponse]]] = web.AppKey("relay_sockets")
EXTRA_METRICS_KEY: Final[web.AppKey[tuple[Callable[[], str], ...]]] = web.AppKey("extra_metrics")
REGISTRY_KEY: Final = web.AppKey("relay_metrics_registry", CollectorRegistry)
UDP_KEY: Final[web.AppKey[UdpRelay | None]] = web.AppKey("relay_udp")
_log = structlog.get_logger("rustynet.relay")
_BATCH_BYTE: Final = bytes((BATCH,))
_LENGTH16: Final = struct.Struct(">H").pack
MAX_BATCHED_FRAME: Final = 0xFFFF  # a batch entry's length is 16 bits; larger frames go alone


class _WebSocketHandle:
    """`SessionHandle` over one WebSocket: a bounded list of frames and the task that drains
    it (a plain deque and one waiter, not an asyncio.Queue: no per-frame wake-up bookkeeping)."""

    __slots__ = ("_closing", "_frames", "_limit", "_waiter", "_ws", "writer")

    def __init__(self, ws: web.WebSocketResponse, limit: int) -> None:
        self._ws = ws
        self._frames: collections.deque[bytes] = collections.deque()
        self._limit = limit
        self._waiter: asyncio.Future[None] | None = None
        self._closing = False
        self.writer: asyncio.Task[None] | None = None

    def deliver(self, frame: bytes) -> bool:
        if self._closing or len(self._frames) >= self._limit:
            return False
        self._frames.append(frame)
        waiter = self._waiter
        if waiter is not None:
            self._waiter = None
            if not waiter.done():
                waiter.set_result(None)
        return True

    def close_unauthorized(self) -> None:
        if self._closing:
            return
        self._closing = True
        task = asyncio.get_running_loop().create_task(_close(self._ws))
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    async def close_now(self) -> None:
        """Close with the generic rejection from the handler's own task."""
        self._closing = True
        await _close(self._ws)

    async def drain(self) -> None:
        """Writer task: send queued frames until the socket closes; what queued up while the
        previous write ran leaves as one batch message (one TLS write for a burst)."""
        frames, ws, loop = self._frames, self._ws, asyncio.get_running_loop()
        while True:
            if not frames:
                self._waiter = loop.create_future()
                await self._waiter
                continue
            message = _take_batch(frames)
            if ws.closed:
                return
            try:
                await ws.send_bytes(message)
            except (ConnectionError, RuntimeError):
                return


def _take_batch(frames: collections.deque[bytes]) -> bytes:
    """Pop frames from the left into one message under MAX_BATCH_BYTES (the wire format of
    `encode_batch`, joined in one copy); a lone frame is sent as itself."""
    first = frames.popleft()
    if not frames or len(first) > MAX_BATCHED_FRAME:
        return first  # a relay->node frame: never starts with the batch byte
    parts = [_BATCH_BYTE, _LENGTH16(len(first)), first]
    size, popleft, extend = 3 + len(first), frames.popleft, parts.extend
    while frames and len(frames[0]) <= min(MAX_BATCHED_FRAME, MAX_BATCH_BYTES - size - 2):
        frame = popleft()
        extend((_LENGTH16(len(frame)), frame))
        size += len(frame) + 2
    return b"".join(parts)


_BACKGROUND: set[asyncio.Task[None]] = set()


async def _close(ws: web.WebSocketResponse) -> None:
    with contextlib.suppress(ConnectionError, RuntimeError):
        await ws.close(code=UNAUTHORIZED_CODE, message=UNAUTHORIZED_REASON)


def _text(message: dict[str, str]) -> str:
    return json.dumps(message, separators=(",", ":"))


def _json_object(data: str) -> dict[str, object] | None:
    try:
        value = json.loads(data)
    except (ValueError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


async def _authenticate(service: RelayService, session: Session, ws: web.WebSocketResponse) -> bool:
    """Challenge sent; read until a text message or the deadline. True when authenticated."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + service.limits.handshake_timeout
    while True:
        left = deadline - loop.time()
        if left <= 0:
            service.handshake_timed_out(session)
            return False
        try:
            msg = await asyncio.wait_for(ws.receive(), timeout=left)
        except TimeoutError:
            service.handshake_timed_out(session)
            return False
        if msg.type is WSMsgType.BINARY:
            service.drop_unauthenticated()
            continue
        if msg.type is not WSMsgType.TEXT:
            return False
        message = _json_object(msg.data)
        try:
            expires_at = service.authenticate(session, message if message is not None else {})
        except RelayAuthFailed as exc:
            _log.info("relay.auth_failed", reason=exc.reason)
            return False
        await ws.send_str(_text({"type": "ok", "expires_at": expires_at.isoformat()}))
        _log.info("relay.session_opened", node=session.node_id, expires_at=expires_at.isoformat())
        return True


async def _watch_expiry(service: RelayService, session: Session, handle: _WebSocketHandle) -> None:
    """Close the session (4401) when its token expires unrenewed."""
    while True:
        left = service.seconds_left(session)
        if left is None:
            return
        await asyncio.sleep(max(left, 0.0) + 0.01)
        if service.expired(session):
            _log.info("relay.session_expired", node=session.node_id)
            handle.close_unauthorized()
            return
        if not session.machine.is_open:
            return


async def _on_text(
    app: web.Application,
    session: Session,
    ws: web.WebSocketResponse,
    handle: _WebSocketHandle,
    data: str,
) -> None:
    """A text message in an open session: `renew` or `udp_allocate`, else counted."""
    service, udp = app[SERVICE_KEY], app[UDP_KEY]
    message = _json_object(data)
    kind = None if message is None else message.get("type")
    node_id, expires_at = session.node_id, session.expires_at
    if message is not None and kind == "udp_allocate" and node_id and expires_at:
        if udp is None:
            answer: dict[str, object] = {"type": "udp_refused", "reason": "unavailable"}
        else:
            answer = await udp.ask(node_id, message, expires_at)
        await ws.send_str(json.dumps(answer, separators=(",", ":")))
        return
    if message is None or kind != "renew" or set(message) != {"type", "token"}:
        service.drop_malformed()
        return
    try:
        expires_at = service.renew(session, message["token"])
    except RelayAuthFailed as exc:
        _log.info("relay.renew_failed", node=session.node_id, reason=exc.reason)
        handle.close_unauthorized()
        return
    if udp is not None and node_id:
        udp.renew(node_id, expires_at)
    await ws.send_str(_text({"type": "ok", "expires_at": expires_at.isoformat()}))


def _forward_message(service: RelayService, session: Session, data: bytes) -> None:
    """Forward every frame of one binary message (a frame or a batch of them)."""
    try:
        frames = split_batch(data)
    except FrameError:
        service.drop_malformed()
        return
    service.forward_all(session, frames)


def _udp_session_over(app: web.Application, session: Session) -> None:
    """The node's last session ended: its UDP allocations are torn down."""
    udp, node_id = app[UDP_KEY], session.node_id
    if udp is not None and node_id and not app[SERVICE_KEY].has_session(node_id):
        udp.node_gone(node_id)


async def relay_socket(request: web.Request) -> web.StreamResponse:  # noqa: PLR0912 - one session
    """`GET /v1/relay`: one relay session (docs/relay-protocol.md)."""
    service = request.app[SERVICE_KEY]
    limits = service.limits
    ws = web.WebSocketResponse(
        max_msg_size=max(2 * limits.max_frame_bytes, MIN_MESSAGE_CAP),
        heartbeat=HEARTBEAT,
        compress=False,
    )
    if not service.admit_handshake(request.remote or ""):
        raise web.HTTPTooManyRequests  # the JSON 429 of errors.py; no signature checked
    handle = _WebSocketHandle(ws, limits.send_queue_frames)
    session = service.open_connection(handle)
    if session is None:
        raise web.HTTPServiceUnavailable  # the JSON 503 of errors.py
    watcher: asyncio.Task[None] | None = None
    sockets = request.app[SOCKETS_KEY]
    sockets.add(ws)
    try:
        await ws.prepare(request)
        handle.writer = asyncio.get_running_loop().create_task(handle.drain())
        await ws.send_str(_text(service.challenge(session)))
        if not await _authenticate(service, session, ws):
            await handle.close_now()
            return ws
        watcher = asyncio.get_running_loop().create_task(_watch_expiry(service, session, handle))
        while True:
            msg = await ws.receive()
            kind = msg.type
            if kind is WSMsgType.BINARY:
                _forward_message(service, session, msg.data)
            elif kind is WSMsgType.TEXT:
                await _on_text(request.app, session, ws, handle, msg.data)
            elif kind in (WSMsgType.CLOSE, WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
                break
    except (ConnectionError, RuntimeError):
        pass
    finally:
        sockets.discard(ws)
        was_open = session.machine.is_open
        service.end(session)
        if was_open:
            _log.info("relay.session_closed", node=session.node_id)
        _udp_session_over(request.app, session)
        for task in (watcher, handle.writer):
            if task is not None:
                task.cancel()
        if not ws.closed:
            with contextlib.suppress(ConnectionError, RuntimeError):
                await ws.close(code=WSCloseCode.GOING_AWAY)
    return ws


async def _close_all(app: web.Application) -> None:
    """On shutdown: end every session now (1001), so SIGTERM does not wait on idle sockets."""
    sockets: set[web.WebSocketResponse] = app[SOCKETS_KEY]
    for ws in list(sockets):
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"shutdown")


async def healthz(request: web.Request) -> web.Response:
    """`GET /healthz`: the process serves."""
    service = request.app[SERVICE_KEY]
    return web.json_response({"status": "ok", "relay_id": service.trust.relay_id})


async def metrics(request: web.Request) -> web.Response:
    """`GET /metrics`: the app's registry (process and relay families) and the extras."""
    text = render(request.app[REGISTRY_KEY])
    text += "".join(render_extra() for render_extra in request.app[EXTRA_METRICS_KEY])
    return web.Response(body=text.encode("utf-8"), headers={"Content-Type": CONTENT_TYPE})


def create_relay_app(
    service: RelayService,
    extra_metrics: Sequence[Callable[[], str]] = (),
    udp: UdpRelay | None = None,
) -> web.Application:
    """The relay's aiohttp application; `extra_metrics` add text to /metrics; `udp` serves
    `udp_allocate` (None: every ask is refused as `unavailable`)."""
    app = web.Application(client_max_size=4096, middlewares=[error_middleware])
    app[SERVICE_KEY] = service
    app[UDP_KEY] = udp
    app[EXTRA_METRICS_KEY] = tuple(extra_metrics)
    app[SOCKETS_KEY] = set()
    app[REJECTIONS_KEY] = Rejections()
    app[REGISTRY_KEY] = app_registry(RelayCollector(service, app[REJECTIONS_KEY]))
    app.on_response_prepare.append(server_header)
    app.on_shutdown.append(_close_all)
    app.router.add_get(PATH, relay_socket)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    return app


def make_runner(app: web.Application, shutdown_timeout: float = 5.0) -> web.AppRunner:
    """A runner without access log (no per-request lines; sessions are logged as events) whose
    answer to a request the HTTP parser refuses echoes nothing (rejections.py)."""
    return rejecting_runner(app, access_log=None, shutdown_timeout=shutdown_timeout)
