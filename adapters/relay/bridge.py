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
that node (it is in the current peer map); others are dropped. Outbound datagrams wait in
one bounded queue for the session writer: when it is full they are dropped and counted,
never buffered without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import socket
from collections.abc import Callable
from typing import Final, cast

import structlog

from rustynet.domain.tunnel import UnderlayEndpoint
from rustynet.ports.relay import RelaySession

_log = structlog.get_logger("rustynet.relay.bridge")

LOOPBACK: Final = "127.0.0.1"
QUEUE_PACKETS: Final = 2048
SOCKET_BUFFER: Final = 4 * 1024 * 1024
BATCH_BYTES: Final = 48 * 1024  # well under the relay protocol's MAX_BATCH_BYTES (60 KiB)
SO_SNDBUFFORCE: Final = getattr(socket, "SO_SNDBUFFORCE", 32)
SO_RCVBUFFORCE: Final = getattr(socket, "SO_RCVBUFFORCE", 33)


def _grow_buffers(sock: socket.socket | None) -> None:
    """Big socket buffers: a burst from the tunnel (a TCP window's worth of datagrams) must
    wait here for the relay writer rather than overflow (the relay bench saw thousands of
    receive-buffer overflows with the default ~200 KiB). Root may exceed rmem_max (FORCE)."""
    if sock is None:
        return
    for force, plain in ((SO_RCVBUFFORCE, socket.SO_RCVBUF), (SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, SOCKET_BUFFER)
        except OSError:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, plain, SOCKET_BUFFER)


class _PeerSocket(asyncio.DatagramProtocol):
    """One relayed peer's loopback socket."""

    def __init__(self, bridge: RelayBridge, node_id: str) -> None:
        self.bridge = bridge
        self.node_id = node_id
        self.transport: asyncio.DatagramTransport | None = None
        self.endpoint: UnderlayEndpoint | None = None  # where the tunnel sends this peer's packets

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A datagram endpoint's transport (3.11's selector transport does not subclass
        # DatagramTransport, so no isinstance check).
        self.transport = cast("asyncio.DatagramTransport", transport)
        port = int(self.transport.get_extra_info("sockname")[1])
        self.endpoint = UnderlayEndpoint(ipaddress.IPv4Address(LOOPBACK), port)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self.bridge.from_tunnel(self.node_id, data, addr)

    def error_received(self, exc: Exception) -> None:  # noqa: ARG002 - counted, not kept
        self.bridge.dropped += 1


class RelayBridge:
    """Loopback endpoints for relayed peers, spliced onto one relay session at a time."""

    def __init__(self, tunnel_port: Callable[[], int | None]) -> None:
        self._tunnel_port = tunnel_port
        self._sockets: dict[str, _PeerSocket] = {}
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue(QUEUE_PACKETS)
        self.allowed: Callable[[str], bool] = lambda _node: False
        self.to_relay = 0
        self.from_relay = 0
        self.dropped = 0

    # --- endpoints ------------------------------------------------------------------------------

    async def endpoint_for(self, node_id: str) -> UnderlayEndpoint:
        """The loopback endpoint the tunnel should use for `node_id` (bound on first use)."""
        peer = self._sockets.get(node_id)
        if peer is None or peer.transport is None:
            loop = asyncio.get_running_loop()
            transport, protocol = await loop.create_datagram_endpoint(
                lambda: _PeerSocket(self, node_id), local_addr=(LOOPBACK, 0)
            )
            _grow_buffers(transport.get_extra_info("socket"))
            peer = self._sockets[node_id] = protocol
        assert peer.endpoint is not None  # set by connection_made
        return peer.endpoint

    def is_bridge_endpoint(self, endpoint: UnderlayEndpoint | None) -> bool:
        """True when `endpoint` is one of the bridge's loopback sockets."""
        return endpoint is not None and any(p.endpoint == endpoint for p in self._sockets.values())

    def keep_only(self, node_ids: set[str]) -> None:
        """Close the sockets of nodes no longer in the peer map."""
        for node_id in set(self._sockets) - node_ids:
            peer = self._sockets.pop(node_id)
            if peer.transport is not None:
                peer.transport.close()

    # --- data path ------------------------------------------------------------------------------

    def from_tunnel(self, node_id: str, data: bytes, addr: tuple[str | object, ...]) -> None:
        """A datagram the tunnel sent to `node_id`'s socket: queue it for the relay."""
        port = self._tunnel_port()
        if port is None or addr[0] != LOOPBACK or addr[1] != port:
            self.dropped += 1  # only the tunnel itself may use the bridge
            return
        try:
            self._queue.put_nowait((node_id, data))
        except asyncio.QueueFull:
            self.dropped += 1

    async def _deliver(self, node_id: str, packet: bytes) -> None:
        port = self._tunnel_port()
        if port is None:
            self.dropped += 1
            return
        peer = self._sockets.get(node_id)
        if peer is None:
            if not self.allowed(node_id):
                self.dropped += 1
                return
            await self.endpoint_for(node_id)
            peer = self._sockets[node_id]
        if peer.transport is None:
            self.dropped += 1
            return
        peer.transport.sendto(packet, (LOOPBACK, port))
        self.from_relay += 1

    async def run(self, session: RelaySession) -> None:
        """Splice the sockets onto `session` until it ends (its error propagates)."""
        writer = asyncio.create_task(self._write(session), name="relay-bridge-writer")
        try:
            while True:
                node_id, packet = await session.receive()
                await self._deliver(node_id, packet)
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _write(self, session: RelaySession) -> None:
        """Send what the tunnel queued; a burst leaves as one relay message."""
        queue = self._queue
        while True:
            batch = [await queue.get()]
            size = len(batch[0][1])
            while not queue.empty() and size < BATCH_BYTES:
                item = queue.get_nowait()
                batch.append(item)
                size += len(item[1]) + 64
            await session.send_many(batch)
            self.to_relay += len(batch)

    def close(self) -> None:
        """Close every socket."""
        self.keep_only(set())
