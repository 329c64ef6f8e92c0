"""The shared context of the control-plane use cases: what every use case gets, once per process.

It owns the collaborators (store, keys, clock, entropy, settings, waiters, change feed), the
audit chain's writer, the failure budget (`AuthGuard`), the counters `stats` reports, and the
one writer of the network: `write()` is the unit of work every state change runs in, and the
cached compiled network (`net_state`, `net_put`, `net_remove`, `net_refresh`, `net_replace`)
is only changed inside it.

The one rule: each state change, the serial bumps it causes and its audit entry commit in ONE
unit of work (`write()`), serialized with every other writer on this instance (the lock) and on
every instance (`uow.lock_writers()`); a unit that fails after touching the cache drops the
cache, which is rebuilt from the store on next use, as it is when the stored network
generation or policy version moved (another instance changed it).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Final

import attrs

from rustynet.application.audit_writer import AuditWriter
from rustynet.application.control.auth_guard import AuthGuard
from rustynet.application.control.projections import policy_node
from rustynet.application.control_keys import ControlKeys
from rustynet.application.waiters import PeerMapWaiters
from rustynet.domain.audit_fold import DEFAULT_FOLD_WINDOW, AuditFolder
from rustynet.domain.limits import BucketPolicy, LimitPolicy
from rustynet.domain.netmap import RelayEntry, check_relays
from rustynet.domain.policy import Policy
from rustynet.domain.policy_compile import PolicyIndex, compile_policy
from rustynet.domain.replay import DEFAULT_CAPACITY
from rustynet.domain.signed import parse_canonical_json
from rustynet.domain.stun import check_servers
from rustynet.ports.change_feed import ChangeFeed
from rustynet.ports.clock import Clock
from rustynet.ports.entropy import Entropy
from rustynet.ports.store import NodeRecord, NodeStatus, Store, UnitOfWork
from rustynet.ports.wire.v1 import Trust

ACCESS_TOKEN_LIFETIME: Final = timedelta(seconds=300)
RELAY_TOKEN_LIFETIME: Final = timedelta(seconds=120)
DEFAULT_PEER_MAP_TTL: Final = timedelta(hours=24)
DEFAULT_LONG_POLL: Final = timedelta(seconds=60)
DEFAULT_ADMIN_PER_IP: Final = BucketPolicy(burst=120, refill=60, per=timedelta(minutes=1))


@attrs.frozen
class ControlSettings:
    """Deployment settings the use cases need (W3 fills them from control.toml)."""

    control_url: str
    tls_spki_sha256: bytes = attrs.field(repr=bytes.hex)
    relays: tuple[RelayEntry, ...] = attrs.field(default=(), converter=check_relays)
    stun_servers: tuple[str, ...] = attrs.field(default=(), converter=check_servers)  # peer map
    limits: LimitPolicy = attrs.field(factory=LimitPolicy)
    admin_per_ip: BucketPolicy = DEFAULT_ADMIN_PER_IP  # authenticated admin calls only
    audit_fold_window: timedelta = DEFAULT_FOLD_WINDOW
    peer_map_ttl: timedelta = DEFAULT_PEER_MAP_TTL
    long_poll_timeout: timedelta = DEFAULT_LONG_POLL
    access_token_lifetime: timedelta = ACCESS_TOKEN_LIFETIME
    relay_token_lifetime: timedelta = RELAY_TOKEN_LIFETIME
    nonce_capacity: int = DEFAULT_CAPACITY


@attrs.define
class Net:
    """The cached compiled policy and the active nodes it was compiled over."""

    policy: Policy
    version: int
    index: PolicyIndex
    nodes: dict[str, NodeRecord]
    generation: int


class ControlContext:
    """Store, keys, clock, entropy, settings, waiters and the network cache of one process."""

    def __init__(
        self,
        store: Store,
        keys: ControlKeys,
        clock: Clock,
        entropy: Entropy,
        settings: ControlSettings,
        *,
        waiters: PeerMapWaiters | None = None,
        changes: ChangeFeed | None = None,
    ) -> None:
        self.store = store
        self.keys = keys
        self.clock = clock
        self.entropy = entropy
        self.settings = settings  # replaced as a whole (relays.replace_relays), never mutated
        self.waiters = waiters if waiters is not None else PeerMapWaiters()
        self.changes = changes
        self.lock = asyncio.Lock()  # the writer lock; peer-map assembly takes it too
        self.audit_writer = AuditWriter(keys)
        # Append one audit entry (and a checkpoint when due) in a unit of work under `write`.
        self.audit = self.audit_writer.append
        self.guard = AuthGuard(
            store,
            clock=clock,
            audit=self.audit_writer,
            write=self.write,
            policy=settings.limits,
            admin_bucket=settings.admin_per_ip,
            folder=AuditFolder(settings.audit_fold_window),
        )
        self.enrollments = 0  # completed on this instance (for /metrics)
        self.pending_enrollments = 0  # stored enrollment challenges, as of the last tick
        self._net: Net | None = None
        self._net_touched = False

    @property
    def policy_version(self) -> int:
        """The version of the cached policy (0: none cached or none stored)."""
        return 0 if self._net is None else self._net.version

    @contextlib.asynccontextmanager
    async def write(self) -> AsyncIterator[UnitOfWork]:
        """One unit of work, serialized with every other writer on every instance, that may
        touch the cached index and the audit chain; it bumps the network generation when it
        changed the cached network."""
        async with self.lock:
            self._net_touched = False
            generation: int | None = None
            try:
                async with self.store.unit_of_work() as uow:
                    await uow.lock_writers()
                    yield uow
                    if self._net_touched:
                        generation = await uow.serials.bump_generation()
            except BaseException:
                if self._net_touched:
                    self._net = None  # the cache may hold an uncommitted change
                raise
            if generation is not None and self._net is not None:
                self._net.generation = generation  # the cache is exactly the committed state

    async def net_state(self, uow: UnitOfWork) -> Net:
        """The cached network, rebuilt from `uow` when the stored policy or generation moved."""
        current = await uow.policies.current()
        version = 0 if current is None else current.version
        generation = await uow.serials.generation()
        if (
            self._net is not None
            and self._net.version == version
            and self._net.generation == generation
        ):
            return self._net
        policy = (
            Policy.deny_all()
            if current is None
            else Policy.parse(parse_canonical_json(current.document.encode("utf-8")))
        )
        nodes = {n.id: n for n in await uow.nodes.list_all() if n.state is NodeStatus.ACTIVE}
        index = compile_policy(policy, [policy_node(n) for n in nodes.values()])
        self._net = Net(policy, version, index, nodes, generation)
        return self._net

    async def net_put(self, uow: UnitOfWork, node: NodeRecord) -> frozenset[str]:
        """Add or update an active node (under `write`); the nodes whose maps change."""
        net = await self.net_state(uow)
        self._net_touched = True
        net.nodes[node.id] = node
        return net.index.put(policy_node(node)) | {node.id}

    async def net_remove(self, uow: UnitOfWork, node_id: str) -> frozenset[str]:
        """Drop a node (under `write`); the nodes whose maps change (itself included)."""
        net = await self.net_state(uow)
        if node_id not in net.index:
            return frozenset({node_id})
        self._net_touched = True
        net.nodes.pop(node_id, None)
        return net.index.remove(node_id) | {node_id}

    async def net_refresh(self, uow: UnitOfWork, node: NodeRecord) -> frozenset[str]:
        """Replace a cached node's record whose policy view is unchanged (under `write`); the
        nodes that see it, none if it is not in the network."""
        net = await self.net_state(uow)
        if node.id not in net.index:
            return frozenset()
        self._net_touched = True
        net.nodes[node.id] = node
        return net.index.view(node.id).visible_peers

    def net_replace(self, net: Net) -> None:
        """Make `net` the cached network (under `write`, e.g. a new policy)."""
        self._net_touched = True
        self._net = net

    async def publish(self, uow: UnitOfWork, woken: frozenset[str]) -> None:
        """Bump the serials of the `woken` nodes and announce them to the other instances (in
        `uow`, under `write`); the caller wakes this instance's waiters after the commit."""
        if woken:
            await uow.serials.bump(sorted(woken))
            await uow.announce(woken)

    def trust(self) -> Trust:
        """The certificates a node verifies peer maps with."""
        return Trust(
            root_certificate=self.keys.root_certificate_text,
            signing_certificates=self.keys.signing_certificate_texts(),
        )
