"""Certificates: the root's self-signed description (`issue_root_certificate`), the pinned
`TrustedRoot`, online-key certificates (`issue_certificate`) and their chain check
(`verify_certificate_chain`). The full check at `now`, which also consults revocations, is
`verify_certificate` in `revocation.py`.
"""

from __future__ import annotations

from datetime import datetime
from typing import Final

import attrs

from rustynet.domain.errors import DecodeError, LocalProtocolError
from rustynet.domain.key_hierarchy.roles import (
    FORMAT_VERSION,
    ROLE_MAX_LIFETIME,
    ROLE_SCOPE_CEILING,
    CertificateRejectedError,
    IssuePolicyError,
    KeyRole,
)
from rustynet.domain.key_hierarchy.validity import (
    Validity,
    exact_fields,
    sorted_unique_strings,
    str_field,
)
from rustynet.domain.keys import KeyFingerprint, Purpose, SigningKey, VerifyKey
from rustynet.domain.signed import (
    JsonValue,
    SignedEnvelope,
    UnknownSigner,
)

# --- certificates -----------------------------------------------------------------------------


def _purposes_from(value: object) -> frozenset[Purpose]:
    purposes = []
    for text in sorted_unique_strings(value, "scope"):
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
        exact_fields(payload, _CERT_FIELDS, "certificate")
        try:
            role = KeyRole(str_field(payload, "role"))
        except ValueError as exc:
            raise DecodeError("unknown key role") from exc
        issuer = KeyFingerprint.from_text(str_field(payload, "issuer"))
        if issuer != self.envelope.key_id:
            raise DecodeError("certificate issuer differs from its signer")
        object.__setattr__(self, "subject", VerifyKey.from_text(str_field(payload, "subject")))
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


def verify_certificate_chain(cert: Certificate, root: TrustedRoot) -> None:
    """Signature, issuer, nesting and scope; everything except the time and revocation."""
    if cert.issuer != root.key_id:
        raise UnknownSigner("certificate was not issued by the trusted root")
    cert.envelope.open(root.key, Purpose.CERTIFICATE)
    problem = _child_problem(root, cert.subject, cert.role, cert.validity, cert.scope)
    if problem:
        raise CertificateRejectedError(problem)
