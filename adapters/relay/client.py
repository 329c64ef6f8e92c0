"""The node's relay client: `RelayTransport` over a WebSocket on HTTPS, TLS 1.3, SPKI-pinned.

The one rule: nothing is sent to a relay whose TLS key is not the pinned one, and a session's
end always surfaces as `RelayClosed` (or `RelayUnauthorized` for a refused renewal). The TLS
context comes from the composition root (`ssl_context(pin)`; bootstrap passes
`rustynet.adapters.control_client.pinned_ssl_context`, which checks the pin inside the TLS
handshake and allows TLS 1.3 only): adapters do not import each other, and one pinning
implementation serves both clients.

One reader task per session owns the socket's receive side: it decodes data frames into a
bounded queue (when the caller falls behind, new frames are dropped and counted in
`dropped`, never buffered without bound) and resolves pending renewals from `ok` messages.
Protocol: docs/relay-protocol.md.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import ssl
import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

import aiohttp

from rustynet.domain.errors import DecodeError, LocalProtocolError
from rustynet.domain.keys import b64decode, b64encode
from rustynet.domain.relay import (
    BATCH,
    FROM_RELAY,
    NONCE_BYTES,
    TO_RELAY,
    FrameError,
    challenge_message,
    decode_header,
    encode_batch,
    frame_header,
    split_batch,
)
from rustynet.domain.tls_pin import SpkiPin
from rustynet.domain.udp_relay import AllocationRefusedError, UdpGrant
from rustynet.ports.relay import (
    RelayAuth,
    RelayClosed,
    RelayEndpoint,
    RelayUnauthorized,
    RelayUnreachable,
    RelayUntrusted,
)

_T = TypeVar("_T")
UNAUTHORIZED_CODE: Final = 4401
DEFAULT_TIMEOUT: Final = 10.0
DEFAULT_RECEIVE_QUEUE: Final = 1024
MAX_MESSAGE: Final = 128 * 1024
HEARTBEAT: Final = 30.0
_BATCH_BYTE: Final = bytes((BATCH,))
_LENGTH16: Final = struct.Struct(">H").pack
PinnedContextFactory = Callable[[SpkiPin], ssl.SSLContext]


def _parse_expiry(message: object) -> datetime:
    if not isinstance(message, dict) or message.get("type") != "ok":
        raise RelayUnreachable("the relay answered with something other than ok")
    text = message.get("expires_at")
    try:
        when = datetime.fromisoformat(text) if isinstance(text, str) else None
    except ValueError:
        when = None
    if when is None or when.utcoffset() != timedelta(0):
        raise RelayUnreachable("the relay's ok carries no UTC expires_at")
    return when.astimezone(UTC)


def _json(data: str) -> object:
    try:
        return json.loads(data)
    except (ValueError, RecursionError):
        return None


class WebSocketRelaySession:
    """One authenticated relay session (`RelaySession`)."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        ws: aiohttp.ClientWebSocketResponse,
        expires_at: datetime,
        *,
        receive_queue: int,
        timeout: float,
    ) -> None:
        self._http = http
        self._ws = ws
        self._expires_at = expires_at
        self._limit = receive_queue
        self._timeout = timeout
        # Bounded by hand in `_read`; one waiter (the receiver), woken once per message.
        self._incoming: collections.deque[tuple[str, bytes]] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._renewal: asyncio.Future[datetime] | None = None
        self._udp_asks: collections.deque[asyncio.Future[object]] = collections.deque()
        self._headers: dict[str, bytes] = {}
        self._done = False
        self.dropped = 0
        self._reader = asyncio.get_running_loop().create_task(self._read())

    @property
    def expires_at(self) -> datetime:
        """When the relay closes the session unless renewed."""
        return self._expires_at

    @property
    def closed(self) -> bool:
        """True once the session is over."""
        return self._done

    async def _read(self) -> None:
        ws, incoming, limit = self._ws, self._incoming, self._limit
        try:
            while True:
                msg = await ws.receive()
                if msg.type is aiohttp.WSMsgType.BINARY:
                    try:
                        frames = split_batch(msg.data)
                    except FrameError:
                        self.dropped += 1
                        continue
                    for data in frames:
                        try:
                            source, offset = decode_header(data, FROM_RELAY)
                        except FrameError:
                            self.dropped += 1
                            continue
                        if len(incoming) >= limit:
                            self.dropped += 1
                            continue
                        incoming.append((source, bytes(data[offset:])))
                    self._wake()
                elif msg.type is aiohttp.WSMsgType.TEXT:
                    self._on_text(msg.data)
                else:
                    break
        except (aiohttp.ClientError, ConnectionError, RuntimeError):
            pass
        finally:
            self._finish()

    def _wake(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _on_text(self, data: str) -> None:
        message = _json(data)
        kind = message.get("type") if isinstance(message, dict) else None
        if kind in {"udp_allocation", "udp_refused"}:
            asked = self._udp_asks.popleft() if self._udp_asks else None
            if asked is not None and not asked.done():
                asked.set_result(message)
            return
        waiter = self._renewal
        if waiter is None or waiter.done():
            return
        try:
            waiter.set_result(_parse_expiry(_json(data)))
        except RelayUnreachable as exc:
            waiter.set_exception(exc)

    def _finish(self) -> None:
        if self._done:
            return
        self._done = True
        self._wake()
        while self._udp_asks:
            asked = self._udp_asks.popleft()
            if not asked.done():
                asked.set_exception(RelayClosed("the relay session ended"))
        waiter = self._renewal
        if waiter is not None and not waiter.done():
            if self._ws.close_code == UNAUTHORIZED_CODE:
                waiter.set_exception(RelayUnauthorized("the relay refused the renewal"))
            else:
                waiter.set_exception(RelayClosed("the relay session ended"))

    def _header(self, destination_node_id: str) -> bytes:
        header = self._headers.get(destination_node_id)
        if header is None:
            header = frame_header(TO_RELAY, destination_node_id)
            if len(self._headers) < 4096:
                self._headers[destination_node_id] = header
        return header

    def _encode(self, items: Sequence[tuple[str, bytes]]) -> bytes:
        """One message for `items`: a lone frame as itself, else a batch joined in one copy
        (the wire format of `encode_batch`, without building each frame first)."""
        if len(items) == 1:
            destination, packet = items[0]
            return encode_batch([self._header(destination) + packet])
        parts, header_of = [_BATCH_BYTE], self._header
        extend = parts.extend
        for destination, packet in items:
            header = header_of(destination)
            size = len(header) + len(packet)
            if size >= 0x10000:
                raise LocalProtocolError("a frame in a batch is 1-65535 bytes")
            extend((_LENGTH16(size), header, packet))
        return b"".join(parts)

    async def send(self, destination_node_id: str, packet: bytes) -> None:
        """Send `packet` to `destination_node_id` through the relay (best effort)."""
        await self.send_many(((destination_node_id, packet),))

    async def send_many(self, items: Sequence[tuple[str, bytes]]) -> None:
        """Send several (destination, packet) pairs as one message (one TLS write)."""
        if self._done:
            raise RelayClosed("the relay session ended")
        message = self._encode(items)
        try:
            await self._ws.send_bytes(message)
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            self._finish()
            raise RelayClosed("the relay session ended") from exc

    async def receive(self) -> tuple[str, bytes]:
        """Next (source node id, packet); `RelayClosed` once the session is over."""
        incoming = self._incoming
        while not incoming:
            if self._done:  # what arrived before the end is still delivered first
                raise RelayClosed("the relay session ended")
            self._waiter = asyncio.get_running_loop().create_future()
            await self._waiter
        return incoming.popleft()

    async def _request(self, message: dict[str, str], waiter: asyncio.Future[_T], what: str) -> _T:
        """Send a text message and wait (bounded) for the answer `waiter` receives."""
        try:
            await self._ws.send_str(json.dumps(message))
            return await asyncio.wait_for(asyncio.shield(waiter), self._timeout)
        except TimeoutError as exc:
            raise RelayClosed(f"the relay did not answer the {what}") from exc
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            raise RelayClosed("the relay session ended") from exc

    async def renew(self, token: str) -> datetime:
        """Present a fresh token; returns the new expiry (`RelayUnauthorized` if refused)."""
        if self._done:
            raise RelayClosed("the relay session ended")
        if self._renewal is not None and not self._renewal.done():
            raise LocalProtocolError("one renewal at a time")
        waiter: asyncio.Future[datetime] = asyncio.get_running_loop().create_future()
        self._renewal = waiter
        expires_at = await self._request({"type": "renew", "token": token}, waiter, "renewal")
        self._expires_at = expires_at
        return expires_at

    async def allocate_udp(self, peer: str) -> UdpGrant:
        """Ask for a UDP relay session toward `peer` (docs/relay-protocol.md, "UDP relay
        sessions"): this node's side of it, or `AllocationRefusedError` with the relay's reason.
        Answers come in the order asked."""
        if self._done:
            raise RelayClosed("the relay session ended")
        waiter: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._udp_asks.append(waiter)
        ask = {"type": "udp_allocate", "peer": peer}
        answer = await self._request(ask, waiter, "UDP allocation")
        if isinstance(answer, dict) and answer.get("type") == "udp_refused":
            raise AllocationRefusedError(str(answer.get("reason", "refused"))[:32])
        try:
            return UdpGrant.from_message(answer)
        except DecodeError as exc:
            raise RelayUnreachable("the relay sent a malformed udp_allocation") from exc

    async def close(self) -> None:
        """Close the socket and the HTTP session; idempotent."""
        with contextlib.suppress(aiohttp.ClientError, ConnectionError, RuntimeError):
            await self._ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader
        self._finish()
        await self._http.close()


class WebSocketRelayTransport:
    """`RelayTransport`: WebSocket sessions to relays, trusted by their SPKI pin.

    `ssl_context(pin)` must return a client context that allows TLS 1.3 only and fails the
    handshake unless the server's key matches `pin`. No I/O in the constructor.
    """

    def __init__(
        self,
        *,
        ssl_context: PinnedContextFactory,
        timeout: float = DEFAULT_TIMEOUT,
        receive_queue: int = DEFAULT_RECEIVE_QUEUE,
    ) -> None:
        self._ssl_context = ssl_context
        self._timeout = timeout
        self._receive_queue = receive_queue

    async def connect(self, endpoint: RelayEndpoint, auth: RelayAuth) -> WebSocketRelaySession:
        """Open, authenticate and return a session."""
        http = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl_context(endpoint.tls_pin), limit=1)
        )
        try:
            ws = await self._open(http, endpoint)
            try:
                expires_at = await self._handshake(ws, endpoint, auth)
            except BaseException:
                await ws.close()
                raise
        except BaseException:
            await http.close()
            raise
        return WebSocketRelaySession(
            http, ws, expires_at, receive_queue=self._receive_queue, timeout=self._timeout
        )

    async def _open(
        self, http: aiohttp.ClientSession, endpoint: RelayEndpoint
    ) -> aiohttp.ClientWebSocketResponse:
        where = f"relay {endpoint.relay_id}"
        try:
            return await http.ws_connect(
                endpoint.url,
                timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=self._timeout),
                max_msg_size=MAX_MESSAGE,
                heartbeat=HEARTBEAT,
                compress=0,
                autoping=True,
            )
        except aiohttp.ClientSSLError as exc:
            raise RelayUntrusted(f"{where}: cannot trust the server; nothing was sent") from exc
        except aiohttp.WSServerHandshakeError as exc:
            raise RelayUnreachable(f"{where}: WebSocket refused ({exc.status})") from exc
        except TimeoutError as exc:
            raise RelayUnreachable(f"{where}: no answer in time") from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise RelayUnreachable(f"{where}: cannot connect: {exc}") from exc

    async def _receive_text(self, ws: aiohttp.ClientWebSocketResponse) -> object:
        try:
            msg = await asyncio.wait_for(ws.receive(), self._timeout)
        except TimeoutError as exc:
            raise RelayUnreachable("the relay did not answer in time") from exc
        if msg.type is aiohttp.WSMsgType.TEXT:
            return _json(msg.data)
        if UNAUTHORIZED_CODE in (ws.close_code, msg.data):
            raise RelayUnauthorized("the relay refused the session")
        raise RelayUnreachable("the relay closed the connection during the handshake")

    async def _handshake(
        self, ws: aiohttp.ClientWebSocketResponse, endpoint: RelayEndpoint, auth: RelayAuth
    ) -> datetime:
        challenge = await self._receive_text(ws)
        if (
            not isinstance(challenge, dict)
            or challenge.get("type") != "challenge"
            or challenge.get("relay_id") != endpoint.relay_id
            or not isinstance(challenge.get("nonce"), str)
        ):
            raise RelayUnreachable("the relay sent no valid challenge for its id")
        try:
            nonce = b64decode(challenge["nonce"])
        except DecodeError as exc:
            raise RelayUnreachable("the relay's challenge nonce is not base64url") from exc
        if len(nonce) != NONCE_BYTES:
            raise RelayUnreachable("the relay's challenge nonce is not 32 bytes")
        signature = auth.sign(challenge_message(nonce, endpoint.relay_id))
        message = {
            "type": "auth",
            "node_id": auth.node_id,
            "identity_key": auth.identity_key,
            "token": auth.token,
            "root_certificate": auth.root_certificate,
            "signing_certificates": list(auth.signing_certificates),
            "signature": b64encode(signature),
        }
        try:
            await ws.send_str(json.dumps(message))
        except (aiohttp.ClientError, ConnectionError, RuntimeError) as exc:
            raise RelayUnreachable("the relay closed the connection during the handshake") from exc
        return _parse_expiry(await self._receive_text(ws))
