"""The control plane's one audit writer: appends entries and signs checkpoints in a unit of work.

The one rule: every entry goes through `append` inside a unit of work that holds the writer
lock (`uow.lock_writers()`), so the chain held here and the stored chain move together; if
they differ (another instance wrote, or a unit of work rolled back) the chain is resumed from
the store before the next entry.

Every appended entry is also an operator log event (`rustynet.control.events`); the audit
chain has already refused secret-bearing details by then.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

import structlog

from rustynet.application.control_keys import ControlKeys
from rustynet.domain.audit import AuditChain, AuditEntry
from rustynet.domain.keys import constant_time_equal
from rustynet.domain.signed import JsonValue
from rustynet.ports.store import UnitOfWork

_security_log = structlog.get_logger("rustynet.control.events")


class AuditWriter:
    """Holds the in-memory head of the audit chain for one process."""

    def __init__(self, keys: ControlKeys) -> None:
        self.keys = keys
        self._chain: AuditChain | None = None

    async def _resumed(self, uow: UnitOfWork, last: AuditEntry | None) -> AuditChain:
        chain = self._chain
        in_step = chain is not None and (
            (last is None and chain.next_index == 0)
            or (
                last is not None
                and chain.next_index == last.index + 1
                and constant_time_equal(chain.head_hash, last.entry_hash)
            )
        )
        if chain is None or not in_step:
            chain = AuditChain.resume(last, await uow.audit.last_checkpoint())
        self._chain = chain
        return chain

    async def append(  # noqa: PLR0917 - the audit fields, in entry order
        self,
        uow: UnitOfWork,
        now: datetime,
        actor: str,
        action: str,
        target: str,
        details: Mapping[str, JsonValue] | None = None,
    ) -> None:
        """Append one entry (and a checkpoint when due) in `uow`."""
        chain = await self._resumed(uow, await uow.audit.last_entry())
        appended = chain.append(
            now=now,
            actor=actor,
            action=action,
            target=target,
            details=details,
            signer=self.keys.audit_key,
        )
        await uow.audit.append(appended.entry)
        if appended.checkpoint is not None:
            await uow.audit.add_checkpoint(appended.checkpoint)
        _security_log.info(
            action,
            actor=actor,
            target=target,
            details=dict(details or {}),
        )

    async def checkpoint_if_due(self, uow: UnitOfWork, now: datetime) -> None:
        """Sign the time-based checkpoint when the oldest unsigned entry is old enough."""
        last = await uow.audit.last_entry()
        chain = await self._resumed(uow, last)
        if last is not None and chain.checkpoint_due(now):
            await uow.audit.add_checkpoint(chain.checkpoint(self.keys.audit_key, now))
