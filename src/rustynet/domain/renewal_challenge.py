"""Token-renewal challenges that cost the control plane no storage until a node proves itself.

The one rule: a renewal challenge is accepted only for the node id it was issued for, before
its expiry, and only if this control plane (any instance holding the same token key) made it;
issuing one stores nothing, so an unauthenticated client asking for challenges, for any node
id, known or not, costs the server a MAC and nothing else.

Layout (32 bytes, the size of the stored random challenges it replaces, so the wire format is
unchanged): `expires_at` (4 bytes, big-endian Unix seconds) ∥ nonce (12 random bytes) ∥ tag
(16 bytes) where tag = HMAC-SHA-256(key, expires_at ∥ nonce ∥ node id) truncated to 128 bits
(RFC 2104 §5; a forger has one guess per request against 2^128). The key is derived from the
control token key (`MacKey.derive(token_key, MAC_LABEL)`), which every instance on one
database already shares to verify each other's access tokens, so a challenge issued by one
instance is answered on any other, and it survives restarts; rotating the token key only makes
outstanding challenges fail, and a node whose renewal fails simply asks for a new challenge.

What the MAC cannot do, the caller does: single use. After the node's identity-key signature
over `token_renewal_message(challenge, node id)` verified, the whole 32-byte challenge goes
into the shared nonce store (`RenewalChallenge.remember_until`), whose atomic insert refuses a
second use on any instance. Rows are written only for proven nodes.

An unknown node id gets a challenge of the same size, made by the same code in the same time:
issuing reads nothing, so it cannot tell whether the node exists.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Final

import attrs

from rustynet.domain.errors import InvalidSignature, LocalProtocolError, RemoteProtocolError
from rustynet.domain.keys import MacKey
from rustynet.domain.replay import NONCE_RETENTION

if TYPE_CHECKING:
    from rustynet.domain.entropy import Entropy

RENEWAL_CHALLENGE_BYTES: Final = 32
RENEWAL_CHALLENGE_TTL: Final = timedelta(seconds=60)
MAX_CLOCK_SKEW: Final = timedelta(seconds=90)  # between instances, as for token `iat`
MAC_LABEL: Final = "token-renewal-challenge"
MAX_NODE_ID_CHARS: Final = 128

_EXPIRY: Final = 4
_NONCE: Final = 12
_TAG: Final = 16
_MAX_EXPIRY: Final = 2**32 - 1  # 2106-02-07


class InvalidChallenge(RemoteProtocolError):  # noqa: N818 - mirrors InvalidToken
    """Any renewal-challenge failure. `str()` is always the same; `reason` is for debug logs."""

    MESSAGE: Final = "invalid renewal challenge"

    def __init__(self, reason: str) -> None:
        super().__init__(self.MESSAGE)
        self.reason = reason


@attrs.frozen
class RenewalChallenge:
    """A challenge as issued or as verified: its bytes, the node it is for and its expiry."""

    id: bytes = attrs.field(repr=bytes.hex)
    node_id: str
    expires_at: datetime

    @property
    def remember_until(self) -> datetime:
        """How long the nonce store must refuse this challenge again: past its expiry by the
        nonce retention (180 s), which covers the clock skew tolerated between instances."""
        return self.expires_at + NONCE_RETENTION


def issue_renewal_challenge(
    key: MacKey, node_id: str, now: datetime, entropy: Entropy
) -> RenewalChallenge:
    """A fresh challenge for `node_id`, valid for at most `RENEWAL_CHALLENGE_TTL` from `now`."""
    _require_utc(now)
    node = _node_bytes(node_id)
    expires = int(now.timestamp()) + int(RENEWAL_CHALLENGE_TTL.total_seconds())
    if expires > _MAX_EXPIRY:
        raise LocalProtocolError("the clock is past what a renewal challenge can encode")
    nonce = entropy.token_bytes(_NONCE)
    if not isinstance(nonce, bytes) or len(nonce) != _NONCE:
        raise LocalProtocolError(f"entropy returned no {_NONCE}-byte nonce")
    head = expires.to_bytes(_EXPIRY, "big") + nonce
    challenge_id = head + key.tag(head + node, _TAG)
    return RenewalChallenge(challenge_id, node_id, datetime.fromtimestamp(expires, UTC))


def verify_renewal_challenge(
    key: MacKey, challenge_id: bytes, node_id: str, now: datetime
) -> RenewalChallenge:
    """The challenge if `key` made it for `node_id` and it is live at `now`; else
    `InvalidChallenge`. Checks, in order: size, node id form, tag (constant time), expiry."""
    _require_utc(now)
    if not isinstance(challenge_id, bytes) or len(challenge_id) != RENEWAL_CHALLENGE_BYTES:
        raise InvalidChallenge(f"a renewal challenge is {RENEWAL_CHALLENGE_BYTES} bytes")
    try:
        node = _node_bytes(node_id)
    except LocalProtocolError as exc:
        raise InvalidChallenge("not a node id") from exc
    head, tag = challenge_id[: _EXPIRY + _NONCE], challenge_id[_EXPIRY + _NONCE :]
    try:
        key.verify(head + node, tag)  # binds the node: the tag covers its id
    except InvalidSignature as exc:
        raise InvalidChallenge("not issued by this control plane for this node") from exc
    expires_at = datetime.fromtimestamp(int.from_bytes(head[:_EXPIRY], "big"), UTC)
    if now >= expires_at:
        raise InvalidChallenge("expired")
    if expires_at > now + RENEWAL_CHALLENGE_TTL + MAX_CLOCK_SKEW:
        raise InvalidChallenge("expires further ahead than any challenge is issued for")
    return RenewalChallenge(challenge_id, node_id, expires_at)


def _node_bytes(node_id: object) -> bytes:
    if not isinstance(node_id, str) or not 0 < len(node_id) <= MAX_NODE_ID_CHARS:
        raise LocalProtocolError(f"a node id is 1..{MAX_NODE_ID_CHARS} characters")
    if not node_id.isascii() or not node_id.isprintable():
        raise LocalProtocolError("a node id is printable ASCII")
    return node_id.encode("ascii")


def _require_utc(now: object) -> None:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() != timedelta(0):
        raise LocalProtocolError("now must be a timezone-aware UTC datetime")
