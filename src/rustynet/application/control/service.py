"""`ControlService`: the thin facade the HTTP handlers, the in-process client and the composition
root call; one method per route of docs/control-api.md. It builds one `ControlContext` and the
use cases over it, and only delegates: every decision is made in the use-case modules.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from rustynet.application.control.admin_api_keys import AdminApiKeys
from rustynet.application.control.admin_audit import AdminAudit
from rustynet.application.control.admin_join_keys import AdminJoinKeys
from rustynet.application.control.admin_nodes import AdminNodes
from rustynet.application.control.admin_policy import AdminPolicy
from rustynet.application.control.context import ControlContext, ControlSettings
from rustynet.application.control.enrollment import Enrollment
from rustynet.application.control.guards import Guards
from rustynet.application.control.node_session import NodeSession
from rustynet.application.control.peer_maps import PeerMaps
from rustynet.application.control.relay_revocations import RelayRevocationFeed
from rustynet.application.control.relays import RelaysReplaced, replace_relays
from rustynet.application.control.upkeep import Upkeep
from rustynet.application.control_keys import ControlKeys
from rustynet.application.control_types import AdminAuth, ControlStats, NodeAuth, PeerMapResponse
from rustynet.application.waiters import PeerMapWaiters
from rustynet.domain.netmap import RelayEntry
from rustynet.domain.signed import JsonValue
from rustynet.ports.change_feed import ChangeFeed
from rustynet.ports.clock import Clock
from rustynet.ports.entropy import Entropy
from rustynet.ports.store import Store
from rustynet.ports.wire.v1 import (
    AccessToken,
    ApiKeyInfo,
    AuditEntryInfo,
    AuditVerifyResult,
    Challenge,
    CreateApiKeyRequest,
    CreatedApiKey,
    CreatedJoinKey,
    CreateJoinKeyRequest,
    EndpointsRequest,
    EnrollCompleteRequest,
    EnrollRequest,
    EnrollResult,
    JoinKeyInfo,
    NodeInfo,
    PolicyCheckResult,
    PolicyInfo,
    RelayRevocations,
    RelayToken,
    RelayTokenRequest,
    RotateTunnelKeyRequest,
    TokenChallengeRequest,
    TokenRenewRequest,
    UpdateNodeRequest,
)


class ControlService:
    """The use cases. Construct once per process (bootstrap) and share."""

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
        ctx = ControlContext(
            store, keys, clock, entropy, settings, waiters=waiters, changes=changes
        )
        self.context = ctx
        self.store, self.keys, self.clock, self.entropy = store, keys, clock, entropy
        self.waiters, self.changes = ctx.waiters, changes
        guards = Guards(ctx)
        self._guards = guards
        self._upkeep = Upkeep(ctx)
        self._enrollment = Enrollment(ctx, guards)
        self._session = NodeSession(ctx, guards)
        self._peer_maps = PeerMaps(ctx, guards)
        self._revocation_feed = RelayRevocationFeed(ctx)
        self._join_keys = AdminJoinKeys(ctx, guards)
        self._nodes = AdminNodes(ctx, guards)
        self._api_keys = AdminApiKeys(ctx, guards)
        self._policy = AdminPolicy(ctx, guards)
        self._audit = AdminAudit(ctx, guards)

    @property
    def settings(self) -> ControlSettings:
        """The live settings (the relay list can be replaced while running)."""
        return self.context.settings

    # --- lifecycle and operations (upkeep.py) --------------------------------------------------

    async def start(self) -> None:
        """Hear the other instances' changes until `close`."""
        await self._upkeep.start()

    async def close(self) -> None:
        """Flush the folded audit summaries, stop hearing other instances; idempotent."""
        await self._upkeep.close()

    async def flush_audit(self) -> None:
        """Graceful shutdown: every counted authentication failure reaches the audit log."""
        await self._upkeep.flush_audit()

    async def tick(self) -> None:
        """Periodic upkeep (every few seconds)."""
        await self._upkeep.tick()

    def stats(self) -> ControlStats:
        """Numbers for /metrics."""
        return self._upkeep.stats()

    async def replace_relays(self, relays: Sequence[RelayEntry], *, actor: str) -> RelaysReplaced:
        """Make `relays` the live relay list and wake every active node (relays.py)."""
        return await replace_relays(self.context, relays, actor=actor)

    # --- authentication (guards.py) ------------------------------------------------------------

    async def authenticate(self, auth: AdminAuth | NodeAuth) -> None:
        """The credential check alone, before a body is read; writes nothing on success."""
        await self._guards.authenticate(auth)

    # --- node routes (enrollment.py, node_session.py, peer_maps.py) ----------------------------

    async def enroll(self, request: EnrollRequest, *, client_ip: str) -> Challenge:
        """POST /v1/enroll."""
        return await self._enrollment.enroll(request, client_ip=client_ip)

    async def enroll_complete(
        self, request: EnrollCompleteRequest, *, client_ip: str
    ) -> EnrollResult:
        """POST /v1/enroll/complete."""
        return await self._enrollment.enroll_complete(request, client_ip=client_ip)

    async def token_challenge(self, request: TokenChallengeRequest, *, client_ip: str) -> Challenge:
        """POST /v1/token/challenge."""
        return await self._session.token_challenge(request, client_ip=client_ip)

    async def renew_token(self, request: TokenRenewRequest, *, client_ip: str) -> AccessToken:
        """POST /v1/token."""
        return await self._session.renew_token(request, client_ip=client_ip)

    async def rotate_tunnel_key(self, auth: NodeAuth, request: RotateTunnelKeyRequest) -> NodeInfo:
        """POST /v1/node/tunnel-key."""
        return await self._session.rotate_tunnel_key(auth, request)

    async def set_endpoints(self, auth: NodeAuth, request: EndpointsRequest) -> None:
        """PUT /v1/node/endpoints."""
        await self._session.set_endpoints(auth, request)

    async def relay_token(self, auth: NodeAuth, request: RelayTokenRequest) -> RelayToken:
        """POST /v1/relay-token."""
        return await self._session.relay_token(auth, request)

    async def peer_map(
        self, auth: NodeAuth, after: int, timeout: float | None = None
    ) -> PeerMapResponse | None:
        """GET /v1/peermap?after=N (None means 204)."""
        return await self._peer_maps.peer_map(auth, after, timeout)

    async def relay_revocations(self, after: int, timeout: float) -> RelayRevocations | None:
        """GET /v1/relay/revocations?after=N (None means 204)."""
        return await self._revocation_feed.revocations(after, timeout)

    # --- admin routes (admin_*.py) -------------------------------------------------------------

    async def create_join_key(
        self, auth: AdminAuth, request: CreateJoinKeyRequest
    ) -> CreatedJoinKey:
        """POST /v1/admin/join-keys."""
        return await self._join_keys.create_join_key(auth, request)

    async def list_join_keys(self, auth: AdminAuth) -> tuple[JoinKeyInfo, ...]:
        """GET /v1/admin/join-keys."""
        return await self._join_keys.list_join_keys(auth)

    async def revoke_join_key(self, auth: AdminAuth, key_id: str) -> JoinKeyInfo:
        """DELETE /v1/admin/join-keys/{id}."""
        return await self._join_keys.revoke_join_key(auth, key_id)

    async def list_nodes(self, auth: AdminAuth) -> tuple[NodeInfo, ...]:
        """GET /v1/admin/nodes."""
        return await self._nodes.list_nodes(auth)

    async def get_node(self, auth: AdminAuth, node_id: str) -> NodeInfo:
        """GET /v1/admin/nodes/{id}."""
        return await self._nodes.get_node(auth, node_id)

    async def update_node(
        self, auth: AdminAuth, node_id: str, request: UpdateNodeRequest
    ) -> NodeInfo:
        """PATCH /v1/admin/nodes/{id}."""
        return await self._nodes.update_node(auth, node_id, request)

    async def revoke_node(self, auth: AdminAuth, node_id: str) -> NodeInfo:
        """POST /v1/admin/nodes/{id}/revoke."""
        return await self._nodes.revoke_node(auth, node_id)

    async def delete_node(self, auth: AdminAuth, node_id: str) -> None:
        """DELETE /v1/admin/nodes/{id}."""
        await self._nodes.delete_node(auth, node_id)

    async def create_api_key(self, auth: AdminAuth, request: CreateApiKeyRequest) -> CreatedApiKey:
        """POST /v1/admin/api-keys."""
        return await self._api_keys.create_api_key(auth, request)

    async def list_api_keys(self, auth: AdminAuth) -> tuple[ApiKeyInfo, ...]:
        """GET /v1/admin/api-keys."""
        return await self._api_keys.list_api_keys(auth)

    async def revoke_api_key(self, auth: AdminAuth, key_id: str) -> ApiKeyInfo:
        """DELETE /v1/admin/api-keys/{id}."""
        return await self._api_keys.revoke_api_key(auth, key_id)

    async def get_policy(self, auth: AdminAuth) -> PolicyInfo:
        """GET /v1/admin/policy."""
        return await self._policy.get_policy(auth)

    async def put_policy(self, auth: AdminAuth, document: Mapping[str, JsonValue]) -> PolicyInfo:
        """PUT /v1/admin/policy."""
        return await self._policy.put_policy(auth, document)

    async def check_policy(
        self, auth: AdminAuth, document: Mapping[str, JsonValue]
    ) -> PolicyCheckResult:
        """POST /v1/admin/policy/check."""
        return await self._policy.check_policy(auth, document)

    async def list_audit(
        self, auth: AdminAuth, start: int = 0, limit: int = 100
    ) -> tuple[AuditEntryInfo, ...]:
        """GET /v1/admin/audit?start=&limit=."""
        return await self._audit.list_audit(auth, start, limit)

    async def verify_audit(self, auth: AdminAuth) -> AuditVerifyResult:
        """POST /v1/admin/audit/verify."""
        return await self._audit.verify_audit(auth)

    async def audit_report(self) -> AuditVerifyResult:
        """Verify the stored audit chain (also for tests and `serve` start-up checks)."""
        return await self._audit.audit_report()
