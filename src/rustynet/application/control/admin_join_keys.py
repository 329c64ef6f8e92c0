"""Admin use case: join keys (create, list, revoke).

The one rule: a join token's text is returned once, at creation; only its hash is stored, and
every change is audited with the API key that made it.
"""

from __future__ import annotations

from rustynet.application.control.context import ControlContext
from rustynet.application.control.guards import Guards
from rustynet.application.control.inputs import JOIN_KEY_MAX_TTL_SECONDS, requested_ttl, tags
from rustynet.application.control.projections import join_key_info
from rustynet.application.control_types import AdminAuth
from rustynet.application.errors import Conflict, NotFoundError, ValidationError
from rustynet.domain.api_keys import AdminAction
from rustynet.domain.credentials import (
    Credential,
    CredentialId,
    CredentialParameterError,
    CredentialTransitionError,
)
from rustynet.domain.errors import DecodeError
from rustynet.domain.join_tokens import JoinToken
from rustynet.domain.scope import Scope
from rustynet.ports.store import NotFound
from rustynet.ports.wire.v1 import CreatedJoinKey, CreateJoinKeyRequest, JoinKeyInfo


class AdminJoinKeys:
    """/v1/admin/join-keys."""

    def __init__(self, ctx: ControlContext, guards: Guards) -> None:
        self.ctx = ctx
        self.guards = guards

    async def create_join_key(
        self, auth: AdminAuth, request: CreateJoinKeyRequest
    ) -> CreatedJoinKey:
        """POST /v1/admin/join-keys: the token text is returned once, only its hash is stored."""
        ctx = self.ctx
        admin = await self.guards.admin(auth, AdminAction.CREATE_JOIN_KEY)
        now = ctx.clock.now()
        scope = Scope(tags(request.tags, "/tags"))
        ttl = requested_ttl(request.ttl_seconds, JOIN_KEY_MAX_TTL_SECONDS)
        token = JoinToken.create(
            control_url=ctx.settings.control_url,
            root_fingerprint=ctx.keys.root.key_id,
            tls_spki_sha256=ctx.settings.tls_spki_sha256,
            entropy=ctx.entropy,
        )
        try:
            try:
                credential = Credential.create(
                    id=token.token_id,
                    secret_hash=token.secret_hash(),
                    scope=scope,
                    now=now,
                    ttl=ttl,
                    reusable=request.reusable,
                    max_uses=request.uses,
                )
            except CredentialParameterError as exc:
                raise ValidationError.at("", str(exc)) from exc
            async with ctx.write() as uow:
                await uow.credentials.add(credential)
                await ctx.audit(
                    uow,
                    now,
                    f"apikey:{admin.id}",
                    "join_key.created",
                    credential.id.to_text(),
                    {
                        "kind": credential.kind.value,
                        "tags": credential.scope.as_strings(),
                        "max_uses": credential.max_uses,
                        "expires_at": credential.expires_at.isoformat(),
                    },
                )
            text = token.to_text()
        finally:
            token.wipe()
        return CreatedJoinKey(
            credential.id.to_text(), text, credential.expires_at, join_key_info(credential)
        )

    async def list_join_keys(self, auth: AdminAuth) -> tuple[JoinKeyInfo, ...]:
        """GET /v1/admin/join-keys (no secrets)."""
        await self.guards.admin(auth, AdminAction.READ)
        async with self.ctx.store.unit_of_work() as uow:
            return tuple(join_key_info(c) for c in await uow.credentials.list_all())

    async def revoke_join_key(self, auth: AdminAuth, key_id: str) -> JoinKeyInfo:
        """DELETE /v1/admin/join-keys/{id}."""
        ctx = self.ctx
        admin = await self.guards.admin(auth, AdminAction.WRITE)
        now = ctx.clock.now()
        try:
            credential_id = CredentialId.from_text(key_id)
        except DecodeError:
            raise NotFoundError("no such join key") from None
        try:
            async with ctx.write() as uow:
                credential = await uow.credentials.revoke(credential_id, now)
                await ctx.audit(
                    uow, now, f"apikey:{admin.id}", "join_key.revoked", credential.id.to_text()
                )
        except NotFound:
            raise NotFoundError("no such join key") from None
        except CredentialTransitionError:
            raise Conflict("the join key has already ended") from None
        return join_key_info(credential)
