"""The pre-punch port: a few datagrams from the tunnel's own UDP port toward a peer's candidates.

The one rule: a pre-punch carries nothing (a fixed marker the tunnel discards) and goes only to
the endpoints the caller names, `count` datagrams each; the caller (`domain.path.trial`) names
only candidates of the signed peer map and bounds `count`. Its only effect is on NATs and
stateful firewalls on the way: the mapping for the tunnel's port is opened toward the peer, so
the peer's handshake gets in. Implemented by `rustynet.adapters.tunnel.prepunch`.
"""

from __future__ import annotations

from typing import Protocol

from rustynet.domain.tunnel import UnderlayEndpoint


class PrePunchPort(Protocol):
    """Sends pre-punch datagrams as if from the tunnel's port."""

    async def punch(self, targets: tuple[UnderlayEndpoint, ...], count: int) -> int:
        """Send `count` datagrams to each of `targets`; the number actually sent (a failure
        to send is counted, never raised: a pre-punch is an optimisation)."""
        ...


class NoPrePunch:
    """Sends nothing (no fixed tunnel port, or a backend without one)."""

    async def punch(self, targets: tuple[UnderlayEndpoint, ...], count: int) -> int:
        """Nothing sent."""
        del targets, count
        return 0


__all__ = ["NoPrePunch", "PrePunchPort"]
