"""The userspace fallback for UDP relay sessions, when the kernel path is unavailable (no
CAP_NET_ADMIN, forwarding off): one thread per allocation owns its two sockets, forwards
between the two bound sources with batched I/O, and hands bind packets to the event loop.

The one rule: no per-packet event-loop work and no per-packet syscall pair where the kernel can
batch: each socket has UDP_GRO on (setsockopt 104; Python 3.11 has no constant), so one
`recvmsg_into` returns a run of same-size datagrams from one flow as one buffer with its
segment size in a control message, and one `sendmsg` with UDP_SEGMENT (103) sends the run on as
the same datagrams. A datagram is forwarded only from the side's bound source to the other
side's bound source, and only while the allocation is installed; a datagram that starts with
the bind magic goes to the event loop (`deliver`, thread-safe) and nowhere else; anything else
is dropped. Payloads are never looked at beyond the magic.
"""

from __future__ import annotations

import asyncio
import contextlib
import selectors
import socket
import struct
import threading
from datetime import datetime
from typing import Final

import structlog
from rustynet.adapters.relay.udp_sessions import Deliver

from rustynet.domain.udp_relay import BIND_MAGIC, Allocation, ForwardingBatch, Side, Source

SOL_UDP: Final = 17
UDP_SEGMENT: Final = 103
UDP_GRO: Final = 104
BUFFER: Final = 65536
_CMSG_SPACE: Final = socket.CMSG_SPACE(4)
_POLL_S: Final = 0.2
_log = structlog.get_logger(__name__)


class _Session(threading.Thread):
    """The forwarding thread of one allocation."""

    def __init__(
        self,
        allocation: Allocation,
        sockets: dict[int, socket.socket],
        deliver: Deliver,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(name=f"udp-relay-{allocation.first.port}", daemon=True)
        self.allocation = allocation
        self.sockets = sockets
        self.installed = False
        self.stopping = False
        self.forwarded = [0, 0]  # datagrams first->second, second->first
        self._deliver = deliver
        self._loop = loop

    def run(self) -> None:
        with selectors.DefaultSelector() as selector:
            for side in self.allocation.sides:
                selector.register(self.sockets[side.port], selectors.EVENT_READ, side)
            buffer = bytearray(BUFFER)
            view = memoryview(buffer)
            while not self.stopping:
                for key, _ in selector.select(_POLL_S):
                    self._drain(key.data, buffer, view)

    def _drain(self, side: Side, buffer: bytearray, view: memoryview) -> None:
        sock = self.sockets[side.port]
        other = self.allocation.other(side)
        out = self.sockets[other.port]
        index = 0 if side is self.allocation.first else 1
        while True:
            try:
                size, ancillary, _, address = sock.recvmsg_into([buffer], _CMSG_SPACE)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                return
            source: Source = (str(address[0]), int(address[1]))
            if buffer[:4] == BIND_MAGIC:
                self._loop.call_soon_threadsafe(
                    self._deliver, side.port, bytes(view[:size]), source
                )
                continue
            destination = other.source
            if not self.installed or source != side.source or destination is None:
                continue
            segment = _segment_size(ancillary)
            controls = []
            if segment and size > segment:
                controls = [(SOL_UDP, UDP_SEGMENT, struct.pack("=H", segment))]
            with contextlib.suppress(OSError):  # a full buffer or a gone peer: dropped
                out.sendmsg([view[:size]], controls, 0, destination)
                self.forwarded[index] += size // segment + bool(size % segment) if segment else 1


def _segment_size(ancillary: list[tuple[int, int, bytes]]) -> int:
    for level, kind, data in ancillary:
        if level == SOL_UDP and kind == UDP_GRO and len(data) >= 4:
            return int(struct.unpack("=i", data[:4])[0])
    return 0


def _socket(address: str, port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        sock.setsockopt(SOL_UDP, UDP_GRO, 1)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 * 1024 * 1024)
        sock.bind((address, port))
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


class UserspaceForwarding:
    """`Ports` and `Forwarding` at once: a thread per allocation, batched UDP I/O."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._sessions: dict[bytes, _Session] = {}

    async def open(self, allocation: Allocation, deliver: Deliver) -> None:
        """Bind both ports and start the allocation's thread (binds only until installed)."""
        sockets: dict[int, socket.socket] = {}
        try:
            for side in allocation.sides:
                sockets[side.port] = _socket(self.address, side.port)
        except OSError:
            for sock in sockets.values():
                sock.close()
            raise
        session = _Session(allocation, sockets, deliver, asyncio.get_running_loop())
        self._sessions[allocation.allocation_id] = session
        session.start()

    def close(self, allocation: Allocation) -> None:
        """Stop the thread (within one poll interval) and close the sockets."""
        session = self._sessions.pop(allocation.allocation_id, None)
        if session is None:
            return
        session.stopping = True
        session.join(timeout=2 * _POLL_S + 1)
        for sock in session.sockets.values():
            sock.close()

    async def apply(self, batch: ForwardingBatch, now: datetime) -> None:
        """`Forwarding`: removals stop their threads forwarding, installs and refreshes start
        them (an expiry needs nothing here: the relay's sweep closes the allocation)."""
        for allocation in batch.removals:
            await self.remove(allocation)
        for allocation in (*batch.installs, *batch.refreshes):
            await self.install(allocation, now)

    async def install(self, allocation: Allocation, now: datetime) -> None:  # noqa: ARG002 - the thread stops at close, the relay's sweep closes at expiry
        """Forward between the bound sources (the thread reads them as they change)."""
        session = self._sessions.get(allocation.allocation_id)
        if session is not None:
            session.installed = True

    async def remove(self, allocation: Allocation) -> None:
        """Stop forwarding now (the sockets go with `close`)."""
        session = self._sessions.get(allocation.allocation_id)
        if session is not None:
            session.installed = False

    def forwarded(self, allocation: Allocation) -> tuple[int, int]:
        """Datagrams forwarded first→second and second→first."""
        session = self._sessions.get(allocation.allocation_id)
        return (0, 0) if session is None else (session.forwarded[0], session.forwarded[1])
