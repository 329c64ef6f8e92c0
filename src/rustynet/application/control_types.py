"""Request and response values of the control-plane use cases (docs/control-api.md).

The one rule: these are plain frozen values with primitive fields (str, int, bool, datetime,
tuples, JSON documents) that mirror the JSON bodies field for field, so the HTTP adapter maps
them with cattrs and nothing else; every rule about their content lives in the use cases, which
parse keys and tags themselves and report bad fields as `ValidationError` with a pointer.

Times are timezone-aware UTC `datetime`s (the adapter renders RFC 3339 with `Z`). Secrets that a
response must show once (`CreatedJoinKey.token`, `CreatedApiKey.key`, access tokens) are plain
strings with `repr=False`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import attrs

from rustynet.domain.signed import JsonValue

# --- authentication context -------------------------------------------------------------------


@attrs.frozen
class AdminAuth:
    """An admin request's credentials: the bearer API key text and the client address."""

    api_key: str = attrs.field(repr=False)
    client_ip: str


@attrs.frozen
class NodeAuth:
    """A node request's credentials: `Rustynet-Node` header, bearer access token, client IP."""

    node_id: str
    access_token: str = attrs.field(repr=False)
    client_ip: str


# --- node routes ------------------------------------------------------------------------------


@attrs.frozen
class EnrollRequest:
    """`POST /v1/enroll` body."""

    join_secret: str = attrs.field(repr=False)
    identity_key: str
    tunnel_key: str
    tunnel_key_binding: str
    hostname: str
    requested_tags: tuple[str, ...] | None = None


@attrs.frozen
class EnrollChallenge:
    """`POST /v1/enroll` response: sign `proof_message(challenge, request)` before `expires_at`."""

    challenge_id: str  # base64url
    expires_at: datetime


@attrs.frozen
class EnrollCompleteRequest:
    """`POST /v1/enroll/complete` body (signature: base64url, identity key, ENROLLMENT_PROOF)."""

    challenge_id: str
    signature: str


@attrs.frozen
class Trust:
    """What a node needs to verify peer maps: the root certificate and signing certificates."""

    root_certificate: str
    signing_certificates: tuple[str, ...]


@attrs.frozen
class EnrollResult:
    """`POST /v1/enroll/complete` response."""

    node_id: str
    name: str
    overlay_addresses: tuple[str, ...]
    tags: tuple[str, ...]
    access_token: str = attrs.field(repr=False)
    access_token_expires_at: datetime
    trust: Trust


@attrs.frozen
class TokenChallengeRequest:
    """`POST /v1/token/challenge` body."""

    node_id: str


@attrs.frozen
class TokenChallenge:
    """`POST /v1/token/challenge` response (single use, ≤ 60 s)."""

    challenge_id: str  # base64url
    expires_at: datetime


@attrs.frozen
class TokenRenewRequest:
    """`POST /v1/token` body: identity-key signature (Purpose.TOKEN_RENEWAL) over
    `token_renewal_message(challenge_id bytes, node_id)`, base64url."""

    node_id: str
    challenge_id: str
    signature: str


@attrs.frozen
class AccessToken:
    """`POST /v1/token` response."""

    access_token: str = attrs.field(repr=False)
    expires_at: datetime


@attrs.frozen
class RotateTunnelKeyRequest:
    """`POST /v1/node/tunnel-key` body."""

    tunnel_key: str
    tunnel_key_binding: str


@attrs.frozen
class EndpointsRequest:
    """`PUT /v1/node/endpoints` body: `host:port` / `[v6]:port` strings."""

    underlay_endpoints: tuple[str, ...]


@attrs.frozen
class RelayTokenRequest:
    """`POST /v1/relay-token` body: which configured relay the token is for."""

    relay_id: str


@attrs.frozen
class RelayToken:
    """`POST /v1/relay-token` response: a relay token (≤ 120 s) for that relay only."""

    token: str = attrs.field(repr=False)
    expires_at: datetime


@attrs.frozen
class PeerMapResponse:
    """`GET /v1/peermap` 200 body (None from the use case means 204)."""

    envelope: str
    trust: Trust
    serial: int  # also inside the envelope; handy for the adapter's logs and metrics


# --- admin routes -----------------------------------------------------------------------------


@attrs.frozen
class NodeInfo:
    """A node as admins (and `POST /v1/node/tunnel-key`) see it."""

    id: str
    name: str
    state: str  # active | revoked
    overlay_addresses: tuple[str, ...]
    tags: tuple[str, ...]
    identity_key: str
    tunnel_key: str
    tunnel_key_expires_at: datetime
    created_at: datetime
    last_seen_at: datetime | None
    revoked_at: datetime | None


@attrs.frozen
class CreateJoinKeyRequest:
    """`POST /v1/admin/join-keys` body."""

    reusable: bool = False
    uses: int | None = None
    tags: tuple[str, ...] = ()
    ttl_seconds: int = 1800


@attrs.frozen
class JoinKeyInfo:
    """A join key without its secret (list / revoke responses)."""

    id: str
    kind: str  # one-time | reusable
    state: str  # created | used | exhausted | expired | revoked
    tags: tuple[str, ...]
    uses: int
    max_uses: int
    created_at: datetime
    expires_at: datetime
    last_used_at: datetime | None
    ended_at: datetime | None


@attrs.frozen
class CreatedJoinKey:
    """`POST /v1/admin/join-keys` 201 response; `token` is shown this once."""

    id: str
    token: str = attrs.field(repr=False)
    expires_at: datetime
    info: JoinKeyInfo


@attrs.frozen
class UpdateNodeRequest:
    """`PATCH /v1/admin/nodes/{id}` body; absent fields stay as they are."""

    name: str | None = None
    tags: tuple[str, ...] | None = None


@attrs.frozen
class CreateApiKeyRequest:
    """`POST /v1/admin/api-keys` body."""

    scope: str
    ttl_seconds: int | None = None
    description: str = ""


@attrs.frozen
class ApiKeyInfo:
    """An API key without its secret."""

    id: str
    scope: str
    description: str
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    last_used_at: datetime | None


@attrs.frozen
class CreatedApiKey:
    """`POST /v1/admin/api-keys` 201 response; `key` is shown this once."""

    id: str
    key: str = attrs.field(repr=False)
    info: ApiKeyInfo


@attrs.frozen
class PolicyInfo:
    """`GET/PUT /v1/admin/policy`: version 0 and document None mean no policy (deny all)."""

    version: int
    document: Mapping[str, JsonValue] | None
    created_at: datetime | None
    author: str | None


@attrs.frozen
class PolicyCheckResult:
    """`POST /v1/admin/policy/check` 200 response (an invalid document raises instead)."""

    ok: bool
    digest: str
    nodes_checked: int


@attrs.frozen
class AuditEntryInfo:
    """One audit entry as listed (never holds a secret)."""

    index: int
    time: datetime
    actor: str
    action: str
    target: str
    details: Mapping[str, JsonValue]
    entry_hash: str  # hex


@attrs.frozen
class AuditVerifyResult:
    """`POST /v1/admin/audit/verify` response."""

    ok: bool
    entries_checked: int
    checkpoints_verified: int
    problem: str | None
    first_bad_index: int | None
    message: str


@attrs.frozen
class ControlStats:
    """Numbers for `/metrics` that only the use cases know."""

    policy_version: int
    active_waiters: int
    enrollments: int
    pending_enrollments: int
