"""Composition root of `rustynetd`, the node daemon: config → ports → agent → local API.

The one rule: the daemon never runs half-trusted. Before anything else it turns core dumps
off and checks the crypto policy; an enrolled node whose identity or tunnel key is missing
from the key store refuses to start (it never quietly becomes a new identity); the control
plane is reached only through the pinned HTTPS client built from the join token (at join) or
the saved node state (afterwards); SIGTERM tears the interface, its routes and the nftables
table down before exit 0.

The daemon's use case (`NodeDaemon`: up, down, re-enroll, the supervised agent) and its
lifecycle states live in the application layer (`rustynet.application.node.daemon`,
`rustynet.application.node.lifecycle`); this module only builds the adapters it runs on.

Backend selection: `auto` probes the kernel backend (`check_available`: the wireguard genl
family must resolve) and falls back to userspace (wireguard-go); `status` shows which. The
`memory` backend (with the in-memory firewall) needs no privileges: for tests and trials.

SIGHUP re-reads the config file: the log level applies at once; a change of anything else
(socket, interface, backend, ports, key store) is logged as needing a restart.

Namespaces: rustynetd creates its interface and nftables table in the network namespace it
runs in and reaches the control plane from there; the CLI talks to it over the UNIX socket,
which works across namespaces (`rustynet ping` runs ping in the CALLER's namespace).
"""

from __future__ import annotations

import asyncio
import gc
import signal
import socket
import sys
from pathlib import Path
from typing import Final

import attrs
import structlog

from rustynet.adapters.clock import SystemClock
from rustynet.adapters.config import NodeConfig, load_node_config
from rustynet.adapters.control_client import ControlClient, pinned_ssl_context
from rustynet.adapters.control_plane_http import HttpControlPlane
from rustynet.adapters.entropy import OsEntropy
from rustynet.adapters.firewall.memory import MemoryFirewall
from rustynet.adapters.firewall.nftables import NftablesFirewall, table_name_for
from rustynet.adapters.local_api import LocalApiServer
from rustynet.adapters.logging import set_level
from rustynet.adapters.node_state_file import FileNodeStateStore
from rustynet.adapters.relay.bridge import RelayBridge
from rustynet.adapters.relay.client import WebSocketRelayTransport
from rustynet.adapters.stun.nat_probe import SocketNatProbe, free_port
from rustynet.adapters.stun.tunnel_port import TunnelPortProbe
from rustynet.adapters.tcp_latency import TcpConnectLatency
from rustynet.adapters.tunnel.host_addresses import IpInterfaceAddresses, IpMonitorChanges
from rustynet.adapters.tunnel.memory import MemoryTunnelBackend
from rustynet.adapters.tunnel.prepunch import RawPrePunch
from rustynet.adapters.tunnel.wireguard_uapi import WireGuardUapiBackend
from rustynet.application.node import AgentSettings, NodeDaemon, NodePorts
from rustynet.application.node.nat_discovery import NatDiscovery
from rustynet.application.node.netcheck import NetcheckTools
from rustynet.domain.errors import RustynetError
from rustynet.domain.tls_pin import SpkiPin
from rustynet.ports.control_plane import ControlPlaneClient
from rustynet.ports.firewall import Firewall
from rustynet.ports.keystore import Keystore
from rustynet.ports.tunnel import BackendUnavailable, TunnelBackend

STATE_FILE: Final = "node-state.json"

_log = structlog.get_logger(__name__)


def https_control(url: str, pin: bytes) -> ControlPlaneClient:
    """The pinned TLS 1.3 client for `url` (pin = SHA-256 of the server's SPKI)."""
    return HttpControlPlane(ControlClient(url, SpkiPin(pin)))


async def select_backend(kind: str) -> TunnelBackend:
    """`auto`: kernel when its module is there, else userspace; or exactly the one asked."""
    if kind == "memory":
        return MemoryTunnelBackend()
    reason = "asked for"
    if kind in ("auto", "kernel"):
        # Imported only when asked for: a userspace node does not load the genl WireGuard code.
        from rustynet.adapters.tunnel.wireguard_kernel import (  # noqa: PLC0415
            WireGuardKernelBackend,
        )

        kernel = WireGuardKernelBackend()
        try:
            await kernel.check_available()
        except BackendUnavailable as exc:
            if kind == "kernel":
                raise
            reason = f"kernel backend unavailable ({exc})"
        else:
            _log.info("tunnel.backend_selected", backend=kernel.name, kind=kind)
            return kernel
    userspace = WireGuardUapiBackend()
    await userspace.check_available()
    _log.info("tunnel.backend_selected", backend=userspace.name, kind=kind, reason=reason)
    return userspace


def default_hostname() -> str:
    """This host's short name, lowercased (the control plane makes it a unique node name)."""
    return socket.gethostname().split(".", 1)[0].lower() or "node"


# --- the process ------------------------------------------------------------------------------


def _reload(path: Path | None, running: NodeConfig) -> NodeConfig:
    """SIGHUP: re-read; apply the log level; name the settings that need a restart."""
    try:
        fresh = load_node_config(path)
    except RustynetError as exc:
        _log.error("config.reload_failed", error=str(exc))
        return running
    set_level(fresh.log_level)
    changed = sorted(
        name
        for name in attrs.fields_dict(NodeConfig)
        if name != "log_level" and getattr(fresh, name) != getattr(running, name)
    )
    _log.info("config.reloaded", log_level=fresh.log_level, needs_restart=changed)
    return attrs.evolve(running, log_level=fresh.log_level)


def nat_discovery(config: NodeConfig, interfaces: IpInterfaceAddresses | None) -> NatDiscovery:
    """The tunnel port's reflexive discovery and NAT classification: STUN probes through the
    nft source-port rewrite (`adapters/stun/tunnel_port.py`)."""
    probe = TunnelPortProbe(OsEntropy())
    return NatDiscovery(probe, interfaces, SystemClock(), config.nat_interval)


def netcheck_tools(config: NodeConfig, interfaces: IpInterfaceAddresses | None) -> NetcheckTools:
    """`GET /netcheck`'s adapters: with a tunnel port (and a real backend) the tunnel-port
    probe, as NAT discovery uses it; otherwise a plain socket on an ephemeral port (the
    document says which). TCP connect times; the host's addresses."""
    tunnel = config.underlay_port is not None and interfaces is not None
    probe = TunnelPortProbe(OsEntropy()) if tunnel else SocketNatProbe(OsEntropy())
    return NetcheckTools(probe, TcpConnectLatency(), interfaces, free_port, tunnel_port=tunnel)


def build_daemon(config: NodeConfig, tunnel: TunnelBackend, keystore: Keystore) -> NodeDaemon:
    """Wire the real adapters around `tunnel` and `keystore`."""
    firewall: Firewall = (
        MemoryFirewall()
        if config.backend == "memory"
        else NftablesFirewall(table=table_name_for(config.interface))
    )
    port = config.underlay_port
    interfaces = None if config.backend == "memory" else IpInterfaceAddresses()
    # The relay path needs the tunnel's own UDP port (the bridge sends relayed packets to it)
    # and so does the pre-punch (datagrams leave as if from it): both come with a configured
    # underlay_port.
    ports = NodePorts(
        tunnel=tunnel,
        firewall=firewall,
        keystore=keystore,
        state_store=FileNodeStateStore(config.state_dir / STATE_FILE),
        clock=SystemClock(),
        entropy=OsEntropy(),
        control_factory=https_control,
        default_hostname=default_hostname,
        relay=None if port is None else WebSocketRelayTransport(ssl_context=pinned_ssl_context),
        bridge=None if port is None else RelayBridge(lambda: port),
        interfaces=interfaces,
        reflexive=None if port is None or interfaces is None else nat_discovery(config, interfaces),
        changes=None if interfaces is None else IpMonitorChanges(),
        netcheck=netcheck_tools(config, interfaces),
        puncher=None if port is None or config.backend == "memory" else RawPrePunch(port),
    )
    settings = AgentSettings(
        interface=config.interface,
        underlay_port=config.underlay_port,
        endpoints=config.underlay_endpoints,
        candidate_exclude=config.candidates_exclude,
    )
    return NodeDaemon(ports, settings)


async def run_daemon(config: NodeConfig, config_path: Path | None, keystore: Keystore) -> int:
    """Run until SIGTERM/SIGINT; tear everything down; 0 on a clean stop.

    `keystore`: the one `rustynetd_main` opened (`bootstrap/node_main.py`); closed here."""
    try:
        tunnel = await select_backend(config.backend)
        daemon = build_daemon(config, tunnel, keystore)
        api = LocalApiServer(daemon, config.socket, config.socket_group, netcheck=daemon)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        running = config

        def hangup() -> None:
            nonlocal running
            running = _reload(config_path, running)

        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, stop.set)
        loop.add_signal_handler(signal.SIGHUP, hangup)
        try:
            await daemon.start()
            await api.start()
            # Start-up garbage is gone; what is left lives as long as the daemon: keep it out
            # of the collector's generations so idle collections stay short.
            gc.collect()
            gc.freeze()
            sys.stderr.write(
                f"rustynetd: ready; socket {config.socket} backend {daemon.backend} "
                f"state {daemon.lifecycle}\n"
            )
            sys.stderr.flush()
            await stop.wait()
        finally:
            for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                loop.remove_signal_handler(signum)
            await api.close()
            await daemon.shutdown()
            _log.info("node.stopped")
    finally:
        keystore.close()
    return 0


__all__ = [
    "STATE_FILE",
    "build_daemon",
    "default_hostname",
    "https_control",
    "run_daemon",
    "select_backend",
]
