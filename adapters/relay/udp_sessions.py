"""UDP relay sessions of one relay process: answering `udp_allocate` asks from authenticated
WebSocket sessions, the bind sockets (one per allocated port), and driving the forwarder
(docs/relay-protocol.md, "UDP relay sessions").

The one rule: the forwarder is told about an allocation only when BOTH sides are bound by a
valid bind packet (`AllocationTable.bind`), is told again on a re-bind and on renewal (new
expiry), and is told to remove it when the allocation expires or a side's node has no session
left. A bind socket only ever reads bind packets: datagrams that are not a valid, fresh bind
for its port are counted and dropped, never answered and never parsed further.

Forwarder work is coalesced (`ForwardingQueue`): one worker drains it, each drain is one
`Forwarding.apply` call (one nft transaction in the kernel), removals and new binds go first
and renewals' expiry refreshes follow at most `REFRESH_BATCH` allocations per drain.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Final, Protocol

import attrs
import structlog

from rustynet.domain.udp_relay import (
    Allocation,
    AllocationRefusedError,
    AllocationTable,
    BindOutcome,
    ForwardingBatch,
    ForwardingQueue,
    Source,
    UdpGrant,
)
from rustynet.ports.clock import Clock

SWEEP_S: Final = 1.0
REFRESH_BATCH: Final = 256  # refreshes per drain: urgent work waits behind at most this many
_log = structlog.get_logger(__name__)


class Forwarding(Protocol):
    """Where bound allocations are forwarded (the kernel, or a userspace loop)."""

    async def apply(self, batch: ForwardingBatch, now: datetime) -> None:
        """Stop forwarding for `batch.removals` now; forward between the two bound sources of
        each of `batch.installs` and `batch.refreshes` until its expiry (replacing what was
        there). A failure for one allocation must not keep the others from being applied."""
        ...


@attrs.define
class UdpCounters:
    """Counters for `/metrics` and tests."""

    allocations: int = 0
    refused_asks: int = 0
    binds: int = 0
    rebinds: int = 0
    refused_binds: int = 0
    installs: int = 0
    refreshes: int = 0
    teardowns: int = 0
    batches: int = 0


Deliver = Callable[[int, bytes, Source], None]


class Ports(Protocol):
    """Who owns an allocation's two UDP sockets and hands bind packets to `deliver`."""

    async def open(self, allocation: Allocation, deliver: Deliver) -> None:
        """Bind both relay ports of `allocation` (OSError when a port cannot be bound)."""
        ...

    def close(self, allocation: Allocation) -> None:
        """Close its sockets (idempotent)."""
        ...


class _BindProtocol(asyncio.DatagramProtocol):
    def __init__(self, deliver: Deliver, port: int) -> None:
        self._deliver = deliver
        self._port = port

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        self._deliver(self._port, data, (str(addr[0]), int(str(addr[1]))))


class BindSockets:
    """`Ports` for kernel forwarding: event-loop sockets that only ever see bind packets (the
    kernel's raw chain lets nothing else through to them)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._sockets: dict[int, asyncio.DatagramTransport] = {}

    async def open(self, allocation: Allocation, deliver: Deliver) -> None:
        loop = asyncio.get_running_loop()
        for side in allocation.sides:
            port = side.port
            transport, _ = await loop.create_datagram_endpoint(
                lambda port=port: _BindProtocol(deliver, port),  # type: ignore[misc]
                local_addr=(self.address, port),
            )
            self._sockets[port] = transport

    def close(self, allocation: Allocation) -> None:
        for side in allocation.sides:
            transport = self._sockets.pop(side.port, None)
            if transport is not None:
                transport.close()


class UdpRelay:
    """Allocations, bind sockets and the forwarder of one relay address."""

    def __init__(
        self,
        address: str,
        table: AllocationTable,
        forwarding: Forwarding,
        clock: Clock,
        ports: Ports | None = None,
    ) -> None:
        self.address = address
        self.table = table
        self.forwarding = forwarding
        self.counters = UdpCounters()
        self._clock = clock
        self._ports = BindSockets(address) if ports is None else ports
        self._pending = ForwardingQueue()
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Start the worker (the forwarder's batches) and the expiry sweep."""
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._worker()), loop.create_task(self._sweep())]

    async def close(self) -> None:
        """Stop the tasks and the sockets; the forwarder's state is the caller's to stop."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for allocation in self.table:
            self._ports.close(allocation)

    async def ask(
        self, node_id: str, message: Mapping[str, object], expires_at: datetime
    ) -> dict[str, object]:
        """Answer one `udp_allocate` message of an authenticated session."""
        peer = message.get("peer")
        if set(message) != {"type", "peer"}:
            self.counters.refused_asks += 1
            return {"type": "udp_refused", "peer": "", "reason": "malformed"}
        known = len(self.table)
        try:
            allocation, side = self.table.ask(node_id, peer, expires_at)
        except AllocationRefusedError as exc:
            self.counters.refused_asks += 1
            _log.info("relay.udp_refused", node=node_id, reason=exc.reason)
            return {"type": "udp_refused", "peer": str(peer)[:64], "reason": exc.reason}
        if len(self.table) > known:
            self.counters.allocations += 1
            try:
                await self._ports.open(allocation, self.datagram)
            except OSError:
                self._drop(allocation)
                self.counters.refused_asks += 1
                return {"type": "udp_refused", "peer": str(peer), "reason": "relay_full"}
            _log.info("relay.udp_allocated", node=node_id, peer=peer, port=side.port)
        elif allocation.active:
            self._queued(self._pending.refresh, allocation)  # the asker's expiry moved
        return UdpGrant.of(allocation, side, self.address).to_message()

    def datagram(self, port: int, data: bytes, source: Source) -> None:
        """A datagram reached bind socket `port` (only bind packets are let through to it)."""
        outcome, allocation = self.table.bind(port, source, data)
        if outcome is BindOutcome.REFUSED or allocation is None:
            self.counters.refused_binds += 1
            return
        if outcome is BindOutcome.REBOUND:
            self.counters.rebinds += 1
        elif outcome is BindOutcome.BOUND:
            self.counters.binds += 1
        if outcome is not BindOutcome.REFRESHED and allocation.active:
            self._queued(self._pending.install, allocation)

    def renew(self, node_id: str, expires_at: datetime) -> None:
        """The node renewed its token: its active allocations get the new expiry."""
        for allocation in self.table.renew(node_id, expires_at):
            if allocation.active:
                self._queued(self._pending.refresh, allocation)

    def node_gone(self, node_id: str) -> None:
        """The node has no session left: tear down every allocation it is part of."""
        for allocation in self.table.remove_node(node_id):
            self._drop(allocation)

    def _drop(self, allocation: Allocation) -> None:
        self.table.remove(allocation)
        self._ports.close(allocation)
        self._queued(self._pending.remove, allocation)

    def _queued(self, change: Callable[[Allocation], None], allocation: Allocation) -> None:
        change(allocation)
        self._idle.clear()
        self._wake.set()

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_S)
            for allocation in self.table.expire(self._clock.now()):
                _log.info("relay.udp_expired", first=allocation.first.node_id)
                self._drop(allocation)

    async def _worker(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._pending:
                await self._apply(self._pending.take(REFRESH_BATCH))
            self._idle.set()

    async def _apply(self, batch: ForwardingBatch) -> None:
        live = [a for a in batch.installs if self.table.get(a.allocation_id) is a]
        fresh = [a for a in batch.refreshes if self.table.get(a.allocation_id) is a]
        batch = ForwardingBatch(tuple(live), tuple(fresh), batch.removals)
        try:
            await self.forwarding.apply(batch, self._clock.now())
        except Exception as exc:  # noqa: BLE001 - a failed rule change must not stop the loop
            _log.warning("relay.udp_forwarding_failed", changes=len(batch), error=str(exc)[:200])
            return
        self.counters.batches += 1
        self.counters.installs += len(batch.installs)
        self.counters.refreshes += len(batch.refreshes)
        self.counters.teardowns += len(batch.removals)

    async def settled(self) -> None:
        """Wait until every queued forwarder change was applied (tests, shutdown)."""
        await self._idle.wait()
