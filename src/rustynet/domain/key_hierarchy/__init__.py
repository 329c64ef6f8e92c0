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
The package:

    roles.py         key roles, their lifetime and scope ceilings, the format version, the errors
    validity.py      `Validity` windows and the strict payload readers the records share
    certificates.py  root and online-key certificates, the pinned `TrustedRoot`, the chain check
    revocation.py    root-signed revocation records, the persisted epoch watermark and
                     `verify_certificate` (chain, validity and revocation at `now`)
    keyring.py       `SigningKeyring`: sign with the newest key, verify with any live one
    bindings.py      tunnel-key bindings signed by a node's identity key

This module is the package's public face: import from `rustynet.domain.key_hierarchy`.
"""

from __future__ import annotations

from rustynet.domain.key_hierarchy.bindings import (
    BINDING_CLOCK_LEEWAY,
    TUNNEL_KEY_DEFAULT_LIFETIME,
    TUNNEL_KEY_MAX_LIFETIME,
    TUNNEL_KEY_MIN_LIFETIME,
    TunnelKeyBinding,
    issue_tunnel_key_binding,
    verify_tunnel_key_binding,
)
from rustynet.domain.key_hierarchy.certificates import (
    Certificate,
    TrustedRoot,
    issue_certificate,
    issue_root_certificate,
)
from rustynet.domain.key_hierarchy.keyring import SigningKeyring
from rustynet.domain.key_hierarchy.revocation import (
    RevocationRecord,
    RevocationState,
    issue_revocation,
    verify_certificate,
)
from rustynet.domain.key_hierarchy.roles import (
    FORMAT_VERSION,
    ROLE_MAX_LIFETIME,
    ROLE_SCOPE_CEILING,
    BindingRejectedError,
    CertificateRejectedError,
    ExpiredError,
    IssuePolicyError,
    KeyRevoked,
    KeyRole,
    NoSigningKeyError,
    NotYetValidError,
    StaleRevocationError,
)
from rustynet.domain.key_hierarchy.validity import Validity

__all__ = [
    "BINDING_CLOCK_LEEWAY",
    "FORMAT_VERSION",
    "ROLE_MAX_LIFETIME",
    "ROLE_SCOPE_CEILING",
    "TUNNEL_KEY_DEFAULT_LIFETIME",
    "TUNNEL_KEY_MAX_LIFETIME",
    "TUNNEL_KEY_MIN_LIFETIME",
    "BindingRejectedError",
    "Certificate",
    "CertificateRejectedError",
    "ExpiredError",
    "IssuePolicyError",
    "KeyRevoked",
    "KeyRole",
    "NoSigningKeyError",
    "NotYetValidError",
    "RevocationRecord",
    "RevocationState",
    "SigningKeyring",
    "StaleRevocationError",
    "TrustedRoot",
    "TunnelKeyBinding",
    "Validity",
    "issue_certificate",
    "issue_revocation",
    "issue_root_certificate",
    "issue_tunnel_key_binding",
    "verify_certificate",
    "verify_tunnel_key_binding",
]
