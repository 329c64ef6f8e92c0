"""The typed bodies of control API v1: one attrs class per JSON object on the wire.

The one rule: these are plain frozen values with primitive fields (str, int, bool, datetime,
tuples, JSON documents) that mirror the JSON bodies field for field, in the order the server
writes them; nothing else (no rule about their content: the use cases parse keys and tags and
report bad fields themselves). The server structures request bodies into them and renders its
answers from them, the node client (`adapters/control_plane_http.py`) and the admin client
(`adapters/control_admin_http.py`) structure the answers into them, all through the one strict
converter of `rustynet.ports.wire.codec`, and `tests/integration/test_openapi.py` checks every
class against its schema in `adapters/http_api/openapi.json` (`COMPONENTS` names them).

Times are timezone-aware UTC `datetime`s (rendered RFC 3339 with `Z`). Secrets a response shows
once (`CreatedJoinKey.token`, `CreatedApiKey.key`, access and relay tokens) are `repr=False`.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Final, TypeAlias

import attrs

# A free-form JSON object (a policy document, an audit entry's details): taken as parsed, since
# the strict JSON parser already refused anything that is not JSON; its rules are the use cases'.
JsonDocument: TypeAlias = Mapping[str, Any]

# --- node routes ------------------------------------------------------------------------------


@attrs.frozen
class EnrollRequest:
    """`POST /v1/enroll` body; keys in their typed text forms, the whole join token text."""

    join_secret: str = attrs.field(repr=False)
    identity_key: str
    tunnel_key: str
    tunnel_key_binding: str
    hostname: str
    requested_tags: tuple[str, ...] | None = None


@attrs.frozen
class Challenge:
    """`POST /v1/enroll` and `POST /v1/token/challenge` response: a single-use challenge
    (base64url id) to sign before `expires_at` (≤ 60 s)."""

    challenge_id: str
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
    """`POST /v1/node/tunnel-key` body (the response is the node's `NodeInfo`)."""

    tunnel_key: str
    tunnel_key_binding: str


@attrs.frozen
class CandidateBody:
    """One candidate endpoint: `host:port` / `[v6]:port` and how it was found."""

    endpoint: str
    kind: str  # configured | local | reflexive


@attrs.frozen
class EndpointsRequest:
    """`PUT /v1/node/endpoints` body: the node's candidates (the whole list, replacing the last).

    `underlay_endpoints` is the previous shape (plain `host:port` strings), still accepted from
    nodes of the previous version: each is read as a `configured` candidate, before `candidates`.
    """

    candidates: tuple[CandidateBody, ...] = ()
    underlay_endpoints: tuple[str, ...] = ()
    nat_classification: str | None = None  # a NatClass value; None: not classified


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
class PeerMapDelivery:
    """`GET /v1/peermap` 200 body: a signed peer map (not yet verified: the node's acceptor
    decides) and the trust to verify it with."""

    envelope: str
    trust: Trust


@attrs.frozen
class RelayRevocations:
    """`GET /v1/relay/revocations` 200 body: the signed relay revocation feed (verified by the
    relay against the root it pins, never trusted as delivered) and the trust to verify it."""

    envelope: str
    trust: Trust


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
    candidates: tuple[CandidateBody, ...] = ()
    candidates_updated_at: datetime | None = None  # when the node last changed them
    nat_classification: str | None = None  # as the node last reported it (null: never)


@attrs.frozen
class NodeList:
    """`GET /v1/admin/nodes` response."""

    nodes: tuple[NodeInfo, ...]


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
class JoinKeyList:
    """`GET /v1/admin/join-keys` response."""

    join_keys: tuple[JoinKeyInfo, ...]


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
class ApiKeyList:
    """`GET /v1/admin/api-keys` response."""

    api_keys: tuple[ApiKeyInfo, ...]


@attrs.frozen
class PolicyInfo:
    """`GET/PUT /v1/admin/policy`: version 0 and document None mean no policy (deny all)."""

    version: int
    document: JsonDocument | None
    created_at: datetime | None
    author: str | None


@attrs.frozen
class PolicyCheckResult:
    """`POST /v1/admin/policy/check` 200 response (an invalid document is a 400 instead)."""

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
    details: JsonDocument
    entry_hash: str  # hex


@attrs.frozen
class AuditList:
    """`GET /v1/admin/audit` response."""

    entries: tuple[AuditEntryInfo, ...]


@attrs.frozen
class AuditVerifyResult:
    """`POST /v1/admin/audit/verify` response."""

    ok: bool
    entries_checked: int
    checkpoints_verified: int
    problem: str | None
    first_bad_index: int | None
    message: str


# --- operational ------------------------------------------------------------------------------


@attrs.frozen
class Health:
    """`GET /healthz` response."""

    status: str  # ok


COMPONENTS: Final[Mapping[str, type]] = {
    "EnrollRequest": EnrollRequest,
    "Challenge": Challenge,
    "EnrollCompleteRequest": EnrollCompleteRequest,
    "Trust": Trust,
    "EnrollResult": EnrollResult,
    "TokenChallengeRequest": TokenChallengeRequest,
    "TokenRenewRequest": TokenRenewRequest,
    "AccessToken": AccessToken,
    "RotateTunnelKeyRequest": RotateTunnelKeyRequest,
    "CandidateBody": CandidateBody,
    "EndpointsRequest": EndpointsRequest,
    "RelayTokenRequest": RelayTokenRequest,
    "RelayToken": RelayToken,
    "PeerMap": PeerMapDelivery,
    "RelayRevocations": RelayRevocations,
    "NodeInfo": NodeInfo,
    "NodeList": NodeList,
    "CreateJoinKeyRequest": CreateJoinKeyRequest,
    "JoinKeyInfo": JoinKeyInfo,
    "CreatedJoinKey": CreatedJoinKey,
    "JoinKeyList": JoinKeyList,
    "UpdateNodeRequest": UpdateNodeRequest,
    "CreateApiKeyRequest": CreateApiKeyRequest,
    "ApiKeyInfo": ApiKeyInfo,
    "CreatedApiKey": CreatedApiKey,
    "ApiKeyList": ApiKeyList,
    "PolicyInfo": PolicyInfo,
    "PolicyCheckResult": PolicyCheckResult,
    "AuditEntry": AuditEntryInfo,
    "AuditList": AuditList,
    "AuditVerifyResult": AuditVerifyResult,
    "Health": Health,
}
"""Each wire type by its schema name in `components/schemas` of openapi.json (the error
document and the free-form policy document are the only schemas without a class)."""
