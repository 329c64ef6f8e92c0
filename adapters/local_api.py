"""rustynetd's local API: HTTP/1.1 + JSON on a UNIX socket, for the `rustynet` CLI and scrapers.

The one rule: only who may open the socket file may talk to the daemon. The socket is bound
under a umask that makes it 0600 from the first instant (no window between bind and chmod),
then set to 0600, or 0660 and chgrp'd when a group is configured; a stale socket left by a
killed daemon is replaced, a live one (another daemon answering) is refused. There is no other
authentication, so the socket's directory should be private too (/run/rustynet, 0750 or 0700).
Access logging is off: `POST /up` carries a join token in its body (never logged either).

Routes (JSON unless said otherwise; errors are `{"error": code, "detail": text}`):

    GET  /status   {"state", "node": {name, id, overlay_ip} | null, "control": {url, connected}
                    | null, "backend", "peermap_serial", "peermap_source", "peers": [...]}
                   peermap_source: "control", "none (waiting for the control plane since T)"
                   or "stored (control plane unreachable since T)" (application/node/map_source.py)
    GET  /peers    {"peers": [{name, overlay_ip, path, endpoint, endpoint_kind, relay, phase,
                    last_handshake, rx_bytes, tx_bytes}]} (path fields: domain/path/view.py)
    POST /up       body {"token": str | null, "hostname": str | null}: join (token) and/or bring
                   the tunnel up; answers the status document
    POST /reenroll body {"token": str, "hostname": str | null}: a REVOKED node discards its
                   revoked keys and node state and joins again (409 not_revoked otherwise);
                   answers the status document
    POST /down     tear the tunnel down (the node stays enrolled); answers the status document
    POST /rotate-key  cut over to a fresh tunnel key now (published to control first); answers
                   {"tunnel_key": <new public key text>, "expires_at": <ISO 8601>}
    GET  /metrics  Prometheus text exposition format 0.0.4
    GET  /netcheck the netcheck document (docs/operations/nodes.md, "netcheck";
                   application/node/netcheck.py), measured now with the peer map's STUN servers;
                   409 not_running without a tunnel and peer map, 404 without a probe

`state` is one of: not_enrolled, starting, running, down, revoked, failed.
"""

from __future__ import annotations

import contextlib
import grp
import json
import os
import socket
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Final, Protocol

from aiohttp import web

from rustynet.application.node import (
    AgentRevoked,
    AgentStatus,
    AlreadyEnrolled,
    JoinFailed,
    NotEnrolled,
    NotRevoked,
    NotRunning,
)
from rustynet.domain.errors import RustynetError
from rustynet.ports.control_api import ControlRejected, ControlUnreachable, ControlUntrusted

MAX_BODY: Final = 16 * 1024
JSON_TYPE: Final = "application/json"
METRICS_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"


class LocalApiError(RustynetError):
    """The local API cannot start (socket in use, bad path or group)."""


class NodeControl(Protocol):
    """What the daemon offers its local API (`rustynet.application.node.NodeDaemon` has it)."""

    @property
    def backend(self) -> str:
        """The tunnel backend in use (`wireguard-userspace`, `wireguard-kernel`, `memory`)."""
        ...

    @property
    def lifecycle(self) -> str:
        """not_enrolled | starting | running | down | revoked | failed."""
        ...

    @property
    def rejected_maps(self) -> int:
        """Peer maps rejected since start (security events)."""
        ...

    async def status(self) -> AgentStatus | None:
        """The agent's snapshot; None when not enrolled."""
        ...

    async def up(self, token: str | None, hostname: str | None) -> None:
        """Join with `token` when given (refused if already enrolled), then run the tunnel."""
        ...

    async def down(self) -> None:
        """Tear the tunnel down; the node stays enrolled (a later `up` restarts it)."""
        ...

    async def reenroll(self, token: str, hostname: str | None) -> None:
        """A revoked node: discard its revoked keys and state, join again with `token`."""
        ...

    async def rotate_key(self) -> tuple[str, str]:
        """Rotate the tunnel key now; (new public key text, expiry ISO 8601)."""
        ...


class NetcheckSource(Protocol):
    """What `GET /netcheck` asks (`NodeDaemon` has it)."""

    async def netcheck(self) -> dict[str, object]:
        """Measure now; the netcheck document."""
        ...


_CONTROL: Final = web.AppKey("control", NodeControl)
_NETCHECK: Final = web.AppKey("netcheck", NetcheckSource)


def _error(status: int, code: str, detail: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail}, status=status)


def error_response(exc: RustynetError) -> web.Response:
    """The one table from daemon errors to HTTP statuses (the CLI prints `detail`)."""
    detail = str(exc)[:500]
    table: tuple[tuple[type[RustynetError], int, str], ...] = (
        (AlreadyEnrolled, 409, "already_enrolled"),
        (NotEnrolled, 409, "not_enrolled"),
        (NotRunning, 409, "not_running"),
        (AgentRevoked, 403, "revoked"),
        (NotRevoked, 409, "not_revoked"),
        (JoinFailed, 403, "join_failed"),
        (ControlUntrusted, 502, "control_untrusted"),
        (ControlUnreachable, 503, "control_unreachable"),
        (ControlRejected, 502, "control_rejected"),
    )
    for kind, status, code in table:
        if isinstance(exc, kind):
            return _error(status, code, detail)
    return _error(500, "failed", detail)


async def status_document(control: NodeControl) -> dict[str, object]:
    """The `GET /status` document."""
    snapshot = await control.status()
    if snapshot is None:
        document: dict[str, object] = {
            "node": None,
            "control": None,
            "backend": control.backend,
            "peermap_serial": 0,
            "peers": [],
        }
    else:
        document = snapshot.to_json()
    return {"state": control.lifecycle, **document}


async def _status(request: web.Request) -> web.Response:
    return web.json_response(await status_document(request.app[_CONTROL]))


async def _peers(request: web.Request) -> web.Response:
    document = await status_document(request.app[_CONTROL])
    return web.json_response({"peers": document["peers"]})


def _optional_text(body: Mapping[str, object], key: str, limit: int) -> str | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= limit:
        raise _bad_request(f"{key}: expected 1-{limit} chars")
    return value


def _bad_request(detail: str) -> web.HTTPBadRequest:
    return web.HTTPBadRequest(
        text=json.dumps({"error": "bad_request", "detail": detail}), content_type=JSON_TYPE
    )


async def _token_and_hostname(request: web.Request) -> tuple[str | None, str | None]:
    """The body of `up` and `reenroll`: an optional object with only `token` and `hostname`."""
    try:
        body = await request.json() if request.can_read_body else {}
    except ValueError:
        raise _bad_request("the body is not JSON") from None
    if not isinstance(body, dict) or set(body) - {"token", "hostname"}:
        raise _bad_request("expected an object with only token and hostname")
    return _optional_text(body, "token", 4096), _optional_text(body, "hostname", 253)


async def _up(request: web.Request) -> web.Response:
    control = request.app[_CONTROL]
    token, hostname = await _token_and_hostname(request)
    try:
        await control.up(token, hostname)
    except RustynetError as exc:
        return error_response(exc)
    return web.json_response(await status_document(control))


async def _reenroll(request: web.Request) -> web.Response:
    control = request.app[_CONTROL]
    token, hostname = await _token_and_hostname(request)
    if token is None:
        return _error(400, "bad_request", "token: a join token is required to re-enroll")
    try:
        await control.reenroll(token, hostname)
    except RustynetError as exc:
        return error_response(exc)
    return web.json_response(await status_document(control))


async def _down(request: web.Request) -> web.Response:
    control = request.app[_CONTROL]
    try:
        await control.down()
    except RustynetError as exc:
        return error_response(exc)
    return web.json_response(await status_document(control))


async def _rotate_key(request: web.Request) -> web.Response:
    try:
        key, expires_at = await request.app[_CONTROL].rotate_key()
    except RustynetError as exc:
        return error_response(exc)
    return web.json_response({"tunnel_key": key, "expires_at": expires_at})


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


async def metrics_text(control: NodeControl) -> str:
    """Prometheus text exposition of the daemon's state and per-peer counters."""
    snapshot = await control.status()
    lines = [
        "# HELP rustynet_node_info Daemon state and tunnel backend (value always 1).",
        "# TYPE rustynet_node_info gauge",
        f'rustynet_node_info{{backend="{_label(control.backend)}",'
        f'state="{_label(control.lifecycle)}"}} 1',
        "# HELP rustynet_peermap_rejected_total Peer maps rejected (security events).",
        "# TYPE rustynet_peermap_rejected_total counter",
        f"rustynet_peermap_rejected_total {control.rejected_maps}",
    ]
    if snapshot is None:
        return "\n".join(lines) + "\n"
    with_handshake = sum(1 for p in snapshot.peers if p.last_handshake is not None)
    lines += [
        "# HELP rustynet_control_connected 1 when the last control-plane call succeeded.",
        "# TYPE rustynet_control_connected gauge",
        f"rustynet_control_connected {int(snapshot.connected)}",
        "# HELP rustynet_peermap_serial Serial of the applied peer map.",
        "# TYPE rustynet_peermap_serial gauge",
        f"rustynet_peermap_serial {snapshot.peermap_serial}",
        "# HELP rustynet_peers Peers in the applied peer map.",
        "# TYPE rustynet_peers gauge",
        f"rustynet_peers {len(snapshot.peers)}",
        "# HELP rustynet_peers_connected Peers with a completed handshake.",
        "# TYPE rustynet_peers_connected gauge",
        f"rustynet_peers_connected {with_handshake}",
    ]
    series = (
        ("rustynet_peer_rx_bytes_total", "counter", "Bytes received from the peer."),
        ("rustynet_peer_tx_bytes_total", "counter", "Bytes sent to the peer."),
        ("rustynet_peer_last_handshake_seconds", "gauge", "Unix time of the last handshake."),
    )
    for name, kind, help_text in series:
        lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]
        for peer in snapshot.peers:
            labels = f'{{peer="{_label(peer.name)}",overlay_ip="{_label(peer.overlay_ip)}"}}'
            if name.endswith("rx_bytes_total"):
                value: float = peer.rx_bytes
            elif name.endswith("tx_bytes_total"):
                value = peer.tx_bytes
            elif peer.last_handshake is not None:
                value = peer.last_handshake.timestamp()
            else:
                continue
            lines.append(f"{name}{labels} {value}")
    return "\n".join(lines) + "\n"


async def _metrics(request: web.Request) -> web.Response:
    text = await metrics_text(request.app[_CONTROL])
    return web.Response(body=text.encode("utf-8"), headers={"Content-Type": METRICS_TYPE})


async def _netcheck(request: web.Request) -> web.Response:
    source = request.app.get(_NETCHECK)
    if source is None:
        return _error(404, "not_available", "this daemon offers no netcheck")
    try:
        return web.json_response(await source.netcheck())
    except RustynetError as exc:
        return error_response(exc)


def create_local_app(
    control: NodeControl, netcheck: NetcheckSource | None = None
) -> web.Application:
    """The local API application (tests drive it with `aiohttp_client`)."""
    app = web.Application(client_max_size=MAX_BODY)
    app[_CONTROL] = control
    if netcheck is not None:
        app[_NETCHECK] = netcheck
    app.router.add_get("/netcheck", _netcheck)
    app.router.add_get("/status", _status)
    app.router.add_get("/peers", _peers)
    app.router.add_post("/up", _up)
    app.router.add_post("/reenroll", _reenroll)
    app.router.add_post("/down", _down)
    app.router.add_post("/rotate-key", _rotate_key)
    app.router.add_get("/metrics", _metrics)
    return app


def _answers(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:
            return False
        return True


def bind_socket(path: Path, group: str | None = None) -> socket.socket:
    """Bind a listening UNIX socket at `path`: 0600, or 0660 owned by `group`."""
    gid = -1
    if group is not None:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError:
            raise LocalApiError(f"socket_group {group!r}: no such group") from None
    if not path.parent.is_dir():
        path.parent.mkdir(mode=0o750 if group else 0o700, parents=True, exist_ok=True)
    try:
        info = path.lstat()
    except FileNotFoundError:
        pass
    else:
        if not stat.S_ISSOCK(info.st_mode):
            raise LocalApiError(f"{path} exists and is not a socket; refusing to replace it")
        if _answers(path):
            raise LocalApiError(f"{path}: another rustynetd is already listening")
        path.unlink()  # stale: left by a daemon that was killed
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    old = os.umask(0o177)
    try:
        sock.bind(str(path))
    except OSError as exc:
        sock.close()
        raise LocalApiError(f"{path}: cannot bind: {exc.strerror}") from exc
    finally:
        os.umask(old)
    if gid != -1:
        os.chown(path, -1, gid)
    path.chmod(0o660 if gid != -1 else 0o600)
    sock.listen(64)
    sock.setblocking(False)
    return sock


class LocalApiServer:
    """The local API on its socket: `start()` binds and serves, `close()` stops and unlinks."""

    def __init__(
        self,
        control: NodeControl,
        path: Path,
        group: str | None = None,
        netcheck: NetcheckSource | None = None,
    ) -> None:
        self.path = Path(path)
        self._group = group
        self._runner = web.AppRunner(create_local_app(control, netcheck), access_log=None)
        self._sock: socket.socket | None = None

    async def start(self) -> None:
        """Bind the socket and start serving."""
        self._sock = bind_socket(self.path, self._group)
        await self._runner.setup()
        await web.SockSite(self._runner, self._sock).start()

    async def close(self) -> None:
        """Stop serving and remove the socket file; idempotent."""
        await self._runner.cleanup()
        if self._sock is not None:
            self._sock.close()
            self._sock = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


__all__ = [
    "LocalApiError",
    "LocalApiServer",
    "NetcheckSource",
    "NodeControl",
    "bind_socket",
    "create_local_app",
    "error_response",
    "metrics_text",
    "status_document",
]
