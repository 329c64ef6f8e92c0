"""`rustynet netcheck [--json] [--stun ADDR:PORT ...] [--control URL] [--relay URL ...]`.

The one rule: where it measures is decided here, once, and printed first.

- No `--stun`: ask the running daemon (`GET /netcheck` on its local API socket). It measures
  with the peer map's STUN servers, relays and control plane; the tunnel port when its probe
  can send from it, and the first line says which port it measured.
- `--stun` (repeatable, IP-literal `ADDR:PORT`, as in the peer map): standalone, in this
  process, from an ephemeral UDP port, with only the servers and URLs given on the command
  line; the output says it measured an ephemeral port, not the tunnel port. The node's stored
  state is not read (it is root's, and only the daemon checks the peer map's signature).
- No daemon and no `--stun`: usage error (exit 2) naming both ways.

The text output and the `--json` document (docs/operations/nodes.md, "netcheck") carry no
token and no key: a user can paste either into a bug report.

Exit codes: 0 measured (even when everything was blocked: that is a result), 1 the daemon
refused, 2 usage error (bad `--stun`, `--relay`, `--control`; no daemon and no `--stun`),
3 the daemon's socket exists but cannot be used (permission).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
from collections.abc import Callable, Mapping
from typing import Protocol, TextIO
from urllib.parse import urlsplit

from rustynet.adapters.cli import node as node_cli

from rustynet.application.node.netcheck import LatencyTarget, NetcheckTargets
from rustynet.domain.errors import DecodeError
from rustynet.domain.stun import parse_server
from rustynet.domain.tunnel import UnderlayEndpoint


class NetcheckCommands(Protocol):
    """The standalone measurement the composition root provides."""

    def netcheck(self, targets: NetcheckTargets) -> dict[str, object]:
        """Measure `targets` from an ephemeral port; the netcheck document."""
        ...


def _stun(text: str) -> UnderlayEndpoint:
    try:
        ip, port = parse_server(text)
    except DecodeError as exc:
        raise argparse.ArgumentTypeError(f"{exc} (an IP literal and port)") from None
    return UnderlayEndpoint(ipaddress.ip_address(ip), port)


def _url(schemes: tuple[str, ...]) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            parts = urlsplit(text)
            _ = parts.port
        except ValueError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
        if parts.scheme not in schemes or not parts.hostname:
            raise argparse.ArgumentTypeError(f"{text!r}: expected {' or '.join(schemes)}://HOST")
        return text

    return parse


def add_netcheck_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `netcheck` to the `rustynet` parser."""
    parser = sub.add_parser(
        "netcheck",
        help="UDP reachability, reflexive address, NAT kind, IPv6, latency to relays and control",
        description="Without --stun: ask rustynetd (it measures with the peer map's STUN "
        "servers). With --stun: measure standalone from an ephemeral port. The output holds "
        "no secret: paste it into a bug report.",
    )
    parser.add_argument("--json", action="store_true", help="print the netcheck document")
    parser.add_argument(
        "--stun",
        type=_stun,
        action="append",
        default=[],
        metavar="ADDR:PORT",
        help="a STUN server (repeat; give two ports of one host, or two hosts): standalone",
    )
    parser.add_argument(
        "--control", type=_url(("https",)), metavar="URL", help="standalone: time this control"
    )
    parser.add_argument(
        "--relay",
        type=_url(("wss", "https")),
        action="append",
        default=[],
        metavar="URL",
        help="standalone: time this relay (repeat)",
    )
    parser.set_defaults(run=run_netcheck_command)


def _targets(ns: argparse.Namespace) -> NetcheckTargets:
    latency = []
    if ns.control:
        latency.append(LatencyTarget.from_url("control", None, ns.control))
    latency += [LatencyTarget.from_url("relay", None, url) for url in ns.relay]
    return NetcheckTargets(tuple(ns.stun), tuple(t for t in latency if t is not None))


def run_netcheck_command(commands: NetcheckCommands, ns: argparse.Namespace, out: TextIO) -> int:
    """Run `netcheck` (daemon or standalone), print it to `out` (problems to `ns.err`); the
    exit code."""
    err: TextIO = ns.err
    if not ns.stun:
        if ns.control or ns.relay:
            err.write("rustynet netcheck: --control and --relay need --stun (standalone)\n")
            return int(node_cli.NodeExit.USAGE)
        try:
            doc = node_cli.call(ns.socket, "GET", "/netcheck")
        except node_cli.DaemonUnreachable as exc:
            if "permission" in str(exc):
                err.write(f"rustynet netcheck: cannot reach rustynetd: {exc}\n")
                return int(node_cli.NodeExit.UNREACHABLE)
            err.write(
                f"rustynet netcheck: rustynetd does not answer ({exc}); run netcheck where "
                "rustynetd runs, or standalone: --stun ADDR:PORT (twice or more)\n"
            )
            return int(node_cli.NodeExit.USAGE)
        except node_cli.DaemonRefused as exc:
            err.write(f"rustynet netcheck: {exc}\n")
            return int(node_cli.NodeExit.FAILED)
        if not isinstance(doc, dict):
            err.write("rustynet netcheck: the daemon sent an unexpected answer\n")
            return int(node_cli.NodeExit.FAILED)
        via = "through rustynetd"
    else:
        doc = commands.netcheck(_targets(ns))
        via = "standalone"
    if ns.json:
        out.write(json.dumps(doc, indent=2) + "\n")
    else:
        out.write(render_netcheck(doc, via))
    return int(node_cli.NodeExit.OK)


def _family(doc: Mapping[str, object], key: str) -> dict[str, object]:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _list(value: object) -> list[object]:
    return list(value) if isinstance(value, list) else []


def _rtt(value: object, missing: str = "no answer") -> str:
    return f"{value} ms" if isinstance(value, int | float) else missing


def _yes(value: object) -> str:
    return {True: "yes", False: "no"}.get(value, "unknown") if isinstance(value, bool) else "-"


def _udp_lines(doc: Mapping[str, object], v4: Mapping[str, object] | None) -> list[str]:
    """UDP reachability, the IPv4 reflexive addresses, mapping and port preservation."""
    if doc.get("probe_error"):
        return [f"udp:            unknown: the probe could not run ({doc['probe_error']})"]
    if not v4:
        return ["udp:            unknown (no IPv4 STUN server to ask)"]
    answered = f"{v4.get('answered')} of {v4.get('asked')} IPv4 STUN servers answered"
    return [
        f"udp:            {_yes(doc.get('udp'))} ({answered})",
        f"reflexive:      {', '.join(map(str, _list(v4.get('reflexive')))) or 'none'}",
        f"mapping:        {v4.get('nat')}: {v4.get('description')}",
        f"port preserved: {_yes(v4.get('port_preserved'))}",
    ]


def render_netcheck(doc: Mapping[str, object], via: str) -> str:
    """The text form: where it measured, then one labelled line per finding, then per-server
    and per-target round trips (stable: tests and bug reports rely on the labels)."""
    port = doc.get("local_port")
    if doc.get("measured") == "tunnel-port":
        lines = [f"measured:       the tunnel port {port} ({via})"]
    else:
        lines = [f"measured:       an ephemeral port {port}, not the tunnel port ({via})"]
    v4, v6 = _family(doc, "ipv4"), _family(doc, "ipv6")
    lines += _udp_lines(doc, v4)
    if not v6:
        lines.append("ipv6:           unknown (no IPv6 STUN server to ask)")
    elif v6.get("reachable"):
        mapped = ", ".join(map(str, _list(v6.get("reflexive"))))
        lines.append(f"ipv6:           yes, reflexive {mapped} ({v6.get('nat')})")
    else:
        lines.append(f"ipv6:           no (0 of {v6.get('asked')} IPv6 STUN servers answered)")
    skipped = ", ".join(map(str, _list(doc.get("skipped"))))
    if skipped:
        lines.append(
            f"skipped:        {skipped} (the tunnel talks to it: not probed from its port)"
        )
    lines.append("stun:")
    for family in (v4, v6):
        for server in _list(family.get("servers")):
            if isinstance(server, dict):
                seen = f"saw {server['mapped']}" if server.get("mapped") else ""
                lines.append(
                    f"  {server.get('server')!s:<28} {_rtt(server.get('rtt_ms')):<10} {seen}"
                )
    latency = [t for t in _list(doc.get("latency")) if isinstance(t, dict)]
    lines.append("latency:" if latency else "latency:        none measured")
    for target in latency:
        name = f"{target.get('kind')} {target.get('id') or ''}".rstrip()
        lines.append(
            f"  {name:<16} {target.get('target')!s:<28} {target.get('method')} "
            f"{_rtt(target.get('rtt_ms'), 'no connection')}"
        )
    return "\n".join(line.rstrip() for line in lines) + "\n"


__all__ = ["NetcheckCommands", "add_netcheck_command", "render_netcheck", "run_netcheck_command"]
