"""Signed envelopes and canonical JSON: one byte form, purpose and signer bound, flips rejected."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from rustynet.domain.errors import (
    DecodeError,
    InvalidSignature,
    LocalProtocolError,
    RemoteProtocolError,
)
from rustynet.domain.keys import KeyFingerprint, Purpose, SigningKey, VerifyKey, b64encode
from rustynet.domain.signed import (
    ENVELOPE_PREFIX,
    MAX_ENVELOPE_TEXT,
    JsonValue,
    SignedEnvelope,
    UnknownSigner,
    WrongPurpose,
    canonical_json,
    parse_canonical_json,
)
from tests.tamper import flipped_texts

KEY = SigningKey.from_seed(bytes(range(32)))
OTHER = SigningKey.from_seed(bytes(range(1, 33)))
PAYLOAD: dict[str, JsonValue] = {
    "serial": 7,
    "node": "node-1",
    "peers": [{"name": "é", "ok": True}, None],
    "neg": -(2**63),
}


def _open_text(text: str) -> None:
    SignedEnvelope.from_text(text).open(KEY.public_key, Purpose.PEER_MAP)


# --- canonical JSON ---------------------------------------------------------------------------


def test_canonical_json_sorts_keys_and_is_compact_utf8() -> None:
    """Keys sorted, no whitespace, non-ASCII as raw UTF-8."""
    assert (
        canonical_json({"b": 1, "a": [True, None, "é"]}) == '{"a":[true,null,"é"],"b":1}'.encode()
    )


def test_canonical_json_is_independent_of_insertion_order() -> None:
    """The same object built in two orders encodes to the same bytes."""
    assert canonical_json({"x": 1, "y": {"b": 2, "a": 3}}) == canonical_json(
        {"y": {"a": 3, "b": 2}, "x": 1}
    )


@pytest.mark.parametrize(
    "bad",
    [
        {"f": 1.5},
        {"nan": float("nan")},
        {"inf": float("inf")},
        {"big": 2**63},
        {"small": -(2**63) - 1},
        {1: "int key"},
        {"set": {1, 2}},
        {"bytes": b"raw"},
        {"surrogate": "\ud800"},
    ],
)
def test_canonical_json_refuses_what_has_no_single_byte_form(bad: dict[object, object]) -> None:
    """Floats, NaN, out-of-range integers, non-string keys, sets, bytes and surrogates raise."""
    with pytest.raises(LocalProtocolError):
        canonical_json(bad)  # type: ignore[arg-type]  # wrong type on purpose


def test_canonical_json_refuses_a_non_object_and_deep_nesting() -> None:
    """The top level is an object; absurd nesting is refused rather than recursing."""
    with pytest.raises(LocalProtocolError):
        canonical_json([1, 2])  # type: ignore[arg-type]  # wrong type on purpose
    deep: JsonValue = []
    for _ in range(100):
        deep = [deep]
    with pytest.raises(LocalProtocolError):
        canonical_json({"deep": deep})


def test_parse_canonical_json_round_trips() -> None:
    """parse(canonical(x)) == x."""
    assert parse_canonical_json(canonical_json(PAYLOAD)) == PAYLOAD


@pytest.mark.parametrize(
    "data",
    [
        b'{"a": 1}',
        b'{"b":1,"a":2}',
        b'{"a":1,"a":1}',
        b'{"a":1.0}',
        b'{"a":1e3}',
        b'{"a":NaN}',
        b'{"a":Infinity}',
        b'{"a":-0}',
        b'{"a":01}',
        b'{"a":9223372036854775808}',
        b'{"a":"\\u00e9"}',
        b'{"a":"\\ud800"}',
        b'{"a":"\\/"}',
        b"[1]",
        b'"s"',
        b"\xff",
        b'{"a":1}\n',
        b" {}",
        b"",
        b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
)
def test_parse_canonical_json_refuses_every_other_spelling(data: bytes) -> None:
    """Whitespace, order, duplicates, floats, escapes, non-objects and bad UTF-8 all raise."""
    with pytest.raises(DecodeError):
        parse_canonical_json(data)


# --- envelopes --------------------------------------------------------------------------------


def test_seal_then_open_returns_the_payload() -> None:
    """A sealed payload opens with the signer's key for the same purpose."""
    envelope = SignedEnvelope.seal(KEY, Purpose.PEER_MAP, PAYLOAD)
    assert envelope.key_id == KEY.public_key.fingerprint()
    assert envelope.purpose is Purpose.PEER_MAP
    assert envelope.open(KEY.public_key, Purpose.PEER_MAP) == PAYLOAD


def test_text_form_round_trips_and_is_typed() -> None:
    """to_text/from_text round-trips; the text starts with rnenv_ and the purpose."""
    envelope = SignedEnvelope.seal(KEY, Purpose.PEER_MAP, PAYLOAD)
    text = envelope.to_text()
    assert text.startswith(ENVELOPE_PREFIX + "peer-map.")
    assert SignedEnvelope.from_text(text) == envelope
    assert SignedEnvelope.from_text(text).open(KEY.public_key, Purpose.PEER_MAP) == PAYLOAD


def test_signature_is_over_tagged_key_id_and_payload_with_purpose_context() -> None:
    """The signed bytes are purpose context + rnenv1 tag + key id + payload (independent check)."""
    envelope = SignedEnvelope.seal(KEY, Purpose.PEER_MAP, PAYLOAD)
    message = b"rnenv1\x00" + KEY.public_key.fingerprint().digest + canonical_json(PAYLOAD)
    KEY.public_key.verify(Purpose.PEER_MAP, message, envelope.signature)


def test_open_for_another_purpose_raises() -> None:
    """An envelope sealed for one purpose is refused when read as any other."""
    envelope = SignedEnvelope.seal(KEY, Purpose.PEER_MAP, PAYLOAD)
    for other in Purpose:
        if other is not Purpose.PEER_MAP:
            with pytest.raises(WrongPurpose):
                envelope.open(KEY.public_key, other)


def test_relabelled_purpose_does_not_verify() -> None:
    """Rewriting the purpose label (an attacker's cross-protocol move) breaks the signature."""
    envelope = SignedEnvelope.seal(KEY, Purpose.PEER_MAP, PAYLOAD)
    relabelled = SignedEnvelope(
        Purpose.REVOCATION, envelope.key_id, envelope.payload, envelope.signature
    )
    with pytest.raises(InvalidSignature):
        relabelled.open(KEY.public_key, Purpose.REVOCATION)


def test_open_with_another_key_raises_unknown_signer() -> None:
    """A key whose fingerprint is not the envelope's key id is refused before verifying."""
    envelope = SignedEnvelope.seal(KEY, Purpose.PEER_MAP, PAYLOAD)
    with pytest.raises(UnknownSigner):
        envelope.open(OTHER.public_key, Purpose.PEER_MAP)


def test_claimed_key_id_is_bound_by_the_signature() -> None:
    """Claiming another key id (and verifying with that key) fails: the id is signed."""
    envelope = SignedEnvelope.seal(KEY, Purpose.PEER_MAP, PAYLOAD)
    claimed = SignedEnvelope(
        envelope.purpose, OTHER.public_key.fingerprint(), envelope.payload, envelope.signature
    )
    with pytest.raises(InvalidSignature):
        claimed.open(OTHER.public_key, Purpose.PEER_MAP)


def test_a_signature_that_does_not_cover_the_key_id_is_refused() -> None:
    """The right key's signature over the tagged payload alone (no signer frame, as a protocol
    that signs only the payload would make it) does not open: the key id is signed too."""
    key_id = KEY.public_key.fingerprint()
    payload = canonical_json(PAYLOAD)
    signature = KEY.sign(Purpose.PEER_MAP, b"rnenv1\x00" + payload)
    unbound = SignedEnvelope(Purpose.PEER_MAP, key_id, payload, signature)
    with pytest.raises(InvalidSignature):
        unbound.open(KEY.public_key, Purpose.PEER_MAP)
    bound = KEY.sign(Purpose.PEER_MAP, SignedEnvelope.signed_message(key_id, payload))
    assert (
        SignedEnvelope(Purpose.PEER_MAP, key_id, payload, bound).open(
            KEY.public_key, Purpose.PEER_MAP
        )
        == PAYLOAD
    )


def test_signed_but_non_canonical_payload_is_refused() -> None:
    """Even a genuine signature does not make a non-canonical payload readable."""
    payload = b'{"b":1, "a":2}'
    key_id = KEY.public_key.fingerprint()
    signature = KEY.sign(Purpose.PEER_MAP, SignedEnvelope.signed_message(key_id, payload))
    envelope = SignedEnvelope(Purpose.PEER_MAP, key_id, payload, signature)
    with pytest.raises(DecodeError):
        envelope.open(KEY.public_key, Purpose.PEER_MAP)


class PinnedKeys:
    """A minimal Verifier: a fixed set of accepted keys, looked up by key id."""

    def __init__(self, *keys: VerifyKey) -> None:
        self.keys = {k.fingerprint(): k for k in keys}

    def verify_signature(
        self, key_id: KeyFingerprint, purpose: Purpose, message: bytes, signature: bytes
    ) -> None:
        if key_id not in self.keys:
            raise UnknownSigner(str(key_id))
        self.keys[key_id].verify(purpose, message, signature)


def test_open_through_a_verifier_looks_the_key_up_by_id() -> None:
    """A Verifier (keyring) accepts any of its keys and refuses others."""
    verifier = PinnedKeys(KEY.public_key, OTHER.public_key)
    for key in (KEY, OTHER):
        assert (
            SignedEnvelope.seal(key, Purpose.PEER_MAP, PAYLOAD).open(verifier, Purpose.PEER_MAP)
            == PAYLOAD
        )
    stranger = SigningKey.from_seed(bytes(32))
    with pytest.raises(UnknownSigner):
        SignedEnvelope.seal(stranger, Purpose.PEER_MAP, PAYLOAD).open(verifier, Purpose.PEER_MAP)


def test_open_requires_a_purpose_member() -> None:
    """Passing a string instead of a Purpose is our bug, not a silent pass."""
    envelope = SignedEnvelope.seal(KEY, Purpose.PEER_MAP, PAYLOAD)
    with pytest.raises(LocalProtocolError):
        envelope.open(KEY.public_key, "peer-map")  # type: ignore[arg-type]  # wrong type on purpose


@pytest.mark.parametrize(
    "text",
    [
        "",
        "rnenv",
        "rnenv_peer-map",
        "rnenv_peer-map.a.b",
        "rnenv_peer-map.a.b.c.d",
        "rnenv_unknown.{kid}.{payload}.{sig}",
        "rnenv_peer-map.{kid}.{payload}.{sig}.",
        "rnenv_peer-map.{kid}=.{payload}.{sig}",
        "rnenv_peer-map..{payload}.{sig}",
        "rnenv_peer-map.{kid}..{sig}",
        "rnenv_peer-map.{kid}.{payload}.",
        "rnenv_peer-map.{short}.{payload}.{sig}",
        "rnenv_peer-map.{kid}.{payload}.{short}",
        "RNENV_peer-map.{kid}.{payload}.{sig}",
        "rnpk_peer-map.{kid}.{payload}.{sig}",
        "rnenv_PEER-MAP.{kid}.{payload}.{sig}",
    ],
)
def test_malformed_envelope_text_raises_decode_error(text: str) -> None:
    """Wrong prefix, part count, purpose, padding, lengths or empty parts raise DecodeError."""
    envelope = SignedEnvelope.seal(KEY, Purpose.PEER_MAP, PAYLOAD)
    filled = text.format(
        kid=b64encode(envelope.key_id.digest),
        payload=b64encode(envelope.payload),
        sig=b64encode(envelope.signature),
        short=b64encode(b"short"),
    )
    with pytest.raises(DecodeError):
        SignedEnvelope.from_text(filled)


def test_oversized_envelope_text_is_refused_before_decoding() -> None:
    """Text beyond the size cap raises without being decoded."""
    with pytest.raises(DecodeError):
        SignedEnvelope.from_text(ENVELOPE_PREFIX + "A" * MAX_ENVELOPE_TEXT)


def test_every_flipped_byte_of_an_envelope_text_is_rejected() -> None:
    """Any single-byte or single-bit corruption of the text fails parsing or verification."""
    text = SignedEnvelope.seal(KEY, Purpose.PEER_MAP, PAYLOAD).to_text()
    _open_text(text)  # the untouched text verifies: the flips below are the only change
    tried = 0
    for label, corrupted in flipped_texts(text):
        assert corrupted != text, label
        with pytest.raises(RemoteProtocolError):
            _open_text(corrupted)
        tried += 1
    assert tried >= 2 * len(text)


def test_every_flipped_byte_of_payload_signature_and_key_id_is_rejected() -> None:
    """Flipping any decoded byte of payload, signature or key id fails verification."""
    envelope = SignedEnvelope.seal(KEY, Purpose.PEER_MAP, PAYLOAD)

    def flips(data: bytes) -> Iterator[bytes]:
        for i in range(len(data)):
            for mask in (0x01, 0x80, 0xFF):
                yield data[:i] + bytes([data[i] ^ mask]) + data[i + 1 :]

    for payload in flips(envelope.payload):
        with pytest.raises(InvalidSignature):
            SignedEnvelope(envelope.purpose, envelope.key_id, payload, envelope.signature).open(
                KEY.public_key, Purpose.PEER_MAP
            )
    for signature in flips(envelope.signature):
        with pytest.raises(InvalidSignature):
            SignedEnvelope(envelope.purpose, envelope.key_id, envelope.payload, signature).open(
                KEY.public_key, Purpose.PEER_MAP
            )
    for digest in flips(envelope.key_id.digest):
        with pytest.raises(UnknownSigner):
            SignedEnvelope(
                envelope.purpose, KeyFingerprint(digest), envelope.payload, envelope.signature
            ).open(KEY.public_key, Purpose.PEER_MAP)


def test_envelope_repr_hides_payload_and_signature_bytes() -> None:
    """repr shows purpose, key id and payload size, not the raw bytes."""
    envelope = SignedEnvelope.seal(KEY, Purpose.PEER_MAP, {"secretish": "value"})
    shown = repr(envelope)
    assert "value" not in shown
    assert "bytes>" in shown
    assert envelope.key_id.to_text() in shown
