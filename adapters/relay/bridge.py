"""The relay bridge: loopback UDP sockets that splice relayed peers into the tunnel.

The one rule: the bridge moves the tunnel's datagrams unchanged and only between the tunnel's
own UDP port and the relay session: it never reads, builds or alters a tunnel packet, and it
accepts datagrams only from the tunnel's port (any other local sender is dropped).

Theory of operation. For each peer on the relay path the bridge binds one UDP socket on
127.0.0.1 (an ephemeral port) inside the daemon's network namespace and tells the agent that
this socket is the peer's endpoint. The tunnel then sends that peer's packets to the socket;
the bridge forwards each datagram over the relay session addressed to the peer's node id.
Frames the relay delivers from a node are sent from that node's socket to the tunnel's port,
so the tunnel sees the peer at a stable local endpoint (its roaming logic follows it like
any endpoint). A frame from a node without a socket gets one on demand if the agent allows
that node (it is in the current peer map); others are dropped.

Hot path (docs/relay-protocol.md, "Performance"). The sockets are plain non-blocking sockets
watched with `add_reader`, not asyncio datagram transports: one wake-up drains a run of
datagrams (up to `READ_RUN` per socket) and the writer task sends everything that queued up
since its last write as one relay message (split at `BATCH_BYTES`), so a burst from the
tunnel costs one event-loop callback, one WebSocket message and one TLS write instead of one
each per datagram. Outbound datagrams wait in one bounded list for the writer: when it holds
`QUEUE_PACKETS` the rest are dropped and counted, never buffered without bound. Delivery to the
tunnel is one non-blocking `sendto` per datagram, straight from the session's receive loop
(a full socket buffer drops and counts).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
import struct
from collections.abc import Callable, Iterator
from typing import Final

import structlog

from rustynet.domain.tunnel import UnderlayEndpoint
from rustynet.ports.relay import RelaySession

_log = structlog.get_logger("rustynet.relay.bridge")

LOOPBACK: Final = "127.0.0.1"
QUEUE_PACKETS: Final = 2048
READ_RUN: Final = 256  # datagrams drained from one socket per wake-up (then others get a turn)
MAX_DATAGRAM: Final = 65535
SOCKET_BUFFER: Final = 4 * 1024 * 1024
BATCH_BYTES: Final = 48 * 1024  # well under the relay protocol's MAX_BATCH_BYTES (60 KiB)
FRAME_OVERHEAD: Final = 2 + 2 + 255  # batch length + type/length bytes + the longest node id
MAX_PACKET: Final = 0xFFFF - 2 - 255  # a frame (type, length, node id, packet) in a batch
UDP_SEGMENT: Final = 103  # setsockopt/cmsg SOL_UDP: GSO segment size (Linux >= 4.18)
GSO_SEGMENTS: Final = 64  # the kernel's UDP_MAX_SEGMENTS on older kernels
GSO_BYTES: Final = 65000  # one GSO send is one UDP datagram of at most 65507 bytes of payload
_SEGMENT: Final = struct.Struct("=H").pack
SO_SNDBUFFORCE: Final = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)


def _grow_buffers(sock: socket.socket) -> None:
    """Big socket buffers: a burst from the tunnel (a TCP window's worth of datagrams) must
    wait here for the relay writer rather than overflow (the relay bench saw thousands of
    receive-buffer overflows with the default ~200 KiB). Root may exceed rmem_max (FORCE)."""
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


def _batches(items: list[tuple[str, bytes]]) -> Iterator[list[tuple[str, bytes]]]:
    """`items` in order, cut into runs whose relay message stays under `BATCH_BYTES`."""
    start, size = 0, 0
    for end, (_, packet) in enumerate(items):
        grown = size + len(packet) + FRAME_OVERHEAD
        if grown > BATCH_BYTES and end > start:
            yield items[start:end]
            start, grown = end, len(packet) + FRAME_OVERHEAD
        size = grown
    if start < len(items):
        yield items[start:] if start else items


class _PeerSocket:
    """One relayed peer's loopback socket (non-blocking, watched by the event loop)."""

    __slots__ = ("endpoint", "loop", "node_id", "sock")

    def __init__(self, node_id: str, sock: socket.socket, loop: asyncio.AbstractEventLoop) -> None:
        self.node_id = node_id
        self.sock = sock
        self.loop = loop
        port = int(sock.getsockname()[1])
        self.endpoint = UnderlayEndpoint(ipaddress.IPv4Address(LOOPBACK), port)

    def close(self) -> None:
        with contextlib.suppress(RuntimeError, ValueError, OSError):
            self.loop.remove_reader(self.sock.fileno())
        self.sock.close()


class RelayBridge:
    """Loopback endpoints for relayed peers, spliced onto one relay session at a time."""

    def __init__(self, tunnel_port: Callable[[], int | None]) -> None:
        self._tunnel_port = tunnel_port
        self._sockets: dict[str, _PeerSocket] = {}
        self._outbound: list[tuple[str, bytes]] = []
        self._inbound: list[tuple[_PeerSocket, bytes]] = []
        self._gso = True
        self._wake = asyncio.Event()
        self.allowed: Callable[[str], bool] = lambda _node: False
        self.to_relay = 0
        self.from_relay = 0
        self.dropped = 0

    # --- endpoints ------------------------------------------------------------------------------

    async def endpoint_for(self, node_id: str) -> UnderlayEndpoint:
        """The loopback endpoint the tunnel should use for `node_id` (bound on first use)."""
        peer = self._sockets.get(node_id)
        if peer is None:
            loop = asyncio.get_running_loop()
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setblocking(False)
                sock.bind((LOOPBACK, 0))
                _grow_buffers(sock)
                peer = _PeerSocket(node_id, sock, loop)
                loop.add_reader(sock.fileno(), self._readable, peer)
            except BaseException:
                sock.close()
                raise
            self._sockets[node_id] = peer
        return peer.endpoint

    def is_bridge_endpoint(self, endpoint: UnderlayEndpoint | None) -> bool:
        """True when `endpoint` is one of the bridge's loopback sockets."""
        return endpoint is not None and any(p.endpoint == endpoint for p in self._sockets.values())

    def keep_only(self, node_ids: set[str]) -> None:
        """Close the sockets of nodes no longer in the peer map."""
        for node_id in set(self._sockets) - node_ids:
            self._sockets.pop(node_id).close()

    # --- data path ------------------------------------------------------------------------------

    def _readable(self, peer: _PeerSocket) -> None:
        """The tunnel sent to `peer`'s socket: queue a run of datagrams for the relay writer."""
        port = self._tunnel_port()
        outbound, node_id, recvfrom = self._outbound, peer.node_id, peer.sock.recvfrom
        for _ in range(READ_RUN):
            try:
                data, addr = recvfrom(MAX_DATAGRAM)
            except OSError:  # BlockingIOError: drained
                break
            if port is None or addr[0] != LOOPBACK or addr[1] != port:
                self.dropped += 1  # only the tunnel itself may use the bridge
                continue
            if len(outbound) >= QUEUE_PACKETS or len(data) > MAX_PACKET:
                self.dropped += 1
                continue
            outbound.append((node_id, data))
        if outbound:
            self._wake.set()

    async def _deliver_new(self, node_id: str) -> _PeerSocket | None:
        """The socket for a node the relay delivers from before the tunnel used it."""
        if not self.allowed(node_id):
            return None
        await self.endpoint_for(node_id)
        return self._sockets.get(node_id)

    async def run(self, session: RelaySession) -> None:
        """Splice the sockets onto `session` until it ends (its error propagates)."""
        writer = asyncio.create_task(self._write(session), name="relay-bridge-writer")
        loop, sockets, inbound = asyncio.get_running_loop(), self._sockets, self._inbound
        try:
            while True:
                node_id, packet = await session.receive()
                peer = sockets.get(node_id) or await self._deliver_new(node_id)
                if peer is None:
                    self.dropped += 1
                    continue
                if not inbound:  # the first of a run: flush once the session's queue is empty
                    loop.call_soon(self._flush)
                elif len(inbound) >= QUEUE_PACKETS:
                    self._flush()
                inbound.append((peer, packet))
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    def _flush(self) -> None:
        """Hand the tunnel what the relay delivered: consecutive datagrams of one peer and one
        size leave in one `sendmsg` with UDP GSO (the kernel splits them back into the same
        datagrams), the rest one `sendto` each; a full buffer drops and counts."""
        inbound, port = self._inbound, self._tunnel_port()
        items = inbound[:]
        inbound.clear()
        if port is None:
            self.dropped += len(items)
            return
        address, at, count = (LOOPBACK, port), 0, len(items)
        while at < count:
            peer, packet = items[at]
            size, end = len(packet), at + 1
            if self._gso and size:
                last = min(count, at + GSO_SEGMENTS, at + GSO_BYTES // max(size, 1))
                while end < last and items[end][0] is peer and len(items[end][1]) == size:
                    end += 1
            self._send(peer.sock, [item[1] for item in items[at:end]], size, address)
            at = end

    def _send(
        self, sock: socket.socket, packets: list[bytes], size: int, address: tuple[str, int]
    ) -> None:
        """Send `packets` (one, or several of `size` bytes as one GSO run) to the tunnel."""
        try:
            if len(packets) == 1:
                sock.sendto(packets[0], address)
            else:
                sock.sendmsg(packets, [(socket.SOL_UDP, UDP_SEGMENT, _SEGMENT(size))], 0, address)
        except BlockingIOError:  # the tunnel's buffer is full
            self.dropped += len(packets)
            return
        except OSError:
            if len(packets) == 1:
                self.dropped += 1
                return
            self._gso = False  # a kernel without UDP GSO: one datagram per call from now on
            _log.info("relay.bridge_gso_unavailable")
            for packet in packets:
                self._send(sock, [packet], size, address)
            return
        self.from_relay += len(packets)

    async def _write(self, session: RelaySession) -> None:
        """Send what the tunnel queued since the last write; a burst leaves as one message."""
        wake = self._wake
        while True:
            await wake.wait()
            wake.clear()
            items, self._outbound = self._outbound, []
            for batch in _batches(items):
                await session.send_many(batch)
                self.to_relay += len(batch)

    def close(self) -> None:
        """Close every socket."""
        self.keep_only(set())
