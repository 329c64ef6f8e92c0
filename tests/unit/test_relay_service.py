"""Relay service without I/O: session machine table, token buckets, forwarding and drop counters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from rustynet.application.relay import RelayService, Session
from rustynet.domain.errors import LocalProtocolError
from rustynet.domain.keys import Purpose, SigningKey, b64encode
from rustynet.domain.relay import (
    SESSION_TRANSITIONS,
    RelayAuthFailed,
    RelayLimits,
    RelayTrust,
    SessionEvent,
    SessionMachine,
    SessionPhase,
    TokenBucket,
    challenge_message,
    decode_frame,
    encode_frame,
)
from rustynet.domain.tokens import TokenKind, issue_token
from tests.doubles import CountingEntropy, FakeClock
from tests.key_chain import SigningChain

NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
ISSUER = "https://control.example.net:8443"
ENTROPY = CountingEntropy()


class FakeHandle:
    """A SessionHandle with a queue of `room` frames."""

    def __init__(self, room: int = 100) -> None:
        self.frames: list[bytes] = []
        self.room = room
        self.closed = False

    def deliver(self, frame: bytes) -> bool:
        if len(self.frames) >= self.room:
            return False
        self.frames.append(frame)
        return True

    def close_unauthorized(self) -> None:
        self.closed = True


CHAIN = SigningChain.make(ENTROPY, NOW)
ROOT_KEY, ROOT_CERT, SIGNER, SIGNER_CERT = (
    CHAIN.root_key,
    CHAIN.root_certificate,
    CHAIN.signing_key,
    CHAIN.signing_certificate,
)
TRUST = RelayTrust("relay-1", ISSUER, ROOT_KEY.public_key.fingerprint())


def _service(**limits: object) -> tuple[RelayService, FakeClock]:
    clock = FakeClock(NOW)
    return RelayService(TRUST, RelayLimits(**limits), clock, ENTROPY), clock  # type: ignore[arg-type]


def _open(service: RelayService, node_id: str, handle: FakeHandle, lifetime: int = 60) -> Session:
    identity = SigningKey.generate(ENTROPY)
    session = service.open_connection(handle)
    assert session is not None
    token = issue_token(
        SIGNER,
        kind=TokenKind.RELAY,
        issuer=ISSUER,
        subject=node_id,
        audience="relay-1",
        bound_identity=identity.public_key,
        now=NOW,
        lifetime=timedelta(seconds=lifetime),
        entropy=ENTROPY,
    )
    signature = identity.sign(Purpose.RELAY_AUTH, challenge_message(session.nonce, "relay-1"))
    service.authenticate(
        session,
        {
            "type": "auth",
            "node_id": node_id,
            "identity_key": identity.public_key.to_text(),
            "token": token,
            "root_certificate": ROOT_CERT.to_text(),
            "signing_certificates": [SIGNER_CERT.to_text()],
            "signature": b64encode(signature),
        },
    )
    return session


def test_forward_rewrites_the_header_to_the_authenticated_source() -> None:
    """The destination sees the sender's authenticated id, whatever it claims, payload intact."""
    service, _ = _service()
    ha, hb = FakeHandle(), FakeHandle()
    sa, _ = _open(service, "node_a", ha), _open(service, "node_b", hb)
    assert service.forward(sa, encode_frame(0x01, "node_b", b"\x02\x06node_x"))
    assert [decode_frame(f, 0x02) for f in hb.frames] == [("node_a", b"\x02\x06node_x")]
    assert service.counters.bytes_forwarded == 8


def test_full_destination_queue_drops_and_counts() -> None:
    """A slow destination (no room) costs a counted drop, never a buffer."""
    service, _ = _service()
    sa = _open(service, "node_a", FakeHandle())
    _open(service, "node_b", FakeHandle(room=1))
    assert service.forward(sa, encode_frame(0x01, "node_b", b"1"))
    assert not service.forward(sa, encode_frame(0x01, "node_b", b"2"))
    assert service.counters.dropped["queue_full"] == 1


def test_malformed_and_unauthenticated_frames_are_counted() -> None:
    """A bad header and a frame on a session that never authenticated are dropped by reason."""
    service, _ = _service()
    sa = _open(service, "node_a", FakeHandle())
    assert not service.forward(sa, b"\x01\x09x")
    pending = service.open_connection(FakeHandle())
    assert pending is not None
    assert not service.forward(pending, encode_frame(0x01, "node_a", b"x"))
    assert service.counters.dropped["malformed"] == 1
    assert service.counters.dropped["unauthenticated"] == 1


def test_expiry_ends_the_session_and_its_registration() -> None:
    """Past the token's exp the session is closed and frames to that node go nowhere."""
    service, clock = _service()
    sa = _open(service, "node_a", FakeHandle())
    sb = _open(service, "node_b", FakeHandle(), lifetime=10)
    assert not service.expired(sb)
    clock.current = NOW + timedelta(seconds=10)
    assert service.expired(sb)
    assert not service.forward(sa, encode_frame(0x01, "node_b", b"x"))
    assert service.counters.dropped["unknown_destination"] == 1
    assert service.counters.open_sessions == 1


def test_failed_auth_changes_no_registration() -> None:
    """A forged auth message is one generic failure and registers nothing."""
    service, _ = _service()
    session = service.open_connection(FakeHandle())
    assert session is not None
    with pytest.raises(RelayAuthFailed) as info:
        service.authenticate(session, {"type": "auth"})
    assert str(info.value) == "unauthorized"
    assert service.node_count == 0
    assert session.machine.phase is SessionPhase.CLOSED


def test_session_machine_rejects_every_pair_outside_the_table() -> None:
    """Each (phase, event) not in the table raises and leaves the phase unchanged."""
    for phase in SessionPhase:
        for event in SessionEvent:
            machine = SessionMachine()
            machine.phase = phase
            if (phase, event) in SESSION_TRANSITIONS:
                assert machine.handle(event) is SESSION_TRANSITIONS[(phase, event)]
            else:
                with pytest.raises(LocalProtocolError):
                    machine.handle(event)
                assert machine.phase is phase


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    """Burst then rate; refusals take nothing; a clock stepping back adds nothing."""
    bucket = TokenBucket(rate=10, burst=3, now=0.0)
    assert [bucket.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert bucket.take(0.1)
    assert not bucket.take(0.05)
    assert not bucket.take(0.1, 2)
    assert bucket.take(100.0, 3)
    assert not bucket.take(100.0)
