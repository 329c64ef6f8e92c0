"""Admin use case: nodes (list, show, rename and retag, revoke, delete).

The one rule: a node change and the serial bumps of every node whose map it changes commit with
its audit entry in one unit of work; the waiting long polls are woken after the commit. A
revoked node's tokens stop working at once and it leaves every peer map.
"""

from __future__ import annotations

from datetime import datetime

from rustynet.application.control.context import ControlContext
from rustynet.application.control.guards import Guards
from rustynet.application.control.inputs import node_name, tags
from rustynet.application.control.projections import node_info, tag_texts
from rustynet.application.control.relay_revocations import REVOCATION_FEED_KEY
from rustynet.application.control_types import AdminAuth
from rustynet.application.errors import Conflict, NotFoundError
from rustynet.domain.api_keys import AdminAction
from rustynet.ports.store import AlreadyExists, NodeRecord, NodeStatus, UnitOfWork
from rustynet.ports.wire.v1 import NodeInfo, UpdateNodeRequest


class AdminNodes:
    """/v1/admin/nodes."""

    def __init__(self, ctx: ControlContext, guards: Guards) -> None:
        self.ctx = ctx
        self.guards = guards

    async def list_nodes(self, auth: AdminAuth) -> tuple[NodeInfo, ...]:
        """GET /v1/admin/nodes."""
        await self.guards.admin(auth, AdminAction.READ)
        async with self.ctx.store.unit_of_work() as uow:
            return tuple(node_info(n) for n in await uow.nodes.list_all())

    async def get_node(self, auth: AdminAuth, node_id: str) -> NodeInfo:
        """GET /v1/admin/nodes/{id}."""
        await self.guards.admin(auth, AdminAction.READ)
        async with self.ctx.store.unit_of_work() as uow:
            node = await uow.nodes.get(node_id)
        if node is None:
            raise NotFoundError("no such node")
        return node_info(node)

    async def update_node(
        self, auth: AdminAuth, node_id: str, request: UpdateNodeRequest
    ) -> NodeInfo:
        """PATCH /v1/admin/nodes/{id}: rename and/or set tags (wakes affected nodes)."""
        ctx = self.ctx
        admin = await self.guards.admin(auth, AdminAction.WRITE)
        now = ctx.clock.now()
        new_tags = None if request.tags is None else tags(request.tags, "/tags")
        name = None if request.name is None else node_name(request.name, "/name")
        woken: frozenset[str] = frozenset()
        try:
            async with ctx.write() as uow:
                node = await uow.nodes.get(node_id)
                if node is None:
                    raise NotFoundError("no such node")
                if name is not None and name != node.name:
                    node = await uow.nodes.rename(node_id, name)
                if new_tags is not None and new_tags != node.tags:
                    node = await uow.nodes.set_tags(node_id, new_tags)
                if node.state is NodeStatus.ACTIVE:
                    woken = await ctx.net_put(uow, node)
                    await ctx.publish(uow, woken)
                await ctx.audit(
                    uow,
                    now,
                    f"apikey:{admin.id}",
                    "node.updated",
                    node_id,
                    {"name": node.name, "tags": list(tag_texts(node))},
                )
        except AlreadyExists:
            raise Conflict("another node has this name") from None
        ctx.waiters.wake(woken)
        return node_info(node)

    async def _revoke(
        self, uow: UnitOfWork, node_id: str, now: datetime
    ) -> tuple[NodeRecord, frozenset[str]]:
        node = await uow.nodes.get(node_id)
        if node is None:
            raise NotFoundError("no such node")
        woken: frozenset[str] = frozenset()
        if node.state is NodeStatus.ACTIVE:
            node = await uow.nodes.revoke(node_id, now)
            woken = await self.ctx.net_remove(uow, node_id)
            others = sorted(woken - {node_id})
            if others:
                await uow.serials.bump(others)
        return node, woken

    async def revoke_node(self, auth: AdminAuth, node_id: str) -> NodeInfo:
        """POST /v1/admin/nodes/{id}/revoke: tokens stop working, it leaves every peer map."""
        ctx = self.ctx
        admin = await self.guards.admin(auth, AdminAction.WRITE)
        now = ctx.clock.now()
        async with ctx.write() as uow:
            node, woken = await self._revoke(uow, node_id, now)
            await uow.announce(woken | {node_id, REVOCATION_FEED_KEY})
            await ctx.audit(uow, now, f"apikey:{admin.id}", "node.revoked", node_id)
        ctx.waiters.wake(woken | {node_id, REVOCATION_FEED_KEY})  # the relays' feed too
        return node_info(node)

    async def delete_node(self, auth: AdminAuth, node_id: str) -> None:
        """DELETE /v1/admin/nodes/{id}: revoke if needed, then drop it and release its address."""
        ctx = self.ctx
        admin = await self.guards.admin(auth, AdminAction.WRITE)
        now = ctx.clock.now()
        async with ctx.write() as uow:
            _, woken = await self._revoke(uow, node_id, now)
            await uow.nodes.delete(node_id)
            await uow.announce(woken | {node_id, REVOCATION_FEED_KEY})
            await ctx.audit(uow, now, f"apikey:{admin.id}", "node.deleted", node_id)
        ctx.waiters.wake(woken | {node_id, REVOCATION_FEED_KEY})
