"""Access and relay tokens: the one wrapper around PASETO v4.public (pyseto).

The one rule: a token is accepted only when this module has checked every claim itself, and
every failure is the same opaque `InvalidToken`. Nothing else in the code base calls pyseto
(an import-linter contract enforces it).

Why a wrapper: pyseto 1.10's `decode()` accepts an expired token unless `deserializer=json`
is passed, accepts a token without `exp` even then, and checks `aud` only when asked. So we
never let pyseto look at claims: it verifies the signature over payload, footer and implicit
assertion, and this module does the rest.

Token shape (`v4.public.<payload+sig>.<footer>`):
- footer: `{"kid": "<rnfp_ fingerprint of the signing key>"}`; the key is looked up in the
  caller's allowlist before any signature work, and PASETO authenticates the footer.
- payload claims, all required, nothing else allowed: `iss`, `sub`, `aud`, `exp`, `iat`
  (ISO 8601, UTC, whole seconds), `jti` (>= 128 random bits, base64url), `kind` (`access` or
  `relay`) and `scope` (`node` for access tokens, `forward` for relay tokens).
- implicit assertion (signed, never transmitted): the token kind and the bound node identity
  key, so a token lifted from one node is useless to another and one kind never passes as
  the other.

Limits: lifetime (`exp - iat`) <= 300 s for access tokens and <= 120 s for relay tokens (whose
audience is the relay id); `iat` at most 90 s in the future; `exp` strictly after `now`.
The verified `jti` is returned so a caller that needs single use can remember it (replay guard).
"""

from __future__ import annotations

import enum
import functools
import json
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Final, NoReturn, cast

import attrs

from rustynet.domain.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from rustynet.domain.keys import KeyFingerprint, SigningKey, VerifyKey, b64decode, b64encode

if TYPE_CHECKING:
    from pyseto import KeyInterface

    from rustynet.domain.entropy import Entropy

JTI_BYTES: Final = 16  # 128 bits, the floor for a token id
MAX_FUTURE_IAT: Final = timedelta(seconds=90)
MAX_TOKEN_CHARS: Final = 4096  # far above any token we issue; bounds work on garbage
MAX_CLAIM_CHARS: Final = 256

_HEADER: Final = "v4.public."
_SIG_SIZE: Final = 64
_CLAIMS: Final = frozenset({"iss", "sub", "aud", "exp", "iat", "jti", "kind", "scope"})
_TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%S+00:00"
_TIME_RE: Final = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\+00:00")
_IMPLICIT_CONTEXT: Final = b"rustynet:token-binding:v1\x00"
# pyseto (with pycryptodomex and cffi, which parses C declarations at import) is imported in the
# functions that use it: the node daemon imports this module through the relay types but never
# issues or verifies a token, and pays ~60 ms of start-up and ~2 MB for it otherwise.


class InvalidToken(RemoteProtocolError):  # noqa: N818 - mirrors Fernet's InvalidToken
    """Any token failure. `str()` is always the same; `reason` is for debug logs only."""

    MESSAGE: Final = "invalid token"

    def __init__(self, reason: str) -> None:
        super().__init__(self.MESSAGE)
        self.reason = reason


class TokenKind(enum.Enum):
    """What a token admits its bearer to; each kind has its own lifetime cap and scope."""

    ACCESS = "access"
    RELAY = "relay"

    @property
    def max_lifetime(self) -> timedelta:
        """Longest allowed `exp - iat`."""
        return _MAX_LIFETIME[self]

    @property
    def scope(self) -> str:
        """The fixed `scope` claim of this kind."""
        return _SCOPE[self]


_MAX_LIFETIME: Final = {
    TokenKind.ACCESS: timedelta(seconds=300),
    TokenKind.RELAY: timedelta(seconds=120),
}
_SCOPE: Final = {TokenKind.ACCESS: "node", TokenKind.RELAY: "forward"}


@attrs.frozen
class TokenClaims:
    """The verified content of a token."""

    kind: TokenKind
    issuer: str
    subject: str
    audience: str
    token_id: str  # the jti
    issued_at: datetime
    expires_at: datetime
    key_id: KeyFingerprint
    scope: str


def key_allowlist(keys: Iterable[VerifyKey]) -> dict[KeyFingerprint, VerifyKey]:
    """Build the `kid -> key` allowlist `verify_token` expects from verify keys."""
    return {key.fingerprint(): key for key in keys}


def issue_token(
    signing_key: SigningKey,
    *,
    kind: TokenKind,
    issuer: str,
    subject: str,
    audience: str,
    bound_identity: VerifyKey,
    now: datetime,
    lifetime: timedelta,
    entropy: Entropy,
) -> str:
    """Sign a token of `kind` for `subject`, bound to the node identity key `bound_identity`."""
    if not isinstance(kind, TokenKind):
        raise LocalProtocolError("kind must be a TokenKind")
    for name, value in (("issuer", issuer), ("subject", subject), ("audience", audience)):
        if not _is_claim_text(value):
            raise LocalProtocolError(f"{name} must be 1..{MAX_CLAIM_CHARS} characters")
    if not isinstance(bound_identity, VerifyKey):
        raise LocalProtocolError("bound_identity must be a VerifyKey")
    _require_utc(now)
    if not isinstance(lifetime, timedelta) or lifetime % timedelta(seconds=1):
        raise LocalProtocolError("lifetime must be a whole number of seconds")
    if not timedelta(0) < lifetime <= kind.max_lifetime:
        raise LocalProtocolError(
            f"{kind.value} token lifetime must be 1..{kind.max_lifetime.seconds} s"
        )
    issued_at = now.astimezone(UTC).replace(microsecond=0)
    claims = {
        "iss": issuer,
        "sub": subject,
        "aud": audience,
        "iat": issued_at.strftime(_TIME_FORMAT),
        "exp": (issued_at + lifetime).strftime(_TIME_FORMAT),
        "jti": b64encode(_jti_bytes(entropy)),
        "kind": kind.value,
        "scope": kind.scope,
    }
    kid = signing_key.public_key.fingerprint()
    seed = signing_key.export_seed()
    import pyseto  # noqa: PLC0415 - see _IMPLICIT_CONTEXT

    try:
        # pyseto hands `d` straight to cryptography, which takes any buffer; a bytes copy
        # could not be wiped.
        paseto_key = pyseto.Key.from_asymmetric_key_params(4, d=cast("bytes", seed))
        token = pyseto.encode(
            paseto_key,
            _canonical_json(claims),
            _canonical_json({"kid": kid.to_text()}),
            _implicit_assertion(kind, bound_identity),
        )
    finally:
        for i in range(len(seed)):
            seed[i] = 0
    return bytes(token).decode("ascii")


def verify_token(
    token: str,
    *,
    keys: Mapping[KeyFingerprint, VerifyKey],
    audience: str,
    issuer: str,
    bound_identity: VerifyKey,
    now: datetime,
    kind: TokenKind,
) -> TokenClaims:
    """Return the claims of `token` or raise `InvalidToken` (one opaque error for every failure).

    `keys` is the allowlist of signing keys by fingerprint; `audience` and `issuer` are what
    this verifier expects; `bound_identity` is the node identity key presenting the token.
    """
    _require_utc(now)
    if not isinstance(kind, TokenKind) or not isinstance(bound_identity, VerifyKey):
        raise LocalProtocolError("verify_token needs a TokenKind and the presenter's VerifyKey")
    payload_part, footer_part = _split(token)
    kid = _footer_kid(footer_part)
    verify_key = keys.get(kid)
    if verify_key is None:
        _reject("key id not in the allowlist")
    if not isinstance(verify_key, VerifyKey) or verify_key.fingerprint() != kid:
        _reject("allowlist entry does not match its key id")
    if len(payload_part) <= _SIG_SIZE:
        _reject("payload too short")
    import pyseto  # noqa: PLC0415 - see _IMPLICIT_CONTEXT

    try:
        decoded = pyseto.decode(
            _paseto_verify_key(verify_key.raw),
            token,
            implicit_assertion=_implicit_assertion(kind, bound_identity),
        )
    except (pyseto.PysetoError, ValueError, TypeError):
        _reject("signature does not verify (key, payload, footer or binding)")
    if decoded.payload != payload_part[:-_SIG_SIZE]:
        _reject("library returned an unexpected payload")
    claims = _strict_json_object(payload_part[:-_SIG_SIZE], "payload")
    return _check_claims(claims, kid=kid, audience=audience, issuer=issuer, now=now, kind=kind)


def _check_claims(
    claims: dict[str, Any],
    *,
    kid: KeyFingerprint,
    audience: str,
    issuer: str,
    now: datetime,
    kind: TokenKind,
) -> TokenClaims:
    missing = _CLAIMS - claims.keys()
    if missing:
        _reject(f"missing claims {sorted(missing)}")
    extra = claims.keys() - _CLAIMS
    if extra:
        _reject(f"unexpected claims {sorted(extra)}")
    _check_text_claims(claims, audience=audience, issuer=issuer, kind=kind)
    issued_at, expires_at = _check_time_claims(claims, now=now, kind=kind)
    return TokenClaims(
        kind=kind,
        issuer=claims["iss"],
        subject=claims["sub"],
        audience=claims["aud"],
        token_id=claims["jti"],
        issued_at=issued_at,
        expires_at=expires_at,
        key_id=kid,
        scope=claims["scope"],
    )


def _check_text_claims(
    claims: dict[str, Any], *, audience: str, issuer: str, kind: TokenKind
) -> None:
    for name in ("iss", "sub", "aud", "jti", "kind", "scope"):
        if not _is_claim_text(claims[name]):
            _reject(f"claim {name} is not a short string")
    if claims["kind"] != kind.value:
        _reject(f"kind {claims['kind']!r} where {kind.value!r} was expected")
    if claims["scope"] != kind.scope:
        _reject(f"scope {claims['scope']!r} is not {kind.scope!r}")
    if claims["aud"] != audience:
        _reject("wrong audience")
    if claims["iss"] != issuer:
        _reject("wrong issuer")
    try:
        jti_size = len(b64decode(claims["jti"]))
    except DecodeError:
        _reject("jti is not base64url")
    if jti_size < JTI_BYTES:
        _reject("jti shorter than 128 bits")


def _check_time_claims(
    claims: dict[str, Any], *, now: datetime, kind: TokenKind
) -> tuple[datetime, datetime]:
    issued_at = _parse_time(claims["iat"], "iat")
    expires_at = _parse_time(claims["exp"], "exp")
    if expires_at <= issued_at:
        _reject("exp not after iat")
    if expires_at - issued_at > kind.max_lifetime:
        _reject("lifetime above the cap for this kind")
    if issued_at > now + MAX_FUTURE_IAT:
        _reject("iat too far in the future")
    if now >= expires_at:
        _reject("expired")
    return issued_at, expires_at


def _jti_bytes(entropy: Entropy) -> bytes:
    jti = entropy.token_bytes(JTI_BYTES)
    if len(jti) != JTI_BYTES:
        raise LocalProtocolError("entropy returned the wrong number of bytes")
    return jti


def _reject(reason: str) -> NoReturn:
    raise InvalidToken(reason) from None


def _split(token: object) -> tuple[bytes, bytes]:
    """Strictly split `v4.public.<payload>.<footer>`; pyseto's base64 decoding is lenient."""
    if not isinstance(token, str):
        _reject("token is not a string")
    if not 0 < len(token) <= MAX_TOKEN_CHARS or not token.isascii():
        _reject("token length or alphabet")
    if not token.startswith(_HEADER):
        _reject("not a v4.public token")
    parts = token[len(_HEADER) :].split(".")
    if len(parts) != 2:
        _reject("expected payload and footer")
    try:
        return b64decode(parts[0]), b64decode(parts[1])
    except DecodeError:
        _reject("non-canonical base64url")


def _footer_kid(footer: bytes) -> KeyFingerprint:
    fields = _strict_json_object(footer, "footer")
    if set(fields) != {"kid"} or not isinstance(fields["kid"], str):
        _reject("footer must be exactly {kid}")
    try:
        return KeyFingerprint.from_text(fields["kid"])
    except DecodeError:
        _reject("footer kid is not a key fingerprint")


def _strict_json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_no_duplicates,
            parse_constant=_no_constants,
        )
    except (UnicodeDecodeError, ValueError, RecursionError):
        _reject(f"{what} is not strict JSON")
    if not isinstance(value, dict):
        _reject(f"{what} is not a JSON object")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("duplicate key")
    return result


def _no_constants(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


def _parse_time(value: object, name: str) -> datetime:
    if not isinstance(value, str) or not _TIME_RE.fullmatch(value):
        _reject(f"claim {name} is not a UTC timestamp")
    try:
        return datetime.strptime(value, _TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError:
        _reject(f"claim {name} is not a valid date")


def _is_claim_text(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_CLAIM_CHARS


def _canonical_json(value: Mapping[str, str]) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def _implicit_assertion(kind: TokenKind, bound_identity: VerifyKey) -> bytes:
    return _IMPLICIT_CONTEXT + kind.value.encode() + b"\x00" + bound_identity.to_text().encode()


@functools.lru_cache(maxsize=64)
def _paseto_verify_key(raw: bytes) -> KeyInterface:
    """pyseto key objects for public keys, cached: building one costs ~40 us."""
    import pyseto  # noqa: PLC0415 - see _IMPLICIT_CONTEXT

    return pyseto.Key.from_asymmetric_key_params(4, x=raw)


def _require_utc(now: object) -> None:
    if not isinstance(now, datetime) or now.tzinfo is None or now.utcoffset() != timedelta(0):
        raise LocalProtocolError("now must be a timezone-aware UTC datetime")


def token_renewal_message(challenge_id: bytes, node_id: str) -> bytes:
    """What a node signs (identity key, `Purpose.TOKEN_RENEWAL`) to renew its access token."""
    return bytes(challenge_id) + node_id.encode("utf-8")
