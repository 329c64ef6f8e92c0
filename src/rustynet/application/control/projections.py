"""Read models of the control plane: store records turned into the JSON-ready views the routes
answer (the wire types of `rustynet.ports.wire.v1`) and into the policy compiler's `PolicyNode`.

Pure functions of one record each: no store access, no clock, no secrets (a view never carries a
secret hash or key text other than public keys).
"""

from __future__ import annotations

import ipaddress

from rustynet.domain.audit import AuditEntry
from rustynet.domain.credentials import Credential
from rustynet.domain.policy import PolicyNode
from rustynet.ports.store import ApiKeyRecord, NodeRecord
from rustynet.ports.wire.v1 import (
    ApiKeyInfo,
    AuditEntryInfo,
    CandidateBody,
    JoinKeyInfo,
    NodeInfo,
)


def addresses(node: NodeRecord) -> tuple[str, ...]:
    """The node's overlay addresses as /32 prefixes (peer-map and API text form)."""
    return tuple(f"{a}/32" for a in node.overlay_addresses)


def tag_texts(node: NodeRecord) -> tuple[str, ...]:
    """The node's tags as sorted text."""
    return tuple(sorted(t.value for t in node.tags))


def policy_node(node: NodeRecord) -> PolicyNode:
    """What the policy compiler knows of a node."""
    return PolicyNode(
        id=node.id,
        name=node.name,
        tags=node.tags,
        addresses=tuple(ipaddress.ip_network(f"{a}/32") for a in node.overlay_addresses),
    )


def node_info(node: NodeRecord) -> NodeInfo:
    """A node as the admin routes show it."""
    return NodeInfo(
        id=node.id,
        name=node.name,
        state=node.state.value,
        overlay_addresses=addresses(node),
        tags=tag_texts(node),
        identity_key=node.identity_key.to_text(),
        tunnel_key=node.tunnel_key.to_text(),
        tunnel_key_expires_at=node.tunnel_key_expires_at,
        created_at=node.created_at,
        last_seen_at=node.last_seen_at,
        revoked_at=node.revoked_at,
        candidates=tuple(CandidateBody(**c.to_json()) for c in node.candidates),
        candidates_updated_at=node.candidates_updated_at,
        nat_classification=(
            None if node.nat_classification is None else node.nat_classification.value
        ),
    )


def join_key_info(credential: Credential) -> JoinKeyInfo:
    """A join key without its secret."""
    return JoinKeyInfo(
        id=credential.id.to_text(),
        kind=credential.kind.value,
        state=credential.state.value,
        tags=tuple(credential.scope.as_strings()),
        uses=credential.uses,
        max_uses=credential.max_uses,
        created_at=credential.created_at,
        expires_at=credential.expires_at,
        last_used_at=credential.last_used_at,
        ended_at=credential.ended_at,
    )


def api_key_info(record: ApiKeyRecord) -> ApiKeyInfo:
    """An API key without its secret hash."""
    return ApiKeyInfo(
        id=record.id,
        scope=record.scope.value,
        description=record.description,
        created_at=record.created_at,
        expires_at=record.expires_at,
        revoked_at=record.revoked_at,
        last_used_at=record.last_used_at,
    )


def audit_info(entry: AuditEntry) -> AuditEntryInfo:
    """One audit entry with its hash in hex."""
    return AuditEntryInfo(
        index=entry.index,
        time=entry.time,
        actor=entry.actor,
        action=entry.action,
        target=entry.target,
        details=entry.details,
        entry_hash=entry.entry_hash.hex(),
    )
