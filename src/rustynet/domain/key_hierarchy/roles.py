"""The hierarchy's roles with their lifetime and scope ceilings, the record format version,
and the errors every part of the hierarchy raises.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from datetime import timedelta
from typing import Final

from rustynet.domain.errors import LocalProtocolError, RemoteProtocolError
from rustynet.domain.keys import Purpose
from rustynet.domain.signed import (
    UnknownSigner,
)

FORMAT_VERSION: Final = 1


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
