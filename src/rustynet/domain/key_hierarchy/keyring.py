"""`SigningKeyring`: the certified keys of one role, oldest first; signs with the newest usable
key, verifies with any certified, current, unretired, unrevoked one, and snapshots/restores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Final, TypeVar

import attrs

from rustynet.domain.errors import DecodeError, LocalProtocolError
from rustynet.domain.key_hierarchy.certificates import (
    Certificate,
    TrustedRoot,
    verify_certificate_chain,
)
from rustynet.domain.key_hierarchy.revocation import RevocationState
from rustynet.domain.key_hierarchy.roles import (
    FORMAT_VERSION,
    CertificateRejectedError,
    ExpiredError,
    KeyRevoked,
    KeyRole,
    NoSigningKeyError,
)
from rustynet.domain.key_hierarchy.validity import (
    exact_fields,
    fingerprints_from,
    fingerprints_to,
    require_utc,
    str_field,
)
from rustynet.domain.keys import KeyFingerprint, Purpose, SigningKey
from rustynet.domain.signed import (
    JsonObject,
    JsonValue,
    SignedEnvelope,
    UnknownSigner,
    Verifier,
)

_T = TypeVar("_T")


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
        verify_certificate_chain(certificate, self._root)
        if require_utc(now, "now") >= certificate.validity.not_after:
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
        problem = self._live_problem(entry, purpose, require_utc(now, "now"))
        if problem == "revoked":
            raise KeyRevoked(f"key {key_id} is revoked")
        if problem:
            raise UnknownSigner(f"key {key_id} is {problem}")
        entry.certificate.subject.verify(purpose, message, signature)

    def at(self, now: datetime) -> Verifier:
        """This keyring as a `signed.Verifier` at `now` (for `SignedEnvelope.open`)."""
        return _KeyringAt(self, require_utc(now, "now"))

    def open(self, envelope: SignedEnvelope, purpose: Purpose, now: datetime) -> JsonObject:
        """Verify `envelope` with a live key and return its payload."""
        return envelope.open(self.at(now), purpose)

    def snapshot(self) -> JsonObject:
        """Certificates (oldest first) and retired ids, for persistence; no private keys."""
        return {
            "v": FORMAT_VERSION,
            "role": self._role.value,
            "certificates": [e.certificate.to_text() for e in self._entries],
            "retired": fingerprints_to(frozenset(self._retired)),
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
        exact_fields(snapshot, _SNAPSHOT_FIELDS, "keyring snapshot")
        try:
            role = KeyRole(str_field(snapshot, "role"))
        except ValueError as exc:
            raise DecodeError("unknown key role") from exc
        if role is KeyRole.ROOT:
            raise DecodeError("a keyring holds online keys")
        certs = snapshot.get("certificates")
        if not isinstance(certs, list) or not all(isinstance(c, str) for c in certs):
            raise DecodeError("certificates must be a list of strings")
        keyring = cls(root, role, revocations)
        keyring._retired = set(fingerprints_from(snapshot.get("retired")))
        private = {k.public_key.fingerprint(): k for k in signing_keys}
        for text in certs:
            cert = Certificate.from_text(text)
            if cert.role is not role:
                raise CertificateRejectedError("certificate role differs from the keyring's")
            if cert.key_id in keyring._retired or cert.key_id in keyring.key_ids:
                raise DecodeError("a keyring snapshot lists a key twice")
            verify_certificate_chain(cert, root)
            keyring._entries.append(_Entry(cert, private.pop(cert.key_id, None)))
        for leftover in private.values():
            leftover.wipe()
        return keyring

    def __repr__(self) -> str:
        return (
            f"SigningKeyring(role={self._role.value}, keys={len(self._entries)}, "
            f"retired={len(self._retired)})"
        )
