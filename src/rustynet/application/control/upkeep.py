"""Operations of a running control plane: the periodic tick, hearing other instances, shutdown,
and the numbers /metrics shows.

Several instances on one database: every write that may touch the network announces the nodes
it wakes through the store; `start()` subscribes the `ChangeFeed` that carries the other
instances' announcements to this instance's waiters (a hint only: the woken long polls re-read
serials and the network generation).
"""

from __future__ import annotations

from rustynet.application.control.context import ControlContext
from rustynet.application.control_types import ControlStats
from rustynet.ports.store import ChallengeKind


class Upkeep:
    """Lifecycle and housekeeping over one `ControlContext`."""

    def __init__(self, ctx: ControlContext) -> None:
        self.ctx = ctx

    async def start(self) -> None:
        """Hear the other instances' changes (the `ChangeFeed`, if any) until `close`."""
        if self.ctx.changes is not None:
            await self.ctx.changes.subscribe(self._on_remote_change)

    async def close(self) -> None:
        """Write the folded audit summaries still open, stop hearing other instances;
        idempotent."""
        await self.flush_audit()
        if self.ctx.changes is not None:
            await self.ctx.changes.close()

    async def flush_audit(self) -> None:
        """Graceful shutdown: every counted authentication failure reaches the audit log."""
        await self.ctx.guard.flush()

    def _on_remote_change(self, node_ids: frozenset[str] | None) -> None:
        # A hint only: the woken long polls re-read serials and the network generation.
        if node_ids is None:
            self.ctx.waiters.wake_all()
        else:
            self.ctx.waiters.wake(node_ids)

    async def tick(self) -> None:
        """Periodic upkeep (every few seconds): purge challenges, sign a due audit checkpoint,
        record lapsed join keys, purge nonces and full rate-limit buckets, write the summaries
        of closed audit fold windows."""
        ctx = self.ctx
        now = ctx.clock.now()
        async with ctx.write() as uow:
            await uow.challenges.purge(now)
            ctx.pending_enrollments = await uow.challenges.count(ChallengeKind.ENROLLMENT, now)
            expired = await uow.credentials.expire_lapsed(now)
            if expired:
                await ctx.audit(
                    uow, now, "system", "join_key.expired", "join-keys", {"count": expired}
                )
            await uow.nonces.purge(now)
            await uow.limiter.prune(now)
            await ctx.audit_writer.checkpoint_if_due(uow, now)
        await ctx.guard.flush(now)  # summaries of the closed fold windows

    def stats(self) -> ControlStats:
        """Numbers for /metrics."""
        return ControlStats(
            policy_version=self.ctx.policy_version,
            active_waiters=self.ctx.waiters.active,
            enrollments=self.ctx.enrollments,
            pending_enrollments=self.ctx.pending_enrollments,
        )
