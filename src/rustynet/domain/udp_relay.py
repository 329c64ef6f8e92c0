"""UDP relay sessions: allocations (a port pair per peer pair) and the bind packet that ties a
side's port to the source address its tunnel sends from (docs/relay-protocol.md, "UDP relay
sessions"). Pure rules, no I/O: the relay adapter (`adapters/relay/udp_sessions.py`) feeds it
asks from authenticated sessions and the bind datagrams its sockets receive.

The one rule: a side's source is learnt ONLY from a bind packet whose HMAC-SHA256, keyed with
that side's random bind key (told to that side's node only, over its authenticated session),
covers the magic, the allocation id, the relay port and a counter strictly greater than the
last accepted one. Whoever sends first without the key binds nothing; a replayed bind (same or
lower counter, from anywhere) is ignored; a valid bind from a new source re-binds (NAT
rebinding). An allocation lives until the earlier of its two sides' relay-token expiries
(renewed with the token) and is bounded per asking node and in total. What the forwarder still
has to apply is kept in a `ForwardingQueue`: one entry per allocation, removals and new binds
ahead of expiry refreshes.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import struct
from collections.abc import Iterator
from datetime import datetime
from itertools import islice
from typing import Final

import attrs

from rustynet.domain.entropy import Entropy
from rustynet.domain.errors import DecodeError, LocalProtocolError
from rustynet.domain.keys import b64decode, b64encode

BIND_MAGIC: Final = b"RNB1"  # first byte 0x52: never a tunnel message type (1-4, then 0 0 0)
ALLOCATION_ID_BYTES: Final = 16
BIND_KEY_BYTES: Final = 32
MAC_BYTES: Final = 32
_HEAD: Final = struct.Struct("!4s16sQ")
BIND_PACKET_BYTES: Final = _HEAD.size + MAC_BYTES  # 60
MAX_NODE_ID: Final = 64

Source = tuple[str, int]


class AllocationRefusedError(Exception):
    """An ask the relay will not serve: `reason` is a fixed word for the answer and logs."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _positive(_instance: object, attribute: attrs.Attribute[int], value: int) -> None:
    if value <= 0:
        raise LocalProtocolError(f"{attribute.name} must be positive")


@attrs.frozen
class UdpRelayLimits:
    """Ports the relay hands out (inclusive range) and how many allocations it keeps."""

    port_first: int = attrs.field(default=40000, validator=_positive)
    port_last: int = attrs.field(default=40999, validator=_positive)
    per_node: int = attrs.field(default=16, validator=_positive)
    total: int = attrs.field(default=500, validator=_positive)

    def __attrs_post_init__(self) -> None:
        if not 1024 <= self.port_first <= self.port_last <= 65535:
            raise LocalProtocolError("the UDP relay port range must lie within 1024-65535")
        if 2 * self.total > self.port_last - self.port_first + 1:
            raise LocalProtocolError("the port range cannot hold `total` port pairs")


def bind_mac(key: bytes, allocation_id: bytes, port: int, counter: int) -> bytes:
    """HMAC-SHA256 of a bind packet's head and the relay port it is sent to."""
    message = _HEAD.pack(BIND_MAGIC, allocation_id, counter) + port.to_bytes(2, "big")
    return hmac.new(key, message, hashlib.sha256).digest()


def bind_packet(key: bytes, allocation_id: bytes, port: int, counter: int) -> bytes:
    """The datagram a node sends from its tunnel port to relay `port` to bind its side."""
    if len(allocation_id) != ALLOCATION_ID_BYTES or not 0 < counter < 2**64:
        raise LocalProtocolError("bad allocation id or counter")
    head = _HEAD.pack(BIND_MAGIC, allocation_id, counter)
    return head + bind_mac(key, allocation_id, port, counter)


class BindOutcome(enum.Enum):
    """What a received datagram did to its allocation."""

    BOUND = "bound"  # first source of this side
    REBOUND = "rebound"  # a new source replaced the old one
    REFRESHED = "refreshed"  # same source again (counter advanced)
    REFUSED = "refused"  # not a valid, fresh bind for this port: ignored


@attrs.define(eq=False)
class Side:
    """One node's half of an allocation: the relay port it sends to and what it bound."""

    node_id: str
    port: int
    key: bytes = attrs.field(repr=False)
    expires_at: datetime
    asked: bool = False
    source: Source | None = None
    counter: int = 0


@attrs.define(eq=False)
class Allocation:
    """A port pair for one peer pair; `first` is the node that asked first."""

    allocation_id: bytes
    first: Side
    second: Side

    @property
    def sides(self) -> tuple[Side, Side]:
        """Both sides, first asker first."""
        return (self.first, self.second)

    @property
    def expires_at(self) -> datetime:
        """The earlier side's token expiry."""
        return min(self.first.expires_at, self.second.expires_at)

    @property
    def active(self) -> bool:
        """Both sides bound: the relay forwards between them."""
        return self.first.source is not None and self.second.source is not None

    def side_of(self, node_id: str) -> Side:
        """`node_id`'s side (it must be one of the two)."""
        return self.first if self.first.node_id == node_id else self.second

    def other(self, side: Side) -> Side:
        """The side facing `side`."""
        return self.second if side is self.first else self.first


@attrs.frozen
class UdpGrant:
    """What the relay tells one node about its side (the `udp_allocation` message)."""

    peer: str
    allocation_id: bytes
    relay_address: str
    relay_port: int
    bind_key: bytes = attrs.field(repr=False)
    expires_at: datetime

    @classmethod
    def of(cls, allocation: Allocation, side: Side, relay_address: str) -> UdpGrant:
        """The grant for `side` of `allocation`."""
        peer = allocation.other(side).node_id
        return cls(
            peer, allocation.allocation_id, relay_address, side.port, side.key,
            allocation.expires_at,
        )  # fmt: skip

    def to_message(self) -> dict[str, object]:
        """The wire form (docs/relay-protocol.md)."""
        return {
            "type": "udp_allocation",
            "peer": self.peer,
            "allocation": b64encode(self.allocation_id),
            "relay_address": self.relay_address,
            "relay_port": self.relay_port,
            "bind_key": b64encode(self.bind_key),
            "expires_at": self.expires_at.isoformat(),
        }

    @classmethod
    def from_message(cls, message: object) -> UdpGrant:
        """Parse a `udp_allocation` message; `DecodeError` when anything is off."""
        keys = {"type", "peer", "allocation", "relay_address", "relay_port", "bind_key"}
        if not isinstance(message, dict) or set(message) != keys | {"expires_at"}:
            raise DecodeError("not a udp_allocation message")
        try:
            grant = cls(
                str(message["peer"]),
                b64decode(str(message["allocation"])),
                str(message["relay_address"]),
                int(message["relay_port"]),
                b64decode(str(message["bind_key"])),
                datetime.fromisoformat(str(message["expires_at"])),
            )
        except (TypeError, ValueError) as exc:
            raise DecodeError("malformed udp_allocation message") from exc
        if len(grant.allocation_id) != ALLOCATION_ID_BYTES or len(grant.bind_key) != BIND_KEY_BYTES:
            raise DecodeError("udp_allocation with a bad id or key length")
        return grant

    def bind_packet(self, counter: int) -> bytes:
        """The bind datagram for this side (send it from the tunnel port)."""
        return bind_packet(self.bind_key, self.allocation_id, self.relay_port, counter)


def _valid_node_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and 0 < len(value) <= MAX_NODE_ID
        and value.isascii()
        and value.isprintable()
    )


class AllocationTable:
    """Every allocation of one relay, by peer pair and by port."""

    def __init__(self, limits: UdpRelayLimits, entropy: Entropy) -> None:
        self.limits = limits
        self._entropy = entropy
        self._by_pair: dict[frozenset[str], Allocation] = {}
        self._by_port: dict[int, tuple[Allocation, Side]] = {}
        self._by_id: dict[bytes, Allocation] = {}
        self._asked: dict[str, int] = {}
        self._free = list(range(limits.port_last, limits.port_first - 1, -1))  # pop() = lowest

    def __len__(self) -> int:
        return len(self._by_pair)

    def __iter__(self) -> Iterator[Allocation]:
        return iter(list(self._by_pair.values()))

    def ask(self, node_id: str, peer: object, expires_at: datetime) -> tuple[Allocation, Side]:
        """`node_id` (authenticated, token valid until `expires_at`) asks for a UDP session to
        `peer`: the pair's allocation (made now if it is the first ask) and the asker's side.
        Raises `AllocationRefusedError` for a bad peer id or when a bound is reached."""
        if not _valid_node_id(peer) or peer == node_id:
            raise AllocationRefusedError("bad_peer")
        assert isinstance(peer, str)
        allocation = self._by_pair.get(frozenset((node_id, peer)))
        if allocation is not None:
            side = allocation.side_of(node_id)
            if not side.asked:
                side.asked = True
                self._asked[node_id] = self._asked.get(node_id, 0) + 1
            side.expires_at = expires_at
            return allocation, side
        if self._asked.get(node_id, 0) >= self.limits.per_node:
            raise AllocationRefusedError("node_limit")
        if len(self._by_pair) >= self.limits.total:
            raise AllocationRefusedError("relay_full")
        allocation_id = self._random(ALLOCATION_ID_BYTES)
        mine = Side(node_id, self._free.pop(), self._random(BIND_KEY_BYTES), expires_at, True)
        theirs = Side(peer, self._free.pop(), self._random(BIND_KEY_BYTES), expires_at)
        allocation = Allocation(allocation_id, mine, theirs)
        self._by_pair[frozenset((node_id, peer))] = allocation
        self._by_id[allocation_id] = allocation
        self._by_port[mine.port] = (allocation, mine)
        self._by_port[theirs.port] = (allocation, theirs)
        self._asked[node_id] = self._asked.get(node_id, 0) + 1
        return allocation, mine

    def get(self, allocation_id: bytes) -> Allocation | None:
        """The live allocation with this id, if any."""
        return self._by_id.get(allocation_id)

    def _random(self, n: int) -> bytes:
        value = self._entropy.token_bytes(n)
        if len(value) != n:
            raise LocalProtocolError("entropy returned the wrong number of bytes")
        return value

    def bind(self, port: int, source: Source, data: bytes) -> tuple[BindOutcome, Allocation | None]:
        """A datagram from `source` arrived at relay `port`: bind that side if it is a valid,
        fresh bind packet for it, else REFUSED (nothing changes)."""
        found = self._by_port.get(port)
        if found is None or len(data) != BIND_PACKET_BYTES:
            return BindOutcome.REFUSED, None
        allocation, side = found
        magic, allocation_id, counter = _HEAD.unpack_from(data)
        expected = bind_mac(side.key, allocation.allocation_id, port, counter)
        valid = hmac.compare_digest(expected, data[_HEAD.size :])
        fresh = allocation_id == allocation.allocation_id and counter > side.counter
        if magic != BIND_MAGIC or not side.asked or not valid or not fresh:
            return BindOutcome.REFUSED, None
        side.counter = counter
        previous, side.source = side.source, source
        if previous is None:
            return BindOutcome.BOUND, allocation
        if previous != source:
            return BindOutcome.REBOUND, allocation
        return BindOutcome.REFRESHED, allocation

    def renew(self, node_id: str, expires_at: datetime) -> list[Allocation]:
        """`node_id` renewed its token: its sides (that it asked for) live until `expires_at`."""
        changed = []
        for allocation in self._by_pair.values():
            for side in allocation.sides:
                if side.node_id == node_id and side.asked:
                    side.expires_at = expires_at
                    changed.append(allocation)
        return changed

    def expire(self, now: datetime) -> list[Allocation]:
        """Remove and return every allocation whose expiry has passed."""
        gone = [a for a in self._by_pair.values() if a.expires_at <= now]
        for allocation in gone:
            self.remove(allocation)
        return gone

    def remove_node(self, node_id: str) -> list[Allocation]:
        """`node_id` has no session left: remove and return every allocation it is part of."""
        gone = [a for a in self._by_pair.values() if node_id in (a.first.node_id, a.second.node_id)]
        for allocation in gone:
            self.remove(allocation)
        return gone

    def remove(self, allocation: Allocation) -> None:
        """Forget `allocation` and return its ports to the pool. Idempotent."""
        pair = frozenset((allocation.first.node_id, allocation.second.node_id))
        if self._by_pair.get(pair) is not allocation:
            return
        del self._by_pair[pair]
        del self._by_id[allocation.allocation_id]
        for side in allocation.sides:
            del self._by_port[side.port]
            self._free.append(side.port)
            if side.asked:
                self._asked[side.node_id] -= 1
                if not self._asked[side.node_id]:
                    del self._asked[side.node_id]
        self._free.sort(reverse=True)


@attrs.frozen
class ForwardingBatch:
    """One drain of a `ForwardingQueue`: what the forwarder applies together."""

    installs: tuple[Allocation, ...] = ()  # sources bound or changed: forward between them
    refreshes: tuple[Allocation, ...] = ()  # only the expiry moved (a renewal)
    removals: tuple[Allocation, ...] = ()  # stop forwarding now

    def __len__(self) -> int:
        return len(self.installs) + len(self.refreshes) + len(self.removals)


class ForwardingQueue:
    """The forwarder's pending work, at most one entry per allocation: a removal replaces
    whatever was pending for it, an install replaces a pending refresh (it carries the current
    expiry too), a refresh or install already pending absorbs another. Removals and installs
    are urgent: every drain takes all of them, refreshes only up to a limit, oldest first, so
    a revocation's teardown or a new pair's install never waits behind a renewal storm."""

    def __init__(self) -> None:
        self._urgent: dict[bytes, tuple[bool, Allocation]] = {}  # id -> (removal?, allocation)
        self._refreshes: dict[bytes, Allocation] = {}

    def __len__(self) -> int:
        return len(self._urgent) + len(self._refreshes)

    def install(self, allocation: Allocation) -> None:
        """Both sides are bound, or a side re-bound."""
        key = allocation.allocation_id
        if key not in self._urgent:
            self._refreshes.pop(key, None)
            self._urgent[key] = (False, allocation)

    def refresh(self, allocation: Allocation) -> None:
        """The active allocation's expiry moved."""
        if allocation.allocation_id not in self._urgent:
            self._refreshes.setdefault(allocation.allocation_id, allocation)

    def remove(self, allocation: Allocation) -> None:
        """The allocation is gone."""
        key = allocation.allocation_id
        self._refreshes.pop(key, None)
        self._urgent[key] = (True, allocation)

    def take(self, refresh_limit: int) -> ForwardingBatch:
        """Every urgent entry and at most `refresh_limit` refreshes, removed from the queue."""
        urgent, self._urgent = self._urgent, {}
        refreshes = tuple(islice(self._refreshes.values(), refresh_limit))
        for allocation in refreshes:
            del self._refreshes[allocation.allocation_id]
        return ForwardingBatch(
            installs=tuple(a for removal, a in urgent.values() if not removal),
            refreshes=refreshes,
            removals=tuple(a for removal, a in urgent.values() if removal),
        )
