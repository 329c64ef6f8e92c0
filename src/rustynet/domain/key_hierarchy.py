"""The key hierarchy: control root → certified online keys; node tunnel-key bindings; revocation.

The one rule: a key is trusted for a purpose only while a chain of signatures from the pinned
root says so at `now` — certified by the root, inside the root's validity, with a scope no wider
than the root's, not retired here and not revoked by any root-signed record we have seen.

Theory of operation.

* The control root key describes itself in a self-signed root certificate (role `root`, lifetime
  ≤ 2 y, scope = every purpose the hierarchy may sign). Nodes trust it only through
  `TrustedRoot.pinned`, which checks it against the fingerprint carried by the join token.
* The root certifies online keys: signing keys (≤ 90 d; peer maps, node revocations) and audit
  keys (≤ 1 y; audit checkpoints). A certificate's validity nests inside the root's and its
  scope is a subset of both the root's scope and the role's ceiling. `issue_certificate`
  refuses (`LocalProtocolError`) what `verify_certificate` would reject (`RemoteProtocolError`).
* `SigningKeyring` holds the certified keys of one role, oldest first (cryptography's
  MultiFernet with certificates): it signs with the newest usable key and verifies with any key
  that is certified for the purpose, valid now, not retired and not revoked. Retiring is
  final: the private key is wiped and the key id is remembered so it can never return.
* `RevocationRecord`s are root-signed and carry a strictly increasing epoch. `RevocationState`
  keeps the epoch watermark and the union of every revoked fingerprint; a record whose epoch
  is not above the watermark is rejected and changes nothing. The state persists as plain
  canonical JSON so a restart cannot reopen an old epoch.
* A node's identity key signs `TunnelKeyBinding`s: "this tunnel key is mine from not_before
  to not_after" (default 180 d, allowed 1-180 d).

Times are whole seconds, timezone-aware UTC; validity is the half-open range
`not_before <= now < not_after`.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Final, TypeVar

import attrs

from rustynet.domain.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from rustynet.domain.keys import KeyFingerprint, Purpose, SigningKey, TunnelKey, VerifyKey
from rustynet.domain.signed import (
    INT_MAX,
    JsonObject,
    JsonValue,
    SignedEnvelope,
    UnknownSigner,
    Verifier,
    canonical_json,
    parse_canonical_json,
)

FORMAT_VERSION: Final = 1
TUNNEL_KEY_DEFAULT_LIFETIME: Final = timedelta(days=180)
TUNNEL_KEY_MIN_LIFETIME: Final = timedelta(days=1)
TUNNEL_KEY_MAX_LIFETIME: Final = timedelta(days=180)
# A binding is checked by the control plane and by peers whose clocks may run behind the node
# that made it: ±90 s of clock leeway.
BINDING_CLOCK_LEEWAY: Final = timedelta(seconds=90)
_T = TypeVar("_T")
_MAX_TIMESTAMP: Final = 253_402_300_799  # 9999-12-31T23:59:59Z


class KeyRole(enum.Enum):
    """Where a key sits in the hierarchy."""

    ROOT = "root"
    SIGNING = "signing"
    AUDIT = "audit"


ROLE_MAX_LIFETIME: Final[Mapping[KeyRole, timedelta]] = {
    KeyRole.ROOT: timedelta(days=730),
    KeyRole.SIGNING: timedelta(days=90),
    KeyRole.AUDIT: timedelta(days=365),
}

# The most each role may ever be certified for. Online keys never get CERTIFICATE: there are
# no intermediate authorities.
ROLE_SCOPE_CEILING: Final[Mapping[KeyRole, frozenset[Purpose]]] = {
    KeyRole.ROOT: frozenset(
        {Purpose.CERTIFICATE, Purpose.REVOCATION, Purpose.PEER_MAP, Purpose.AUDIT_CHECKPOINT}
    ),
    KeyRole.SIGNING: frozenset({Purpose.PEER_MAP, Purpose.REVOCATION}),
    KeyRole.AUDIT: frozenset({Purpose.AUDIT_CHECKPOINT}),
}


# --- errors -----------------------------------------------------------------------------------


class IssuePolicyError(LocalProtocolError):
    """We were asked to issue something the hierarchy's rules forbid (it would never verify)."""


class NotYetValidError(RemoteProtocolError):
    """A certificate, binding or key is used before its `not_before`."""


class ExpiredError(RemoteProtocolError):
    """A certificate, binding or key is used at or after its `not_after`."""


class CertificateRejectedError(RemoteProtocolError):
    """A certificate breaks the hierarchy: wrong issuer or role, scope escalation, no nesting."""


class BindingRejectedError(RemoteProtocolError):
    """A tunnel-key binding breaks its rules (lifetime outside 1-180 d, wrong identity)."""


class KeyRevoked(UnknownSigner):
    """The key was revoked by a root-signed record; it is never accepted again."""


class StaleRevocationError(RemoteProtocolError):
    """A revocation record's epoch is not above the current watermark."""


class NoSigningKeyError(LocalProtocolError):
    """The keyring holds no key that may sign this purpose now."""


# --- time -------------------------------------------------------------------------------------


def _require_utc(value: object, what: str) -> datetime:
    if not isinstance(value, datetime) or value.utcoffset() != timedelta(0):
        raise LocalProtocolError(f"{what} must be a timezone-aware UTC datetime")
    return value


def _floor_seconds(value: datetime, what: str) -> datetime:
    return _require_utc(value, what).replace(microsecond=0)


def _to_timestamp(value: datetime) -> int:
    return int(value.timestamp())


def _from_timestamp(value: object, what: str) -> datetime:
    if type(value) is not int or not 0 <= value <= _MAX_TIMESTAMP:
        raise DecodeError(f"{what} must be an integer UNIX time")
    return datetime.fromtimestamp(value, UTC)


@attrs.frozen
class Validity:
    """A half-open time range `[not_before, not_after)` in whole UTC seconds."""

    not_before: datetime
    not_after: datetime

    def __attrs_post_init__(self) -> None:
        for name in ("not_before", "not_after"):
            value = _require_utc(getattr(self, name), name)
            if value.microsecond:
                raise LocalProtocolError(f"{name} must be whole seconds (use Validity.of)")
        if self.not_before >= self.not_after:
            raise LocalProtocolError("not_before must come before not_after")

    @classmethod
    def of(cls, not_before: datetime, not_after: datetime) -> Validity:
        """Build from any UTC datetimes, rounded down to whole seconds."""
        return cls(_floor_seconds(not_before, "not_before"), _floor_seconds(not_after, "not_after"))

    @classmethod
    def starting(cls, now: datetime, lifetime: timedelta) -> Validity:
        """`[now, now + lifetime)` in whole seconds."""
        start = _floor_seconds(now, "now")
        return cls(start, start + lifetime)

    @property
    def lifetime(self) -> timedelta:
        """Length of the range."""
        return self.not_after - self.not_before

    def contains(self, other: Validity) -> bool:
        """True when `other` lies entirely inside this range."""
        return self.not_before <= other.not_before and other.not_after <= self.not_after

    def covers(self, now: datetime) -> bool:
        """True when `now` is inside the range."""
        return self.not_before <= _require_utc(now, "now") < self.not_after

    def check(self, now: datetime, what: str, *, leeway: timedelta = timedelta(0)) -> None:
        """Raise `NotYetValidError` / `ExpiredError` unless `now` is inside the range.

        `leeway` tolerates a verifier clock running behind the issuer's.
        """
        now = _require_utc(now, "now")
        if now < self.not_before - leeway:
            raise NotYetValidError(f"{what} is valid from {self.not_before.isoformat()}")
        if now >= self.not_after:
            raise ExpiredError(f"{what} expired at {self.not_after.isoformat()}")

    def to_json(self) -> dict[str, JsonValue]:
        """The two timestamps as payload fields."""
        return {
            "not_before": _to_timestamp(self.not_before),
            "not_after": _to_timestamp(self.not_after),
        }

    @classmethod
    def from_json(cls, payload: Mapping[str, object]) -> Validity:
        """Parse the payload fields; a reversed or empty range raises `DecodeError`."""
        start = _from_timestamp(payload.get("not_before"), "not_before")
        end = _from_timestamp(payload.get("not_after"), "not_after")
        if start >= end:
            raise DecodeError("not_before must come before not_after")
        return cls(start, end)


# --- payload helpers --------------------------------------------------------------------------


def _exact_fields(payload: Mapping[str, object], fields: frozenset[str], what: str) -> None:
    if set(payload) != fields:
        raise DecodeError(f"{what} fields must be exactly {sorted(fields)}")
    if payload.get("v") != FORMAT_VERSION or type(payload.get("v")) is not int:
        raise DecodeError(f"unsupported {what} version")


def _str_field(payload: Mapping[str, object], name: str) -> str:
    value = payload.get(name)
    if not isinstance(value, str):
        raise DecodeError(f"{name} must be a string")
    return value


def _sorted_unique_strings(value: object, name: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise DecodeError(f"{name} must be a list of strings")
    if value != sorted(set(value)):
        raise DecodeError(f"{name} must be sorted and without duplicates")
    return value


def _purposes_from(value: object) -> frozenset[Purpose]:
    purposes = []
    for text in _sorted_unique_strings(value, "scope"):
        try:
            purposes.append(Purpose(text))
        except ValueError as exc:
            raise DecodeError(f"unknown purpose {text[:40]!r} in scope") from exc
    return frozenset(purposes)


def _purposes_to(scope: frozenset[Purpose]) -> list[str]:
    return sorted(p.value for p in scope)


def _check_scope_value(scope: object) -> frozenset[Purpose]:
    if not isinstance(scope, frozenset) or not all(isinstance(p, Purpose) for p in scope):
        raise LocalProtocolError("a scope is a frozenset of Purpose")
    return scope


# --- certificates -----------------------------------------------------------------------------

_CERT_FIELDS: Final = frozenset(
    {"v", "subject", "role", "scope", "not_before", "not_after", "issuer"}
)


@attrs.frozen
class Certificate:
    """A root-signed statement: `subject` may sign `scope` as `role` during `validity`.

    Construct it from its envelope (`Certificate(envelope)` / `from_text`): the claims are
    parsed from the signed payload so they can never disagree with it. Like an X.509 parser, this
    does not verify anything; `verify_certificate` (or `TrustedRoot.pinned`) does.
    """

    envelope: SignedEnvelope = attrs.field(validator=attrs.validators.instance_of(SignedEnvelope))
    subject: VerifyKey = attrs.field(init=False)
    role: KeyRole = attrs.field(init=False)
    scope: frozenset[Purpose] = attrs.field(init=False)
    validity: Validity = attrs.field(init=False)
    issuer: KeyFingerprint = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.envelope.purpose is not Purpose.CERTIFICATE:
            raise DecodeError("not a certificate envelope")
        payload = self.envelope.unverified_payload()
        _exact_fields(payload, _CERT_FIELDS, "certificate")
        try:
            role = KeyRole(_str_field(payload, "role"))
        except ValueError as exc:
            raise DecodeError("unknown key role") from exc
        issuer = KeyFingerprint.from_text(_str_field(payload, "issuer"))
        if issuer != self.envelope.key_id:
            raise DecodeError("certificate issuer differs from its signer")
        object.__setattr__(self, "subject", VerifyKey.from_text(_str_field(payload, "subject")))
        object.__setattr__(self, "role", role)
        object.__setattr__(self, "scope", _purposes_from(payload.get("scope")))
        object.__setattr__(self, "validity", Validity.from_json(payload))
        object.__setattr__(self, "issuer", issuer)

    @property
    def key_id(self) -> KeyFingerprint:
        """Fingerprint of the certified key (the key id envelopes carry)."""
        return self.subject.fingerprint()

    @classmethod
    def from_text(cls, text: str) -> Certificate:
        """Parse the envelope text form; malformed input raises `DecodeError`."""
        return cls(SignedEnvelope.from_text(text))

    def to_text(self) -> str:
        """The envelope text form."""
        return self.envelope.to_text()


def _certificate_payload(
    subject: VerifyKey,
    role: KeyRole,
    scope: frozenset[Purpose],
    validity: Validity,
    issuer: KeyFingerprint,
) -> dict[str, JsonValue]:
    return {
        "v": FORMAT_VERSION,
        "subject": subject.to_text(),
        "role": role.value,
        "scope": _purposes_to(scope),
        **validity.to_json(),
        "issuer": issuer.to_text(),
    }


def _root_problem(cert: Certificate) -> str | None:
    if cert.role is not KeyRole.ROOT:
        return "a root certificate has role root"
    if cert.issuer != cert.key_id:
        return "a root certificate is self-signed"
    return _lifetime_and_scope_problem(cert.role, cert.validity, cert.scope)


def _lifetime_and_scope_problem(
    role: KeyRole, validity: Validity, scope: frozenset[Purpose]
) -> str | None:
    if validity.lifetime > ROLE_MAX_LIFETIME[role]:
        return f"a {role.value} key lives at most {ROLE_MAX_LIFETIME[role].days} days"
    if not scope:
        return "a certificate scope is not empty"
    if not scope <= ROLE_SCOPE_CEILING[role]:
        extra = sorted(p.value for p in scope - ROLE_SCOPE_CEILING[role])
        return f"a {role.value} key may not sign {extra}"
    return None


def _child_problem(
    root: TrustedRoot,
    subject: VerifyKey,
    role: KeyRole,
    validity: Validity,
    scope: frozenset[Purpose],
) -> str | None:
    if role is KeyRole.ROOT:
        return "the root certifies only online keys; roots are self-signed"
    if Purpose.CERTIFICATE not in root.scope:
        return "the root's scope does not include certificates"
    if subject == root.key:
        return "the root key cannot also be an online key"
    if not root.validity.contains(validity):
        return "certificate validity must nest inside the root's"
    if not scope <= root.scope:
        extra = sorted(p.value for p in scope - root.scope)
        return f"scope escalation: the root may not delegate {extra}"
    return _lifetime_and_scope_problem(role, validity, scope)


_PINNED: Final = object()


@attrs.frozen
class TrustedRoot:
    """A root certificate checked against a pinned fingerprint. Build it with `pinned`.

    The constructor refuses to run without the private token `pinned` passes, so a root can
    not be trusted by accident (`TrustedRoot(cert)` raises).
    """

    certificate: Certificate = attrs.field(validator=attrs.validators.instance_of(Certificate))
    _token: object = attrs.field(repr=False, eq=False, alias="_token", default=None)

    def __attrs_post_init__(self) -> None:
        if self._token is not _PINNED:
            raise LocalProtocolError("build a TrustedRoot with TrustedRoot.pinned(cert, pin, now)")

    @classmethod
    def pinned(cls, certificate: Certificate, pin: KeyFingerprint, now: datetime) -> TrustedRoot:
        """Accept `certificate` as the root only if its key matches `pin` and it verifies now."""
        if not isinstance(pin, KeyFingerprint):
            raise LocalProtocolError("pin the root by its KeyFingerprint")
        if certificate.key_id != pin:
            raise UnknownSigner(f"root key {certificate.key_id} is not the pinned {pin}")
        certificate.envelope.open(certificate.subject, Purpose.CERTIFICATE)
        problem = _root_problem(certificate)
        if problem:
            raise CertificateRejectedError(problem)
        certificate.validity.check(now, "root certificate")
        return cls(certificate, _token=_PINNED)

    @property
    def key(self) -> VerifyKey:
        """The root public key."""
        return self.certificate.subject

    @property
    def key_id(self) -> KeyFingerprint:
        """The root key fingerprint (what join tokens pin)."""
        return self.certificate.key_id

    @property
    def validity(self) -> Validity:
        """The root's validity; everything it certifies nests inside."""
        return self.certificate.validity

    @property
    def scope(self) -> frozenset[Purpose]:
        """Every purpose the hierarchy below this root may sign."""
        return self.certificate.scope


def issue_root_certificate(
    root_key: SigningKey,
    not_before: datetime,
    not_after: datetime,
    scope: frozenset[Purpose] = ROLE_SCOPE_CEILING[KeyRole.ROOT],
) -> Certificate:
    """Self-sign the root's description; refuses a lifetime over 2 y or an unknown scope."""
    validity = Validity.of(not_before, not_after)
    scope = _check_scope_value(scope)
    problem = _lifetime_and_scope_problem(KeyRole.ROOT, validity, scope)
    if problem:
        raise IssuePolicyError(problem)
    key = root_key.public_key
    payload = _certificate_payload(key, KeyRole.ROOT, scope, validity, key.fingerprint())
    return Certificate(SignedEnvelope.seal(root_key, Purpose.CERTIFICATE, payload))


def issue_certificate(
    root_key: SigningKey,
    root: TrustedRoot,
    *,
    subject: VerifyKey,
    role: KeyRole,
    not_before: datetime,
    not_after: datetime,
    scope: frozenset[Purpose],
) -> Certificate:
    """Certify an online key; refuses (`IssuePolicyError`) anything `verify_certificate` rejects."""
    if root_key.public_key != root.key:
        raise IssuePolicyError("the signing key is not the trusted root's key")
    if not isinstance(subject, VerifyKey) or not isinstance(role, KeyRole):
        raise LocalProtocolError("subject must be a VerifyKey and role a KeyRole")
    validity = Validity.of(not_before, not_after)
    problem = _child_problem(root, subject, role, validity, _check_scope_value(scope))
    if problem:
        raise IssuePolicyError(problem)
    payload = _certificate_payload(subject, role, scope, validity, root.key_id)
    return Certificate(SignedEnvelope.seal(root_key, Purpose.CERTIFICATE, payload))


def _verify_certificate_chain(cert: Certificate, root: TrustedRoot) -> None:
    """Signature, issuer, nesting and scope; everything except the time and revocation."""
    if cert.issuer != root.key_id:
        raise UnknownSigner("certificate was not issued by the trusted root")
    cert.envelope.open(root.key, Purpose.CERTIFICATE)
    problem = _child_problem(root, cert.subject, cert.role, cert.validity, cert.scope)
    if problem:
        raise CertificateRejectedError(problem)


def verify_certificate(
    cert: Certificate,
    root: TrustedRoot,
    now: datetime,
    revocations: RevocationState | None = None,
) -> None:
    """Raise unless `cert` is a valid, current, unrevoked certificate from `root`."""
    root.validity.check(now, "root certificate")
    _verify_certificate_chain(cert, root)
    cert.validity.check(now, f"{cert.role.value} key certificate")
    if revocations is not None:
        for key_id in (root.key_id, cert.key_id):
            if revocations.is_revoked(key_id):
                raise KeyRevoked(f"key {key_id} is revoked")


# --- revocation -------------------------------------------------------------------------------

_REVOCATION_FIELDS: Final = frozenset({"v", "epoch", "revoked", "issued_at"})


def _epoch_value(value: object) -> int:
    if type(value) is not int or not 1 <= value <= INT_MAX:
        raise DecodeError("a revocation epoch is a positive 64-bit integer")
    return value


def _fingerprints_from(value: object) -> frozenset[KeyFingerprint]:
    return frozenset(
        KeyFingerprint.from_text(t) for t in _sorted_unique_strings(value, "revoked keys")
    )


def _fingerprints_to(keys: frozenset[KeyFingerprint]) -> list[str]:
    return sorted(k.to_text() for k in keys)


@attrs.frozen
class RevocationRecord:
    """Root-signed: as of `epoch`, these key fingerprints are revoked (cumulative list)."""

    envelope: SignedEnvelope = attrs.field(validator=attrs.validators.instance_of(SignedEnvelope))
    epoch: int = attrs.field(init=False)
    revoked: frozenset[KeyFingerprint] = attrs.field(init=False)
    issued_at: datetime = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.envelope.purpose is not Purpose.REVOCATION:
            raise DecodeError("not a revocation envelope")
        payload = self.envelope.unverified_payload()
        _exact_fields(payload, _REVOCATION_FIELDS, "revocation record")
        object.__setattr__(self, "epoch", _epoch_value(payload.get("epoch")))
        object.__setattr__(self, "revoked", _fingerprints_from(payload.get("revoked")))
        object.__setattr__(
            self, "issued_at", _from_timestamp(payload.get("issued_at"), "issued_at")
        )

    @property
    def issuer(self) -> KeyFingerprint:
        """The key that signed the record (must be the root to be applied)."""
        return self.envelope.key_id

    @classmethod
    def from_text(cls, text: str) -> RevocationRecord:
        """Parse the envelope text form; malformed input raises `DecodeError`."""
        return cls(SignedEnvelope.from_text(text))

    def to_text(self) -> str:
        """The envelope text form."""
        return self.envelope.to_text()


def issue_revocation(
    root_key: SigningKey,
    root: TrustedRoot,
    epoch: int,
    revoked: Iterable[KeyFingerprint],
    issued_at: datetime,
) -> RevocationRecord:
    """Sign a revocation record with the root key. List every revoked key, not just new ones."""
    if root_key.public_key != root.key:
        raise IssuePolicyError("the signing key is not the trusted root's key")
    if Purpose.REVOCATION not in root.scope:
        raise IssuePolicyError("the root's scope does not include revocations")
    if type(epoch) is not int or not 1 <= epoch <= INT_MAX:
        raise IssuePolicyError("a revocation epoch is a positive 64-bit integer")
    keys = frozenset(revoked)
    if not all(isinstance(k, KeyFingerprint) for k in keys):
        raise LocalProtocolError("revoked keys are KeyFingerprints")
    payload: dict[str, JsonValue] = {
        "v": FORMAT_VERSION,
        "epoch": epoch,
        "revoked": _fingerprints_to(keys),
        "issued_at": _to_timestamp(_floor_seconds(issued_at, "issued_at")),
    }
    return RevocationRecord(SignedEnvelope.seal(root_key, Purpose.REVOCATION, payload))


class RevocationState:
    """The revocation watermark: current epoch and every fingerprint ever revoked.

    `apply` is all-or-nothing: it verifies the record (root signature, root valid now, epoch
    strictly above the watermark) before it changes anything. The revoked set only grows.
    """

    def __init__(self, epoch: int = 0, revoked: Iterable[KeyFingerprint] = ()) -> None:
        if type(epoch) is not int or not 0 <= epoch <= INT_MAX:
            raise LocalProtocolError("epoch is a non-negative 64-bit integer")
        self._epoch = epoch
        self._revoked = frozenset(revoked)
        if not all(isinstance(k, KeyFingerprint) for k in self._revoked):
            raise LocalProtocolError("revoked keys are KeyFingerprints")

    @property
    def epoch(self) -> int:
        """The highest epoch applied (0 before any record)."""
        return self._epoch

    @property
    def revoked(self) -> frozenset[KeyFingerprint]:
        """Every fingerprint revoked so far."""
        return self._revoked

    def is_revoked(self, key_id: KeyFingerprint) -> bool:
        """True once any applied record listed `key_id`."""
        return key_id in self._revoked

    def apply(self, record: RevocationRecord, root: TrustedRoot, now: datetime) -> None:
        """Verify `record` against `root` and raise the watermark; a rejection changes nothing."""
        root.validity.check(now, "root certificate")
        if Purpose.REVOCATION not in root.scope:
            raise UnknownSigner("the root's scope does not include revocations")
        record.envelope.open(root.key, Purpose.REVOCATION)
        if record.epoch <= self._epoch:
            raise StaleRevocationError(
                f"revocation epoch {record.epoch} is not above the current {self._epoch}"
            )
        self._epoch = record.epoch
        self._revoked = self._revoked | record.revoked

    def to_dict(self) -> JsonObject:
        """Plain data for persistence."""
        return {
            "v": FORMAT_VERSION,
            "epoch": self._epoch,
            "revoked": _fingerprints_to(self._revoked),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> RevocationState:
        """Inverse of `to_dict`; anything malformed raises `DecodeError`."""
        if not isinstance(data, Mapping):
            raise DecodeError("revocation state is an object")
        _exact_fields(data, frozenset({"v", "epoch", "revoked"}), "revocation state")
        epoch = data.get("epoch")
        if type(epoch) is not int or not 0 <= epoch <= INT_MAX:
            raise DecodeError("revocation state epoch is a non-negative 64-bit integer")
        return cls(epoch, _fingerprints_from(data.get("revoked")))

    def to_text(self) -> str:
        """Canonical JSON text for a state file."""
        return canonical_json(self.to_dict()).decode("utf-8")

    @classmethod
    def from_text(cls, text: str) -> RevocationState:
        """Inverse of `to_text`."""
        if not isinstance(text, str):
            raise DecodeError("revocation state text is a string")
        return cls.from_dict(parse_canonical_json(text.encode("utf-8")))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(epoch={self._epoch}, revoked={len(self._revoked)} keys)"


# --- the keyring ------------------------------------------------------------------------------


@attrs.frozen
class _Entry:
    certificate: Certificate
    signing_key: SigningKey | None = attrs.field(default=None, repr=False)


@attrs.frozen
class _KeyringAt:
    """A keyring seen at one instant: satisfies `signed.Verifier`."""

    keyring: SigningKeyring
    now: datetime

    def verify_signature(
        self, key_id: KeyFingerprint, purpose: Purpose, message: bytes, signature: bytes
    ) -> None:
        """Delegate to the keyring at `now`."""
        self.keyring.verify_signature(key_id, purpose, message, signature, self.now)


_SNAPSHOT_FIELDS: Final = frozenset({"v", "role", "certificates", "retired"})


class SigningKeyring:
    """Certified keys of one role, oldest first: sign with the newest, verify with any live one.

    A key is live for `purpose` at `now` when its certificate (checked against the root when it
    was added) covers `now` and `purpose`, it is not retired and not revoked, and the root is
    valid and not revoked. Retiring wipes the private key and is permanent.
    """

    def __init__(
        self,
        root: TrustedRoot,
        role: KeyRole = KeyRole.SIGNING,
        revocations: RevocationState | None = None,
    ) -> None:
        if not isinstance(root, TrustedRoot) or role is KeyRole.ROOT:
            raise LocalProtocolError("a keyring holds online keys under a TrustedRoot")
        self._root = root
        self._role = role
        self._revocations = RevocationState() if revocations is None else revocations
        self._entries: list[_Entry] = []
        self._retired: set[KeyFingerprint] = set()

    @property
    def root(self) -> TrustedRoot:
        """The root every key here is certified by."""
        return self._root

    @property
    def role(self) -> KeyRole:
        """The role of every key here."""
        return self._role

    @property
    def revocations(self) -> RevocationState:
        """The revocation state this keyring consults (shared, not copied)."""
        return self._revocations

    @property
    def key_ids(self) -> tuple[KeyFingerprint, ...]:
        """Unretired key ids, oldest first."""
        return tuple(e.certificate.key_id for e in self._entries)

    @property
    def retired(self) -> frozenset[KeyFingerprint]:
        """Key ids retired here; they never come back."""
        return frozenset(self._retired)

    def certificate(self, key_id: KeyFingerprint) -> Certificate:
        """The certificate of an unretired key (`UnknownSigner` otherwise)."""
        return self._entry(key_id).certificate

    def add(
        self, certificate: Certificate, now: datetime, signing_key: SigningKey | None = None
    ) -> None:
        """Add a newer key (optionally with its private key, which the keyring then owns).

        A key may be added before its `not_before` (rotation with overlap) but not after its
        `not_after`. Raises and changes nothing on any problem.
        """
        if certificate.role is not self._role:
            raise CertificateRejectedError(f"this keyring holds {self._role.value} keys")
        key_id = certificate.key_id
        if key_id in self._retired:
            raise LocalProtocolError(f"key {key_id} was retired and cannot return")
        if any(e.certificate.key_id == key_id for e in self._entries):
            raise LocalProtocolError(f"key {key_id} is already in the keyring")
        if signing_key is not None and signing_key.public_key != certificate.subject:
            raise LocalProtocolError("the private key does not match the certificate")
        _verify_certificate_chain(certificate, self._root)
        if _require_utc(now, "now") >= certificate.validity.not_after:
            raise ExpiredError(f"certificate of {key_id} has expired")
        if self._revocations.is_revoked(key_id):
            raise KeyRevoked(f"key {key_id} is revoked")
        self._entries.append(_Entry(certificate, signing_key))

    def retire(self, key_id: KeyFingerprint) -> None:
        """Stop signing and verifying with `key_id` for good, and wipe its private key."""
        if key_id in self._retired:
            return
        entry = self._entry(key_id)
        self._entries.remove(entry)
        self._retired.add(key_id)
        if entry.signing_key is not None:
            entry.signing_key.wipe()

    def _entry(self, key_id: KeyFingerprint) -> _Entry:
        for entry in self._entries:
            if entry.certificate.key_id == key_id:
                return entry
        if key_id in self._retired:
            raise UnknownSigner(f"key {key_id} is retired")
        raise UnknownSigner(f"key {key_id} is not in the keyring")

    def _live_problem(self, entry: _Entry, purpose: Purpose, now: datetime) -> str | None:
        cert = entry.certificate
        if self._revocations.is_revoked(cert.key_id) or self._revocations.is_revoked(
            self._root.key_id
        ):
            return "revoked"
        if not self._root.validity.covers(now) or not cert.validity.covers(now):
            return "not valid now"
        if purpose not in cert.scope:
            return f"not certified for {purpose.value}"
        return None

    def newest(self, purpose: Purpose, now: datetime) -> Certificate:
        """Certificate of the key `sign` would use (`NoSigningKeyError` if there is none)."""
        return self._newest_entry(purpose, now)[0]

    def _newest_entry(self, purpose: Purpose, now: datetime) -> tuple[Certificate, SigningKey]:
        for entry in reversed(self._entries):
            key = entry.signing_key
            if key is None or key.wiped:
                continue
            if self._live_problem(entry, purpose, now) is None:
                return entry.certificate, key
        raise NoSigningKeyError(f"no live {self._role.value} key may sign {purpose.value} now")

    def sign(self, purpose: Purpose, message: bytes, now: datetime) -> tuple[KeyFingerprint, bytes]:
        """Sign raw bytes with the newest live key; returns (key id, signature)."""
        cert, key = self._newest_entry(purpose, now)
        return cert.key_id, key.sign(purpose, message)

    def sign_with(self, purpose: Purpose, now: datetime, signer: Callable[[SigningKey], _T]) -> _T:
        """Run `signer` with the newest live key for `purpose`: for signatures framed outside
        this module (PASETO relay tokens, whose verifiers trust the key by its certificate).
        `signer` must not keep the key."""
        return signer(self._newest_entry(purpose, now)[1])

    def seal(
        self, purpose: Purpose, payload: Mapping[str, JsonValue], now: datetime
    ) -> SignedEnvelope:
        """Sign a payload into an envelope with the newest live key."""
        return SignedEnvelope.seal(self._newest_entry(purpose, now)[1], purpose, payload)

    def verify_signature(
        self,
        key_id: KeyFingerprint,
        purpose: Purpose,
        message: bytes,
        signature: bytes,
        now: datetime,
    ) -> None:
        """Raise unless a live key `key_id` signed `message` for `purpose`."""
        entry = self._entry(key_id)
        problem = self._live_problem(entry, purpose, _require_utc(now, "now"))
        if problem == "revoked":
            raise KeyRevoked(f"key {key_id} is revoked")
        if problem:
            raise UnknownSigner(f"key {key_id} is {problem}")
        entry.certificate.subject.verify(purpose, message, signature)

    def at(self, now: datetime) -> Verifier:
        """This keyring as a `signed.Verifier` at `now` (for `SignedEnvelope.open`)."""
        return _KeyringAt(self, _require_utc(now, "now"))

    def open(self, envelope: SignedEnvelope, purpose: Purpose, now: datetime) -> JsonObject:
        """Verify `envelope` with a live key and return its payload."""
        return envelope.open(self.at(now), purpose)

    def snapshot(self) -> JsonObject:
        """Certificates (oldest first) and retired ids, for persistence; no private keys."""
        return {
            "v": FORMAT_VERSION,
            "role": self._role.value,
            "certificates": [e.certificate.to_text() for e in self._entries],
            "retired": _fingerprints_to(frozenset(self._retired)),
        }

    @classmethod
    def restore(
        cls,
        root: TrustedRoot,
        snapshot: Mapping[str, object],
        revocations: RevocationState | None = None,
        signing_keys: Iterable[SigningKey] = (),
    ) -> SigningKeyring:
        """Rebuild from `snapshot`, re-checking every certificate against `root`.

        Private keys come back from the key store through `signing_keys`; keys that match no
        certificate, or a retired one, are wiped.
        """
        if not isinstance(snapshot, Mapping):
            raise DecodeError("a keyring snapshot is an object")
        _exact_fields(snapshot, _SNAPSHOT_FIELDS, "keyring snapshot")
        try:
            role = KeyRole(_str_field(snapshot, "role"))
        except ValueError as exc:
            raise DecodeError("unknown key role") from exc
        if role is KeyRole.ROOT:
            raise DecodeError("a keyring holds online keys")
        certs = snapshot.get("certificates")
        if not isinstance(certs, list) or not all(isinstance(c, str) for c in certs):
            raise DecodeError("certificates must be a list of strings")
        keyring = cls(root, role, revocations)
        keyring._retired = set(_fingerprints_from(snapshot.get("retired")))
        private = {k.public_key.fingerprint(): k for k in signing_keys}
        for text in certs:
            cert = Certificate.from_text(text)
            if cert.role is not role:
                raise CertificateRejectedError("certificate role differs from the keyring's")
            if cert.key_id in keyring._retired or cert.key_id in keyring.key_ids:
                raise DecodeError("a keyring snapshot lists a key twice")
            _verify_certificate_chain(cert, root)
            keyring._entries.append(_Entry(cert, private.pop(cert.key_id, None)))
        for leftover in private.values():
            leftover.wipe()
        return keyring

    def __repr__(self) -> str:
        return (
            f"SigningKeyring(role={self._role.value}, keys={len(self._entries)}, "
            f"retired={len(self._retired)})"
        )


# --- tunnel-key bindings ----------------------------------------------------------------------

_BINDING_FIELDS: Final = frozenset({"v", "tunnel_key", "identity", "not_before", "not_after"})


@attrs.frozen
class TunnelKeyBinding:
    """Signed by a node identity key: this tunnel key is mine during `validity`.

    Construct from the envelope; claims are parsed, not verified (see
    `verify_tunnel_key_binding`).
    """

    envelope: SignedEnvelope = attrs.field(validator=attrs.validators.instance_of(SignedEnvelope))
    tunnel_key: TunnelKey = attrs.field(init=False)
    identity: KeyFingerprint = attrs.field(init=False)
    validity: Validity = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.envelope.purpose is not Purpose.TUNNEL_KEY_BINDING:
            raise DecodeError("not a tunnel-key binding envelope")
        payload = self.envelope.unverified_payload()
        _exact_fields(payload, _BINDING_FIELDS, "tunnel-key binding")
        identity = KeyFingerprint.from_text(_str_field(payload, "identity"))
        if identity != self.envelope.key_id:
            raise DecodeError("binding identity differs from its signer")
        object.__setattr__(
            self, "tunnel_key", TunnelKey.from_text(_str_field(payload, "tunnel_key"))
        )
        object.__setattr__(self, "identity", identity)
        object.__setattr__(self, "validity", Validity.from_json(payload))

    @classmethod
    def from_text(cls, text: str) -> TunnelKeyBinding:
        """Parse the envelope text form; malformed input raises `DecodeError`."""
        return cls(SignedEnvelope.from_text(text))

    def to_text(self) -> str:
        """The envelope text form."""
        return self.envelope.to_text()


def _binding_lifetime_ok(lifetime: timedelta) -> bool:
    return TUNNEL_KEY_MIN_LIFETIME <= lifetime <= TUNNEL_KEY_MAX_LIFETIME


def issue_tunnel_key_binding(
    identity_key: SigningKey,
    tunnel_key: TunnelKey,
    now: datetime,
    lifetime: timedelta = TUNNEL_KEY_DEFAULT_LIFETIME,
) -> TunnelKeyBinding:
    """Bind `tunnel_key` to the node identity for `lifetime` from `now` (1-180 d)."""
    if not isinstance(tunnel_key, TunnelKey) or not isinstance(lifetime, timedelta):
        raise LocalProtocolError("bind a TunnelKey for a timedelta")
    if not _binding_lifetime_ok(lifetime):
        raise IssuePolicyError("a tunnel key lives between 1 and 180 days")
    validity = Validity.starting(now, lifetime)
    payload: dict[str, JsonValue] = {
        "v": FORMAT_VERSION,
        "tunnel_key": tunnel_key.to_text(),
        "identity": identity_key.public_key.fingerprint().to_text(),
        **validity.to_json(),
    }
    envelope = SignedEnvelope.seal(identity_key, Purpose.TUNNEL_KEY_BINDING, payload)
    return TunnelKeyBinding(envelope)


def verify_tunnel_key_binding(
    binding: TunnelKeyBinding, identity: VerifyKey, now: datetime
) -> TunnelKey:
    """Return the bound tunnel key if `identity` signed it and it is valid now; else raise."""
    binding.envelope.open(identity, Purpose.TUNNEL_KEY_BINDING)
    if not _binding_lifetime_ok(binding.validity.lifetime):
        raise BindingRejectedError("a tunnel key lives between 1 and 180 days")
    binding.validity.check(now, "tunnel-key binding", leeway=BINDING_CLOCK_LEEWAY)
    return binding.tunnel_key
