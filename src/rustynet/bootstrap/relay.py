"""Composition root of `rustynet-relay`: `init` writes relay.toml and a TLS key, `serve` runs it.

The one rule: the relay holds no tunnel or identity keys and no control-plane secret; its only
private key is its TLS key (0600, created exclusively: `init` never overwrites anything), and
it trusts relay tokens only through the control root fingerprint in its config.

    rustynet-relay init  --config FILE --url wss://HOST:PORT/v1/relay
                         --control-url https://CTL:PORT --root-fingerprint rnfp_...
                         [--id ID] [--listen ADDR:PORT]
    rustynet-relay serve --config FILE [--log-level LEVEL] [--log-format json|console]

Both take `--crypto-policy-override FILE` (`rustynet.adapters.cli.crypto_option`), checked
with the shipped crypto policy before anything else.

`init` prints the `[[relays]]` block for control.toml (id, url, `tls_spki_sha256` pin). The
root fingerprint is the `rnfp_...` every join token carries (and each node's state file).
Exit codes: 0 ok (serve: stopped by SIGTERM/SIGINT), 1 failed, 2 usage.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import structlog
import uvloop

from rustynet.adapters.cli.crypto_option import add_crypto_policy_option
from rustynet.adapters.clock import SystemClock
from rustynet.adapters.entropy import OsEntropy
from rustynet.adapters.http_api.tls import server_ssl_context
from rustynet.adapters.logging import configure_logging
from rustynet.adapters.relay.config import (
    RelayConfig,
    UdpConfig,
    load_relay_config,
    parse_relay_url,
    render_relay_config,
)
from rustynet.adapters.relay.revocation_feed import RevocationFeedFollower
from rustynet.adapters.relay.server import create_relay_app, make_runner
from rustynet.adapters.relay.udp_kernel import ForwardingUnavailableError, KernelForwarding
from rustynet.adapters.relay.udp_sessions import UdpRelay
from rustynet.adapters.relay.udp_userspace import UserspaceForwarding
from rustynet.adapters.support.config_values import parse_control_url, parse_listen
from rustynet.adapters.support.private_file import write_private
from rustynet.adapters.tls_cert import create_self_signed, spki_pin_of_pem_file
from rustynet.application.relay import RelayService
from rustynet.bootstrap.crypto_policy import load_crypto_policy
from rustynet.bootstrap.keystores import check_private_key_file
from rustynet.bootstrap.process import disable_core_dumps
from rustynet.bootstrap.serving import connection_guard, serve_until_stopped, stun_server
from rustynet.domain.errors import DecodeError, RustynetError
from rustynet.domain.keys import KeyFingerprint
from rustynet.domain.relay import RelayTrust, validate_relay_id
from rustynet.domain.udp_relay import AllocationTable

CERTIFICATE: Final = "tls/relay.crt"
PRIVATE_KEY: Final = "tls/relay.key"
LISTEN_BACKLOG: Final = 4096
_log = structlog.get_logger(__name__)


class RelayInitRefused(RustynetError):  # noqa: N818 - names the outcome
    """relay.toml or the TLS files already exist."""


def init_relay(args: argparse.Namespace) -> str:
    """`rustynet-relay init`: config + TLS key/cert; returns the text for the operator."""
    clock, entropy = SystemClock(), OsEntropy()
    now = clock.now()
    load_crypto_policy(now, args.crypto_policy_override)
    os.umask(0o077)
    config_path = Path(args.config).absolute()
    base = config_path.parent
    try:
        url = parse_relay_url(args.url)
        control_url = parse_control_url(args.control_url)
        root = KeyFingerprint.from_text(args.root_fingerprint)
        relay_id = validate_relay_id(args.id or f"relay-{entropy.token_bytes(4).hex()}")
        parts = urlsplit(url)
        listen = parse_listen(args.listen or f"0.0.0.0:{parts.port or 443}")
    except (ValueError, DecodeError) as exc:
        raise RelayInitRefused(f"bad argument: {exc}") from None
    existing = [p for p in (config_path, base / CERTIFICATE, base / PRIVATE_KEY) if p.exists()]
    if existing:
        raise RelayInitRefused(f"{existing[0]} already exists; refusing to overwrite it")
    (base / "tls").mkdir(mode=0o700, parents=True, exist_ok=True)
    https_url = f"https://{parts.netloc}"
    cert = create_self_signed(https_url, base / CERTIFICATE, base / PRIVATE_KEY, now=now)
    config = RelayConfig(
        relay_id=relay_id,
        url=url,
        listen=listen,
        control_url=control_url,
        root_fingerprint=root,
        certificate=cert.certificate,
        private_key=cert.private_key,
    )
    write_private(config_path, render_relay_config(config, base).encode("utf-8"), replace=False)
    return (
        f"wrote {config_path}, {cert.certificate} and {cert.private_key} (0600)\n"
        f"TLS SPKI pin: {cert.pin.to_text()}\n"
        "add to control.toml:\n"
        "[[relays]]\n"
        f'id = "{relay_id}"\n'
        f'url = "{url}"\n'
        f'tls_spki_sha256 = "{cert.pin.to_text()}"\n'
    )


async def _serve(config: RelayConfig) -> None:
    clock, entropy = SystemClock(), OsEntropy()
    trust = RelayTrust(config.relay_id, config.control_url, config.root_fingerprint)
    service = RelayService(trust, config.limits, clock, entropy)
    pin = spki_pin_of_pem_file(config.certificate)
    ssl_context = server_ssl_context(config.certificate, config.private_key)
    guard = connection_guard(config.connections)
    stun = stun_server(config.stun.enabled, config.stun.listen)
    metrics = (guard.render_metrics,) + ((stun.render_metrics,) if stun else ())
    udp, forwarding = await _udp_sessions(config.udp, clock, entropy)
    runner = make_runner(create_relay_app(service, extra_metrics=metrics, udp=udp))
    # The control plane's signed revocation feed: sessions of revoked nodes close within ~1 s.
    follower = (
        asyncio.create_task(RevocationFeedFollower(service, config.control_url).follow())
        if config.revocation_feed
        else None
    )
    try:
        # Deadlines and caps on every connection before the WebSocket upgrade ([connections]).
        await serve_until_stopped(
            runner,
            config.listen,
            ssl_context=ssl_context,
            guard=guard,
            backlog=LISTEN_BACKLOG,
            ready=f"rustynet-relay: ready; relay {config.relay_id}",
            pin=pin,
            stun=stun,
        )
    finally:
        if follower is not None:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
        if udp is not None:
            await udp.close()
        if udp is not None and forwarding is not None:
            await forwarding.stop(list(udp.table))


async def _udp_sessions(
    udp: UdpConfig | None, clock: SystemClock, entropy: OsEntropy
) -> tuple[UdpRelay | None, KernelForwarding | None]:
    """UDP relay sessions when `[udp]` is set: forwarded by the kernel when the process may
    change nftables (CAP_NET_ADMIN, net.ipv4.ip_forward=1), else by the userspace fallback."""
    if udp is None:
        return None, None
    table = AllocationTable(udp.limits, entropy)
    forwarding = KernelForwarding(udp.address, udp.limits)
    try:
        await forwarding.start()
    except ForwardingUnavailableError as exc:
        _log.warning("relay.udp_userspace_fallback", error=str(exc)[:200])
        fallback = UserspaceForwarding(udp.address)
        relay = UdpRelay(udp.address, table, fallback, clock, ports=fallback)
        await relay.start()
        return relay, None
    relay = UdpRelay(udp.address, table, forwarding, clock)
    await relay.start()
    return relay, forwarding


def serve_relay(args: argparse.Namespace) -> int:
    """`rustynet-relay serve`: run until SIGTERM/SIGINT, then stop cleanly (exit 0)."""
    load_crypto_policy(SystemClock().now(), args.crypto_policy_override)
    os.umask(0o077)
    configure_logging(args.log_level, json=args.log_format == "json")
    config = load_relay_config(Path(args.config))
    check_private_key_file(config.private_key)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(_serve(config))
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The `rustynet-relay` parser."""
    parser = argparse.ArgumentParser(
        prog="rustynet-relay",
        description="Rustynet relay. Exit codes: 0 ok, 1 failed, 2 usage.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init = sub.add_parser("init", help="write relay.toml and a self-signed TLS key")
    init.add_argument("--config", type=Path, required=True, metavar="FILE")
    init.add_argument("--url", required=True, help="public URL, wss://HOST:PORT/v1/relay")
    init.add_argument("--control-url", required=True, help="control plane URL (token issuer)")
    init.add_argument("--root-fingerprint", required=True, help="control root key, rnfp_...")
    init.add_argument("--id", help="relay id, [a-z0-9-]{1,64} (default: relay-<random>)")
    init.add_argument("--listen", metavar="ADDR:PORT", help="bind address (default 0.0.0.0:PORT)")
    add_crypto_policy_option(init)
    serve = sub.add_parser("serve", help="run the relay until SIGTERM")
    serve.add_argument("--config", type=Path, required=True, metavar="FILE")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))
    serve.add_argument("--log-format", choices=("json", "console"), default="json")
    add_crypto_policy_option(serve)
    return parser


def relay_main(argv: Sequence[str] | None = None) -> int:
    """`rustynet-relay` console script."""
    disable_core_dumps()
    args = build_parser().parse_args(argv)
    try:
        if args.command == "init":
            sys.stdout.write(init_relay(args))
            return 0
        return serve_relay(args)
    except (RustynetError, OSError) as exc:
        sys.stderr.write(f"rustynet-relay: {exc}\n")
        return 1


__all__ = ["init_relay", "relay_main", "serve_relay"]
