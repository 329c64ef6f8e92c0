"""Stored enrollment challenges: what one keeps (public values only) and how it is read back.

A challenge issued by any instance lives in the store (`uow.challenges`, ≤ 60 s) so it can be
answered on any other; this module is its payload codec, the domain's `Attempt` plus the
pending enrollment the proof will complete.
"""

from __future__ import annotations

import json
from datetime import datetime

import attrs

from rustynet.domain.credentials import CredentialId
from rustynet.domain.enrollment import Attempt, AttemptState, TokenPresented
from rustynet.domain.errors import DecodeError, LocalProtocolError
from rustynet.domain.keys import TunnelKey, VerifyKey
from rustynet.domain.scope import Scope, Tag
from rustynet.ports.store import ChallengeRecord


@attrs.frozen
class PendingEnrollment:
    """The join key, binding expiry and limiter key an enrollment challenge was issued for."""

    credential_id: CredentialId
    binding_expires_at: datetime
    credential_key: str


def pending_payload(request: TokenPresented, pending: PendingEnrollment) -> str:
    """What a stored enrollment challenge keeps (public values only) as JSON text."""
    requested = request.requested_scope
    return json.dumps(
        {
            "token_id": request.token_id,
            "token_scope": list(request.token_scope.as_strings()),
            "identity_key": request.identity_key.to_text(),
            "tunnel_key": request.tunnel_key.to_text(),
            "hostname": request.hostname,
            "requested_scope": None if requested is None else list(requested.as_strings()),
            "credential_id": pending.credential_id.to_text(),
            "binding_expires_at": pending.binding_expires_at.isoformat(),
            "credential_key": pending.credential_key,
        },
        separators=(",", ":"),
    )


def pending_from(record: ChallengeRecord) -> tuple[Attempt, PendingEnrollment]:
    """Inverse of `pending_payload` (LocalProtocolError: the stored row is damaged)."""
    try:
        data = json.loads(record.payload)
        requested = data["requested_scope"]
        request = TokenPresented(
            token_id=data["token_id"],
            token_scope=Scope(frozenset(Tag(t) for t in data["token_scope"])),
            identity_key=VerifyKey.from_text(data["identity_key"]),
            tunnel_key=TunnelKey.from_text(data["tunnel_key"]),
            hostname=data["hostname"],
            requested_scope=None
            if requested is None
            else Scope(frozenset(Tag(t) for t in requested)),
        )
        pending = PendingEnrollment(
            CredentialId.from_text(data["credential_id"]),
            datetime.fromisoformat(data["binding_expires_at"]),
            str(data["credential_key"]),
        )
    except (ValueError, KeyError, TypeError, DecodeError) as exc:
        raise LocalProtocolError("a stored enrollment challenge is damaged") from exc
    state = AttemptState.AUTHORIZED if record.used else AttemptState.CHALLENGED
    return Attempt(request, record.expires_at, state), pending
