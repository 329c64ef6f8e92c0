"""Key values: Ed25519 signing keys, scheme-tagged tunnel keys, fingerprints, derived MAC keys.

The one rule: every signature is domain-separated by a `Purpose`, so a signature made for one
purpose never verifies for another, and verification raises instead of returning a bool.

Encodings are typed: each key kind has its own text prefix, and parsing one kind as another
raises `DecodeError`. Private keys live in `bytearray`s that `wipe()` zeroes; their repr never
shows key material. (Python cannot promise that no copy survives elsewhere in memory; we keep
lifetimes short and wipe what we own.) Randomness comes in through the `Entropy` port.

Only this module and `tokens.py` import `cryptography` inside the core.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
from typing import TYPE_CHECKING, Final

import attrs
from cryptography.exceptions import InvalidSignature as _CryptoInvalidSignature
from cryptography.hazmat.primitives import constant_time, hashes, serialization
from cryptography.hazmat.primitives import hmac as crypto_hmac
from cryptography.hazmat.primitives.asymmetric import ed25519, x25519
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from rustynet.domain.errors import DecodeError, InvalidSignature, LocalProtocolError

if TYPE_CHECKING:
    from rustynet.domain.entropy import Entropy

ED25519_KEY_SIZE: Final = 32
ED25519_SIGNATURE_SIZE: Final = 64
FINGERPRINT_SIZE: Final = 32
MAC_KEY_SIZE: Final = 32  # HMAC-SHA-256 key, 256 bits
MIN_MAC_TAG_SIZE: Final = 16  # 128 bits: the shortest tag `MacKey` makes or accepts

_RAW = serialization.Encoding.Raw
_RAW_PUB = serialization.PublicFormat.Raw


def constant_time_equal(a: bytes | bytearray, b: bytes | bytearray) -> bool:
    """Compare secrets (MACs, hashes of credentials) in constant time."""
    return hmac.compare_digest(a, b)


def b64encode(data: bytes | bytearray) -> str:
    """URL-safe base64 without padding: the one binary-to-text form used in our encodings."""
    return base64.urlsafe_b64encode(bytes(data)).rstrip(b"=").decode("ascii")


def b64decode(text: str) -> bytes:
    """Strict inverse of `b64encode`; anything non-canonical raises `DecodeError`."""
    if not text or not text.isascii() or "=" in text:
        raise DecodeError("not canonical unpadded base64url")
    padded = text + "=" * (-len(text) % 4)
    try:
        data = base64.b64decode(padded, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError("not canonical unpadded base64url") from exc
    if b64encode(data) != text:
        raise DecodeError("not canonical unpadded base64url")
    return data


def decode_prefixed(text: str, prefix: str, size: int) -> bytes:
    """Parse `prefix + base64url(size bytes)`; a different prefix or size raises."""
    if not isinstance(text, str) or not text.startswith(prefix):
        raise DecodeError(f"expected a value starting with {prefix!r}")
    data = b64decode(text[len(prefix) :])
    if len(data) != size:
        raise DecodeError(f"expected {size} bytes after {prefix!r}, got {len(data)}")
    return data


class Purpose(enum.Enum):
    """What a signature is for. The value becomes the signing context `rustynet:<value>:v1`."""

    CERTIFICATE = "certificate"
    REVOCATION = "revocation"
    TUNNEL_KEY_BINDING = "tunnel-key-binding"
    ENROLLMENT_PROOF = "enrollment-proof"
    TOKEN_RENEWAL = "token-renewal"  # noqa: S105 - a purpose label, not a password
    SIGNED_REQUEST = "signed-request"
    PEER_MAP = "peer-map"
    AUDIT_CHECKPOINT = "audit-checkpoint"
    RELAY_AUTH = "relay-auth"

    @property
    def context(self) -> bytes:
        """The bytes prepended (with a NUL separator) to every message signed for this purpose."""
        return f"rustynet:{self.value}:v1".encode("ascii") + b"\x00"


def _framed(purpose: Purpose, message: bytes) -> bytes:
    if not isinstance(purpose, Purpose):
        raise LocalProtocolError("signatures need a Purpose")
    return purpose.context + bytes(message)


def _wipe(buf: bytearray) -> None:
    for i in range(len(buf)):
        buf[i] = 0


@attrs.frozen
class KeyFingerprint:
    """SHA-256 over a public key's typed encoding; identifies a key in tokens and pins."""

    digest: bytes = attrs.field(validator=attrs.validators.instance_of(bytes))

    def __attrs_post_init__(self) -> None:
        if len(self.digest) != FINGERPRINT_SIZE:
            raise DecodeError("a fingerprint is 32 bytes")

    @classmethod
    def of(cls, typed_text: str) -> KeyFingerprint:
        """Fingerprint of a key given in its typed text form (so types never collide)."""
        return cls(hashlib.sha256(b"rustynet:fingerprint:v1\x00" + typed_text.encode()).digest())

    @classmethod
    def from_text(cls, text: str) -> KeyFingerprint:
        """Parse `rnfp_...`."""
        return cls(decode_prefixed(text, "rnfp_", FINGERPRINT_SIZE))

    def to_text(self) -> str:
        """Typed text form."""
        return "rnfp_" + b64encode(self.digest)

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"KeyFingerprint({self.to_text()!r})"


@attrs.frozen
class VerifyKey:
    """An Ed25519 public key (control root/signing/audit keys, node identity keys)."""

    raw: bytes = attrs.field(validator=attrs.validators.instance_of(bytes))
    _key: ed25519.Ed25519PublicKey = attrs.field(init=False, repr=False, eq=False, hash=False)

    def __attrs_post_init__(self) -> None:
        if len(self.raw) != ED25519_KEY_SIZE:
            raise DecodeError("an Ed25519 public key is 32 bytes")
        try:
            key = ed25519.Ed25519PublicKey.from_public_bytes(self.raw)
        except ValueError as exc:
            raise DecodeError("not an Ed25519 public key") from exc
        object.__setattr__(self, "_key", key)

    @classmethod
    def from_text(cls, text: str) -> VerifyKey:
        """Parse `rnpk_...`; any other prefix raises `DecodeError`."""
        return cls(decode_prefixed(text, "rnpk_", ED25519_KEY_SIZE))

    def to_text(self) -> str:
        """Typed text form `rnpk_<base64url>`."""
        return "rnpk_" + b64encode(self.raw)

    def fingerprint(self) -> KeyFingerprint:
        """SHA-256 fingerprint of this key."""
        return KeyFingerprint.of(self.to_text())

    def verify(self, purpose: Purpose, message: bytes, signature: bytes) -> None:
        """Raise `InvalidSignature` unless `signature` signs `message` for `purpose`."""
        if not isinstance(signature, bytes) or len(signature) != ED25519_SIGNATURE_SIZE:
            raise InvalidSignature("malformed signature")
        try:
            self._key.verify(signature, _framed(purpose, message))
        except _CryptoInvalidSignature as exc:
            raise InvalidSignature(f"signature does not verify for {purpose.value}") from exc

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"VerifyKey({self.to_text()!r})"


@attrs.frozen(eq=False)
class SigningKey:
    """An Ed25519 private key. Held as a wipeable 32-byte seed; never shown in repr."""

    _seed: bytearray = attrs.field(repr=False, alias="seed")
    _key: ed25519.Ed25519PrivateKey = attrs.field(init=False, repr=False)
    public_key: VerifyKey = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self._seed, bytearray) or len(self._seed) != ED25519_KEY_SIZE:
            raise DecodeError("an Ed25519 seed is a 32-byte bytearray")
        key = ed25519.Ed25519PrivateKey.from_private_bytes(bytes(self._seed))
        object.__setattr__(self, "_key", key)
        object.__setattr__(
            self, "public_key", VerifyKey(key.public_key().public_bytes(_RAW, _RAW_PUB))
        )

    @classmethod
    def from_seed(cls, seed: bytes | bytearray) -> SigningKey:
        """Build from a 32-byte seed (copied into a buffer this object owns)."""
        return cls(seed=bytearray(seed))

    @classmethod
    def generate(cls, entropy: Entropy) -> SigningKey:
        """A fresh key from the entropy port."""
        seed = bytearray(entropy.token_bytes(ED25519_KEY_SIZE))
        try:
            return cls.from_seed(seed)
        finally:
            _wipe(seed)

    @classmethod
    def from_secret_text(cls, text: str) -> SigningKey:
        """Parse `rnsk_...` (only key stores hold this form)."""
        return cls.from_seed(decode_prefixed(text, "rnsk_", ED25519_KEY_SIZE))

    def secret_text(self) -> str:
        """Typed secret form `rnsk_...`, for key stores only; never log it."""
        self._check_live()
        return "rnsk_" + b64encode(self._seed)

    def export_seed(self) -> bytearray:
        """A copy of the seed in a fresh buffer the caller must wipe."""
        self._check_live()
        return bytearray(self._seed)

    def sign(self, purpose: Purpose, message: bytes) -> bytes:
        """Sign `message` for `purpose` (domain-separated)."""
        self._check_live()
        return self._key.sign(_framed(purpose, message))

    def wipe(self) -> None:
        """Zero the seed and drop the library key object; the key is unusable afterwards."""
        _wipe(self._seed)
        object.__setattr__(self, "_key", None)

    @property
    def wiped(self) -> bool:
        """True once `wipe()` ran."""
        return self._key is None

    def _check_live(self) -> None:
        if self._key is None:
            raise LocalProtocolError("this key was wiped")


@attrs.frozen(eq=False)
class MacKey:
    """An HMAC-SHA-256 key derived (HKDF-SHA-256) from a signing key's seed for one `label`.

    Derivation, not reuse: the Ed25519 seed is 256 uniform bits, and HKDF with the info
    `rustynet:<label>:mac:v1` gives a key independent of the Ed25519 key and of every other label,
    so one stored secret serves both without a signature ever verifying as a MAC or back.
    Every control instance that holds the same signing key derives the same MAC key."""

    _key: bytearray = attrs.field(repr=False, alias="key")
    _wiped: bool = attrs.field(init=False, default=False, repr=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self._key, bytearray) or len(self._key) != MAC_KEY_SIZE:
            raise DecodeError(f"a MAC key is a {MAC_KEY_SIZE}-byte bytearray")

    @classmethod
    def derive(cls, secret: SigningKey, label: str) -> MacKey:
        """The MAC key for `label` (lowercase letters and dashes) under `secret`."""
        if not label or not all(c.isascii() and (c.islower() or c == "-") for c in label):
            raise LocalProtocolError("a MAC key label is lowercase ASCII letters and dashes")
        seed = secret.export_seed()
        try:
            info = f"rustynet:{label}:mac:v1".encode("ascii")
            hkdf = HKDF(algorithm=hashes.SHA256(), length=MAC_KEY_SIZE, salt=None, info=info)
            return cls(key=bytearray(hkdf.derive(bytes(seed))))
        finally:
            _wipe(seed)

    def tag(self, message: bytes, size: int = MAC_KEY_SIZE) -> bytes:
        """HMAC-SHA-256 of `message`, truncated to `size` bytes (16..32, RFC 2104 §5)."""
        if not MIN_MAC_TAG_SIZE <= size <= MAC_KEY_SIZE:
            raise LocalProtocolError(f"a MAC tag is {MIN_MAC_TAG_SIZE}..{MAC_KEY_SIZE} bytes")
        if self.wiped:
            raise LocalProtocolError("this key was wiped")
        mac = crypto_hmac.HMAC(bytes(self._key), hashes.SHA256())
        mac.update(bytes(message))
        return mac.finalize()[:size]

    def verify(self, message: bytes, tag: bytes) -> None:
        """Raise `InvalidSignature` unless `tag` is this key's (truncated) tag of `message`;
        the comparison takes the same time wherever the first differing byte is."""
        if not isinstance(tag, bytes) or not MIN_MAC_TAG_SIZE <= len(tag) <= MAC_KEY_SIZE:
            raise InvalidSignature("malformed MAC tag")
        if not constant_time.bytes_eq(self.tag(message, len(tag)), tag):
            raise InvalidSignature("MAC tag does not verify")

    def wipe(self) -> None:
        """Zero the key; it is unusable afterwards."""
        _wipe(self._key)
        object.__setattr__(self, "_wiped", True)

    @property
    def wiped(self) -> bool:
        """True once `wipe()` ran."""
        return self._wiped


class TunnelKeyScheme(enum.Enum):
    """Key agreement scheme of a tunnel key. The tunnel adapter maps the scheme to its protocol."""

    X25519 = "x25519"

    @property
    def key_size(self) -> int:
        """Public and private key length in bytes."""
        return 32


def _scheme_of(text: str) -> TunnelKeyScheme:
    try:
        return TunnelKeyScheme(text)
    except ValueError as exc:
        raise DecodeError(f"unknown tunnel key scheme {text!r}") from exc


@attrs.frozen
class TunnelKey:
    """A tunnel public key: opaque bytes tagged with their scheme."""

    scheme: TunnelKeyScheme = attrs.field(validator=attrs.validators.instance_of(TunnelKeyScheme))
    raw: bytes = attrs.field(validator=attrs.validators.instance_of(bytes))

    def __attrs_post_init__(self) -> None:
        if len(self.raw) != self.scheme.key_size:
            raise DecodeError(f"a {self.scheme.value} tunnel key is {self.scheme.key_size} bytes")

    @classmethod
    def from_text(cls, text: str) -> TunnelKey:
        """Parse `rntk_<scheme>_<base64url>`."""
        if not isinstance(text, str) or not text.startswith("rntk_"):
            raise DecodeError("expected a value starting with 'rntk_'")
        scheme_text, sep, _ = text[len("rntk_") :].partition("_")
        if not sep:
            raise DecodeError("tunnel key without scheme")
        scheme = _scheme_of(scheme_text)
        prefix = f"rntk_{scheme.value}_"
        return cls(scheme, decode_prefixed(text, prefix, scheme.key_size))

    def to_text(self) -> str:
        """Typed text form."""
        return f"rntk_{self.scheme.value}_" + b64encode(self.raw)

    def fingerprint(self) -> KeyFingerprint:
        """SHA-256 fingerprint of this key."""
        return KeyFingerprint.of(self.to_text())

    def __str__(self) -> str:
        return self.to_text()

    def __repr__(self) -> str:
        return f"TunnelKey({self.to_text()!r})"


@attrs.frozen(eq=False)
class TunnelPrivateKey:
    """A tunnel private key in a wipeable buffer; never shown in repr."""

    scheme: TunnelKeyScheme
    _secret: bytearray = attrs.field(repr=False, alias="secret")
    public_key: TunnelKey = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self._secret, bytearray) or len(self._secret) != self.scheme.key_size:
            raise DecodeError(f"a {self.scheme.value} private key is a 32-byte bytearray")
        private = x25519.X25519PrivateKey.from_private_bytes(bytes(self._secret))
        public = private.public_key().public_bytes(_RAW, _RAW_PUB)
        object.__setattr__(self, "public_key", TunnelKey(self.scheme, public))

    @classmethod
    def from_secret(cls, scheme: TunnelKeyScheme, secret: bytes | bytearray) -> TunnelPrivateKey:
        """Build from raw secret bytes (copied into a buffer this object owns)."""
        return cls(scheme, secret=bytearray(secret))

    @classmethod
    def generate(cls, entropy: Entropy, scheme: TunnelKeyScheme) -> TunnelPrivateKey:
        """A fresh key from the entropy port."""
        secret = bytearray(entropy.token_bytes(scheme.key_size))
        try:
            return cls.from_secret(scheme, secret)
        finally:
            _wipe(secret)

    @classmethod
    def from_secret_text(cls, text: str) -> TunnelPrivateKey:
        """Parse `rntsk_<scheme>_...` (only key stores hold this form)."""
        if not isinstance(text, str) or not text.startswith("rntsk_"):
            raise DecodeError("expected a value starting with 'rntsk_'")
        scheme = _scheme_of(text[len("rntsk_") :].partition("_")[0])
        return cls.from_secret(
            scheme, decode_prefixed(text, f"rntsk_{scheme.value}_", scheme.key_size)
        )

    def secret_text(self) -> str:
        """Typed secret form, for key stores only; never log it."""
        return f"rntsk_{self.scheme.value}_" + b64encode(self._secret)

    def export_secret(self) -> bytearray:
        """A copy of the secret in a fresh buffer the caller must wipe (for the tunnel adapter)."""
        return bytearray(self._secret)

    def wipe(self) -> None:
        """Zero the secret."""
        _wipe(self._secret)
