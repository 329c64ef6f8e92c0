"""A control plane's signing chain for tests: a pinned root and one certified signing key.

The relay tests (unit and integration) and the malicious-control e2e test each need one, with
their own clock, lifetimes and scope; this is the one place that issues it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import attrs

from rustynet.domain.key_hierarchy import (
    ROLE_MAX_LIFETIME,
    Certificate,
    KeyRole,
    TrustedRoot,
    issue_certificate,
    issue_root_certificate,
)
from rustynet.domain.keys import Purpose, SigningKey
from rustynet.ports.entropy import Entropy


@attrs.frozen
class SigningChain:
    """Root key and certificate (pinned), one signing key certified by the root."""

    root_key: SigningKey
    root_certificate: Certificate
    root: TrustedRoot
    signing_key: SigningKey
    signing_certificate: Certificate

    @classmethod
    def make(
        cls,
        entropy: Entropy,
        not_before: datetime,
        *,
        root_not_after: datetime | None = None,
        pinned_at: datetime | None = None,
        signing_lifetime: timedelta = timedelta(days=30),
        scope: frozenset[Purpose] = frozenset({Purpose.PEER_MAP}),
    ) -> SigningChain:
        """Both keys from `entropy`; the root valid from `not_before` (to the longest a root may
        live unless `root_not_after`), pinned at `pinned_at` (default `not_before`); the signing
        certificate valid from `not_before` for `signing_lifetime`, for `scope`."""
        root_key = SigningKey.generate(entropy)
        root_certificate = issue_root_certificate(
            root_key, not_before, root_not_after or not_before + ROLE_MAX_LIFETIME[KeyRole.ROOT]
        )
        root = TrustedRoot.pinned(
            root_certificate, root_key.public_key.fingerprint(), pinned_at or not_before
        )
        signing_key = SigningKey.generate(entropy)
        signing_certificate = issue_certificate(
            root_key,
            root,
            subject=signing_key.public_key,
            role=KeyRole.SIGNING,
            not_before=not_before,
            not_after=not_before + signing_lifetime,
            scope=scope,
        )
        return cls(root_key, root_certificate, root, signing_key, signing_certificate)
