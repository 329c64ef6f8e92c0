"""Admin use case: the audit log (page through it, verify its hash chain and checkpoints)."""

from __future__ import annotations

from typing import Final

from rustynet.application.control.context import ControlContext
from rustynet.application.control.guards import Guards
from rustynet.application.control.projections import audit_info
from rustynet.application.control_types import AdminAuth
from rustynet.application.errors import ValidationError
from rustynet.domain.api_keys import AdminAction
from rustynet.domain.audit import verify_chain
from rustynet.ports.wire.v1 import AuditEntryInfo, AuditVerifyResult

MAX_AUDIT_PAGE: Final = 1000


class AdminAudit:
    """/v1/admin/audit."""

    def __init__(self, ctx: ControlContext, guards: Guards) -> None:
        self.ctx = ctx
        self.guards = guards

    async def list_audit(
        self, auth: AdminAuth, start: int = 0, limit: int = 100
    ) -> tuple[AuditEntryInfo, ...]:
        """GET /v1/admin/audit?start=&limit= (limit ≤ 1000)."""
        await self.guards.admin(auth, AdminAction.READ)
        if type(start) is not int or start < 0:
            raise ValidationError.at("/start", "a non-negative integer")
        if type(limit) is not int or not 0 < limit <= MAX_AUDIT_PAGE:
            raise ValidationError.at("/limit", f"1..{MAX_AUDIT_PAGE}")
        async with self.ctx.store.unit_of_work() as uow:
            return tuple(audit_info(e) for e in await uow.audit.entries(start, limit))

    async def verify_audit(self, auth: AdminAuth) -> AuditVerifyResult:
        """POST /v1/admin/audit/verify: hash chain and signed checkpoints."""
        await self.guards.admin(auth, AdminAction.READ)
        return await self.audit_report()

    async def audit_report(self) -> AuditVerifyResult:
        """Verify the stored audit chain (also for tests and `serve` start-up checks)."""
        async with self.ctx.store.unit_of_work() as uow:
            entries = await uow.audit.entries()
            checkpoints = await uow.audit.checkpoints()
        report = verify_chain(entries, checkpoints, self.ctx.keys.audit_key.public_key)
        return AuditVerifyResult(
            ok=report.ok,
            entries_checked=report.entries_checked,
            checkpoints_verified=report.checkpoints_verified,
            problem=None if report.problem is None else report.problem.value,
            first_bad_index=report.first_bad_index,
            message=report.message,
        )
