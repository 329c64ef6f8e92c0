"""Control-plane use cases: one async method per route of docs/control-api.md.

The one rule: every decision about a request is made here (or in the domain it drives), never in
the HTTP handler; each state change and its audit entry commit in ONE unit of work, and success
is returned only after that commit.

(Skeleton: signatures are final; bodies land in the next commits.)
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import timedelta
from typing import Final

import attrs

from rustynet.application.control_keys import ControlKeys
from rustynet.application.control_types import (
    AccessToken,
    AdminAuth,
    ApiKeyInfo,
    AuditEntryInfo,
    AuditVerifyResult,
    ControlStats,
    CreateApiKeyRequest,
    CreatedApiKey,
    CreatedJoinKey,
    CreateJoinKeyRequest,
    EndpointsRequest,
    EnrollChallenge,
    EnrollCompleteRequest,
    EnrollRequest,
    EnrollResult,
    JoinKeyInfo,
    NodeAuth,
    NodeInfo,
    PeerMapResponse,
    PolicyCheckResult,
    PolicyInfo,
    RotateTunnelKeyRequest,
    TokenChallenge,
    TokenChallengeRequest,
    TokenRenewRequest,
    UpdateNodeRequest,
)
from rustynet.application.waiters import PeerMapWaiters
from rustynet.domain.limits import LimitPolicy
from rustynet.domain.signed import JsonValue
from rustynet.ports.clock import Clock
from rustynet.ports.entropy import Entropy
from rustynet.ports.store import Store

ACCESS_TOKEN_LIFETIME: Final = timedelta(seconds=300)
DEFAULT_PEER_MAP_TTL: Final = timedelta(hours=24)
DEFAULT_LONG_POLL: Final = timedelta(seconds=60)


@attrs.frozen
class ControlSettings:
    """Deployment settings the use cases need (W3 fills them from control.toml)."""

    control_url: str
    tls_spki_sha256: bytes = attrs.field(repr=bytes.hex)
    relays: tuple[str, ...] = ()
    limits: LimitPolicy = attrs.field(factory=LimitPolicy)
    peer_map_ttl: timedelta = DEFAULT_PEER_MAP_TTL
    long_poll_timeout: timedelta = DEFAULT_LONG_POLL
    access_token_lifetime: timedelta = ACCESS_TOKEN_LIFETIME
    max_waiters: int = 50_000


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
    ) -> None:
        self.store = store
        self.keys = keys
        self.clock = clock
        self.entropy = entropy
        self.settings = settings
        self.waiters = waiters if waiters is not None else PeerMapWaiters()

    # node routes
    async def enroll(self, request: EnrollRequest, *, client_ip: str) -> EnrollChallenge:
        """POST /v1/enroll."""
        raise NotImplementedError

    async def enroll_complete(
        self, request: EnrollCompleteRequest, *, client_ip: str
    ) -> EnrollResult:
        """POST /v1/enroll/complete."""
        raise NotImplementedError

    async def token_challenge(
        self, request: TokenChallengeRequest, *, client_ip: str
    ) -> TokenChallenge:
        """POST /v1/token/challenge."""
        raise NotImplementedError

    async def renew_token(self, request: TokenRenewRequest, *, client_ip: str) -> AccessToken:
        """POST /v1/token."""
        raise NotImplementedError

    async def rotate_tunnel_key(self, auth: NodeAuth, request: RotateTunnelKeyRequest) -> NodeInfo:
        """POST /v1/node/tunnel-key."""
        raise NotImplementedError

    async def set_endpoints(self, auth: NodeAuth, request: EndpointsRequest) -> None:
        """PUT /v1/node/endpoints (204)."""
        raise NotImplementedError

    async def peer_map(
        self, auth: NodeAuth, after: int, timeout: float | None = None
    ) -> PeerMapResponse | None:
        """GET /v1/peermap?after=N; None means 204 (nothing newer within the timeout)."""
        raise NotImplementedError

    # admin routes
    async def create_join_key(
        self, auth: AdminAuth, request: CreateJoinKeyRequest
    ) -> CreatedJoinKey:
        """POST /v1/admin/join-keys (201)."""
        raise NotImplementedError

    async def list_join_keys(self, auth: AdminAuth) -> tuple[JoinKeyInfo, ...]:
        """GET /v1/admin/join-keys."""
        raise NotImplementedError

    async def revoke_join_key(self, auth: AdminAuth, key_id: str) -> JoinKeyInfo:
        """DELETE /v1/admin/join-keys/{id}."""
        raise NotImplementedError

    async def list_nodes(self, auth: AdminAuth) -> tuple[NodeInfo, ...]:
        """GET /v1/admin/nodes."""
        raise NotImplementedError

    async def get_node(self, auth: AdminAuth, node_id: str) -> NodeInfo:
        """GET /v1/admin/nodes/{id}."""
        raise NotImplementedError

    async def update_node(
        self, auth: AdminAuth, node_id: str, request: UpdateNodeRequest
    ) -> NodeInfo:
        """PATCH /v1/admin/nodes/{id}."""
        raise NotImplementedError

    async def revoke_node(self, auth: AdminAuth, node_id: str) -> NodeInfo:
        """POST /v1/admin/nodes/{id}/revoke."""
        raise NotImplementedError

    async def delete_node(self, auth: AdminAuth, node_id: str) -> None:
        """DELETE /v1/admin/nodes/{id} (204)."""
        raise NotImplementedError

    async def create_api_key(self, auth: AdminAuth, request: CreateApiKeyRequest) -> CreatedApiKey:
        """POST /v1/admin/api-keys (201)."""
        raise NotImplementedError

    async def list_api_keys(self, auth: AdminAuth) -> tuple[ApiKeyInfo, ...]:
        """GET /v1/admin/api-keys."""
        raise NotImplementedError

    async def revoke_api_key(self, auth: AdminAuth, key_id: str) -> ApiKeyInfo:
        """DELETE /v1/admin/api-keys/{id}."""
        raise NotImplementedError

    async def get_policy(self, auth: AdminAuth) -> PolicyInfo:
        """GET /v1/admin/policy."""
        raise NotImplementedError

    async def put_policy(self, auth: AdminAuth, document: Mapping[str, JsonValue]) -> PolicyInfo:
        """PUT /v1/admin/policy (decoded JSON/YAML document)."""
        raise NotImplementedError

    async def check_policy(
        self, auth: AdminAuth, document: Mapping[str, JsonValue]
    ) -> PolicyCheckResult:
        """POST /v1/admin/policy/check."""
        raise NotImplementedError

    async def list_audit(
        self, auth: AdminAuth, start: int = 0, limit: int = 100
    ) -> tuple[AuditEntryInfo, ...]:
        """GET /v1/admin/audit?start=&limit=."""
        raise NotImplementedError

    async def verify_audit(self, auth: AdminAuth) -> AuditVerifyResult:
        """POST /v1/admin/audit/verify."""
        raise NotImplementedError

    # operations
    async def tick(self) -> None:
        """Periodic upkeep (call every few seconds)."""
        raise NotImplementedError

    def stats(self) -> ControlStats:
        """Numbers for /metrics."""
        raise NotImplementedError
