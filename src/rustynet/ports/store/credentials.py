"""Ports: join credentials and admin API keys (stored as hashes, never secrets)."""

from __future__ import annotations

from datetime import datetime
from typing import Protocol

from rustynet.domain.api_keys import ApiKeyRecord
from rustynet.domain.credentials import Credential, CredentialId, Redemption


class CredentialRepository(Protocol):
    """Join credentials, stored as `Credential.to_record()`; the secret hash never leaves
    except inside the returned `Credential` (for a constant-time compare by the use case)."""

    async def add(self, credential: Credential) -> None:
        """Insert a new credential; `AlreadyExists` on a taken id."""
        ...

    async def get(self, credential_id: CredentialId) -> Credential | None:
        """The credential, or None."""
        ...

    async def list_all(self) -> list[Credential]:
        """Every credential, ordered by creation time then id."""
        ...

    async def redeem(self, credential_id: CredentialId, now: datetime) -> Credential:
        """Spend one use at `now`: read, plan (`Credential.redemption`) and `apply_redemption`,
        whose conditional write decides; return the credential after the redemption. Raises
        `UnknownCredential` or the foundation's `CredentialRejected` subclass (used, exhausted,
        expired, revoked) and changes nothing. Losing a race on a reusable credential that
        still has uses re-reads and tries again, so N concurrent redemptions of a credential
        with k uses left yield exactly min(N, k) successes."""
        ...

    async def apply_redemption(self, redemption: Redemption) -> bool:
        """The compare-and-set under `redeem`: write `redemption.after` only if the stored
        credential still has the state and use count the redemption was computed from and is
        unexpired at its `now`; True if it was written, False (nothing written) when the
        credential changed since it was read or is gone. Every adapter decides this in the
        write itself (SQL: the UPDATE's WHERE clause and its row count), never from an earlier
        read, so a redemption computed from a stale read is refused however the units of work
        interleave."""
        ...

    async def revoke(self, credential_id: CredentialId, now: datetime) -> Credential:
        """Revoke a live credential (a conditional UPDATE); `NotFound`, or the lifecycle's
        `CredentialTransitionError` when it already ended."""
        ...

    async def expire_lapsed(self, now: datetime) -> int:
        """Record every live credential whose TTL has passed as expired; return how many."""
        ...


class ApiKeyRepository(Protocol):
    """Admin API keys (hashed)."""

    async def add(self, key: ApiKeyRecord) -> None:
        """Insert; `AlreadyExists` on a taken id."""
        ...

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """The key, or None (revoked and expired keys are returned too: the caller decides)."""
        ...

    async def list_all(self) -> list[ApiKeyRecord]:
        """Every key, ordered by creation time then id."""
        ...

    async def revoke(self, key_id: str, now: datetime) -> ApiKeyRecord:
        """Revoke at `now` (idempotent: keeps the first time); `NotFound`."""
        ...

    async def touch(self, key_id: str, now: datetime) -> None:
        """Record a use at `now` (last_used never moves backwards); `NotFound`."""
        ...
