# ruff: noqa: S608 - only module constants (column lists, dialect fragments, generated
# placeholder names) are interpolated into SQL; every value is a bound parameter.
"""Join credentials and admin API keys in SQL.

A redemption is the conditional UPDATE whose WHERE clause names the state and use count it was
computed from, so its row count decides a race; an API key's secret is stored only as a hash.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Final

from rustynet.adapters.storage.sql.dialect import (
    Executor,
    Row,
    fetch_one,
    fetch_rows,
    from_micros,
    opt_micros,
    opt_time,
    row_count,
    spoil,
    to_micros,
)

from rustynet.domain.api_keys import ApiKeyRecord, ApiKeyScope
from rustynet.domain.credentials import Credential, CredentialId, CredentialState, Redemption
from rustynet.ports.store import NotFound, StoreConflict, UnknownCredential

_MAX_REDEEM_ROUNDS: Final = 10_000  # each lost round means another redemption committed
_CREDENTIAL_TIMES: Final = ("created_at", "expires_at", "last_used_at", "ended_at")

_CREDENTIAL_COLUMNS: Final = (
    "id, secret_hash, scope, kind, created_at, expires_at, max_uses, uses, state,"
    " last_used_at, ended_at"
)


def _credential(row: Row) -> Credential:
    record: dict[str, object] = dict(zip(_CREDENTIAL_COLUMNS.split(", "), row, strict=True))
    record["scope"] = json.loads(str(record["scope"]))
    for name in _CREDENTIAL_TIMES:
        value = record[name]
        record[name] = None if value is None else from_micros(int(str(value))).isoformat()
    return Credential.from_record(record)


def _credential_params(credential: Credential) -> dict[str, object]:
    record = credential.to_record()
    params = dict(record)
    params["scope"] = json.dumps(record["scope"])
    for name in _CREDENTIAL_TIMES:
        value = record[name]
        params[name] = None if value is None else to_micros(datetime.fromisoformat(str(value)))
    return params


class SqlCredentials:
    """`CredentialRepository` in SQL; redemption is the conditional UPDATE of credentials.py."""

    def __init__(self, ex: Executor) -> None:
        self._ex = ex
        self._d = ex.dialect

    async def add(self, credential: Credential) -> None:
        """See `CredentialRepository.add`."""
        await self._ex.execute(
            self._d.sql(
                f"INSERT INTO credentials ({_CREDENTIAL_COLUMNS}) VALUES (:id, :secret_hash,"
                " :scope, :kind, :created_at, :expires_at, :max_uses, :uses, :state,"
                " :last_used_at, :ended_at)"
            ),
            _credential_params(credential),
        )

    async def get(self, credential_id: CredentialId) -> Credential | None:
        """See `CredentialRepository.get`."""
        row = await fetch_one(
            self._ex,
            self._d.sql(f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials WHERE id = :id"),
            {"id": credential_id.to_text()},
        )
        return None if row is None else _credential(row)

    async def list_all(self) -> list[Credential]:
        """See `CredentialRepository.list_all`."""
        rows = await fetch_rows(
            self._ex, f"SELECT {_CREDENTIAL_COLUMNS} FROM credentials ORDER BY created_at, id"
        )
        return [_credential(r) for r in rows]

    async def redeem(self, credential_id: CredentialId, now: datetime) -> Credential:
        """See `CredentialRepository.redeem`."""
        for _ in range(_MAX_REDEEM_ROUNDS):
            current = await self.get(credential_id)
            if current is None:
                raise UnknownCredential("credential is unknown")
            redemption = current.redemption(now)  # raises the specific rejection
            if await self.apply_redemption(redemption):
                return redemption.after
            # Another redemption (or a revocation) committed first: re-read and decide again.
        raise spoil(self._ex, StoreConflict("credential kept changing under redemption"))

    async def apply_redemption(self, redemption: Redemption) -> bool:
        """See `CredentialRepository.apply_redemption`: the conditional UPDATE's row count."""
        after = redemption.after
        won = await row_count(
            self._ex,
            self._d.sql(
                "UPDATE credentials SET state = :state, uses = :uses,"
                " last_used_at = :now, ended_at = :ended"
                " WHERE id = :id AND state = :expected_state"
                " AND uses = :expected_uses AND expires_at > :now"
            ),
            {
                "state": after.state.value,
                "uses": after.uses,
                "now": to_micros(redemption.now),
                "ended": opt_micros(after.ended_at),
                "id": redemption.credential_id.to_text(),
                "expected_state": redemption.expected_state.value,
                "expected_uses": redemption.expected_uses,
            },
        )
        return won == 1

    async def revoke(self, credential_id: CredentialId, now: datetime) -> Credential:
        """See `CredentialRepository.revoke`."""
        for _ in range(_MAX_REDEEM_ROUNDS):
            current = await self.get(credential_id)
            if current is None:
                raise NotFound("credential is unknown")
            after = current.revoke(now)  # raises CredentialTransitionError when it ended
            won = await row_count(
                self._ex,
                self._d.sql(
                    "UPDATE credentials SET state = :state, ended_at = :ended"
                    " WHERE id = :id AND state = :created AND uses = :uses"
                ),
                {
                    "state": after.state.value,
                    "ended": to_micros(now),
                    "id": credential_id.to_text(),
                    "created": CredentialState.CREATED.value,
                    "uses": current.uses,
                },
            )
            if won == 1:
                return after
        raise spoil(self._ex, StoreConflict("credential kept changing under revocation"))

    async def expire_lapsed(self, now: datetime) -> int:
        """See `CredentialRepository.expire_lapsed`."""
        return await row_count(
            self._ex,
            self._d.sql(
                "UPDATE credentials SET state = :expired, ended_at = :now"
                " WHERE state = :created AND expires_at <= :now"
            ),
            {
                "expired": CredentialState.EXPIRED.value,
                "created": CredentialState.CREATED.value,
                "now": to_micros(now),
            },
        )


_KEY_COLUMNS: Final = (
    "id, secret_hash, scope, description, created_at, expires_at, revoked_at, last_used_at"
)


def _api_key(row: Row) -> ApiKeyRecord:
    return ApiKeyRecord(
        id=row[0],
        secret_hash=bytes(row[1]),
        scope=ApiKeyScope(row[2]),
        description=row[3],
        created_at=from_micros(row[4]),
        expires_at=from_micros(row[5]),
        revoked_at=opt_time(row[6]),
        last_used_at=opt_time(row[7]),
    )


class SqlApiKeys:
    """`ApiKeyRepository` in SQL."""

    def __init__(self, ex: Executor) -> None:
        self._ex = ex
        self._d = ex.dialect

    async def add(self, key: ApiKeyRecord) -> None:
        """See `ApiKeyRepository.add`."""
        await self._ex.execute(
            self._d.sql(
                f"INSERT INTO api_keys ({_KEY_COLUMNS}) VALUES (:id, :h, :scope, :d, :c, :e,"
                " :r, :u)"
            ),
            {
                "id": key.id,
                "h": key.secret_hash,
                "scope": key.scope.value,
                "d": key.description,
                "c": to_micros(key.created_at),
                "e": to_micros(key.expires_at),
                "r": opt_micros(key.revoked_at),
                "u": opt_micros(key.last_used_at),
            },
        )

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """See `ApiKeyRepository.get`."""
        row = await fetch_one(
            self._ex,
            self._d.sql(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE id = :id"),
            {"id": key_id},
        )
        return None if row is None else _api_key(row)

    async def list_all(self) -> list[ApiKeyRecord]:
        """See `ApiKeyRepository.list_all`."""
        rows = await fetch_rows(
            self._ex, f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created_at, id"
        )
        return [_api_key(r) for r in rows]

    async def revoke(self, key_id: str, now: datetime) -> ApiKeyRecord:
        """See `ApiKeyRepository.revoke`."""
        row = await fetch_one(
            self._ex,
            self._d.sql(
                "UPDATE api_keys SET revoked_at = COALESCE(revoked_at, :now) WHERE id = :id"
                f" RETURNING {_KEY_COLUMNS}"
            ),
            {"now": to_micros(now), "id": key_id},
        )
        if row is None:
            raise NotFound(f"no API key {key_id!r}")
        return _api_key(row)

    async def touch(self, key_id: str, now: datetime) -> None:
        """See `ApiKeyRepository.touch`."""
        changed = await row_count(
            self._ex,
            self._d.sql(
                "UPDATE api_keys SET last_used_at = CASE WHEN last_used_at IS NULL"
                " OR last_used_at < :now THEN :now ELSE last_used_at END WHERE id = :id"
            ),
            {"now": to_micros(now), "id": key_id},
        )
        if not changed:
            raise NotFound(f"no API key {key_id!r}")
