"""Join credentials and admin API keys in memory (a redemption is a compare-and-set)."""

from __future__ import annotations

from datetime import datetime

import attrs
from rustynet.adapters.storage.memory.state import MemoryState, spoil

from rustynet.domain.api_keys import ApiKeyRecord
from rustynet.domain.credentials import Credential, CredentialId, CredentialState, Redemption
from rustynet.ports.store import AlreadyExists, NotFound, StoreConflict, UnknownCredential


class MemoryCredentials:
    def __init__(self, s: MemoryState) -> None:
        self._s = s

    async def add(self, credential: Credential) -> None:
        if credential.id in self._s.credentials:
            raise spoil(self._s, AlreadyExists("a credential with this id exists"))
        self._s.credentials[credential.id] = credential

    async def get(self, credential_id: CredentialId) -> Credential | None:
        return self._s.credentials.get(credential_id)

    async def list_all(self) -> list[Credential]:
        return sorted(self._s.credentials.values(), key=lambda c: (c.created_at, c.id.to_text()))

    async def redeem(self, credential_id: CredentialId, now: datetime) -> Credential:
        current = self._s.credentials.get(credential_id)
        if current is None:
            raise UnknownCredential("credential is unknown")
        redemption = current.redemption(now)
        if not await self.apply_redemption(redemption):  # pragma: no cover - serialized UoWs
            raise spoil(self._s, StoreConflict("credential changed under redemption"))
        return redemption.after

    async def apply_redemption(self, redemption: Redemption) -> bool:
        stored = self._s.credentials.get(redemption.credential_id)
        if stored is None or not redemption.precondition_holds(stored):
            return False  # computed from a read that no longer holds: write nothing
        self._s.credentials[redemption.credential_id] = redemption.after
        return True

    async def revoke(self, credential_id: CredentialId, now: datetime) -> Credential:
        current = self._s.credentials.get(credential_id)
        if current is None:
            raise NotFound("credential is unknown")
        after = current.revoke(now)
        self._s.credentials[credential_id] = after
        return after

    async def expire_lapsed(self, now: datetime) -> int:
        lapsed = [
            c
            for c in self._s.credentials.values()
            if c.state is CredentialState.CREATED and c.expires_at <= now
        ]
        for c in lapsed:
            self._s.credentials[c.id] = c.expire(now)
        return len(lapsed)


class MemoryApiKeys:
    def __init__(self, s: MemoryState) -> None:
        self._s = s

    async def add(self, key: ApiKeyRecord) -> None:
        if key.id in self._s.api_keys:
            raise spoil(self._s, AlreadyExists("an API key with this id exists"))
        self._s.api_keys[key.id] = key

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        return self._s.api_keys.get(key_id)

    async def list_all(self) -> list[ApiKeyRecord]:
        return sorted(self._s.api_keys.values(), key=lambda k: (k.created_at, k.id))

    def _require(self, key_id: str) -> ApiKeyRecord:
        key = self._s.api_keys.get(key_id)
        if key is None:
            raise NotFound(f"no API key {key_id!r}")
        return key

    async def revoke(self, key_id: str, now: datetime) -> ApiKeyRecord:
        key = self._require(key_id)
        if key.revoked_at is None:
            key = attrs.evolve(key, revoked_at=now)
            self._s.api_keys[key_id] = key
        return key

    async def touch(self, key_id: str, now: datetime) -> None:
        key = self._require(key_id)
        if key.last_used_at is None or key.last_used_at < now:
            self._s.api_keys[key_id] = attrs.evolve(key, last_used_at=now)
