"""The shared checks of every route: abuse limits and authentication.

The one rule: abuse controls run before any secret is looked at. A per-IP bucket (and a
per-identity bucket for enrollment and token renewal) is taken in its own unit of work, then the
failure record of the presented credential (join key id, node id, API key id) is checked for
backoff and lockout. Unknown and wrong credentials fail the same way after the same hash compare,
and every failure is counted and audited (`AuthGuard`, folded). A limiter that cannot decide
denies.

`Guards` also issues and checks node access tokens (bound to the node's id and identity key; a
revoked node's token stops working at once) and resolves an admin request to its API key record
allowed to perform the action.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Final

from rustynet.application.control.context import ControlContext
from rustynet.application.control_types import AdminAuth, NodeAuth
from rustynet.application.errors import Forbidden, RateLimited, Unauthorized
from rustynet.domain import api_keys
from rustynet.domain.api_keys import AdminAction, ApiKey, ApiKeyMismatch
from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.limits import BucketPolicy, ip_key
from rustynet.domain.signed import JsonValue
from rustynet.domain.tokens import (
    InvalidToken,
    TokenKind,
    issue_token,
    key_allowlist,
    verify_token,
)
from rustynet.ports.store import (
    ApiKeyRecord,
    BucketTable,
    NodeRecord,
    NodeStatus,
    StoreError,
    UnitOfWork,
)

DUMMY_HASH: Final = bytes(32)  # compared against when the credential is unknown


class Guards:
    """Limits and authentication over one `ControlContext`."""

    def __init__(self, ctx: ControlContext) -> None:
        self.ctx = ctx
        self._token_keys = key_allowlist([ctx.keys.token_key.public_key])

    async def limit(
        self,
        *,
        ip: str | None = None,
        ip_bucket: BucketPolicy | None = None,
        identity: str | None = None,
        credential: str | None = None,
    ) -> None:
        """Take from the buckets and check the credential's backoff; RateLimited on a deny."""
        policy = self.ctx.settings.limits
        now = self.ctx.clock.now()
        try:
            async with self.ctx.store.unit_of_work() as uow:
                retry = await self.decide(uow, now, ip, ip_bucket, identity, credential)
        except (StoreError, LocalProtocolError):
            retry = policy.unavailable_retry_after  # cannot decide: deny
        if retry is not None:
            raise RateLimited(int(-(-retry.total_seconds() // 1)))

    async def locked_out(self, credential: str) -> bool:
        """True when `credential` is disabled after too many failures (until an admin reset);
        RateLimited when the store cannot tell (fail closed)."""
        try:
            async with self.ctx.store.unit_of_work() as uow:
                return (await uow.limiter.failures(credential)).disabled
        except (StoreError, LocalProtocolError):
            retry = self.ctx.settings.limits.unavailable_retry_after
            raise RateLimited(int(-(-retry.total_seconds() // 1))) from None

    async def decide(  # noqa: PLR0917 - one argument per limiter key
        self,
        uow: UnitOfWork,
        now: datetime,
        ip: str | None,
        ip_bucket: BucketPolicy | None,
        identity: str | None,
        credential: str | None,
    ) -> timedelta | None:
        """How long to wait, or None to allow; a bucket earlier in line keeps its take."""
        policy = self.ctx.settings.limits
        if credential is not None:
            record = await uow.limiter.failures(credential)
            if record.disabled:
                return policy.backoff_max
            if record.blocked_until is not None and now < record.blocked_until:
                return record.blocked_until - now
        takes = []
        if ip is not None:
            takes.append((BucketTable.IP, ip_key(ip, policy), ip_bucket or policy.per_ip))
        if identity is not None:
            takes.append((BucketTable.IDENTITY, identity, policy.per_identity))
        for table, key, bucket in takes:
            outcome = await uow.limiter.take(table, key, now, bucket)
            if not outcome.allowed:
                return outcome.retry_after or policy.unavailable_retry_after
        return None

    async def failed(
        self,
        *,
        ip: str,
        credential: str | None,
        action: str,
        target: str,
        details: Mapping[str, JsonValue] | None = None,
    ) -> None:
        """Charge an authentication failure to the source and `credential`; audit it (folded).
        RateLimited when the source's failure budget ran out meanwhile (nothing written)."""
        await self.ctx.guard.failed(
            ip=ip,
            credential=credential,
            actor=f"ip:{ip}",
            action=action,
            target=target,
            details=details,
        )

    def issue_token(self, node: NodeRecord, now: datetime) -> tuple[str, datetime]:
        """A node access token and its expiry (second precision)."""
        settings = self.ctx.settings
        lifetime = settings.access_token_lifetime
        token = issue_token(
            self.ctx.keys.token_key,
            kind=TokenKind.ACCESS,
            issuer=settings.control_url,
            subject=node.id,
            audience=settings.control_url,
            bound_identity=node.identity_key,
            now=now,
            lifetime=lifetime,
            entropy=self.ctx.entropy,
        )
        return token, now.replace(microsecond=0) + lifetime

    async def node(self, auth: NodeAuth) -> NodeRecord:
        """The authenticated, active node of a node request (revocation bites at once)."""
        now = self.ctx.clock.now()
        node: NodeRecord | None = None
        async with self.ctx.store.unit_of_work() as uow:
            await self.ctx.guard.check(uow, auth.client_ip, now)  # 429 before any other work
            if isinstance(auth.node_id, str) and 0 < len(auth.node_id) <= 128:
                node = await uow.nodes.get(auth.node_id)
        try:
            self.verify_node_token(auth, node, now)
        except InvalidToken as exc:
            target = auth.node_id if node is not None else "unknown-node"
            await self.failed(
                ip=auth.client_ip,
                credential=None,
                action="node.auth_failed",
                target=target,
                details={"reason": exc.reason[:80]},
            )
            raise Unauthorized from None
        if node is None:  # unreachable: the token check refused it
            raise Unauthorized
        return node

    def verify_node_token(self, auth: NodeAuth, node: NodeRecord | None, now: datetime) -> None:
        """InvalidToken unless `auth` carries a live access token of the active `node`."""
        if node is None or node.state is not NodeStatus.ACTIVE:
            raise InvalidToken("unknown or revoked node")
        claims = verify_token(
            auth.access_token,
            keys=self._token_keys,
            audience=self.ctx.settings.control_url,
            issuer=self.ctx.settings.control_url,
            bound_identity=node.identity_key,
            now=now,
            kind=TokenKind.ACCESS,
        )
        if claims.subject != node.id:
            raise InvalidToken("token issued to another node")

    async def authenticate(self, auth: AdminAuth | NodeAuth) -> None:
        """The credential check alone, before a body is read; writes nothing on success."""
        if isinstance(auth, NodeAuth):
            await self.node(auth)
        else:
            await self.admin_key(auth)

    async def admin(self, auth: AdminAuth, action: AdminAction) -> ApiKeyRecord:
        """The API key record of an admin request allowed to perform `action`."""
        record = await self.admin_key(auth)
        ip, now, credential = auth.client_ip, self.ctx.clock.now(), f"apikey:{record.id}"
        async with self.ctx.store.unit_of_work() as uow:  # authenticated: its own, larger bucket
            await self.ctx.guard.authenticated_admin(uow, ip, now)
        if not api_keys.permits(record.scope.value, action):
            async with self.ctx.write() as uow:
                details: dict[str, JsonValue] = {"scope": record.scope.value}
                await self.ctx.audit(uow, now, credential, "admin.forbidden", action.value, details)
            raise Forbidden
        async with self.ctx.store.unit_of_work() as uow:
            await uow.api_keys.touch(record.id, now)
            await uow.limiter.record_success(credential)
        return record

    async def admin_key(self, auth: AdminAuth) -> ApiKeyRecord:
        """The usable API key record `auth` presents; Unauthorized (charged) otherwise."""
        ip = auth.client_ip
        await self.ctx.guard.admit(ip)  # a source out of failures: 429 before any other work
        try:
            key = ApiKey.parse(auth.api_key)
        except ApiKeyMismatch:
            api_keys.burn_compare()
            await self.failed(ip=ip, credential=None, action="admin.auth_failed", target="-")
            raise Unauthorized from None
        credential = f"apikey:{key.key_id}"
        # A locked-out key fails like a wrong one (waiting would not help, so no Retry-After),
        # after the same hash compare; only the audit entry says why.
        locked_out = await self.locked_out(credential)
        if not locked_out:
            await self.limit(credential=credential)
        now = self.ctx.clock.now()
        async with self.ctx.store.unit_of_work() as uow:
            record = await uow.api_keys.get(key.key_id)
        ok = False
        try:
            key.verify(record.secret_hash if record is not None else DUMMY_HASH)
            ok = record is not None and record.usable_at(now) and not locked_out
        except ApiKeyMismatch:
            ok = False
        finally:
            key.wipe()
        if not ok or record is None:
            await self.failed(
                ip=ip,
                credential=credential,
                action="admin.auth_failed",
                target=f"apikey:{key.key_id}",
                details={"reason": "locked-out"} if locked_out else None,
            )
            raise Unauthorized
        return record
