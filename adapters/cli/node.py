"""`rustynet up | down | status | peers | ping`: the node commands, talking to rustynetd.

The one rule: the CLI holds no node state and no key; it asks the daemon over its local API
(HTTP on the UNIX socket, `--socket`, default /run/rustynet/rustynetd.sock) and prints the
answer. Who may run these commands is decided by the socket's mode (0600 root, or 0660 for the
configured group).

Join tokens: `up --token-file FILE` (or `-` for stdin) keeps the token out of the process
list. `up --token TOKEN` exists for convenience but puts the token in argv, where OTHER LOCAL
USERS can read it (`ps`, /proc/PID/cmdline) while the command runs: use it only on a
single-user machine, and never with a reusable join key.

`ping PEER` checks the path through the tunnel: it resolves PEER (a node name or overlay IP
from `status`) and runs `ping -c 3 -W 1 OVERLAY_IP` in the CALLER's network namespace, which
must be the daemon's for the packets to use the tunnel.

Exit codes: 0 ok, 1 the daemon refused or failed (message on stderr), the join token is
unusable (a token file that is missing, unreadable, empty or holds more than one line: the same
code as a token the daemon refuses) or the ping got no answer, 2 usage error (unknown
option, --token with --token-file, --reenroll without a token), 3 cannot reach the daemon
(not running, or no permission on the socket).
"""

from __future__ import annotations

import argparse
import enum
import http.client
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Final, TextIO

from rustynet.domain.errors import DecodeError
from rustynet.domain.path import PathView

DEFAULT_SOCKET: Final = Path("/run/rustynet/rustynetd.sock")
TIMEOUT: Final = 120.0  # a join runs the whole enrollment exchange with the control plane
MAX_TOKEN: Final = 4096
UP_WAIT: Final = 15.0  # `up` waits this long (by default) for the first peer map
UP_POLL: Final = 0.2


class NodeExit(enum.IntEnum):
    """Exit codes of the node commands."""

    OK = 0
    FAILED = 1
    USAGE = 2
    UNREACHABLE = 3


class DaemonUnreachable(Exception):  # noqa: N818 - names the state
    """The daemon's socket does not answer (or we may not open it)."""


class DaemonRefused(Exception):  # noqa: N818 - names the outcome
    """The daemon answered with an error document."""


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path) -> None:
        super().__init__("rustynetd", timeout=TIMEOUT)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(str(self._path))
        except OSError:
            sock.close()
            raise
        self.sock = sock


def call(path: Path, method: str, route: str, body: Mapping[str, object] | None = None) -> object:
    """One request to the daemon; the parsed JSON answer (or text for /metrics)."""
    conn = _UnixConnection(path)
    try:
        payload = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        try:
            conn.request(method, route, body=payload, headers=headers)
            response = conn.getresponse()
            raw = response.read()
        except PermissionError as exc:
            raise DaemonUnreachable(
                f"{path}: permission denied (root or the socket group)"
            ) from exc
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise DaemonUnreachable(f"{path}: rustynetd is not running ({exc.strerror})") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise DaemonUnreachable(f"{path}: {exc}") from exc
    finally:
        conn.close()
    if response.getheader("Content-Type", "").startswith("text/plain"):
        return raw.decode("utf-8", "replace")
    try:
        parsed: object = json.loads(raw)
    except ValueError as exc:
        raise DaemonUnreachable(f"{path}: the daemon sent something that is not JSON") from exc
    if response.status >= 400:
        detail = parsed.get("detail") if isinstance(parsed, dict) else None
        raise DaemonRefused(str(detail or f"HTTP {response.status}"))
    return parsed


def _read_token(ns: argparse.Namespace, stdin: TextIO) -> str:
    if ns.token is not None:
        where, text = "--token", str(ns.token)
    else:
        source: str = ns.token_file
        where = f"--token-file {source}"
        try:
            text = stdin.read(MAX_TOKEN + 1) if source == "-" else Path(source).read_text("utf-8")
        except OSError as exc:
            raise TokenUnusable(f"{where}: cannot read: {exc.strerror}") from exc
        except UnicodeDecodeError:
            raise TokenUnusable(f"{where}: not text") from None
    token = text.strip()
    if not token:
        raise TokenUnusable(f"{where}: empty, expected one join token (rnjoin1_...)")
    if len(token) > MAX_TOKEN or "\n" in token:
        raise TokenUnusable(f"{where}: expected one join token (rnjoin1_...)")
    return token


class TokenUnusable(Exception):  # noqa: N818 - names the outcome, like DaemonRefused
    """The join token cannot be used (exit 1, like a token the daemon refuses)."""


class UsageProblem(Exception):  # noqa: N818 - a usage error, exit 2
    """The command line is wrong in a way argparse cannot see (reported like its errors)."""


def _doc(value: object) -> dict[str, object]:
    if not isinstance(value, dict):
        raise DaemonUnreachable("the daemon sent an unexpected answer")
    return value


def _get(doc: Mapping[str, object], key: str) -> dict[str, object]:
    value = doc.get(key)
    return value if isinstance(value, dict) else {}


def _peers(doc: Mapping[str, object]) -> list[dict[str, object]]:
    value = doc.get("peers")
    return [p for p in value if isinstance(p, dict)] if isinstance(value, list) else []


def render_status(doc: Mapping[str, object]) -> str:
    """Human status: node, control, backend, serial, then the peer table."""
    node, control = _get(doc, "node"), _get(doc, "control")
    lines = [f"state:    {doc.get('state', '?')}"]
    if node:
        lines.append(f"node:     {node.get('name')} ({node.get('id')}) {node.get('overlay_ip')}")
    if control:
        connected = "connected" if control.get("connected") else "NOT connected"
        lines.append(f"control:  {control.get('url')} ({connected})")
    lines.append(f"backend:  {doc.get('backend')}")
    serial = doc.get("peermap_serial")
    if node and serial == 0:
        lines.append("peer map: none yet (waiting for the first map from control)")
    else:
        lines.append(f"peer map: serial {serial}")
    if doc.get("peermap_source"):
        lines.append(f"map from: {doc.get('peermap_source')}")
    return "\n".join(lines) + "\n" + render_peers(_peers(doc))


def render_peers(peers: list[dict[str, object]]) -> str:
    """One line per peer: name, overlay IP, path, handshake, counters."""
    if not peers:
        return "peers:    none\n"
    rows = [("NAME", "OVERLAY IP", "PATH", "LAST HANDSHAKE", "RX", "TX")]
    rows += [
        (
            str(p.get("name")),
            str(p.get("overlay_ip")),
            path_text(p),
            str(p.get("last_handshake") or "-"),
            str(p.get("rx_bytes")),
            str(p.get("tx_bytes")),
        )
        for p in peers
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        + "\n"
        for row in rows
    )


def path_text(peer: dict[str, object]) -> str:
    """A peer's path in its text form (`direct 203.0.113.7:41641 (reflexive)`); the bare word
    when the daemon sent fields this CLI does not understand."""
    try:
        return PathView.from_json(peer).text()
    except DecodeError:
        return str(peer.get("path"))


def _print_json(out: TextIO, value: object) -> None:
    out.write(json.dumps(value, indent=2) + "\n")


def has_first_map(doc: Mapping[str, object]) -> bool:
    """True once the daemon runs, reaches control and holds a peer map (serial above 0)."""
    serial = doc.get("peermap_serial")
    return (
        doc.get("state") == "running"
        and bool(_get(doc, "control").get("connected"))
        and isinstance(serial, int)
        and serial > 0
    )


def wait_for_first_map(
    path: Path, doc: dict[str, object], seconds: float, err: TextIO
) -> dict[str, object]:
    """Poll `GET /status` until `has_first_map`, the daemon stops trying, or `seconds` pass;
    say on `err` that it is waiting (so `up` never prints a bare `NOT connected`)."""
    if has_first_map(doc) or seconds <= 0:
        return doc
    url = _get(doc, "control").get("url") or "the control plane"
    err.write(f"waiting up to {seconds:g} s for the first peer map from {url} ...\n")
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and doc.get("state") in ("running", "starting"):
        time.sleep(min(UP_POLL, max(0.0, deadline - time.monotonic())))
        doc = _doc(call(path, "GET", "/status"))
        if has_first_map(doc):
            return doc
    return doc


def _run_up(ns: argparse.Namespace, out: TextIO, stdin: TextIO) -> NodeExit:
    body: dict[str, object] = {"hostname": ns.hostname}
    if ns.token is not None or ns.token_file is not None:
        body["token"] = _read_token(ns, stdin)
    if ns.reenroll:
        if "token" not in body:
            raise UsageProblem("--reenroll needs a new join token (--token-file FILE)")
        doc = _doc(call(ns.socket, "POST", "/reenroll", body))
    else:
        doc = _doc(call(ns.socket, "POST", "/up", body))
    doc = wait_for_first_map(ns.socket, doc, ns.wait, ns.err)
    out.write(render_status(doc))
    if not has_first_map(doc) and doc.get("state") == "running":
        out.write(
            "note:     the tunnel is up but no peer map has arrived yet; the daemon keeps "
            "trying in the background (see `rustynet status`)\n"
        )
    return NodeExit.OK


def _run_down(ns: argparse.Namespace, out: TextIO, _stdin: TextIO) -> NodeExit:
    doc = _doc(call(ns.socket, "POST", "/down"))
    out.write(f"state:    {doc.get('state')}\n")
    return NodeExit.OK


def _run_status(ns: argparse.Namespace, out: TextIO, _stdin: TextIO) -> NodeExit:
    doc = _doc(call(ns.socket, "GET", "/status"))
    if ns.json:
        _print_json(out, doc)
    else:
        out.write(render_status(doc))
    return NodeExit.OK


def _run_peers(ns: argparse.Namespace, out: TextIO, _stdin: TextIO) -> NodeExit:
    peers = _peers(_doc(call(ns.socket, "GET", "/peers")))
    if ns.json:
        _print_json(out, peers)
    else:
        out.write(render_peers(peers))
    return NodeExit.OK


def _run_rotate_key(ns: argparse.Namespace, out: TextIO, _stdin: TextIO) -> NodeExit:
    doc = _doc(call(ns.socket, "POST", "/rotate-key"))
    out.write(f"tunnel key: {doc.get('tunnel_key')}\nexpires:    {doc.get('expires_at')}\n")
    return NodeExit.OK


def resolve_peer(doc: Mapping[str, object], peer: str) -> str:
    """PEER (name or overlay IP) → its overlay IP, from the status document."""
    for entry in _peers(doc):
        if peer in (entry.get("name"), entry.get("overlay_ip")):
            ip = entry.get("overlay_ip")
            if isinstance(ip, str) and ip:
                return ip
    raise DaemonRefused(f"no peer called {peer!r} in the current peer map (see rustynet peers)")


def _run_ping(ns: argparse.Namespace, out: TextIO, _stdin: TextIO) -> NodeExit:
    ip = resolve_peer(_doc(call(ns.socket, "GET", "/status")), ns.peer)
    program = shutil.which("ping")
    if program is None:
        raise DaemonRefused("ping(8) is not installed")
    done = subprocess.run(  # noqa: S603 - fixed argv, the address came from the daemon
        [program, "-c", "3", "-W", "1", ip], capture_output=True, text=True, check=False
    )
    out.write(done.stdout)
    return NodeExit.OK if done.returncode == 0 else NodeExit.FAILED


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value <= 3600:
        raise argparse.ArgumentTypeError("give 0-3600 seconds")
    return value


def add_node_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add `up`, `down`, `status`, `peers`, `ping`, `rotate-key` to the `rustynet` parser."""
    up = sub.add_parser(
        "up",
        help="join a mesh (first time, with a join token) and bring the tunnel up",
        description="Join with a join token (first time) and bring the tunnel up. "
        "--token puts the token in argv, visible to other local users: prefer --token-file.",
    )
    source = up.add_mutually_exclusive_group()
    source.add_argument(
        "--token-file", metavar="FILE", help="read the join token from FILE ('-': stdin)"
    )
    source.add_argument(
        "--token", metavar="TOKEN", help="the join token itself (VISIBLE to other local users)"
    )
    up.add_argument("--hostname", metavar="NAME", help="node name to ask for (default: hostname)")
    up.add_argument(
        "--reenroll",
        action="store_true",
        help="a REVOKED node joins again with a new join token: its revoked keys and node "
        "state are discarded, config, key store and name are kept (docs/control-plane.md)",
    )
    up.add_argument(
        "--wait",
        type=_seconds,
        default=UP_WAIT,
        metavar="SECONDS",
        help="wait this long for the first peer map before printing status (default: "
        "%(default)g; 0: do not wait)",
    )
    up.set_defaults(node_run=_run_up)
    down = sub.add_parser("down", help="tear the tunnel down (the node stays enrolled)")
    down.set_defaults(node_run=_run_down)
    status = sub.add_parser("status", help="node, control plane, backend, peer map and peers")
    status.add_argument("--json", action="store_true", help="print the status document")
    status.set_defaults(node_run=_run_status)
    peers = sub.add_parser("peers", help="the peers of the current peer map")
    peers.add_argument("--json", action="store_true", help="print JSON")
    peers.set_defaults(node_run=_run_peers)
    ping = sub.add_parser(
        "ping",
        help="ping a peer's overlay address through the tunnel",
        description="Resolve PEER's overlay IP from the daemon and run `ping -c 3 -W 1` in this "
        "shell's network namespace.",
    )
    ping.add_argument("peer", metavar="PEER", help="peer name or overlay IP")
    ping.set_defaults(node_run=_run_ping)
    rotate = sub.add_parser(
        "rotate-key",
        help="rotate this node's tunnel key now",
        description="Make a fresh tunnel key, publish it to the control plane (bound by the "
        "identity key) and cut the tunnel over; peers pick it up with their next peer map. "
        "The daemon also rotates on its own before the key expires.",
    )
    rotate.set_defaults(node_run=_run_rotate_key)


def run_node_command(
    ns: argparse.Namespace, out: TextIO, err: TextIO, stdin: TextIO | None = None
) -> int:
    """Run the parsed node command; print errors; return the exit code."""
    ns.err = err  # progress notes (`up` waiting for its first map) go to stderr
    try:
        return int(ns.node_run(ns, out, sys.stdin if stdin is None else stdin))
    except UsageProblem as exc:
        err.write(f"rustynet {ns.command}: {exc}\n")
        return int(NodeExit.USAGE)
    except TokenUnusable as exc:
        err.write(f"rustynet {ns.command}: {exc}\n")
        return int(NodeExit.FAILED)
    except DaemonUnreachable as exc:
        err.write(f"rustynet {ns.command}: cannot reach rustynetd: {exc}\n")
        return int(NodeExit.UNREACHABLE)
    except DaemonRefused as exc:
        err.write(f"rustynet {ns.command}: {exc}\n")
        return int(NodeExit.FAILED)


__all__ = [
    "DEFAULT_SOCKET",
    "NodeExit",
    "add_node_commands",
    "call",
    "render_peers",
    "render_status",
    "resolve_peer",
    "run_node_command",
]
