"""The control plane's keys: root, certified peer-map signing key, audit key, token key.

The one rule: the control plane signs only with keys the pinned root certified for the purpose
(peer maps: a signing key in a `SigningKeyring`; audit checkpoints: the audit key), and what it
loads at start is re-verified against the root, so a swapped certificate or key refuses to start.

`create_control_keys(entropy, now)` (init) returns the keys and the key-store entries to write;
`load_control_keys(entries, now)` (serve) rebuilds them from those entries. Entries are named by
`KEY_NAMES`; `control-certificates` holds public material only (root certificate, signing
keyring snapshot, audit certificate) and is kept in the key store so the set is one unit.

Access tokens are signed by a separate raw key (`token_key`): only the control plane verifies
them, and PASETO needs the key itself, which a keyring does not hand out. The MAC key of
token-renewal challenges (`renewal_mac_key`, `domain.renewal_challenge`) is derived from it
(HKDF), so every instance that shares the token key makes and checks the same challenges.

Gaps (tracked for later issues): the root key lives in the online key store (no offline root
yet), and nothing rotates the 90-day signing key automatically.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Final

import attrs

from rustynet.domain.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from rustynet.domain.key_hierarchy import (
    ROLE_MAX_LIFETIME,
    Certificate,
    KeyRole,
    SigningKeyring,
    TrustedRoot,
    issue_certificate,
    issue_root_certificate,
    verify_certificate,
)
from rustynet.domain.keys import MacKey, Purpose, SigningKey
from rustynet.domain.renewal_challenge import MAC_LABEL
from rustynet.domain.signed import JsonValue, canonical_json, parse_canonical_json
from rustynet.ports.entropy import Entropy

ROOT_KEY: Final = "control-root-key"
SIGNING_KEY: Final = "control-signing-key"
AUDIT_KEY: Final = "control-audit-key"
TOKEN_KEY: Final = "control-token-key"  # noqa: S105 - a key-store entry name, not a secret
CERTIFICATES: Final = "control-certificates"
KEY_NAMES: Final = (ROOT_KEY, SIGNING_KEY, AUDIT_KEY, TOKEN_KEY, CERTIFICATES)


class ControlKeyError(LocalProtocolError):
    """The stored control keys are missing, malformed or do not verify (refuse to start)."""


@attrs.frozen(eq=False)
class ControlKeys:
    """Everything the use cases sign and verify with."""

    root: TrustedRoot
    root_key: SigningKey = attrs.field(repr=False)
    signing: SigningKeyring
    audit_key: SigningKey = attrs.field(repr=False)
    audit_certificate: Certificate
    token_key: SigningKey = attrs.field(repr=False)
    renewal_mac_key: MacKey = attrs.field(
        init=False,
        repr=False,
        default=attrs.Factory(lambda keys: MacKey.derive(keys.token_key, MAC_LABEL), True),
    )

    @property
    def root_certificate_text(self) -> str:
        """The root certificate in envelope text form (what nodes get as `trust`)."""
        return self.root.certificate.to_text()

    def signing_certificate_texts(self) -> tuple[str, ...]:
        """Certificates of every unretired peer-map signing key, oldest first."""
        return tuple(self.signing.certificate(k).to_text() for k in self.signing.key_ids)

    def wipe(self) -> None:
        """Wipe the private keys this object owns (the keyring wipes its own on retire)."""
        for key in (self.root_key, self.audit_key, self.token_key):
            key.wipe()
        self.renewal_mac_key.wipe()


def create_control_keys(
    entropy: Entropy, now: datetime
) -> tuple[ControlKeys, dict[str, bytearray]]:
    """Fresh keys and certificates, and the key-store entries (`KEY_NAMES`) that hold them."""
    root_key = SigningKey.generate(entropy)
    signing_key = SigningKey.generate(entropy)
    audit_key = SigningKey.generate(entropy)
    token_key = SigningKey.generate(entropy)
    start = now.replace(microsecond=0)
    root_cert = issue_root_certificate(
        root_key, start, start + ROLE_MAX_LIFETIME[KeyRole.ROOT] - timedelta(seconds=1)
    )
    root = TrustedRoot.pinned(root_cert, root_key.public_key.fingerprint(), now)
    signing_cert = issue_certificate(
        root_key,
        root,
        subject=signing_key.public_key,
        role=KeyRole.SIGNING,
        not_before=start,
        not_after=start + ROLE_MAX_LIFETIME[KeyRole.SIGNING],
        scope=frozenset({Purpose.PEER_MAP, Purpose.REVOCATION}),
    )
    audit_cert = issue_certificate(
        root_key,
        root,
        subject=audit_key.public_key,
        role=KeyRole.AUDIT,
        not_before=start,
        not_after=start + ROLE_MAX_LIFETIME[KeyRole.AUDIT],
        scope=frozenset({Purpose.AUDIT_CHECKPOINT}),
    )
    keyring = SigningKeyring(root, KeyRole.SIGNING)
    keyring.add(signing_cert, now, signing_key)
    keys = ControlKeys(root, root_key, keyring, audit_key, audit_cert, token_key)
    public: dict[str, JsonValue] = {
        "v": 1,
        "root": root_cert.to_text(),
        "signing": keyring.snapshot(),
        "audit": audit_cert.to_text(),
    }
    entries = {
        ROOT_KEY: bytearray(root_key.secret_text().encode("ascii")),
        SIGNING_KEY: bytearray(signing_key.secret_text().encode("ascii")),
        AUDIT_KEY: bytearray(audit_key.secret_text().encode("ascii")),
        TOKEN_KEY: bytearray(token_key.secret_text().encode("ascii")),
        CERTIFICATES: bytearray(canonical_json(public)),
    }
    return keys, entries


def _secret(entries: Mapping[str, bytes | bytearray], name: str) -> SigningKey:
    value = entries.get(name)
    if value is None:
        raise ControlKeyError(f"key store entry {name!r} is missing")
    try:
        return SigningKey.from_secret_text(bytes(value).decode("ascii"))
    except (UnicodeDecodeError, DecodeError) as exc:
        raise ControlKeyError(f"key store entry {name!r} is not a signing key") from exc


def _public_parts(raw: bytes) -> tuple[str, Mapping[str, object], str]:
    public = parse_canonical_json(raw)
    root_text, snapshot, audit_text = public.get("root"), public.get("signing"), public.get("audit")
    if not isinstance(root_text, str) or not isinstance(audit_text, str):
        raise DecodeError("certificates are strings")
    if not isinstance(snapshot, Mapping):
        raise DecodeError("the signing keyring snapshot is an object")
    return root_text, snapshot, audit_text


def load_control_keys(entries: Mapping[str, bytes | bytearray], now: datetime) -> ControlKeys:
    """Rebuild the keys from key-store entries and re-verify every certificate at `now`."""
    root_key = _secret(entries, ROOT_KEY)
    signing_key = _secret(entries, SIGNING_KEY)
    audit_key = _secret(entries, AUDIT_KEY)
    token_key = _secret(entries, TOKEN_KEY)
    raw = entries.get(CERTIFICATES)
    if raw is None:
        raise ControlKeyError(f"key store entry {CERTIFICATES!r} is missing")
    try:
        root_text, snapshot, audit_text = _public_parts(bytes(raw))
        root = TrustedRoot.pinned(
            Certificate.from_text(root_text), root_key.public_key.fingerprint(), now
        )
        keyring = SigningKeyring.restore(root, snapshot, signing_keys=[signing_key])
        audit_cert = Certificate.from_text(audit_text)
        verify_certificate(audit_cert, root, now)
    except (LocalProtocolError, RemoteProtocolError) as exc:
        raise ControlKeyError(f"stored control certificates do not verify: {exc}") from exc
    if audit_cert.role is not KeyRole.AUDIT or audit_cert.subject != audit_key.public_key:
        raise ControlKeyError("the audit key does not match its certificate")
    return ControlKeys(root, root_key, keyring, audit_key, audit_cert, token_key)
