"""Admin API keys: the `rnk_<id>_<secret>` format, the stored hash, and what each scope may do.

The one rule: the server keeps only a hash of the 256-bit secret, bound to the key id, and
compares it in constant time; a key admits an action only when its scope lists it.

Text form: `rnk_` + 16 lowercase hex digits (the 64-bit id, what audit entries and listings
show) + `_` + base64url of 32 random bytes (the secret). `rnk_` is one of the audit/logging
secret markers, so a whole key never reaches a log or the audit chain; the id alone is fine.

Scopes (`ApiKeyScope`; `SCOPE_PERMITS` is keyed by their values): `admin` may do everything,
`read-only` may read, `enroll-only` may only create join keys. `ApiKeyRecord` is a key as the
store keeps it: the hash, never the secret.
"""

from __future__ import annotations

import enum
import hashlib
import re
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Final

import attrs

from rustynet.domain.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from rustynet.domain.keys import b64decode, b64encode, constant_time_equal
from rustynet.domain.record_fields import aware_utc, optional_aware_utc, text_id

if TYPE_CHECKING:
    from rustynet.domain.entropy import Entropy

PREFIX: Final = "rnk_"
ID_BYTES: Final = 8
SECRET_BYTES: Final = 32  # 256 bits (≥ 128 required)
HASH_BYTES: Final = 32
DEFAULT_TTL: Final = timedelta(days=90)
MAX_TTL: Final = timedelta(days=365)
MAX_KEY_CHARS: Final = 128
_ID_RE: Final = re.compile(r"[0-9a-f]{16}")
_HASH_CONTEXT: Final = b"rustynet:api-key:v1\x00"
_DUMMY_ID: Final = "0" * (2 * ID_BYTES)


class ApiKeyMismatch(RemoteProtocolError):  # noqa: N818 - named for the outcome
    """A presented API key is malformed or does not match the stored hash."""


class AdminAction(enum.Enum):
    """What an admin request wants to do."""

    READ = "read"
    CREATE_JOIN_KEY = "create-join-key"
    WRITE = "write"


SCOPE_PERMITS: Final[dict[str, frozenset[AdminAction]]] = {
    "admin": frozenset(AdminAction),
    "read-only": frozenset({AdminAction.READ}),
    "enroll-only": frozenset({AdminAction.CREATE_JOIN_KEY}),
}


def permits(scope: str, action: AdminAction) -> bool:
    """True when an API key of `scope` (an `ApiKeyScope` value) may perform `action`."""
    return action in SCOPE_PERMITS.get(scope, frozenset())


def validate_key_id(text: object) -> str:
    """Return `text` if it is an API key id (16 lowercase hex digits), else `DecodeError`."""
    if not isinstance(text, str) or not _ID_RE.fullmatch(text):
        raise DecodeError("an API key id is 16 lowercase hex digits")
    return text


def hash_api_secret(key_id: str, secret: bytes | bytearray) -> bytes:
    """What storage keeps: SHA-256 over a context, the id and the secret (random: no stretching)."""
    validate_key_id(key_id)
    digest = hashlib.sha256(_HASH_CONTEXT)
    digest.update(key_id.encode("ascii") + b"\x00")
    digest.update(secret)
    return digest.digest()


@attrs.frozen(eq=False)
class ApiKey:
    """A parsed or fresh API key; the secret is in a wipeable buffer, never in repr."""

    key_id: str = attrs.field(validator=lambda _i, _a, v: validate_key_id(v))
    _secret: bytearray = attrs.field(repr=False, alias="secret")

    def __attrs_post_init__(self) -> None:
        if not isinstance(self._secret, bytearray) or len(self._secret) != SECRET_BYTES:
            raise DecodeError(f"an API key secret is {SECRET_BYTES} bytes")

    @classmethod
    def generate(cls, entropy: Entropy) -> ApiKey:
        """A fresh key from the entropy port."""
        raw_id = entropy.token_bytes(ID_BYTES)
        secret = bytearray(entropy.token_bytes(SECRET_BYTES))
        if len(raw_id) != ID_BYTES or len(secret) != SECRET_BYTES:
            raise LocalProtocolError("entropy returned the wrong number of bytes")
        return cls(key_id=raw_id.hex(), secret=secret)

    @classmethod
    def parse(cls, text: object) -> ApiKey:
        """Parse `rnk_<id>_<secret>`; anything else raises `ApiKeyMismatch` (one error)."""
        if not isinstance(text, str) or not 0 < len(text) <= MAX_KEY_CHARS:
            raise ApiKeyMismatch("malformed API key")
        if not text.startswith(PREFIX):
            raise ApiKeyMismatch("malformed API key")
        key_id, sep, secret_text = text[len(PREFIX) :].partition("_")
        if not sep:
            raise ApiKeyMismatch("malformed API key")
        try:
            return cls(key_id=validate_key_id(key_id), secret=bytearray(b64decode(secret_text)))
        except DecodeError as exc:
            raise ApiKeyMismatch("malformed API key") from exc

    def to_text(self) -> str:
        """The bearer form; shown once at creation, never logged."""
        return f"{PREFIX}{self.key_id}_{b64encode(self._secret)}"

    def secret_hash(self) -> bytes:
        """What the server stores for this key."""
        return hash_api_secret(self.key_id, self._secret)

    def verify(self, stored_hash: bytes) -> None:
        """Raise `ApiKeyMismatch` unless this key's secret matches `stored_hash`."""
        if not isinstance(stored_hash, bytes) or len(stored_hash) != HASH_BYTES:
            raise LocalProtocolError("a stored API key hash is 32 bytes")
        if not constant_time_equal(self.secret_hash(), stored_hash):
            raise ApiKeyMismatch("API key does not match")

    def wipe(self) -> None:
        """Zero the secret."""
        for i in range(len(self._secret)):
            self._secret[i] = 0


def burn_compare(presented: bytes | bytearray | None = None) -> None:
    """Do the work of one hash compare against nothing (unknown key ids cost the same time)."""
    digest = hash_api_secret(_DUMMY_ID, presented if presented else bytes(SECRET_BYTES))
    constant_time_equal(digest, bytes(HASH_BYTES))


class ApiKeyScope(enum.Enum):
    """What an admin API key may do."""

    ADMIN = "admin"
    READ_ONLY = "read-only"
    ENROLL_ONLY = "enroll-only"


@attrs.frozen
class ApiKeyRecord:
    """An admin API key as stored: its id, the secret's hash (never the secret), scope, times."""

    id: str = attrs.field(validator=text_id)
    secret_hash: bytes = attrs.field(repr=False, validator=attrs.validators.instance_of(bytes))
    scope: ApiKeyScope = attrs.field(validator=attrs.validators.instance_of(ApiKeyScope))
    description: str = attrs.field(validator=attrs.validators.instance_of(str))
    created_at: datetime = attrs.field(validator=aware_utc)
    expires_at: datetime = attrs.field(validator=aware_utc)
    revoked_at: datetime | None = attrs.field(default=None, validator=optional_aware_utc)
    last_used_at: datetime | None = attrs.field(default=None, validator=optional_aware_utc)

    def usable_at(self, now: datetime) -> bool:
        """True when the key is neither revoked nor expired at `now`."""
        return self.revoked_at is None and now < self.expires_at
