"""Relay session authentication (`domain/relay.py::authenticate`) without I/O: the chain check.

A node presents the pinned root certificate, signing certificates and a relay token. A
signing certificate issued by ANOTHER root must be refused by the chain check itself: here the
root presented is the pinned one, the rogue certificate is among those presented and carries
the right role and scope, and the token it signs is otherwise perfect (kind, audience, issuer,
subject, binding, lifetime), so nothing else stands in the way.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rustynet.domain.key_hierarchy import (
    Certificate,
)
from rustynet.domain.keys import Purpose, SigningKey
from rustynet.domain.relay import (
    AuthRequest,
    RelayAuthFailed,
    RelayTrust,
    authenticate,
    challenge_message,
)
from rustynet.domain.tokens import TokenKind, issue_token
from tests.doubles import CountingEntropy
from tests.key_chain import SigningChain

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
ISSUER = "https://control.example.net:8443"
RELAY_ID = "relay-1"
ENTROPY = CountingEntropy()
NONCE = bytes(range(32))


def _chain() -> SigningChain:
    return SigningChain.make(ENTROPY, NOW, scope=frozenset({Purpose.PEER_MAP, Purpose.REVOCATION}))


OURS = _chain()
OTHER = _chain()
TRUST = RelayTrust(RELAY_ID, ISSUER, OURS.root_key.public_key.fingerprint())
NODE = SigningKey.generate(ENTROPY)


def request(signer: SigningKey, certificates: tuple[Certificate, ...]) -> AuthRequest:
    """A perfect `auth` for node_a except for who signed the token and what is presented."""
    token = issue_token(
        signer,
        kind=TokenKind.RELAY,
        issuer=ISSUER,
        subject="node_a",
        audience=RELAY_ID,
        bound_identity=NODE.public_key,
        now=NOW,
        lifetime=timedelta(seconds=120),
        entropy=ENTROPY,
    )
    return AuthRequest(
        node_id="node_a",
        identity_key=NODE.public_key.to_text(),
        token=token,
        root_certificate=OURS.root_certificate.to_text(),  # always the pinned root
        signing_certificates=tuple(c.to_text() for c in certificates),
        signature=NODE.sign(Purpose.RELAY_AUTH, challenge_message(NONCE, RELAY_ID)),
    )


def test_positive_control_a_token_from_the_pinned_roots_signing_key_authenticates() -> None:
    """The setup the attacks below change one thing of: it authenticates."""
    node = authenticate(request(OURS.signing_key, (OURS.signing_certificate,)), TRUST, NONCE, NOW)
    assert node.node_id == "node_a"
    assert node.expires_at == NOW + timedelta(seconds=120)


@pytest.mark.parametrize(
    "presented",
    [(OTHER.signing_certificate,), (OURS.signing_certificate, OTHER.signing_certificate)],
    ids=["rogue-only", "rogue-beside-ours"],
)
def test_signing_certificate_from_another_root_is_refused_by_the_chain_check(
    presented: tuple[Certificate, ...],
) -> None:
    """A token signed by another control plane's certified key, its certificate presented
    under the pinned root: refused, and the reason is the chain (issuer is not our root)."""
    assert OTHER.signing_certificate.issuer != OURS.root_certificate.key_id
    attack = request(OTHER.signing_key, presented)
    with pytest.raises(RelayAuthFailed) as refused:
        authenticate(attack, TRUST, NONCE, NOW)
    assert str(refused.value) == "unauthorized"  # opaque on the wire
    assert refused.value.reason == "UnknownSigner: certificate was not issued by the trusted root"


def test_a_genuine_token_beside_a_rogue_certificate_is_refused() -> None:
    """Every presented certificate must chain, not just the one that signed the token."""
    attack = request(OURS.signing_key, (OURS.signing_certificate, OTHER.signing_certificate))
    with pytest.raises(RelayAuthFailed) as refused:
        authenticate(attack, TRUST, NONCE, NOW)
    assert str(refused.value) == "unauthorized"  # opaque on the wire
    assert refused.value.reason == "UnknownSigner: certificate was not issued by the trusted root"
