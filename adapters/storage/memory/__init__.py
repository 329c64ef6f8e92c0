"""In-memory store: the `Store` contract in plain dicts, for tests and one-shot tools.

The one rule: it keeps the same contract as the SQL stores (same errors, same atomic calls,
nothing visible before commit), so code tested against it behaves the same on a database.

A unit of work holds the store's asyncio lock from enter to exit and works on a copy of the
state (every stored value is frozen, so copying the containers suffices); commit swaps the copy
in, rollback drops it. Units of work are therefore serialized, which trivially makes every
repository call atomic.

Modules: `state` (the state a unit of work copies), one per repository group (`nodes`,
`credentials`, `guards`, `policy_audit`, `serials`), and `store` (`MemoryStore` and its unit
of work), which this face exports.
"""

from __future__ import annotations

from rustynet.adapters.storage.memory.store import MemoryStore, MemoryUnitOfWork

__all__ = ["MemoryStore", "MemoryUnitOfWork"]
