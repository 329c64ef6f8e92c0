"""Firewall port: enforce a node's inbound `Ruleset` on its tunnel interface.

The one rule: an `apply` replaces the enforced rules atomically; it either takes effect whole
or fails with `FirewallError` and leaves the previous rules exactly in place (never a moment
with no filter, never a half-applied set). Only traffic arriving on the tunnel interface is
filtered; a firewall touches nothing it did not create.

Contract of every adapter:

* `apply(interface, ruleset)`: enforce `ruleset` on `interface` (drop new inbound flows it does
  not admit; established/related traffic passes). Re-applying an equal ruleset is a no-op in
  effect. A ruleset outside its canonical form (possible only by bypassing its constructors)
  or an invalid interface name raises `FirewallError` and changes nothing.
* `current()`: the ruleset enforced now, read back from where it is enforced (not a cache),
  or `None` when nothing is applied. Rules this firewall cannot account for (edited by hand)
  raise `FirewallError` rather than being reported as something they are not.
* `remove()`: stop filtering and delete everything this firewall created; idempotent (no
  error when nothing is applied). The daemon calls it on shutdown.

Adapters: `rustynet.adapters.firewall.nftables.NftablesFirewall` (own `inet` table, one
`nft -j -f -` transaction per apply) and `...memory.MemoryFirewall`.
"""

from __future__ import annotations

import re
from typing import Final, Protocol

from rustynet.domain.errors import RustynetError
from rustynet.domain.packet_filter import Ruleset

INTERFACE_PATTERN: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,14}")
"""Linux interface names: 1-15 characters (IFNAMSIZ - 1), no `/`, blanks or `:`."""


class FirewallError(RustynetError):
    """The firewall could not apply, read or remove its rules; the message is for operators."""


def validate_interface(name: str) -> str:
    """Return `name` if it is a valid interface name, else raise `FirewallError`."""
    if not isinstance(name, str) or not INTERFACE_PATTERN.fullmatch(name):
        raise FirewallError(f"invalid interface name {name!r}")
    return name


class Firewall(Protocol):
    """Inbound filter on the tunnel interface (see the module docstring for the contract)."""

    async def apply(self, interface: str, ruleset: Ruleset) -> None:
        """Atomically replace the enforced rules; on `FirewallError` the old rules stay."""
        ...

    async def current(self) -> Ruleset | None:
        """The enforced ruleset, or `None` when nothing is applied."""
        ...

    async def remove(self) -> None:
        """Delete everything this firewall created; idempotent."""
        ...
