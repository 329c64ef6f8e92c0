"""In-memory firewall: keeps the `Firewall` contract without touching the host.

The one rule: it validates exactly what a real firewall would refuse (interface name, a ruleset
outside its canonical form) before changing anything, so code tested against it fails the same
way; its decisions are `Ruleset.admits`, the reference the nftables adapter is checked against.
"""

from __future__ import annotations

from rustynet.domain.packet_filter import Address, Ruleset, RulesetError
from rustynet.domain.policy import Proto
from rustynet.ports.firewall import FirewallError, validate_interface


class MemoryFirewall:
    """The applied ruleset and interface in two attributes; `applies` counts real changes."""

    def __init__(self) -> None:
        self._interface: str | None = None
        self._ruleset: Ruleset | None = None
        self.applies = 0

    async def apply(self, interface: str, ruleset: Ruleset) -> None:
        """Validate, then replace in one assignment."""
        validate_interface(interface)
        if not isinstance(ruleset, Ruleset):
            raise FirewallError("apply takes a Ruleset")
        try:
            ruleset.check()
        except RulesetError as exc:
            raise FirewallError(f"refusing a malformed ruleset: {exc}") from exc
        if (self._interface, self._ruleset) != (interface, ruleset):
            self.applies += 1
        self._interface, self._ruleset = interface, ruleset

    async def current(self) -> Ruleset | None:
        """The applied ruleset or `None`."""
        return self._ruleset

    async def remove(self) -> None:
        """Forget the rules; idempotent."""
        self._interface, self._ruleset = None, None

    @property
    def interface(self) -> str | None:
        """The filtered interface, or `None` when nothing is applied."""
        return self._interface

    def admits(
        self,
        interface: str,
        source: Address,
        proto: Proto,
        port: int | None = None,
        *,
        established: bool = False,
    ) -> bool:
        """Would a packet arriving on `interface` pass? (Other interfaces are never filtered.)"""
        if self._ruleset is None or interface != self._interface:
            return True
        return self._ruleset.admits(source, proto, port, established=established)
