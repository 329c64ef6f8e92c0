"""The pre-punch port: a few datagrams from the tunnel's own UDP port toward a peer's candidates,
and the binds of UDP relay sessions.

The one rule: a pre-punch carries nothing (a fixed marker the tunnel discards) and goes only to
the endpoints the caller names, `count` datagrams each; the caller (`domain.path.trial`) names
only candidates of the signed peer map and bounds `count`. Its only effect is on NATs and
stateful firewalls on the way: the mapping for the tunnel's port is opened toward the peer, so
the peer's handshake gets in. A relay bind (`send`) goes to a relay address the relay itself
granted over the authenticated session. Implemented by `rustynet.adapters.tunnel.prepunch`.
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

    async def send(self, target: UnderlayEndpoint, payload: bytes) -> bool:
        """Send one datagram carrying `payload` to `target` from the tunnel's port: a relay
        bind (`domain.udp_relay.bind_packet`), which must come through the same NAT mapping as
        the tunnel's traffic to that relay port. True if it was sent (never raises)."""
        ...


class NoPrePunch:
    """Sends nothing (no fixed tunnel port, or a backend without one)."""

    async def punch(self, targets: tuple[UnderlayEndpoint, ...], count: int) -> int:
        """Nothing sent."""
        del targets, count
        return 0

    async def send(self, target: UnderlayEndpoint, payload: bytes) -> bool:
        """Nothing sent."""
        del target, payload
        return False


__all__ = ["NoPrePunch", "PrePunchPort"]
