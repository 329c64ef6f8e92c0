"""Join tokens: compact, strictly parsed, damage detected at parse time, secret only as a hash."""

from __future__ import annotations

import hashlib

import pytest
from rustynet.adapters.entropy import OsEntropy

from rustynet.domain.credentials import CredentialId
from rustynet.domain.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from rustynet.domain.join_tokens import (
    PREFIX,
    JoinSecretMismatch,
    JoinToken,
    hash_join_secret,
    validate_control_url,
    verify_join_secret,
)
from rustynet.domain.keys import KeyFingerprint, b64decode, b64encode

ENTROPY = OsEntropy()
ROOT = KeyFingerprint(hashlib.sha256(b"root").digest())
PIN = hashlib.sha256(b"spki").digest()
URL = "https://control.example.com:8443"


def _token(url: str = URL) -> JoinToken:
    return JoinToken.create(
        control_url=url, root_fingerprint=ROOT, tls_spki_sha256=PIN, entropy=ENTROPY
    )


def _checked(body: bytes) -> str:
    """Encode a raw body with a correct check, as a careful forger would."""
    check = hashlib.sha256(b"rustynet:join-token-check:v1\x00" + body).digest()[:8]
    return PREFIX + b64encode(body + check)


def _body(url: bytes = URL.encode(), url_len: int | None = None) -> bytes:
    n = len(url) if url_len is None else url_len
    return bytes(16) + b"s" * 32 + ROOT.digest + PIN + bytes([n]) + url


def test_join_token_round_trips_every_field() -> None:
    """Parsing the text form gives back the URL, root fingerprint, pin, id and secret."""
    token = _token()
    parsed = JoinToken.parse(token.to_text())
    assert parsed.control_url == URL
    assert parsed.root_fingerprint == ROOT
    assert parsed.tls_spki_sha256 == PIN
    assert parsed.token_id == token.token_id
    assert parsed.secret_hash() == token.secret_hash()
    assert parsed.to_text() == token.to_text()


def test_join_token_is_compact_and_copy_pasteable() -> None:
    """The text is one prefixed base64url word of modest length."""
    text = _token().to_text()
    assert text.startswith("rnjoin1_")
    assert len(text) < 220
    assert all(c.isalnum() or c in "_-" for c in text)


def test_join_tokens_have_fresh_ids_and_secrets() -> None:
    """Two tokens never share an id or a secret (256 bits from the entropy port)."""
    a, b = _token(), _token()
    assert a.token_id != b.token_id
    assert a.secret_hash() != b.secret_hash()
    secret = a.export_secret()
    assert len(secret) == 32
    assert bytes(secret) != bytes(b.export_secret())  # the hash alone differs by the id


def test_secret_never_appears_in_repr_or_str() -> None:
    """repr/str show where to connect, never the secret or the token text."""
    for _ in range(8):  # random secrets: one in ten holds a quote that changes its repr
        token = _token()
        secret = bytes(token.export_secret())
        text = token.to_text()
        # bytes and bytearray escape a quote differently: b"'" vs bytearray(b"\'")
        forms = (text, b64encode(secret), secret.hex(), repr(secret), repr(bytearray(secret)))
        for shown in (repr(token), str(token)):
            assert not [form for form in forms if form in shown]
            assert URL in shown


def test_storage_keeps_a_hash_not_the_secret() -> None:
    """The stored hash is 32 bytes, differs from the secret and is bound to the token id."""
    token = _token()
    secret = bytes(token.export_secret())
    stored = token.secret_hash()
    assert len(stored) == 32
    assert secret not in stored
    other_id = CredentialId(bytes(16))
    assert hash_join_secret(other_id, secret) != stored


def test_presented_secret_verifies_against_the_stored_hash() -> None:
    """The server accepts the right secret for the right id."""
    token = _token()
    stored = token.secret_hash()
    token.verify_secret(stored)
    verify_join_secret(token.token_id, token.export_secret(), stored)


def test_wrong_secret_is_rejected() -> None:
    """A different secret, a secret under another id, or a short secret is refused."""
    token = _token()
    stored = token.secret_hash()
    with pytest.raises(JoinSecretMismatch):
        verify_join_secret(token.token_id, b"x" * 32, stored)
    with pytest.raises(JoinSecretMismatch):
        verify_join_secret(CredentialId(bytes(16)), token.export_secret(), stored)
    with pytest.raises(JoinSecretMismatch):
        verify_join_secret(token.token_id, b"short", stored)
    with pytest.raises(JoinSecretMismatch):
        _token().verify_secret(stored)
    assert issubclass(JoinSecretMismatch, RemoteProtocolError)


def test_malformed_stored_hash_is_a_local_error() -> None:
    """A stored hash of the wrong size is our bug, not the node's."""
    with pytest.raises(LocalProtocolError):
        _token().verify_secret(b"too short")


def test_wipe_zeroes_the_secret() -> None:
    """After wipe the token no longer holds its secret."""
    token = _token()
    stored = token.secret_hash()
    token.wipe()
    assert token.export_secret() == bytearray(32)
    with pytest.raises(JoinSecretMismatch):
        token.verify_secret(stored)


def test_every_flipped_character_is_rejected() -> None:
    """Byte-flip on the text: any changed character fails to parse."""
    text = _token().to_text()
    for i, char in enumerate(text):
        for flipped in {chr(ord(char) ^ 1), chr(ord(char) ^ 0x20), "A" if char != "A" else "B"}:
            with pytest.raises(DecodeError):
                JoinToken.parse(text[:i] + flipped + text[i + 1 :])


def test_every_flipped_byte_is_rejected() -> None:
    """Byte-flip on the decoded binary: the check catches any changed byte, in every bit."""
    text = _token().to_text()
    raw = b64decode(text[len(PREFIX) :])
    for i in range(len(raw)):
        for bit in range(8):
            mutated = bytearray(raw)
            mutated[i] ^= 1 << bit
            with pytest.raises(DecodeError):
                JoinToken.parse(PREFIX + b64encode(mutated))


def test_truncated_or_extended_join_token_is_rejected() -> None:
    """Any prefix of the text, or extra characters after it, is refused."""
    text = _token().to_text()
    for cut in range(len(text)):
        with pytest.raises(DecodeError):
            JoinToken.parse(text[:cut])
    for extra in ("A", "AA", "AAAA", " ", "\n"):
        with pytest.raises(DecodeError):
            JoinToken.parse(text + extra)


@pytest.mark.parametrize(
    "text",
    ["", "rnjoin2_AAAA", "rnpk_AAAA", "RNJOIN1_AAAA", "rnjoin1_", "rnjoin1_====", "rnjoin1_é"],
)
def test_garbage_join_token_is_rejected(text: str) -> None:
    """Wrong prefixes, empty bodies and non-base64 text raise DecodeError."""
    with pytest.raises(DecodeError):
        JoinToken.parse(text)


def test_non_string_join_token_is_rejected() -> None:
    """Bytes or None are not join tokens."""
    for value in (b"rnjoin1_AAAA", None, 5):
        with pytest.raises(DecodeError):
            JoinToken.parse(value)  # type: ignore[arg-type]  # wrong type on purpose


def test_well_checked_token_with_bad_url_is_rejected() -> None:
    """A forged body with a correct check still has its URL validated (http is refused)."""
    assert JoinToken.parse(_checked(_body())).control_url == URL
    with pytest.raises(DecodeError):
        JoinToken.parse(_checked(_body(b"http://control.example.com")))
    with pytest.raises(DecodeError):
        JoinToken.parse(_checked(_body(b"https://\xffbad")))


def test_url_length_field_must_match() -> None:
    """A length byte that disagrees with the body is refused even with a correct check."""
    for n in (0, len(URL) - 1, len(URL) + 1, 255):
        with pytest.raises(DecodeError):
            JoinToken.parse(_checked(_body(url_len=n)))


@pytest.mark.parametrize(
    "url",
    [
        "https://control.example.com",
        "https://control.example.com:8443",
        "https://control.example.com/rustynet/",
        "https://10.0.0.1:443",
        "https://[2001:db8::1]:8443/rn",
        "https://localhost",
    ],
)
def test_https_control_urls_are_accepted(url: str) -> None:
    """Plain https URLs with a host name or IP literal, optional port and path, are fine."""
    assert validate_control_url(url) == url
    assert JoinToken.parse(_token(url).to_text()).control_url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://control.example.com",
        "ftp://control.example.com",
        "https://",
        "https://user:pass@control.example.com",
        "https://control.example.com?x=1",
        "https://control.example.com/#frag",
        "https://Control.Example.com",
        "https://control example.com",
        "https://control.example.com:0",
        "https://control.example.com:65536",
        "https://control.example.com:08443",
        "https://300.1.1.1",
        "https://[zz::1]",
        "https://-bad.example.com",
        "https://control..example.com",
        "https://control.example.com.",
        "https://" + "a" * 64 + ".com",
        "https://contröl.example.com",
        "https://" + "a." * 130 + "com",
        " https://control.example.com",
        "https://control.example.com\n",
        "",
    ],
)
def test_bad_control_urls_are_refused(url: str) -> None:
    """Only https, no credentials/query/fragment, valid lowercase hosts and ports."""
    with pytest.raises(DecodeError):
        validate_control_url(url)
    with pytest.raises(LocalProtocolError):
        _token(url)


def test_create_refuses_a_bad_pin_or_fingerprint() -> None:
    """The pin is a 32-byte digest and the root a KeyFingerprint; anything else is our bug."""
    with pytest.raises(LocalProtocolError):
        JoinToken.create(
            control_url=URL, root_fingerprint=ROOT, tls_spki_sha256=b"short", entropy=ENTROPY
        )
    with pytest.raises(LocalProtocolError):
        JoinToken.create(
            control_url=URL,
            root_fingerprint=ROOT.digest,  # type: ignore[arg-type]  # wrong type on purpose
            tls_spki_sha256=PIN,
            entropy=ENTROPY,
        )
