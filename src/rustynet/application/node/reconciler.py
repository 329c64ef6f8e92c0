"""Reconcile: make the tunnel and the firewall hold what the applied peer map says.

The one rule: plans never interleave, and never run half on an old tunnel key: every plan
and the key cut-over take `lock`. A plan is `reconcile.desired_state` (who initiates each
pair: docs/lab.md pitfall 1) against the backends' actual state → `reconcile.plan` → firewall
first, then addresses, peers (one `PeerDiff`), routes. An expired map (or none) plans the
empty state: every peer removed (fail closed).
"""

from __future__ import annotations

import asyncio
from datetime import datetime

import attrs

from rustynet.application.node.credentials import Credentials
from rustynet.application.node.map_intake import MapIntake
from rustynet.application.node.paths import PathKeeper, Plan
from rustynet.application.node.settings import AgentSettings
from rustynet.domain import reconcile
from rustynet.domain.keys import TunnelKey, TunnelPrivateKey
from rustynet.domain.reconcile import Action
from rustynet.domain.tunnel import IPInterface, IPNetwork
from rustynet.ports.clock import Clock
from rustynet.ports.firewall import Firewall
from rustynet.ports.tunnel import TunnelBackend


@attrs.define
class TunnelState:
    """What this node set on the interface, and since when each peer key is listed."""

    started: bool = False
    addresses: tuple[IPInterface, ...] = ()
    routes: tuple[IPNetwork, ...] = ()
    listed_since: dict[TunnelKey, datetime] = attrs.Factory(dict)


class Reconciler:
    """Owns `TunnelState` and the tunnel and firewall backends' configuration."""

    def __init__(
        self,
        *,
        tunnel: TunnelBackend,
        firewall: Firewall,
        clock: Clock,
        settings: AgentSettings,
        credentials: Credentials,
        intake: MapIntake,
        path_keeper: PathKeeper,
    ) -> None:
        self.tunnel, self.firewall, self.clock, self.settings = tunnel, firewall, clock, settings
        self.credentials, self.intake, self.path_keeper = credentials, intake, path_keeper
        self.lock = asyncio.Lock()  # the ticker and the poll loop never interleave plans
        self.state = TunnelState()

    @property
    def started(self) -> bool:
        """True while the interface is up (between `start_interface` and `teardown`)."""
        return self.state.started

    def desired(
        self,
        now: datetime,
        heard: dict[TunnelKey, datetime | None],
        paths: Plan | None = None,
    ) -> reconcile.DesiredState:
        """The state the applied map asks for (empty when there is none or it expired)."""
        node = self.credentials.saved.current
        own = node.overlay_addresses if node is not None else ()
        peer_map, tunnel_key = self.intake.applied, self.credentials.tunnel_key
        if peer_map is None or now >= peer_map.expires_at or tunnel_key is None:
            return reconcile.empty_desired(own)
        keys = {p.tunnel_key for p in peer_map.peers}
        since = self.state.listed_since
        self.state.listed_since = since = {k: since.get(k, now) for k in keys}
        for k in paths.switched if paths is not None else ():
            # Both ends of a pair switch path (to or from the relay) at nearly the same instant
            # and start fresh sessions: a responder already overdue (it never heard from the
            # initiator, e.g. through a relay that broke every packet) would initiate in step
            # with the initiator, and the crossing handshakes collide. Its grace starts again.
            if k in since:
                since[k] = now
        heard_from = [k for k, when in heard.items() if when is not None]
        overdue = reconcile.overdue_responders(
            since, heard_from, now, self.settings.responder_grace
        )
        return reconcile.desired_state(
            peer_map,
            tunnel_key.public_key,
            heard_from=heard_from,
            overdue=overdue,
            keepalive_seconds=self.settings.keepalive_seconds,
            endpoints=paths.endpoints if paths else {},
            learned=paths.learned if paths else (),
            quiet=paths.quiet if paths else (),
        )

    async def start_interface(self, key: TunnelPrivateKey) -> None:
        """Bring the interface up with `key` and what is desired now (at start: no peer)."""
        desired = self.desired(self.clock.now(), {})
        await self._set_interface(key, desired)
        self.state.addresses, self.state.routes = desired.addresses, desired.routes
        self.state.started = True

    async def set_key(self, key: TunnelPrivateKey) -> None:
        """Rotation's cut-over: `key` on the interface, peers kept (caller holds `lock`)."""
        await self._set_interface(key, self.desired(self.clock.now(), {}))

    async def _set_interface(self, key: TunnelPrivateKey, desired: reconcile.DesiredState) -> None:
        s = self.settings
        await self.tunnel.start(
            reconcile.interface_config(s.interface, key, desired, s.underlay_port)
        )

    async def reconcile(self) -> tuple[Action, ...]:
        """Plan against the backends' actual state and run the actions; returns them."""
        async with self.lock:
            return await self._reconcile()

    async def _reconcile(self) -> tuple[Action, ...]:
        if not self.state.started:
            return ()
        now = self.clock.now()
        self.intake.apply_fallback(now)
        stats = await self.tunnel.stats()
        plan = await self.path_keeper.endpoints(now, stats)
        await self.path_keeper.restart_sessions(stats)
        desired = self.desired(now, {k: s.last_handshake for k, s in stats.items()}, plan)
        actual = reconcile.ActualState(
            addresses=self.state.addresses,
            peers=await self.tunnel.peers(),
            routes=self.state.routes,
            ruleset=await self.firewall.current(),
        )
        actions = reconcile.plan(desired, actual)
        diff = reconcile.peer_diff(actions)
        for action in actions:  # the plan's order: rules, addresses, peers, routes
            if isinstance(action, reconcile.SetRuleset):
                await self.firewall.apply(self.settings.interface, action.ruleset)
            elif isinstance(action, reconcile.SetAddresses):
                await self.tunnel.set_addresses(action.addresses)
                self.state.addresses = action.addresses
            elif isinstance(action, reconcile.SetRoutes):
                await self.tunnel.set_routes(action.routes)
                self.state.routes = action.routes
            elif not diff.empty:
                await self.tunnel.apply(diff)  # every peer action at once, as one diff
                diff = reconcile.peer_diff(())
        return actions

    async def teardown(self) -> None:
        """Remove the interface, its routes and the firewall table (idempotent)."""
        self.intake.clear()
        await self.tunnel.stop()
        await self.firewall.remove()
        self.state.addresses, self.state.routes = (), ()
        self.state.started = False


__all__ = ["Reconciler", "TunnelState"]
