"""TunnelBackend port: the node's encrypted tunnel interface, driven by diffs.

The one rule: a backend changes the tunnel only as asked, and refuses before changing anything
when it cannot do what is asked (a missing capability, an unusable backend). Every adapter
(in-memory, userspace, kernel) passes one conformance suite:
`tests/contract/test_tunnel_backend.py`.

Adapters live in `rustynet.adapters.tunnel`: in-memory, a userspace daemon driven over its
control socket, and a kernel module driven over netlink. Bootstrap picks one (`auto`: the
first whose `check_available()` passes, kernel before userspace).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Protocol

from rustynet.domain.errors import RustynetError
from rustynet.domain.keys import TunnelKey
from rustynet.domain.tunnel import (
    Capability,
    InterfaceConfig,
    IPInterface,
    IPNetwork,
    PeerConfig,
    PeerDiff,
    PeerStats,
)


class TunnelError(RustynetError):
    """The backend failed to do what was asked; the message is meant for the operator."""


class UnsupportedCapability(TunnelError):  # noqa: N818 - names the refusal, like KeyNotFound
    """A capability the backend lacks was asked for; nothing was changed."""

    def __init__(self, backend: str, missing: frozenset[Capability]) -> None:
        names = ", ".join(sorted(c.value for c in missing))
        super().__init__(f"tunnel backend {backend!r} does not support: {names}")
        self.backend = backend
        self.missing = missing


class BackendUnavailable(TunnelError):  # noqa: N818 - names a state like KeystoreUnavailable
    """The backend cannot run on this machine (missing module, program or privilege)."""


def check_capabilities(
    backend: str, have: frozenset[Capability], wanted: Iterable[Capability]
) -> None:
    """Raise `UnsupportedCapability` naming every capability in `wanted` not in `have`."""
    missing = frozenset(wanted) - have
    if missing:
        raise UnsupportedCapability(backend, missing)


class TunnelBackend(Protocol):
    """One tunnel interface. Constructors do no I/O; `start` creates, `stop` removes.

    Methods other than `name`, `capabilities`, `require`, `check_available`, `start` and
    `stop` raise `TunnelError` when the interface is not started.
    """

    @property
    def name(self) -> str:
        """Short backend name for `status` (e.g. "memory", "userspace")."""
        ...

    def capabilities(self) -> frozenset[Capability]:
        """What this backend can do (constant for the backend's lifetime)."""
        ...

    def require(self, *capabilities: Capability) -> None:
        """Raise `UnsupportedCapability` if any is missing; never changes anything."""
        ...

    async def check_available(self) -> None:
        """Raise `BackendUnavailable` (with the reason) if this backend cannot run here."""
        ...

    async def start(self, config: InterfaceConfig) -> None:
        """Create the interface with key, underlay port, addresses and routes; link up.

        Idempotent: starting an already started interface with the same name re-applies key,
        port, addresses and routes and keeps its peers. A different name raises `TunnelError`.
        Needs the capabilities `config`'s addresses and routes need (IPv6, exit routing).
        """
        ...

    async def apply(self, diff: PeerDiff) -> None:
        """Add, update (replace prefixes, endpoint, keepalive) and remove the diff's peers.

        Touches only the peers named in `diff`; an empty diff issues no change at all. A diff
        needing a missing capability raises `UnsupportedCapability` before any change. Updating
        or removing an absent peer is not an error (the desired state holds afterwards).
        """
        ...

    async def peers(self) -> Mapping[TunnelKey, PeerConfig]:
        """Peers as the interface holds them now (read back, not remembered).

        A peer configured without an underlay endpoint reports the one it learned, if any;
        `PeerConfig.satisfied_by` treats that as unchanged.
        """
        ...

    async def set_addresses(self, addresses: Iterable[IPInterface]) -> None:
        """Replace the interface's addresses with exactly `addresses`."""
        ...

    async def set_routes(self, routes: Iterable[IPNetwork]) -> None:
        """Replace the routes this backend installed through the interface with `routes`.

        Routes other owners installed (kernel prefix routes of the addresses) stay.
        """
        ...

    async def stats(self) -> Mapping[TunnelKey, PeerStats]:
        """Measured per-peer counters: last handshake, rx/tx bytes, current underlay endpoint."""
        ...

    async def stop(self) -> None:
        """Remove the interface, its routes and any control socket or helper process.

        Idempotent: stopping a stopped (or never started) backend does nothing.
        """
        ...
