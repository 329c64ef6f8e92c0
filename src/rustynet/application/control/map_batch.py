"""Peer-map long polls answered in batches: one store read and one assembly pass per wake-up.

The one rule: a batch changes HOW answers are computed, never WHAT they are. Every request in
a batch gets exactly what it would get alone: the store says (in one read, inside one unit of
work) whether its node is still active and what its serial is; a node that is not active gets
its own `Unauthorized`; a node whose serial is not above the request's `after` gets None.

Theory of operation. A policy change wakes every long poll at once. Alone, each woken request
took the service lock, ran its own unit of work (BEGIN, node, serial, policy version, network
generation, COMMIT: six thread hops on SQLite) and assembled its map from scratch, so the last
of 1,000 answered seconds later. Here a woken request `read`s through `PeerMapBatcher`: it
queues its (node, after) and awaits a future; one drain task takes everything queued since
the last pass (all requests woken in the same loop iteration land in one batch), hands the
batch to the compute callback (the service: one unit of work, then the maps, `DEFAULT_SLICE`
at a time) and settles each slice as it comes, yielding to the event loop in between, so the
first answers are on the wire (and the clients, on the other core, read them) while later maps
are still being signed. Requests queued while a pass runs form the next batch.
`MapAssembler` memoizes, within one pass (one `now`, one compiled network), the parts that
many maps share: each peer's entry and each inbound rule's payload form.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta

from rustynet.application.control.projections import addresses
from rustynet.domain.netmap import InboundRule, PeerEntry, PeerMap, RelayEntry, SelfEntry
from rustynet.domain.policy_compile import FilterRule
from rustynet.ports.store import NodeRecord

Request = tuple[str, int]  # (node id, after)
Outcome = object  # per request: a response, None, or an exception to raise in that request
Compute = Callable[[Sequence[Request]], AsyncGenerator[Sequence[Outcome], None]]

DEFAULT_SLICE = 32  # maps per slice: settled (and sent) before the next slice is built


class PeerMapBatcher:
    """Coalesces concurrent peer-map reads into batches for one `compute` callback.

    `compute(requests)` is an async iterator of outcome slices: concatenated, one outcome per
    request, in order (a value to return, or a `BaseException` instance to raise in that
    request, e.g. Unauthorized for a revoked node). Each slice is settled as soon as it is
    yielded, so the first answers are on the wire while later maps are still being built. If
    `compute` raises, every request of the batch not yet settled gets the exception.
    """

    def __init__(self, compute: Compute) -> None:
        self._compute = compute
        self._queue: list[tuple[Request, asyncio.Future[object]]] = []
        self._drain: asyncio.Task[None] | None = None
        self.batches = 0  # passes run (for tests)

    async def read(self, node_id: str, after: int) -> object:
        """Queue one read and wait for its outcome (raised if it is an exception)."""
        future: asyncio.Future[object] = asyncio.get_running_loop().create_future()
        self._queue.append(((node_id, after), future))
        if self._drain is None or self._drain.done():
            self._drain = asyncio.create_task(self._run())
        return await future

    async def _run(self) -> None:
        while self._queue:
            batch = [(r, f) for r, f in self._queue if not f.done()]  # skip cancelled reads
            self._queue = []
            if batch:
                self.batches += 1
                await self._pass(batch)

    async def _pass(self, batch: list[tuple[Request, asyncio.Future[object]]]) -> None:
        futures = [f for _, f in batch]
        settled = 0
        slices = self._compute([r for r, _ in batch])
        try:
            async for outcomes in slices:
                if settled + len(outcomes) > len(futures):
                    raise RuntimeError("compute answered more requests than it was given")  # noqa: TRY301 - settles every future below
                for future, outcome in zip(
                    futures[settled : settled + len(outcomes)], outcomes, strict=True
                ):
                    if future.done():
                        continue
                    if isinstance(outcome, BaseException):
                        future.set_exception(outcome)
                    else:
                        future.set_result(outcome)
                settled += len(outcomes)
                await asyncio.sleep(0)  # let the settled requests write their answers
            if settled != len(futures):
                raise RuntimeError("compute answered fewer requests than it was given")  # noqa: TRY301 - settles every future below
        except Exception as exc:  # noqa: BLE001 - handed to every waiting request
            for future in futures[settled:]:
                if not future.done():
                    future.set_exception(exc)
        finally:
            await slices.aclose()


class MapAssembler:
    """Builds peer maps for one pass: one `now`, one compiled network, shared parts memoized.

    Same result as `netmap.build_peer_map` (peers sorted by id, times in whole seconds, peers
    whose tunnel key expired left out); only the per-peer and per-rule work is done once.
    """

    def __init__(
        self,
        nodes: Mapping[str, NodeRecord],
        relays: Sequence[RelayEntry],
        now: datetime,
        ttl: timedelta,
        stun: Sequence[str] = (),
    ) -> None:
        self._nodes = nodes
        self._stun = tuple(stun)
        self._relays = tuple(relays)
        self._relay_ids = tuple(r.id for r in relays)
        self._now = now
        self._issued = now.astimezone(UTC).replace(microsecond=0)
        self._ttl = ttl
        self._peers: dict[str, PeerEntry | None] = {}
        self._rules: dict[FilterRule, InboundRule] = {}

    def peer(self, peer_id: str) -> PeerEntry | None:
        """The entry of a visible peer (None: unknown or its tunnel key expired)."""
        if peer_id in self._peers:
            return self._peers[peer_id]
        node = self._nodes.get(peer_id)
        entry = None
        if node is not None and node.tunnel_key_expires_at > self._now:
            entry = PeerEntry(
                id=node.id,
                name=node.name,
                overlay_addresses=addresses(node),
                tunnel_key=node.tunnel_key,
                tunnel_key_expires_at=node.tunnel_key_expires_at,
                candidates=node.candidates,
                relays=self._relay_ids,
                nat=node.nat_classification,
            )
        self._peers[peer_id] = entry
        return entry

    def rule(self, rule: FilterRule) -> InboundRule:
        """The payload form of one compiled filter rule."""
        found = self._rules.get(rule)
        if found is None:
            found = self._rules[rule] = InboundRule.from_filter(rule)
        return found

    def build(
        self,
        node: NodeRecord,
        visible: frozenset[str],
        inbound: Sequence[FilterRule],
        serial: int,
        policy_version: int,
    ) -> PeerMap:
        """`node`'s map at `serial`."""
        peers = [p for p in map(self.peer, visible) if p is not None]
        peers.sort(key=lambda p: p.id)
        return PeerMap(
            addressee=node.id,
            serial=serial,
            issued_at=self._issued,
            expires_at=self._issued + self._ttl,
            policy_version=policy_version,
            self_entry=SelfEntry(
                id=node.id,
                name=node.name,
                overlay_addresses=addresses(node),
                tunnel_key=node.tunnel_key,
                tags=tuple(sorted(t.value for t in node.tags)),
            ),
            peers=tuple(peers),
            inbound=tuple(self.rule(r) for r in inbound),
            relays=self._relays,
            stun=self._stun,
        )
