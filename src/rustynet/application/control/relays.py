"""Relays as live configuration: replace the relay list of a running control plane
(`ControlService.replace_relays`).

The one rule: a new relay list reaches every node at once. Replacing it bumps the serial of
every active node and announces them to the other instances in the same unit of work as its
audit entry (`relays.replaced`), under the context's writer lock, so no peer map is built
between the commit and the switch with the old list under the new serial; the long polls are
woken after. An unchanged list changes nothing (no bump, no audit entry).

Where the list comes from is the composition root's business: `rustynet-control serve` reads
`[[relays]]` from control.toml at start and again on SIGHUP (docs/control-plane.md, "Relays").
Each instance holds its own list: with several instances on one database, reload every one.
"""

from __future__ import annotations

from collections.abc import Sequence

import attrs

from rustynet.application.control.context import ControlContext
from rustynet.domain.netmap import RelayEntry, check_relays
from rustynet.ports.store import NodeStatus


@attrs.frozen
class RelaysReplaced:
    """The outcome: whether the list changed and how many nodes were sent a new map."""

    changed: bool
    relays: tuple[RelayEntry, ...]
    woken: int


async def replace_relays(
    ctx: ControlContext, relays: Sequence[RelayEntry], *, actor: str
) -> RelaysReplaced:
    """Make `relays` (checked: valid, unique ids, order kept) the live list and wake every
    active node; `actor` names the source in the audit entry (e.g. `config:control.toml`)."""
    wanted = check_relays(relays)
    previous = ctx.settings
    if wanted == previous.relays:
        return RelaysReplaced(changed=False, relays=wanted, woken=0)
    woken: list[str] = []
    try:
        # The one writer: a unit of work serialized with every other writer (and with peer-map
        # assembly, which takes the same lock) on this instance and, through `lock_writers`,
        # across instances.
        async with ctx.write() as uow:
            woken = [n.id for n in await uow.nodes.list_all() if n.state is NodeStatus.ACTIVE]
            if woken:
                await uow.serials.bump(woken)
                await uow.announce(woken)
            await ctx.audit(  # the one audit chain
                uow,
                ctx.clock.now(),
                actor,
                "relays.replaced",
                "relays",
                {
                    "relays": [r.id for r in wanted],
                    "before": [r.id for r in previous.relays],
                    "woken": len(woken),
                },
            )
            ctx.settings = attrs.evolve(previous, relays=wanted)
    except BaseException:
        ctx.settings = previous  # the unit of work rolled back: so does the list
        raise
    ctx.waiters.wake(frozenset(woken))
    return RelaysReplaced(changed=True, relays=wanted, woken=len(woken))


__all__ = ["RelaysReplaced", "replace_relays"]
