"""Enrollment handshake: token → challenge → proof → authorization, and every way to fail."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import attrs
import pytest

from rustynet.domain.enrollment import (
    ATTEMPT_TRANSITIONS,
    CHALLENGE_BYTES,
    AttemptState,
    Authorize,
    ClientState,
    EnrollmentClient,
    EnrollmentPolicy,
    EnrollmentServer,
    ForgetChallenges,
    IssueChallenge,
    ProofPresented,
    Reject,
    RejectReason,
    Tick,
    TokenPresented,
    UnexpectedMessageError,
    proof_message,
)
from rustynet.domain.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from rustynet.domain.keys import Purpose, SigningKey, TunnelKey, TunnelKeyScheme
from rustynet.domain.scope import Scope
from tests.doubles import CountingEntropy

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
TOKEN_SCOPE = Scope.of(["tag:server", "tag:web"])


def key(i: int) -> SigningKey:
    """A fixed identity key."""
    return SigningKey.from_seed(bytes([i]) * 32)


def tunnel(i: int) -> TunnelKey:
    """A fixed tunnel public key."""
    return TunnelKey(TunnelKeyScheme.X25519, bytes([i]) * 32)


def server(**policy: object) -> EnrollmentServer:
    """A server with deterministic entropy."""
    # Policy fields are checked at run time, hence the ignore below.
    return EnrollmentServer(CountingEntropy(), EnrollmentPolicy(**policy))  # type: ignore[arg-type]


def client(requested: Scope | None = None, identity: int = 1) -> EnrollmentClient:
    """A node with fixed keys."""
    return EnrollmentClient(key(identity), tunnel(2), "laptop", requested)


def begin(
    srv: EnrollmentServer, node: EnrollmentClient, now: datetime = T0, token: str = "tok-1"
) -> tuple[IssueChallenge, ProofPresented]:
    """Run the handshake up to the proof."""
    issued = srv.handle(node.start(token).presented(TOKEN_SCOPE), now)
    assert isinstance(issued, IssueChallenge)
    proof = node.receive(issued)
    assert proof is not None
    return issued, proof


def test_full_handshake_authorizes_the_presented_keys() -> None:
    """The happy path: the authorization names the node's keys, hostname and token."""
    srv, node = server(), client(Scope.of(["tag:server"]))
    issued, proof = begin(srv, node)
    result = srv.handle(proof, T0 + timedelta(seconds=1))
    assert result == Authorize(
        challenge_id=issued.challenge_id,
        token_id="tok-1",
        identity_key=key(1).public_key,
        tunnel_key=tunnel(2),
        hostname="laptop",
        scope=Scope.of(["tag:server"]),
    )
    assert node.receive(result) is None
    assert node.state is ClientState.ENROLLED


def test_no_requested_scope_means_the_token_scope() -> None:
    """A node that asks for nothing specific gets exactly the token's scope."""
    srv, node = server(), client()
    _, proof = begin(srv, node)
    result = srv.handle(proof, T0)
    assert isinstance(result, Authorize)
    assert result.scope == TOKEN_SCOPE


def test_challenge_is_256_bits_from_entropy_and_lives_60_seconds() -> None:
    """Challenges come from the Entropy port, are ≥ 128 bits and expire within 60 s."""
    entropy = CountingEntropy()
    srv = EnrollmentServer(entropy)
    issued = srv.handle(client().start("tok-1").presented(TOKEN_SCOPE), T0)
    assert isinstance(issued, IssueChallenge)
    assert len(issued.challenge_id) == CHALLENGE_BYTES >= 16
    assert entropy.calls == 1
    assert issued.expires_at == T0 + timedelta(seconds=60)
    assert srv.deadline() == issued.expires_at


def test_challenge_ttl_above_60_seconds_is_refused() -> None:
    """The policy cannot stretch a challenge past 60 s."""
    with pytest.raises(LocalProtocolError):
        EnrollmentPolicy(challenge_ttl=timedelta(seconds=61))


def test_requested_scope_beyond_the_token_is_rejected_without_drawing_a_challenge() -> None:
    """Asking for a tag the token does not grant is refused; nothing changes."""
    entropy = CountingEntropy()
    srv = EnrollmentServer(entropy)
    request = client(Scope.of(["tag:server", "tag:admin"])).start("tok-1")
    assert srv.handle(request.presented(TOKEN_SCOPE), T0) == Reject(RejectReason.SCOPE_NOT_GRANTED)
    assert (srv.pending(), entropy.calls) == (0, 0)


def test_a_challenge_authorizes_only_once() -> None:
    """Replaying the same valid proof is rejected as a used challenge."""
    srv, node = server(), client()
    _, proof = begin(srv, node)
    assert isinstance(srv.handle(proof, T0), Authorize)
    before = srv.snapshot()
    assert srv.handle(proof, T0) == Reject(RejectReason.CHALLENGE_USED)
    assert srv.snapshot() == before


def test_a_replay_after_the_challenge_is_forgotten_is_still_rejected() -> None:
    """Once ticked away, a used challenge is unknown: still no second authorization."""
    srv, node = server(), client()
    _, proof = begin(srv, node)
    srv.handle(proof, T0)
    srv.handle(Tick(), T0 + timedelta(seconds=60))
    assert srv.handle(proof, T0 + timedelta(seconds=61)) == Reject(RejectReason.UNKNOWN_CHALLENGE)


@pytest.mark.parametrize("late", [timedelta(seconds=60), timedelta(seconds=61)])
def test_an_expired_challenge_is_rejected_and_state_unchanged(late: timedelta) -> None:
    """A proof at or after the challenge's expiry is refused; the attempt is not consumed."""
    srv, node = server(), client()
    _, proof = begin(srv, node)
    before = srv.snapshot()
    assert srv.handle(proof, T0 + late) == Reject(RejectReason.CHALLENGE_EXPIRED)
    assert srv.snapshot() == before


def test_proof_just_before_expiry_is_accepted() -> None:
    """59.999999 s after issue the challenge is still live."""
    srv, node = server(), client()
    _, proof = begin(srv, node)
    late = T0 + timedelta(seconds=60) - timedelta(microseconds=1)
    assert isinstance(srv.handle(proof, late), Authorize)


def _forged(srv: EnrollmentServer, issued: IssueChallenge, how: str) -> ProofPresented:
    """A proof that is wrong in exactly one way."""
    attempt = srv.snapshot()[issued.challenge_id]
    request = attempt.request
    signer, purpose = key(1), Purpose.ENROLLMENT_PROOF
    if how == "other-key":
        signer = key(9)
    elif how == "other-purpose":
        purpose = Purpose.TOKEN_RENEWAL
    elif how == "other-tunnel-key":
        request = attrs.evolve(request, tunnel_key=tunnel(3))
    elif how == "other-token-id":
        request = attrs.evolve(request, token_id="tok-2")
    elif how == "other-hostname":
        request = attrs.evolve(request, hostname="desktop")
    elif how == "other-scope":
        request = attrs.evolve(request, requested_scope=Scope.of(["tag:web"]))
    elif how == "other-challenge":
        return ProofPresented(
            issued.challenge_id,
            signer.sign(purpose, proof_message(b"\x00" * CHALLENGE_BYTES, request)),
        )
    return ProofPresented(
        issued.challenge_id, signer.sign(purpose, proof_message(issued.challenge_id, request))
    )


@pytest.mark.parametrize(
    "how",
    [
        "other-key",
        "other-purpose",
        "other-tunnel-key",
        "other-token-id",
        "other-hostname",
        "other-scope",
        "other-challenge",
    ],
)
def test_a_proof_over_anything_else_is_rejected_and_changes_nothing(how: str) -> None:
    """Proofs by another key, for another purpose, or over other facts never authorize."""
    srv, node = server(), client(Scope.of(["tag:server"]))
    issued, good = begin(srv, node)
    before = srv.snapshot()
    assert srv.handle(_forged(srv, issued, how), T0) == Reject(RejectReason.INVALID_PROOF)
    assert srv.snapshot() == before
    assert isinstance(srv.handle(good, T0), Authorize)  # the real node is unaffected


def test_a_flipped_signature_byte_is_rejected() -> None:
    """Every single-byte flip of the proof signature is refused."""
    srv, node = server(), client()
    _, proof = begin(srv, node)
    for i in range(len(proof.signature)):
        flipped = bytearray(proof.signature)
        flipped[i] ^= 0x01
        bad = ProofPresented(proof.challenge_id, bytes(flipped))
        assert srv.handle(bad, T0) == Reject(RejectReason.INVALID_PROOF)


def test_unknown_challenge_is_rejected() -> None:
    """A proof for a challenge the server never issued is refused."""
    srv = server()
    proof = ProofPresented(b"\x07" * CHALLENGE_BYTES, b"\x00" * 64)
    assert srv.handle(proof, T0) == Reject(RejectReason.UNKNOWN_CHALLENGE)
    assert srv.pending() == 0


def test_pending_challenges_are_capped() -> None:
    """At the cap a new token is refused; an expired challenge frees its slot."""
    srv = server(max_pending=2)
    for i in range(2):
        assert isinstance(
            srv.handle(client().start(f"t{i}").presented(TOKEN_SCOPE), T0), IssueChallenge
        )
    before = srv.snapshot()
    third = client().start("t3").presented(TOKEN_SCOPE)
    assert srv.handle(third, T0) == Reject(RejectReason.TOO_MANY_PENDING)
    assert srv.snapshot() == before
    assert isinstance(srv.handle(third, T0 + timedelta(seconds=60)), IssueChallenge)
    assert srv.pending() == 1


def test_tick_forgets_expired_challenges() -> None:
    """Tick at the deadline drops exactly the expired challenges."""
    srv = server()
    first = srv.handle(client().start("a").presented(TOKEN_SCOPE), T0)
    second = srv.handle(client().start("b").presented(TOKEN_SCOPE), T0 + timedelta(seconds=10))
    assert isinstance(first, IssueChallenge)
    assert isinstance(second, IssueChallenge)
    assert srv.handle(Tick(), T0 + timedelta(seconds=59)) == ForgetChallenges(())
    assert srv.handle(Tick(), T0 + timedelta(seconds=60)) == ForgetChallenges((first.challenge_id,))
    assert srv.deadline() == second.expires_at


def test_transition_table_covers_each_legal_pair() -> None:
    """The attempt machine is a table: new → challenged → authorized, both → expired on Tick."""
    assert dict(ATTEMPT_TRANSITIONS) == {
        (AttemptState.NEW, TokenPresented): AttemptState.CHALLENGED,
        (AttemptState.CHALLENGED, ProofPresented): AttemptState.AUTHORIZED,
        (AttemptState.CHALLENGED, Tick): AttemptState.EXPIRED,
        (AttemptState.AUTHORIZED, Tick): AttemptState.EXPIRED,
    }


def test_non_inputs_and_naive_times_are_local_errors() -> None:
    """Driving the server with a wrong type or a naive clock is a bug, not a rejection."""
    srv = server()
    with pytest.raises(LocalProtocolError):
        srv.handle("hello", T0)  # type: ignore[arg-type]  # wrong type on purpose
    with pytest.raises(LocalProtocolError):
        srv.handle(Tick(), datetime(2025, 1, 1))  # noqa: DTZ001 - the point


@pytest.mark.parametrize(
    "field",
    [
        {"hostname": "Bad_Host"},
        {"hostname": ""},
        {"token_id": "has space"},
        {"token_id": ""},
        {"token_scope": ["tag:server"]},
        {"identity_key": b"\x00" * 32},
    ],
)
def test_malformed_inputs_cannot_be_built(field: dict[str, Any]) -> None:
    """Events validate their fields: a malformed request never reaches the machine."""
    good = client().start("tok-1").presented(TOKEN_SCOPE)
    with pytest.raises(DecodeError):
        attrs.evolve(good, **field)


def test_malformed_proof_cannot_be_built() -> None:
    """A short challenge id or signature is a DecodeError (a RemoteProtocolError)."""
    with pytest.raises(RemoteProtocolError):
        ProofPresented(b"\x00" * 16, b"\x00" * 64)
    with pytest.raises(RemoteProtocolError):
        ProofPresented(b"\x00" * CHALLENGE_BYTES, b"\x00" * 63)


def test_client_refuses_out_of_order_messages_and_fails_closed() -> None:
    """An Authorize before any challenge puts the client into FAILED."""
    srv, node = server(), client()
    issued, proof = begin(srv, node)
    other = client()
    other.start("tok-1")
    auth = srv.handle(proof, T0)
    assert isinstance(auth, Authorize)
    with pytest.raises(UnexpectedMessageError):
        other.receive(auth)
    assert other.state is ClientState.FAILED
    with pytest.raises(UnexpectedMessageError):
        node.receive(issued)  # a second challenge after proving


def test_client_refuses_an_authorization_for_other_keys() -> None:
    """An authorization naming another tunnel key or a wider scope is not accepted by the node."""
    srv, node = server(), client(Scope.of(["tag:server"]))
    _, proof = begin(srv, node)
    auth = srv.handle(proof, T0)
    assert isinstance(auth, Authorize)
    with pytest.raises(UnexpectedMessageError):
        node.receive(attrs.evolve(auth, tunnel_key=tunnel(3)))
    assert node.state is ClientState.FAILED
    wider = client(Scope.of(["tag:server"]))
    _, proof = begin(srv, wider, token="tok-2")
    auth = srv.handle(proof, T0)
    assert isinstance(auth, Authorize)
    with pytest.raises(UnexpectedMessageError):
        wider.receive(attrs.evolve(auth, scope=TOKEN_SCOPE))


def test_client_records_a_rejection() -> None:
    """A Reject ends the client's attempt in FAILED with the reason kept."""
    node = client()
    node.start("tok-1")
    assert node.receive(Reject(RejectReason.SCOPE_NOT_GRANTED)) is None
    assert node.state is ClientState.FAILED
    assert node.rejection == Reject(RejectReason.SCOPE_NOT_GRANTED)
    with pytest.raises(LocalProtocolError):
        node.start("tok-1")


def test_client_normalizes_the_hostname_to_lowercase() -> None:
    """`Laptop` becomes the DNS label `laptop`."""
    node = EnrollmentClient(key(1), tunnel(2), "Laptop")
    assert node.start("tok-1").hostname == "laptop"
