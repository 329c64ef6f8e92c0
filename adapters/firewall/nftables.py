"""nftables firewall: the node's inbound filter as its own `inet` table, one transaction per apply.

The one rule: every apply is ONE `nft -j -f -` batch (delete our table, recreate it with all
rules), so the kernel commits it whole or not at all: a refused batch leaves the previous rules
in place, and there is never a moment without a filter. We never touch another table.

Rendered shape (table `rustynet-<ifname>` unless a name is given)::

    table inet rustynet-rnt1 {
        chain input {
            type filter hook input priority filter; policy accept;
            iifname "rnt1" ct state established,related accept
            iifname "rnt1" ip saddr { 100.64.0.1 } tcp dport { 22 } accept
            iifname "rnt1" ip6 saddr { fd7a::/48 } icmpv6 type echo-request accept
            iifname "rnt1" drop
        }
    }

The chain's policy is accept and every rule matches `iifname`, so traffic on other interfaces
is never judged here (other tables still see it). `current()` parses `nft -j list table` back
into a `Ruleset`; anything not of this shape (a hand edit) is reported as a `FirewallError`.

After a crash: the table outlives a SIGKILLed daemon (harmless: its interface went with
wireguard-go). The restarted daemon's first reconcile replaces it in one transaction, before
any peer exists, so stale allow rules never meet a live interface; `remove()` deletes it by
its exact name. Nothing here deletes tables by prefix or flushes the ruleset, which is the
exemption hook for a table that must survive the daemon (the planned kill switch): give it a
name other than `table_name_for(interface)` and neither restart nor stop touches it
(tests/e2e/test_crash.py keeps one across a crash and restart).

Quirks: `nft` prints single-element sets and one-port ranges back as plain values, so the parser
accepts both; `ip netns exec NS` runs nft in a named network namespace (nft has no netns flag).
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Final

from rustynet.adapters.support.system_tools import Json, ToolError, nft_json

from rustynet.domain.packet_filter import FlowRule, Network, PortSpan, Ruleset, RulesetError
from rustynet.domain.policy import Proto
from rustynet.ports.firewall import FirewallError, validate_interface

_TABLE_RE: Final = re.compile(r"[A-Za-z][A-Za-z0-9_-]{0,63}")
_CHAIN: Final = "input"
_FAMILY: Final = "inet"
_ECHO: Final = {4: "icmp", 6: "icmpv6"}
_SADDR: Final = {4: "ip", 6: "ip6"}


def table_name_for(interface: str) -> str:
    """The default table name for a tunnel interface."""
    return f"rustynet-{validate_interface(interface)}"


class NftablesFirewall:
    """`Firewall` on nftables, optionally inside the named network namespace `netns`.

    `table=None` names the table after the interface on the first apply (a later apply to
    another interface moves the filter, in the same transaction).
    """

    def __init__(self, *, netns: str | None = None, table: str | None = None) -> None:
        if table is not None and not _TABLE_RE.fullmatch(table):
            raise FirewallError(f"invalid nftables table name {table!r}")
        self._netns = netns
        self._table = table
        self._fixed_table = table is not None
        self._lock = asyncio.Lock()

    @property
    def table(self) -> str | None:
        """Our table's name (`None` until the first apply when no name was given)."""
        return self._table

    # --- the port -----------------------------------------------------------------------------

    async def apply(self, interface: str, ruleset: Ruleset) -> None:
        """Replace our table in one transaction; a no-op when it already enforces `ruleset`."""
        validate_interface(interface)
        if not isinstance(ruleset, Ruleset):
            raise FirewallError("apply takes a Ruleset")
        try:
            ruleset.check()
        except RulesetError as exc:
            raise FirewallError(f"refusing a malformed ruleset: {exc}") from exc
        async with self._lock:
            table = (
                self._table
                if self._fixed_table and self._table is not None
                else table_name_for(interface)
            )
            if self._table in (None, table):  # also after a restart: our table may exist
                try:
                    if await self._read(table) == (interface, ruleset):
                        self._table = table  # adopted: remove() must still delete it
                        return
                except FirewallError:
                    pass  # hand-edited or unreadable: the apply below replaces it
            batch: list[Json] = []
            if self._table is not None and self._table != table:
                batch += _delete_table(self._table)
            batch += self._batch(table, interface, ruleset)
            await self._nft(["-j", "-f", "-"], {"nftables": batch})
            self._table = table

    async def current(self) -> Ruleset | None:
        """Parse our table back into a `Ruleset` (`None` when the table does not exist)."""
        if self._table is None:
            return None
        read = await self._read(self._table)
        return None if read is None else read[1]

    async def remove(self) -> None:
        """Delete our table (idempotent: creating it first makes the delete always valid)."""
        async with self._lock:
            if self._table is not None:
                await self._nft(["-j", "-f", "-"], {"nftables": _delete_table(self._table)})

    # --- rendering ----------------------------------------------------------------------------

    def _batch(self, table: str, interface: str, ruleset: Ruleset) -> list[Json]:
        """The whole transaction for one apply (a method so a test can plant a refused rule)."""
        on_tunnel = _match({"meta": {"key": "iifname"}}, interface)
        rules: list[list[Json]] = [
            [on_tunnel, _match({"ct": {"key": "state"}}, ["established", "related"], "in"), _ACCEPT]
        ]
        for rule in ruleset.rules:
            for version in (4, 6):
                sources = rule.sources_of(version)
                if sources:
                    rules.append([on_tunnel, _saddr(version, sources), _l4(rule, version), _ACCEPT])
        rules.append([on_tunnel, {"drop": None}])
        return [
            *_delete_table(table),
            {"add": {"table": {"family": _FAMILY, "name": table}}},
            {
                "add": {
                    "chain": {
                        "family": _FAMILY,
                        "table": table,
                        "name": _CHAIN,
                        "type": "filter",
                        "hook": "input",
                        "prio": 0,
                        "policy": "accept",
                    }
                }
            },
            *(
                {"add": {"rule": {"family": _FAMILY, "table": table, "chain": _CHAIN, "expr": e}}}
                for e in rules
            ),
        ]

    # --- running nft --------------------------------------------------------------------------

    async def _read(self, table: str) -> tuple[str, Ruleset] | None:
        try:
            out = await self._nft(["-j", "list", "table", _FAMILY, table], None)
        except _NoSuchTableError:
            return None
        return _parse_table(out, table)

    async def _nft(self, args: Sequence[str], batch: Json | None) -> Json:
        try:
            return await nft_json(args, batch, netns=self._netns)
        except ToolError as exc:
            if exc.returncode is None:
                raise FirewallError(str(exc)) from exc
            if batch is None and "No such file or directory" in exc.stderr:
                raise _NoSuchTableError(exc.stderr) from exc
            raise FirewallError(
                f"nft refused the change (exit {exc.returncode}): {exc.stderr}"
            ) from exc


class _NoSuchTableError(FirewallError):
    """`nft list table` found no such table."""


_ACCEPT: Final[Json] = {"accept": None}


def _delete_table(table: str) -> list[Json]:
    # `add` is a no-op for an existing table and makes the `delete` valid when there is none.
    ref = {"table": {"family": _FAMILY, "name": table}}
    return [{"add": ref}, {"delete": ref}]


def _match(left: Json, right: Json, op: str = "==") -> Json:
    return {"match": {"op": op, "left": left, "right": right}}


def _saddr(version: int, sources: Sequence[Network]) -> Json:
    elements = [{"prefix": {"addr": str(s.network_address), "len": s.prefixlen}} for s in sources]
    return _match({"payload": {"protocol": _SADDR[version], "field": "saddr"}}, {"set": elements})


def _l4(rule: FlowRule, version: int) -> Json:
    if rule.proto is Proto.ICMP:
        return _match({"payload": {"protocol": _ECHO[version], "field": "type"}}, "echo-request")
    ports = [{"range": [first, last]} for first, last in rule.ports]
    return _match({"payload": {"protocol": rule.proto.value, "field": "dport"}}, {"set": ports})


# --- parsing `nft -j list table` back -------------------------------------------------------


class _ForeignTableError(FirewallError):
    """Our table holds something we did not render."""


def _parse_table(listing: Json, table: str) -> tuple[str, Ruleset]:
    items = _get(listing, "nftables")
    if not isinstance(items, list):
        raise _ForeignTableError("nft listing without an nftables array")
    chains = [i["chain"] for i in items if isinstance(i, Mapping) and "chain" in i]
    rules = [i["rule"] for i in items if isinstance(i, Mapping) and "rule" in i]
    expected = {"name": _CHAIN, "type": "filter", "hook": "input", "prio": 0, "policy": "accept"}
    if len(chains) != 1 or any(_get(chains[0], k) != v for k, v in expected.items()):
        raise _ForeignTableError(f"table {table} does not hold exactly our input chain")
    if len(rules) < 2:
        raise _ForeignTableError(f"table {table} lacks the established and drop rules")
    exprs: list[list[Json]] = []
    for rule in rules:
        expr = _get(rule, "expr")
        if not isinstance(expr, list) or not expr:
            raise _ForeignTableError("a rule without expressions")
        exprs.append(expr)
    interface = _interface_of(exprs[0][0])
    if any(_interface_of(e[0]) != interface for e in exprs):
        raise _ForeignTableError("rules for more than one interface")
    established = [_match({"ct": {"key": "state"}}, ["established", "related"], "in"), _ACCEPT]
    if exprs[0][1:] != established or exprs[-1][1:] != [{"drop": None}]:
        raise _ForeignTableError("the first rule is not established/related, or the last not drop")
    flows = [_parse_allow(e[1:]) for e in exprs[1:-1]]
    try:
        return interface, Ruleset.of(flows)
    except RulesetError as exc:
        raise _ForeignTableError(f"unusable rule in table {table}: {exc}") from exc


def _get(value: Json, key: str) -> Json:
    return value.get(key) if isinstance(value, Mapping) else None


def _match_parts(expr: Json) -> tuple[Json, Json, Json]:
    m = _get(expr, "match")
    if not isinstance(m, Mapping):
        raise _ForeignTableError(f"expected a match, got {expr!r}")
    return m.get("left"), m.get("right"), m.get("op")


def _interface_of(expr: Json) -> str:
    left, right, op = _match_parts(expr)
    if left != {"meta": {"key": "iifname"}} or op != "==" or not isinstance(right, str):
        raise _ForeignTableError("a rule that does not start with iifname ==")
    return validate_interface(right)


def _elements(right: Json) -> list[Json]:
    inner = _get(right, "set")
    return list(inner) if isinstance(inner, list) else [right]


def _parse_allow(exprs: list[Json]) -> FlowRule:
    if len(exprs) != 3 or exprs[2] != _ACCEPT:
        raise _ForeignTableError(f"unexpected rule {exprs!r}")
    left, right, op = _match_parts(exprs[0])
    family = _get(_get(left, "payload"), "protocol")
    if op != "==" or _get(_get(left, "payload"), "field") != "saddr" or family not in ("ip", "ip6"):
        raise _ForeignTableError("an allow rule without a source match")
    version = 4 if family == "ip" else 6
    sources = tuple(_network(e, version) for e in _elements(right))
    left, right, op = _match_parts(exprs[1])
    protocol, field = _get(_get(left, "payload"), "protocol"), _get(_get(left, "payload"), "field")
    if op != "==":
        raise _ForeignTableError("an allow rule with an unexpected operator")
    if (protocol, field, right) == (_ECHO[version], "type", "echo-request"):
        return FlowRule(sources, Proto.ICMP, ())
    if protocol in ("tcp", "udp") and field == "dport":
        return FlowRule(sources, Proto(protocol), tuple(_span(e) for e in _elements(right)))
    raise _ForeignTableError("an allow rule with an unexpected protocol match")


def _network(element: Json, version: int) -> Network:
    prefix = _get(element, "prefix")
    text = f"{_get(prefix, 'addr')}/{_get(prefix, 'len')}" if prefix is not None else element
    try:
        net = ipaddress.ip_network(str(text), strict=True)
    except ValueError as exc:
        raise _ForeignTableError(f"not a source prefix: {element!r}") from exc
    if net.version != version:
        raise _ForeignTableError("a source of the wrong address family")
    return net


def _span(element: Json) -> PortSpan:
    if type(element) is int:
        return element, element
    bounds = _get(element, "range")
    if (
        isinstance(bounds, list)
        and len(bounds) == 2
        and type(bounds[0]) is int
        and type(bounds[1]) is int
    ):
        return bounds[0], bounds[1]
    raise _ForeignTableError(f"not a port or port range: {element!r}")
