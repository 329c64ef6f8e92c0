"""Peer-map use case: GET /v1/peermap?after=N, a long poll answered from the cached network.

The one rule: a node gets the map of exactly its own policy view, signed, with a serial above
the one it has, and only while it is active. Long polls subscribe to `PeerMapWaiters` before
reading their serial, so no wake-up is lost; the woken ones are answered in batches
(`map_batch.PeerMapBatcher`): one store read and one assembly pass per wake-up, under the
writer lock so the whole batch sees one consistent network. Relays come from the settings and
go into every map, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Sequence

from rustynet.application.control.context import ControlContext
from rustynet.application.control.guards import Guards
from rustynet.application.control.map_batch import DEFAULT_SLICE, MapAssembler, PeerMapBatcher
from rustynet.application.control_types import NodeAuth, PeerMapResponse
from rustynet.application.errors import RateLimited, Unauthorized, ValidationError
from rustynet.application.waiters import TooManyWaiters
from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.netmap import seal_peer_map
from rustynet.ports.store import NodeStatus


class PeerMaps:
    """Long polls and the batched, signed maps they are answered with."""

    def __init__(self, ctx: ControlContext, guards: Guards) -> None:
        self.ctx = ctx
        self.guards = guards
        self._batcher = PeerMapBatcher(self._maps_after)

    async def peer_map(
        self, auth: NodeAuth, after: int, timeout: float | None = None
    ) -> PeerMapResponse | None:
        """GET /v1/peermap?after=N: at once if the serial is above N, else wait; None means 204."""
        if type(after) is not int or after < 0:
            raise ValidationError.at("/after", "a non-negative integer")
        node = await self.guards.node(auth)
        wait = self.ctx.settings.long_poll_timeout.total_seconds() if timeout is None else timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max(0.0, wait)
        try:
            subscription = self.ctx.waiters.subscribe(node.id)
        except TooManyWaiters:
            raise RateLimited(5, "too many peer-map requests are waiting") from None
        with subscription:
            while True:
                response = await self._map_after(node.id, after)
                if response is not None:
                    return response
                remaining = deadline - loop.time()
                if remaining <= 0 or not await subscription.wait(remaining):
                    return None
                subscription.event.clear()

    async def _map_after(self, node_id: str, after: int) -> PeerMapResponse | None:
        # Through the batcher: requests woken together share one store read and one assembly
        # pass (map_batch.py); each still gets exactly its own answer.
        response = await self._batcher.read(node_id, after)
        if response is not None and not isinstance(response, PeerMapResponse):
            raise LocalProtocolError("the peer-map batch answered something else")
        return response

    async def _maps_after(
        self, requests: Sequence[tuple[str, int]]
    ) -> AsyncGenerator[list[object], None]:
        """One batch, in slices: for each (node, after) its map, None (not newer) or
        Unauthorized. Holds the writer lock until the last slice (one consistent network)."""
        ctx = self.ctx
        now = ctx.clock.now()
        async with ctx.lock:
            async with ctx.store.unit_of_work() as uow:
                # The store decides, for the whole batch in one read: is the node active, and
                # what is its serial; then the cached network, validated in the same unit.
                serials = await uow.serials.get_active([node_id for node_id, _ in requests])
                net = await ctx.net_state(uow)
                fresh = {
                    node_id: await uow.nodes.get(node_id)
                    for node_id in serials
                    if node_id not in net.nodes
                }
            settings = ctx.settings
            assembler = MapAssembler(
                net.nodes, settings.relays, now, settings.peer_map_ttl, settings.stun_servers
            )
            trust = ctx.trust()
            done: dict[str, PeerMapResponse] = {}
            out: list[object] = []
            for node_id, after in requests:
                serial = serials.get(node_id)
                node = net.nodes.get(node_id) or fresh.get(node_id)
                if serial is None or node is None or node.state is not NodeStatus.ACTIVE:
                    out.append(Unauthorized())
                    continue
                if serial <= after:
                    out.append(None)
                    continue
                response = done.get(node_id)
                if response is None:
                    view = net.index.view(node_id)
                    peer_map = assembler.build(
                        node, view.visible_peers, view.inbound, serial, net.version
                    )
                    envelope = seal_peer_map(ctx.keys.signing, peer_map, now)
                    response = done[node_id] = PeerMapResponse(envelope.to_text(), trust, serial)
                    if len(done) % DEFAULT_SLICE == 0:
                        yield out
                        out = []
                out.append(response)
            yield out
