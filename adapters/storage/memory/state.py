"""The memory store's state: what a unit of work copies, changes and swaps in on commit."""

from __future__ import annotations

import copy
import ipaddress
from datetime import datetime

import attrs

from rustynet.domain.api_keys import ApiKeyRecord
from rustynet.domain.audit import AuditEntry, Checkpoint
from rustynet.domain.challenges import ChallengeRecord
from rustynet.domain.credentials import Credential, CredentialId
from rustynet.domain.limits import BucketTable, FailureRecord
from rustynet.domain.nodes import NodeRecord
from rustynet.domain.policy_versions import PolicyVersion
from rustynet.ports.store import StoreError


@attrs.define
class MemoryState:
    """Every table as plain containers of frozen values (copying the containers suffices)."""

    nodes: dict[str, NodeRecord] = attrs.Factory(dict)
    leases: dict[ipaddress.IPv4Address, str] = attrs.Factory(dict)
    credentials: dict[CredentialId, Credential] = attrs.Factory(dict)
    api_keys: dict[str, ApiKeyRecord] = attrs.Factory(dict)
    policies: dict[int, PolicyVersion] = attrs.Factory(dict)
    current_policy: int | None = None
    entries: list[AuditEntry] = attrs.Factory(list)
    checkpoints: dict[int, Checkpoint] = attrs.Factory(dict)
    nonces: dict[bytes, datetime] = attrs.Factory(dict)
    buckets: dict[tuple[BucketTable, str], datetime] = attrs.Factory(dict)
    failures: dict[str, FailureRecord] = attrs.Factory(dict)
    serials: dict[str, int] = attrs.Factory(dict)
    generation: int = 0
    challenges: dict[bytes, ChallengeRecord] = attrs.Factory(dict)
    spoiled: bool = False  # a refused write happened: this copy must not be committed

    def copy(self) -> MemoryState:
        """A copy a unit of work may change without touching this state."""
        return MemoryState(
            **{f.name: copy.copy(getattr(self, f.name)) for f in attrs.fields(MemoryState)}
        )


def spoil(state: MemoryState, exc: StoreError) -> StoreError:
    """Mark the copy as not committable and return `exc` to raise."""
    state.spoiled = True
    return exc
