"""Join tokens: the compact string an admin hands to a node so it can enroll.

The one rule: the token carries everything the node needs to trust the control plane without
trusting the network (control URL, root-key fingerprint, TLS SPKI pin), and the server keeps
only a hash of its secret, never the secret.

Text form: `rnjoin1_` + base64url (unpadded, canonical) of

    offset  size  field
    0       16    credential id (the server's `Credential.id`)
    16      32    secret (256 random bits)
    48      32    control root key fingerprint (`KeyFingerprint` digest)
    80      32    SHA-256 of the control plane's TLS SubjectPublicKeyInfo (the pin)
    112     1     n = length of the control URL
    113     n     control URL: https only, ASCII, no credentials, query or fragment
    113+n   8     check: SHA-256("rustynet:join-token-check:v1\\0" + everything above)[:8]

The check is not a MAC (anyone holding the token could recompute it); it catches a mangled
paste or a flipped byte in the URL or pin at parse time, before the node dials anything. The
secret is what authenticates the node, and the pin and fingerprint are what authenticate the
server.
"""

from __future__ import annotations

import hashlib
import ipaddress
import re
from typing import TYPE_CHECKING, Final

import attrs

from rustynet.domain.credentials import CREDENTIAL_ID_BYTES, CredentialId
from rustynet.domain.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from rustynet.domain.keys import (
    FINGERPRINT_SIZE,
    KeyFingerprint,
    b64decode,
    b64encode,
    constant_time_equal,
)

if TYPE_CHECKING:
    from rustynet.domain.entropy import Entropy

PREFIX: Final = "rnjoin1_"
SECRET_BYTES: Final = 32
PIN_BYTES: Final = 32
CHECK_BYTES: Final = 8
MAX_URL_CHARS: Final = 255
SECRET_HASH_BYTES: Final = 32

_ID_END: Final = CREDENTIAL_ID_BYTES
_SECRET_END: Final = _ID_END + SECRET_BYTES
_FINGERPRINT_END: Final = _SECRET_END + FINGERPRINT_SIZE
_FIXED: Final = _FINGERPRINT_END + PIN_BYTES
_CHECK_CONTEXT: Final = b"rustynet:join-token-check:v1\x00"
_HASH_CONTEXT: Final = b"rustynet:join-secret:v1\x00"
_URL: Final = re.compile(
    r"https://(?P<host>[a-z0-9.-]+|\[[0-9a-f:.]+\])"
    r"(?::(?P<port>[1-9][0-9]{0,4}))?"
    r"(?P<path>/[A-Za-z0-9._~/-]*)?"
)
_LABEL: Final = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


class JoinSecretMismatch(RemoteProtocolError):  # noqa: N818 - named for the outcome
    """A presented join secret does not match the stored hash."""


def validate_control_url(url: object) -> str:
    """Return `url` if it is an acceptable control-plane URL, else raise `DecodeError`.

    Accepted: `https://host[:port][/path]` with a lowercase DNS name, an IPv4 address or a
    bracketed IPv6 address; no user info, query or fragment (a join token must not smuggle
    credentials or parameters), at most 255 ASCII characters.
    """
    if not isinstance(url, str) or not url.isascii() or not 0 < len(url) <= MAX_URL_CHARS:
        raise DecodeError("control URL must be 1..255 ASCII characters")
    match = _URL.fullmatch(url)
    if match is None:
        raise DecodeError(
            "control URL must be https://host[:port][/path] with a lowercase host, "
            "without credentials, query or fragment"
        )
    host = match["host"]
    if host.startswith("["):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError as exc:
            raise DecodeError("control URL has an invalid IPv6 address") from exc
    elif host.replace(".", "").isdigit():
        try:
            ipaddress.IPv4Address(host)
        except ValueError as exc:
            raise DecodeError("control URL has an invalid IPv4 address") from exc
    elif len(host) > 253 or not all(_LABEL.fullmatch(label) for label in host.split(".")):
        raise DecodeError("control URL has an invalid host name")
    if match["port"] is not None and int(match["port"]) > 65535:
        raise DecodeError("control URL port must be 1..65535")
    return url


def hash_join_secret(token_id: CredentialId, secret: bytes | bytearray) -> bytes:
    """What storage keeps for a join secret: SHA-256 over a context, the id and the secret.

    The secret is 256 random bits, so a fast hash is enough (no password stretching needed);
    binding the id means one credential's hash never validates a secret presented for another.
    """
    if not isinstance(token_id, CredentialId):
        raise LocalProtocolError("token_id must be a CredentialId")
    if len(secret) != SECRET_BYTES:
        raise JoinSecretMismatch("join secret has the wrong length")
    digest = hashlib.sha256(_HASH_CONTEXT)
    digest.update(token_id.raw)
    digest.update(secret)  # fed in place: no immutable copy of the secret
    return digest.digest()


def verify_join_secret(
    token_id: CredentialId, secret: bytes | bytearray, stored_hash: bytes
) -> None:
    """Raise `JoinSecretMismatch` unless `secret` hashes to `stored_hash` (constant time)."""
    if not isinstance(stored_hash, bytes) or len(stored_hash) != SECRET_HASH_BYTES:
        raise LocalProtocolError("stored hash must be 32 bytes")
    if not constant_time_equal(hash_join_secret(token_id, secret), stored_hash):
        raise JoinSecretMismatch("join secret does not match")


def _check_url(_instance: object, _attribute: attrs.Attribute[str], value: str) -> None:
    validate_control_url(value)


def _check_pin(_instance: object, _attribute: attrs.Attribute[bytes], value: bytes) -> None:
    if len(value) != PIN_BYTES:
        raise DecodeError(f"the TLS SPKI pin is a {PIN_BYTES}-byte SHA-256 digest")


@attrs.frozen(eq=False)
class JoinToken:
    """A parsed join token. The secret is in a wipeable buffer and never in repr or str."""

    control_url: str = attrs.field(validator=_check_url)
    root_fingerprint: KeyFingerprint = attrs.field(
        validator=attrs.validators.instance_of(KeyFingerprint)
    )
    tls_spki_sha256: bytes = attrs.field(
        validator=[attrs.validators.instance_of(bytes), _check_pin], repr=bytes.hex
    )
    token_id: CredentialId = attrs.field(validator=attrs.validators.instance_of(CredentialId))
    _secret: bytearray = attrs.field(repr=False, alias="secret")

    def __attrs_post_init__(self) -> None:
        if not isinstance(self._secret, bytearray) or len(self._secret) != SECRET_BYTES:
            raise DecodeError(f"join secret must be a {SECRET_BYTES}-byte bytearray")

    @classmethod
    def create(
        cls,
        *,
        control_url: str,
        root_fingerprint: KeyFingerprint,
        tls_spki_sha256: bytes,
        entropy: Entropy,
    ) -> JoinToken:
        """A fresh token with a random id and a 256-bit secret from the entropy port."""
        secret = bytearray(entropy.token_bytes(SECRET_BYTES))
        if len(secret) != SECRET_BYTES:
            raise LocalProtocolError("entropy returned the wrong number of bytes")
        try:
            return cls(
                control_url=control_url,
                root_fingerprint=root_fingerprint,
                tls_spki_sha256=tls_spki_sha256,
                token_id=CredentialId.generate(entropy),
                secret=secret,
            )
        except (DecodeError, TypeError) as exc:
            raise LocalProtocolError(f"cannot create a join token: {exc}") from exc

    @classmethod
    def parse(cls, text: str) -> JoinToken:
        """Parse the text form strictly; any malformation or flipped byte raises `DecodeError`."""
        if not isinstance(text, str) or not text.startswith(PREFIX):
            raise DecodeError(f"a join token starts with {PREFIX!r}")
        if len(text) > 2 * (_FIXED + 1 + MAX_URL_CHARS + CHECK_BYTES):
            raise DecodeError("join token too long")
        data = bytearray(b64decode(text[len(PREFIX) :]))
        try:
            return cls._from_bytes(data)
        finally:
            _wipe(data)

    @classmethod
    def _from_bytes(cls, data: bytearray) -> JoinToken:
        # Index into `data` (which the caller wipes) instead of slicing copies of the secret.
        if len(data) < _FIXED + 1 + CHECK_BYTES:
            raise DecodeError("join token too short")
        body_end = len(data) - CHECK_BYTES
        with memoryview(data) as view:
            check = _check(view[:body_end])
        if not constant_time_equal(check, bytes(data[body_end:])):
            raise DecodeError("join token is damaged (check does not match)")
        if body_end != _FIXED + 1 + data[_FIXED]:
            raise DecodeError("join token URL length does not match")
        try:
            url = bytes(data[_FIXED + 1 : body_end]).decode("ascii")
        except UnicodeDecodeError as exc:
            raise DecodeError("join token URL is not ASCII") from exc
        a, b, c = _ID_END, _SECRET_END, _FINGERPRINT_END
        return cls(
            control_url=url,
            root_fingerprint=KeyFingerprint(bytes(data[b:c])),
            tls_spki_sha256=bytes(data[c:_FIXED]),
            token_id=CredentialId(bytes(data[:a])),
            secret=data[a:b],  # the one copy, owned by the token
        )

    def to_text(self) -> str:
        """The copy-pasteable form. It contains the secret: never log it or put it in a URL."""
        url = self.control_url.encode("ascii")
        body = bytearray(self.token_id.raw)
        try:
            body += self._secret
            body += self.root_fingerprint.digest + self.tls_spki_sha256 + bytes([len(url)]) + url
            body += _check(body)
            return PREFIX + b64encode(body)
        finally:
            _wipe(body)

    def export_secret(self) -> bytearray:
        """A copy of the secret (for presenting it) in a buffer the caller must wipe."""
        return bytearray(self._secret)

    def secret_hash(self) -> bytes:
        """What the server stores for this token (see `hash_join_secret`)."""
        return hash_join_secret(self.token_id, self._secret)

    def verify_secret(self, stored_hash: bytes) -> None:
        """Raise `JoinSecretMismatch` unless this token's secret matches `stored_hash`."""
        verify_join_secret(self.token_id, self._secret, stored_hash)

    def wipe(self) -> None:
        """Zero the secret."""
        _wipe(self._secret)


def _check(body: bytes | bytearray | memoryview) -> bytes:
    digest = hashlib.sha256(_CHECK_CONTEXT)
    digest.update(body)
    return digest.digest()[:CHECK_BYTES]


def _wipe(buf: bytearray) -> None:
    for i in range(len(buf)):
        buf[i] = 0
