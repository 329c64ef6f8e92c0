"""Stateful property test of the enrollment handshake, with broken servers it must catch.

Invariants: an authorization's scope is a subset of its token's scope; a rejection leaves the
server's state exactly as it was; a challenge authorizes at most once; nothing is authorized
without a valid, timely proof; live challenges never exceed the cap; and a valid, timely proof
for an unused challenge is authorized (so a server that refuses everything fails too).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import attrs
import pytest
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    MultipleResults,
    RuleBasedStateMachine,
    invariant,
    multiple,
    rule,
)

from rustynet.domain.enrollment import (
    Attempt,
    AttemptState,
    Authorize,
    EnrollmentError,
    EnrollmentPolicy,
    EnrollmentServer,
    IssueChallenge,
    ProofPresented,
    Reject,
    RejectReason,
    ServerEffect,
    ServerInput,
    Tick,
    TokenPresented,
    proof_message,
)
from rustynet.domain.keys import Purpose, SigningKey, TunnelKey, TunnelKeyScheme
from rustynet.domain.scope import Scope, Tag
from tests.doubles import CountingEntropy
from tests.property.broken import assert_machine_catches

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
CAP = 4
TOKENS = {
    "tok-servers": Scope.of(["tag:server"]),
    "tok-web": Scope.of(["tag:server", "tag:web"]),
    "tok-untagged": Scope(),
}
REQUESTS = [None, Scope(), Scope.of(["tag:server"]), Scope.of(["tag:web"]), Scope.of(["tag:db"])]
IDENTITIES = [SigningKey.from_seed(bytes([i + 1]) * 32) for i in range(3)]
TUNNELS = [TunnelKey(TunnelKeyScheme.X25519, bytes([i + 1]) * 32) for i in range(2)]
FORGERIES = [
    "other-key",
    "other-purpose",
    "other-tunnel-key",
    "other-token-id",
    "other-scope",
    "garbage",
]


@attrs.frozen
class Issued:
    """What the test knows about one challenge it was given."""

    challenge_id: bytes
    request: TokenPresented
    signer: SigningKey
    expires_at: datetime


def _granted(request: TokenPresented) -> Scope:
    """The scope an honest server grants for `request`."""
    return request.token_scope if request.requested_scope is None else request.requested_scope


class EnrollmentMachine(RuleBasedStateMachine):
    """Presents tokens and proofs (honest, replayed, forged, late) while time passes."""

    server_class: type[EnrollmentServer] = EnrollmentServer
    challenges = Bundle("challenges")

    def __init__(self) -> None:
        super().__init__()
        self.server = self.server_class(CountingEntropy(), EnrollmentPolicy(max_pending=CAP))
        self.now = T0
        self.live: dict[bytes, datetime] = {}  # issued, unexpired (model of the cap)
        self.authorized: dict[bytes, int] = {}
        self.authorizations: list[Authorize] = []

    def _handle(self, event: ServerInput) -> ServerEffect:
        before = self.server.snapshot()
        effect = self.server.handle(event, self.now)
        if isinstance(effect, Reject):
            assert self.server.snapshot() == before, f"rejection {effect.reason} changed state"
        if isinstance(effect, Authorize):
            self.authorized[effect.challenge_id] = self.authorized.get(effect.challenge_id, 0) + 1
            self.authorizations.append(effect)
        return effect

    @rule(
        target=challenges,
        token_id=st.sampled_from(sorted(TOKENS)),
        requested=st.sampled_from(REQUESTS),
        signer=st.sampled_from(IDENTITIES),
        tunnel=st.sampled_from(TUNNELS),
    )
    def present_token(
        self, token_id: str, requested: Scope | None, signer: SigningKey, tunnel: TunnelKey
    ) -> Issued | MultipleResults[Issued]:
        """A node presents a token, asking for some scope."""
        request = TokenPresented(
            token_id=token_id,
            token_scope=TOKENS[token_id],
            identity_key=signer.public_key,
            tunnel_key=tunnel,
            hostname="node",
            requested_scope=requested,
        )
        effect = self._handle(request)
        self.live = {c: t for c, t in self.live.items() if self.now < t}
        grantable = requested is None or requested.issubset(TOKENS[token_id])
        if not grantable:
            assert effect == Reject(RejectReason.SCOPE_NOT_GRANTED), "scope escalation accepted"
            return multiple()
        if len(self.live) >= CAP:
            assert effect == Reject(RejectReason.TOO_MANY_PENDING), "pending cap not enforced"
            return multiple()
        assert isinstance(effect, IssueChallenge), f"a valid token was refused: {effect}"
        self.live[effect.challenge_id] = effect.expires_at
        return Issued(effect.challenge_id, request, signer, effect.expires_at)

    @rule(issued=challenges)
    def present_valid_proof(self, issued: Issued) -> None:
        """The node answers its challenge correctly (possibly late, possibly again)."""
        signature = issued.signer.sign(
            Purpose.ENROLLMENT_PROOF, proof_message(issued.challenge_id, issued.request)
        )
        used_before = self.authorized.get(issued.challenge_id, 0) > 0
        effect = self._handle(ProofPresented(issued.challenge_id, signature))
        timely = self.now < issued.expires_at
        if isinstance(effect, Authorize):
            assert timely, "an expired challenge authorized"
            assert not used_before, "a challenge authorized twice"
            request = issued.request
            assert effect.scope == _granted(request)
            assert (effect.identity_key, effect.tunnel_key, effect.token_id) == (
                request.identity_key,
                request.tunnel_key,
                request.token_id,
            )
        elif timely and not used_before:
            raise AssertionError(f"a valid, timely proof was refused: {effect}")

    @rule(issued=challenges, how=st.sampled_from(FORGERIES))
    def present_forged_proof(self, issued: Issued, how: str) -> None:
        """An attacker answers someone's challenge with a proof that is wrong in one way."""
        request, signer, purpose = issued.request, issued.signer, Purpose.ENROLLMENT_PROOF
        if how == "other-key":
            signer = next(k for k in IDENTITIES if k.public_key != request.identity_key)
        elif how == "other-purpose":
            purpose = Purpose.SIGNED_REQUEST
        elif how == "other-tunnel-key":
            request = attrs.evolve(
                request, tunnel_key=next(t for t in TUNNELS if t != request.tunnel_key)
            )
        elif how == "other-token-id":
            request = attrs.evolve(request, token_id="tok-stolen")
        elif how == "other-scope":
            request = attrs.evolve(request, requested_scope=Scope.of(["tag:db"]))
        signature = signer.sign(purpose, proof_message(issued.challenge_id, request))
        if how == "garbage":
            signature = bytes(64)
        effect = self._handle(ProofPresented(issued.challenge_id, signature))
        assert isinstance(effect, Reject), f"a forged proof ({how}) was accepted"

    @rule(seconds=st.integers(0, 70))
    def advance(self, seconds: int) -> None:
        """Time passes."""
        self.now += timedelta(seconds=seconds)

    @rule()
    def tick(self) -> None:
        """The driver wakes at (or after) the deadline; nothing live is forgotten."""
        live_before = {cid for cid, a in self.server.snapshot().items() if self.now < a.expires_at}
        self._handle(Tick())
        assert set(self.server.snapshot()) == live_before, "Tick dropped a live challenge"

    @invariant()
    def authorizations_stay_within_scope_and_happen_once(self) -> None:
        """Every authorization's scope ⊆ its token's; every challenge authorized at most once."""
        for auth in self.authorizations:
            assert auth.scope.issubset(TOKENS[auth.token_id]), "scope beyond the token's"
        assert all(n == 1 for n in self.authorized.values()), "a challenge authorized twice"
        for attempt in self.server.snapshot().values():
            assert attempt.state in {AttemptState.CHALLENGED, AttemptState.AUTHORIZED}

    @invariant()
    def live_challenges_are_capped(self) -> None:
        """Never more live challenges than the cap."""
        live = [a for a in self.server.snapshot().values() if self.now < a.expires_at]
        assert len(live) <= CAP, "pending challenges exceed the cap"


TestEnrollmentMachine = EnrollmentMachine.TestCase


# --- broken servers: each must make the machine above fail ---------------------------------


class NoScopeCheckServer(EnrollmentServer):
    """Grants whatever scope is requested."""

    def _check_scope(self, request: TokenPresented) -> None:
        return None


class WideningServer(EnrollmentServer):
    """Checks the request, then authorizes more than the token grants."""

    def _check_scope(self, request: TokenPresented) -> None:
        requested = request.requested_scope
        if requested is not None and not requested.issubset(request.token_scope):
            raise EnrollmentError(RejectReason.SCOPE_NOT_GRANTED)

    def _granted_scope(self, request: TokenPresented) -> Scope:
        return Scope(request.token_scope.tags | {Tag("tag:admin")})


class ReusableChallengeServer(EnrollmentServer):
    """Lets a used challenge authorize again."""

    def _consume(self, attempt: Attempt, event: ProofPresented) -> AttemptState:
        return AttemptState.AUTHORIZED


class NoSignatureCheckServer(EnrollmentServer):
    """Accepts any proof."""

    def _verify_proof(self, event: ProofPresented, request: TokenPresented) -> None:
        return None


class NoExpiryServer(EnrollmentServer):
    """Accepts proofs for expired challenges."""

    def _check_fresh(self, attempt: Attempt, now: datetime) -> None:
        return None


class UncappedServer(EnrollmentServer):
    """Never runs out of room."""

    def _has_room(self, live: int) -> bool:
        return True


class BurnOnFailureServer(EnrollmentServer):
    """Drops the challenge when a proof fails: a rejection that changes state."""

    def _verify_proof(self, event: ProofPresented, request: TokenPresented) -> None:
        try:
            super()._verify_proof(event, request)
        except Exception:
            self._attempts.pop(event.challenge_id, None)
            raise


@pytest.mark.parametrize(
    "broken",
    [
        NoScopeCheckServer,
        WideningServer,
        ReusableChallengeServer,
        NoSignatureCheckServer,
        NoExpiryServer,
        UncappedServer,
        BurnOnFailureServer,
    ],
)
def test_property_test_catches_a_broken_server(broken: type[EnrollmentServer]) -> None:
    """With a check removed, the state machine finds a counterexample."""
    machine = type(f"{broken.__name__}Machine", (EnrollmentMachine,), {"server_class": broken})
    assert_machine_catches(machine)
