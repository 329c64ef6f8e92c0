"""Admin use case: API keys (create, list, revoke) and the first admin key of `init`.

The one rule: an API key's text is returned once, at creation; only its hash (bound to its id)
is stored, and every change is audited.
"""

from __future__ import annotations

from datetime import datetime

from rustynet.application.control.context import ControlContext
from rustynet.application.control.guards import Guards
from rustynet.application.control.inputs import API_KEY_MAX_TTL_SECONDS, requested_ttl
from rustynet.application.control.projections import api_key_info
from rustynet.application.control_keys import ControlKeys
from rustynet.application.control_types import AdminAuth
from rustynet.application.errors import NotFoundError, ValidationError
from rustynet.domain import api_keys
from rustynet.domain.api_keys import AdminAction, ApiKey
from rustynet.domain.audit import AuditChain
from rustynet.ports.entropy import Entropy
from rustynet.ports.store import ApiKeyRecord, ApiKeyScope, NotFound, Store, UnitOfWork
from rustynet.ports.wire.v1 import ApiKeyInfo, CreateApiKeyRequest, CreatedApiKey


class AdminApiKeys:
    """/v1/admin/api-keys."""

    def __init__(self, ctx: ControlContext, guards: Guards) -> None:
        self.ctx = ctx
        self.guards = guards

    async def create_api_key(self, auth: AdminAuth, request: CreateApiKeyRequest) -> CreatedApiKey:
        """POST /v1/admin/api-keys: the key text is returned once, only its hash is stored."""
        ctx = self.ctx
        admin = await self.guards.admin(auth, AdminAction.WRITE)
        now = ctx.clock.now()
        async with ctx.write() as uow:
            created = await _add_api_key(uow, request, now, ctx.entropy)
            await ctx.audit(
                uow,
                now,
                f"apikey:{admin.id}",
                "api_key.created",
                created.id,
                {"scope": created.info.scope, "expires_at": created.info.expires_at.isoformat()},
            )
        return created

    async def list_api_keys(self, auth: AdminAuth) -> tuple[ApiKeyInfo, ...]:
        """GET /v1/admin/api-keys (no secrets)."""
        await self.guards.admin(auth, AdminAction.READ)
        async with self.ctx.store.unit_of_work() as uow:
            return tuple(api_key_info(k) for k in await uow.api_keys.list_all())

    async def revoke_api_key(self, auth: AdminAuth, key_id: str) -> ApiKeyInfo:
        """DELETE /v1/admin/api-keys/{id}."""
        ctx = self.ctx
        admin = await self.guards.admin(auth, AdminAction.WRITE)
        now = ctx.clock.now()
        try:
            async with ctx.write() as uow:
                record = await uow.api_keys.revoke(key_id, now)
                await ctx.audit(uow, now, f"apikey:{admin.id}", "api_key.revoked", key_id)
        except NotFound:
            raise NotFoundError("no such API key") from None
        return api_key_info(record)


async def _add_api_key(
    uow: UnitOfWork, request: CreateApiKeyRequest, now: datetime, entropy: Entropy
) -> CreatedApiKey:
    try:
        scope = ApiKeyScope(request.scope)
    except ValueError:
        raise ValidationError.at("/scope", "admin, read-only or enroll-only") from None
    ttl = api_keys.DEFAULT_TTL
    if request.ttl_seconds is not None:
        ttl = requested_ttl(request.ttl_seconds, API_KEY_MAX_TTL_SECONDS)
    if not isinstance(request.description, str) or len(request.description) > 200:
        raise ValidationError.at("/description", "at most 200 characters")
    key = ApiKey.generate(entropy)
    try:
        record = ApiKeyRecord(
            id=key.key_id,
            secret_hash=key.secret_hash(),
            scope=scope,
            description=request.description,
            created_at=now,
            expires_at=now + ttl,
        )
        await uow.api_keys.add(record)
        text = key.to_text()
    finally:
        key.wipe()
    return CreatedApiKey(record.id, text, api_key_info(record))


async def create_initial_admin_key(
    store: Store,
    *,
    now: datetime,
    entropy: Entropy,
    keys: ControlKeys | None = None,
    description: str = "initial admin key (init)",
) -> CreatedApiKey:
    """For `rustynet-control init`: the first admin key (audited when `keys` is given)."""
    async with store.unit_of_work() as uow:
        created = await _add_api_key(
            uow, CreateApiKeyRequest(scope="admin", description=description), now, entropy
        )
        if keys is not None:
            chain = AuditChain.resume(
                await uow.audit.last_entry(), await uow.audit.last_checkpoint()
            )
            appended = chain.append(
                now=now,
                actor="init",
                action="api_key.created",
                target=created.id,
                details={"scope": "admin", "expires_at": created.info.expires_at.isoformat()},
                signer=keys.audit_key,
            )
            await uow.audit.append(appended.entry)
            if appended.checkpoint is not None:
                await uow.audit.add_checkpoint(appended.checkpoint)
    return created
