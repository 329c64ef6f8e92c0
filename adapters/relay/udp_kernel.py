"""Kernel forwarding of UDP relay sessions: one nftables table, per-session set and map elements
with a timeout, and conntrack clean-up (docs/relay-protocol.md, "Forwarding in the kernel").

    table ip rustynet-relay-udp
      raw prerouting (priority raw, before conntrack), for R:<relay port range>:
        bind packets (payload starts with the bind magic)  notrack, accept -> the relay's socket
        source . sport . dport in @bound                   accept -> conntrack, DNAT below
        anything else                                      counted, dropped
      raw output: the relay's own packets from the range   notrack
      nat prerouting:  A:pA -> R:portA  dnat to @to_peer   (B:pB)
      nat postrouting: A:pA -> B:pB     snat to @as_relay  (R:portB)
      filter forward:  A:pA -> B:pB in @flows               (per-element packet/byte counters)

The one rule: nothing reaches conntrack for a relay port unless its source is bound (so no
early packet leaves an entry that points at the relay itself, which WireGuard's retries would
keep alive forever), every element carries a timeout equal to the allocation's expiry (a
killed relay stops forwarding by itself: the @bound element lapses and the raw chain drops
even an established flow), and a teardown or re-bind deletes the elements AND the conntrack
entries of both relay ports (removing rules alone does not stop an established flow). Bind
packets are untracked both ways, so the bind socket never creates an entry either. NAT-chain
counters see only a flow's first packet: the counters live in the forward chain's set.

Changes come in batches (`apply`): one `nft -f -` transaction per batch, whose element
changes are grouped per set (a refresh re-adds an allocation's elements with the new timeout,
since nft 1.0.6 on older kernels cannot update an element's timeout in place; every deletion
is preceded by an add of the same element, a no-op when it is there, so an element that
already timed out cannot fail the transaction). Conntrack work follows only for ports whose
sources changed or went away: one listing, then one deletion per port that has an entry. A
failed transaction is retried one allocation at a time, so a bad change holds back nothing.

Needs CAP_NET_ADMIN in the relay's network namespace and net.ipv4.ip_forward=1.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Final

import attrs
import structlog
from rustynet.adapters.support.system_tools import ToolError, nft_json, run_tool

from rustynet.domain.udp_relay import BIND_MAGIC, Allocation, ForwardingBatch, UdpRelayLimits

TABLE: Final = "rustynet-relay-udp"
_FLOW: Final = "ipv4_addr . inet_service . ipv4_addr . inet_service"
_TUPLE: Final = "ip saddr . udp sport . ip daddr . udp dport"
_SETS: Final = ("bound", "to_peer", "as_relay", "flows")
_ORIGINAL_DPORT: Final = re.compile(r"\bdport=(\d+)\b")
_log = structlog.get_logger(__name__)


class ForwardingUnavailableError(Exception):
    """The kernel path cannot be used here (no permission, nft missing, forwarding off)."""


@attrs.frozen
class SessionCounters:
    """Packets and bytes the kernel forwarded for one session, per direction."""

    packets: int
    bytes: int


def ruleset(address: str, limits: UdpRelayLimits) -> str:
    """The table, recreated from scratch (empty sets) in one transaction."""
    ports = f"{limits.port_first}-{limits.port_last}"
    magic = int.from_bytes(BIND_MAGIC, "big")
    ours = f"ip daddr {address} udp dport {ports}"
    return f"""table ip {TABLE} {{}}
delete table ip {TABLE}
table ip {TABLE} {{
  set bound {{ type ipv4_addr . inet_service . inet_service; flags timeout; }}
  map to_peer {{ type ipv4_addr . inet_service . inet_service : ipv4_addr . inet_service;
    flags timeout; }}
  map as_relay {{ type {_FLOW} : ipv4_addr . inet_service; flags timeout; }}
  set flows {{ type {_FLOW}; flags timeout; counter; }}
  chain learn {{ type filter hook prerouting priority raw; policy accept;
    {ours} @th,64,32 {magic:#x} notrack accept
    {ours} ip saddr . udp sport . udp dport @bound accept
    {ours} counter name unbound drop
  }}
  counter unbound {{ }}
  chain learn_out {{ type filter hook output priority raw; policy accept;
    ip saddr {address} udp sport {ports} notrack
  }}
  chain to_peer {{ type nat hook prerouting priority dstnat; policy accept;
    {ours} dnat ip to ip saddr . udp sport . udp dport map @to_peer
  }}
  chain as_relay {{ type nat hook postrouting priority srcnat; policy accept;
    ct original ip daddr {address} snat ip to {_TUPLE} map @as_relay
  }}
  chain count {{ type filter hook forward priority filter; policy accept;
    meta l4proto udp {_TUPLE} @flows accept
  }}
}}
"""


Elements = dict[str, list[str]]


def _elements(address: str, allocation: Allocation) -> Elements:
    """Each set's and map's elements for an active allocation (without timeout)."""
    a, b = allocation.first, allocation.second
    if a.source is None or b.source is None:
        raise ValueError("the allocation is not bound on both sides")
    (ha, pa), (hb, pb) = a.source, b.source
    return {
        "bound": [f"{ha} . {pa} . {a.port}", f"{hb} . {pb} . {b.port}"],
        "to_peer": [
            f"{ha} . {pa} . {a.port} : {hb} . {pb}",
            f"{hb} . {pb} . {b.port} : {ha} . {pa}",
        ],
        "as_relay": [
            f"{ha} . {pa} . {hb} . {pb} : {address} . {b.port}",
            f"{hb} . {pb} . {ha} . {pa} : {address} . {a.port}",
        ],
        "flows": [f"{ha} . {pa} . {hb} . {pb}", f"{hb} . {pb} . {ha} . {pa}"],
    }


def _with_timeout(element: str, seconds: int) -> str:
    key, sep, value = element.partition(" : ")
    return f"{key} timeout {seconds}s{sep}{value}"


def _key(element: str) -> str:
    return element.partition(" : ")[0]


@attrs.frozen
class _Change:
    """One allocation's part of a batch: elements to delete, elements to add (with a timeout of
    `seconds`), and the relay ports whose conntrack entries must go afterwards."""

    allocation_id: bytes
    gone: Elements | None
    fresh: Elements | None
    seconds: int = 0
    ports: tuple[int, ...] = ()


def _script(changes: Sequence[_Change]) -> str:
    """One nft transaction for `changes`: per set, re-add what goes (a no-op unless it timed
    out), delete it, then add the fresh elements with their timeouts."""
    gone = [c.gone for c in changes if c.gone is not None]
    fresh = [(c.fresh, c.seconds) for c in changes if c.fresh is not None]
    phases = [
        *(("add", name, [e for g in gone for e in g[name]]) for name in _SETS),
        *(("delete", name, [_key(e) for g in gone for e in g[name]]) for name in _SETS),
        *(
            ("add", name, [_with_timeout(e, seconds) for f, seconds in fresh for e in f[name]])
            for name in _SETS
        ),
    ]
    return "\n".join(
        f"{verb} element ip {TABLE} {name} {{ {', '.join(elements)} }}"
        for verb, name, elements in phases
        if elements
    )


class KernelForwarding:
    """Applies batches of per-session element changes; one instance per relay address."""

    def __init__(self, address: str, limits: UdpRelayLimits) -> None:
        self.address = address
        self.limits = limits
        self._installed: dict[bytes, Elements] = {}

    async def start(self) -> None:
        """Install the table (replacing a previous run's), or `ForwardingUnavailableError`."""
        try:
            flag = Path("/proc/sys/net/ipv4/ip_forward").read_text(encoding="ascii")
            forwarding = flag.strip() == "1"
        except OSError as exc:
            raise ForwardingUnavailableError(f"cannot read ip_forward: {exc}") from exc
        if not forwarding:
            raise ForwardingUnavailableError("net.ipv4.ip_forward is 0")
        try:
            await run_tool(["nft", "-f", "-"], ruleset(self.address, self.limits).encode())
        except ToolError as exc:
            raise ForwardingUnavailableError(f"cannot install the relay table: {exc}") from exc

    async def apply(self, batch: ForwardingBatch, now: datetime) -> None:
        """Removals stop forwarding now (elements and conntrack entries go); installs and
        refreshes forward between the two bound sources until the allocation's expiry,
        replacing what was installed for it; stale flows are dropped where a source changed."""
        changes = [self._removal(a) for a in batch.removals]
        changes += [self._install(a, now) for a in (*batch.installs, *batch.refreshes)]
        if not changes:
            return
        try:
            await run_tool(["nft", "-f", "-"], _script(changes).encode())
            failed: set[bytes] = set()
        except ToolError as exc:
            _log.warning("relay.udp_batch_failed", changes=len(changes), error=str(exc)[:200])
            failed = {c.allocation_id for c in changes if not await self._alone(c)}
        for change in changes:
            if change.fresh is not None and change.allocation_id not in failed:
                self._installed[change.allocation_id] = change.fresh
        # A removal's ports lose their flows even when its elements could not be deleted.
        await self._forget_flows(
            port
            for change in changes
            if change.fresh is None or change.allocation_id not in failed
            for port in change.ports
        )

    def _removal(self, allocation: Allocation) -> _Change:
        gone = self._installed.pop(allocation.allocation_id, None)
        ports = tuple(side.port for side in allocation.sides) if gone is not None else ()
        return _Change(allocation.allocation_id, gone, None, ports=ports)

    def _install(self, allocation: Allocation, now: datetime) -> _Change:
        seconds = max(1, math.ceil((allocation.expires_at - now).total_seconds()))
        fresh = _elements(self.address, allocation)
        previous = self._installed.get(allocation.allocation_id)
        ports: tuple[int, ...] = ()
        if previous is None or previous["bound"] != fresh["bound"]:
            # New sources (or a restarted relay reusing the ports): no older entry may keep
            # steering these ports' flows where they no longer belong.
            ports = tuple(side.port for side in allocation.sides)
        return _Change(allocation.allocation_id, previous, fresh, seconds, ports)

    async def _alone(self, change: _Change) -> bool:
        try:
            await run_tool(["nft", "-f", "-"], _script([change]).encode())
        except ToolError as exc:
            removal = change.fresh is None
            _log.warning("relay.udp_change_failed", removal=removal, error=str(exc)[:200])
            return False
        return True

    async def _forget_flows(self, ports: Iterable[int]) -> None:
        """Delete the conntrack entries whose original destination is one of `ports` here."""
        wanted = set(ports)
        if not wanted:
            return
        argv = ["conntrack", "-D", "-p", "udp", "--orig-dst", self.address]
        try:
            listed = await run_tool(["conntrack", "-L", "-p", "udp", "--orig-dst", self.address])
            wanted &= _original_ports(listed.decode(errors="replace"))
        except ToolError as exc:  # cannot tell which ports have entries: try every one
            _log.warning("relay.udp_conntrack_unlisted", error=str(exc)[:200])
        for port in sorted(wanted):
            try:
                await run_tool([*argv, "--orig-port-dst", str(port)])
            except ToolError as exc:
                if exc.returncode != 1:  # 1: no entry matched
                    _log.warning("relay.udp_conntrack_left", port=port, error=str(exc)[:200])

    async def counters(self, allocation: Allocation) -> tuple[SessionCounters, SessionCounters]:
        """Forwarded packets/bytes first→second and second→first (zeros when not installed)."""
        installed = self._installed.get(allocation.allocation_id)
        zero = SessionCounters(0, 0)
        if installed is None:
            return zero, zero
        listed = await nft_json(["-j", "list", "set", "ip", TABLE, "flows"], None)
        found = {key: SessionCounters(*counts) for key, counts in _counted(listed)}
        there, back = installed["flows"]
        return found.get(there, zero), found.get(back, zero)

    async def stop(self, allocations: Iterable[Allocation]) -> None:
        """Remove the table (a clean shutdown); the flows of `allocations` are forgotten."""
        try:
            await run_tool(["nft", "delete", "table", "ip", TABLE])
        except ToolError as exc:
            _log.info("relay.udp_table_gone", error=str(exc)[:200])
        self._installed.clear()
        await self._forget_flows(side.port for a in allocations for side in a.sides)


def _original_ports(listed: str) -> set[int]:
    """The original destination port of every entry `conntrack -L` printed (the first
    `dport=` of a line; the second is the reply direction's)."""
    found = (_ORIGINAL_DPORT.search(line) for line in listed.splitlines())
    return {int(match.group(1)) for match in found if match}


def _counted(listed: object) -> Iterator[tuple[str, tuple[int, int]]]:
    """(element key as the rules spell it, (packets, bytes)) from `nft -j list set` output;
    nothing when the shape is unexpected."""
    items = listed.get("nftables", []) if isinstance(listed, dict) else []
    for item in items:
        elements = item.get("set", {}).get("elem", []) if isinstance(item, dict) else []
        for element in elements:
            value = element.get("elem", {}) if isinstance(element, dict) else {}
            concat, counter = value.get("val", {}).get("concat", []), value.get("counter", {})
            key = " . ".join(str(part) for part in concat)
            yield key, (int(counter.get("packets", 0)), int(counter.get("bytes", 0)))


__all__ = ["TABLE", "ForwardingUnavailableError", "KernelForwarding", "SessionCounters", "ruleset"]
