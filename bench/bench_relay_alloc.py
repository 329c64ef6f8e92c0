"""UDP relay allocations at scale (issue 16 "Numbers"): 1,000 concurrent allocations on a real
`rustynet-relay` with `[udp]` and kernel forwarding, asked by simulated nodes.

Part of `bench/bench_relay_udp.py` (`allocations()`); run alone as root for a quick look:

    .venv/bin/python -m bench.bench_relay_alloc --pairs 1000

The lab (removed at the end, even on failure): a relay namespace (203.0.113.10, ip_forward on,
so the relay installs its nftables table) and a nodes namespace (203.0.113.11) joined by a veth.
Everything else runs in a child process inside the nodes namespace (`--child`), which:

1. writes a relay.toml (`rustynet-relay init`, then `[udp]` with a port range of 2 x PAIRS and
   `total = PAIRS` (plus the probes'), `[limits]` handshakes raised so one source may open every
   session at once, no revocation feed, no STUN) and starts `rustynet-relay serve` in the relay
   namespace;
2. opens NODES authenticated WebSocket sessions (real relay tokens signed by a certified
   signing key, as the control plane issues them). Each node keeps the default per-node bound
   (`UdpRelayLimits.per_node`, 16 allocations), so PAIRS pairs need 2 x PAIRS / 16 nodes: a
   circulant graph, node i paired with i+1 .. i+8;
3. both sides of every pair ask (`udp_allocate`), then every side is bound by a valid bind
   packet from a distinct source port; set-up = first bind sent -> every allocation's elements
   present in the relay's `to_peer` map (polled with `nft -j`);
4. reads the relay's VmRSS (no session, sessions, allocations asked, allocations installed),
   the element count of each set/map and the table's rule count;
5. with every allocation installed, one more pair (of PROBE_PAIRS x 2 extra sessions) asks
   and binds: binds -> its elements present, on a quiet relay; then every session renews its
   token at once and another pair does the same (its install shares the queue with every
   timeout refresh the renewals caused; installs go first);
6. closes every session (the relay tears every allocation down: elements and conntrack
   entries) and times until the maps are empty, then stops the relay (SIGTERM) and checks that
   its table is gone.

Relay tokens live at most 120 s: during the set-up the sessions renew theirs 100 s after they
opened (and every 100 s after that), then once more in step 5. A renewal refreshes every
active allocation's timeouts, so a set-up still running at 100 s shares the queue with them;
`renewals_during_setup` in the figures says whether that happened.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

from rustynet.adapters.control_client import pinned_ssl_context
from rustynet.adapters.entropy import OsEntropy
from rustynet.adapters.relay.client import WebSocketRelaySession, WebSocketRelayTransport
from rustynet.adapters.relay.udp_kernel import TABLE
from tests.key_chain import SigningChain
from tests.netns import NetLab

from rustynet.domain.keys import Purpose, SigningKey
from rustynet.domain.tls_pin import SpkiPin
from rustynet.domain.tokens import TokenKind, issue_token
from rustynet.domain.udp_relay import UdpGrant, UdpRelayLimits
from rustynet.ports.relay import RelayAuth, RelayEndpoint

RELAY_ADDRESS: Final = "203.0.113.10"
NODES_ADDRESS: Final = "203.0.113.11"
RELAY_PORT: Final = 8444
PORT_FIRST: Final = 40000
BIND_SOURCE_FIRST: Final = 10000  # bind packets come from 10000, 10001, ...
ISSUER: Final = "https://control.example.net:8443"
RELAY_ID: Final = "relay-bench"
PER_NODE: Final = UdpRelayLimits().per_node
PROBE_PAIRS: Final = 2  # one pair installed on a quiet relay, one right after renewals
RENEW_EVERY_S: Final = 100.0  # tokens live 120 s; a renewal refreshes every allocation
RELAY: Final = [
    sys.executable,
    "-c",
    "from rustynet.bootstrap.relay import relay_main; raise SystemExit(relay_main())",
]
ENTROPY: Final = OsEntropy()


# --- the figures and their budgets (bench/budgets.toml [relay_udp]) ------------------------------

# (figure, where in bench_relay_udp's results, budget key, "max" or "min")
ALLOCATION_CHECKS: Final = (
    ("allocations installed at once", ("allocations", "installed"), "allocations_min", "min"),
    ("allocations: relay RSS KiB per allocation", ("allocations", "kb_per_allocation"),
     "allocation_memory_max_kb", "max"),
    ("allocations: nft elements per allocation", ("allocations", "elements_per_allocation"),
     "allocation_elements_max", "max"),
    ("allocations: nft rules in the relay table", ("allocations", "rules"),
     "allocation_rules_max", "max"),
    ("allocations: set-up per s (binds → elements)", ("allocations", "setup_per_s"),
     "allocation_setup_min_per_s", "min"),
    ("allocations: one more pair, binds → installed s", ("allocations", "probe_install_quiet_s"),
     "bind_to_install_max_s", "max"),
    ("allocations: the same right after every session renewed",
     ("allocations", "probe_install_after_renewals_s"), "bind_to_install_max_s", "max"),
    ("allocations: teardown per s (sessions closed → maps empty)",
     ("allocations", "teardown_per_s"), "allocation_teardown_min_per_s", "min"),
)  # fmt: skip


def allocation_figures(raw: dict[str, Any]) -> dict[str, Any]:
    """The child's figures plus the derived ones the budgets name."""
    table = raw.get("table", {})
    elements = table.get("elements", {})
    if "error" in raw or not elements:
        return raw
    return {
        **raw,
        "installed": elements.get("to_peer", 0) // 2,
        "elements_per_allocation": round(sum(elements.values()) / raw["pairs"], 2),
        "rules": table.get("rules"),
    }


def summary(figures: dict[str, Any]) -> str:
    """One markdown line on the allocation run (what the budget table does not show)."""
    if "error" in figures:
        return f"Allocations: {figures['error'][:300]}"
    rss = figures["rss_kb"]
    return (
        f"Allocations: {figures['pairs']} pairs over {figures['nodes']} relay sessions "
        f"(per_node {figures['per_node']}); relay VmRSS KiB no session {rss['no_session']}, "
        f"sessions {rss['sessions']}, asked {rss['asked']}, installed {rss['installed']}; "
        f"elements {figures['table']['elements']}; asks {figures['asks_per_s']}/s; relay stop "
        f"{figures['relay_stop_s']} s, table left {figures['table_left_after_stop']}; "
        f"relay.toml raised: {figures['relay_limits_raised']}."
    )


# --- the parent: the two namespaces ---------------------------------------------------------------


def allocations(pairs: int, timeout: float = 600.0) -> dict[str, Any]:
    """Run the child in a fresh two-namespace lab; its figures (or {"error": ...})."""
    with NetLab() as lab:
        relay_ns, nodes_ns = lab.namespace("rnar"), lab.namespace("rnan")
        lab.veth(relay_ns, f"{RELAY_ADDRESS}/24", nodes_ns, f"{NODES_ADDRESS}/24")
        relay_ns.run("sysctl", "-qw", "net.ipv4.ip_forward=1")
        argv = [sys.executable, "-m", "bench.bench_relay_alloc", "--child", relay_ns.name]
        argv += ["--pairs", str(pairs)]
        try:
            done = nodes_ns.run(*argv, check=False, timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"the allocation run did not finish within {timeout} s"}
        lines = done.stdout.strip().splitlines()
        if done.returncode != 0 or not lines:
            return {"error": f"exit {done.returncode}: {done.stderr.strip()[-1500:]}"}
        result: dict[str, Any] = json.loads(lines[-1])
        return result


# --- the child: relay, nodes, measurements --------------------------------------------------------


class Chain:
    """The control plane's key chain and the relay tokens it issues."""

    def __init__(self) -> None:
        now = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=1)
        scope = frozenset({Purpose.PEER_MAP, Purpose.REVOCATION})
        self.chain = SigningChain.make(ENTROPY, now, scope=scope)

    def auth(self, node_id: str, identity: SigningKey) -> RelayAuth:
        """A relay session's authentication with a fresh 120 s relay token."""
        return RelayAuth(
            node_id=node_id,
            identity_key=identity.public_key.to_text(),
            token=self.token(node_id, identity),
            root_certificate=self.chain.root_certificate.to_text(),
            signing_certificates=(self.chain.signing_certificate.to_text(),),
            sign=lambda m: identity.sign(Purpose.RELAY_AUTH, m),
        )

    def token(self, node_id: str, identity: SigningKey) -> str:
        """A relay token for `node_id`, bound to `identity`, audience the bench relay."""
        return issue_token(
            self.chain.signing_key,
            kind=TokenKind.RELAY,
            issuer=ISSUER,
            subject=node_id,
            audience=RELAY_ID,
            bound_identity=identity.public_key,
            now=datetime.now(UTC),
            lifetime=timedelta(seconds=120),
            entropy=ENTROPY,
        )


def relay_config(workdir: Path, chain: Chain, pairs: int, nodes: int) -> tuple[Path, SpkiPin]:
    """`rustynet-relay init`, then the bench's tables (see the module docstring)."""
    config = workdir / "relay.toml"
    out = subprocess.run(
        [*RELAY, "init", "--config", str(config), "--id", RELAY_ID,
         "--url", f"wss://{RELAY_ADDRESS}:{RELAY_PORT}/v1/relay", "--control-url", ISSUER,
         "--root-fingerprint", chain.chain.root_key.public_key.fingerprint().to_text(),
         "--listen", f"{RELAY_ADDRESS}:{RELAY_PORT}"],
        capture_output=True, text=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    pin = next(w.strip('"') for w in out.split() if w.startswith('"sha256//'))
    text = config.read_text()
    for key, value in (
        ("revocation_feed", "false"),
        ("enabled", "false"),  # [stun]
        ("handshakes_per_second", str(nodes)),  # every session from one address at once
        ("handshakes_burst", str(nodes)),
    ):
        text, found = re.subn(rf"^{key} = .*$", f"{key} = {value}", text, count=1, flags=re.M)
        if not found:
            raise RuntimeError(f"relay init wrote no {key}: the bench cannot set it")
    text += (
        f'\n[udp]\naddress = "{RELAY_ADDRESS}"\nport_first = {PORT_FIRST}\n'
        f"port_last = {PORT_FIRST + 2 * pairs - 1}\ntotal = {pairs}\n"  # pairs: with the probes
    )
    config.write_text(text)
    return config, SpkiPin.from_text(pin)


def rss_kb(pid: int) -> int:
    """VmRSS of a process, KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def nft_table(relay_ns: str) -> dict[str, Any]:
    """Element count per set/map and the rule count of the relay's table ({} when gone)."""
    done = subprocess.run(
        ["ip", "netns", "exec", relay_ns, "nft", "-j", "list", "table", "ip", TABLE],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return {}
    items = json.loads(done.stdout)["nftables"]
    sets = {
        body["name"]: len(body.get("elem", []))
        for item in items
        for kind in ("set", "map")
        if (body := item.get(kind)) is not None
    }
    return {"elements": sets, "rules": sum(1 for item in items if "rule" in item)}


def map_size(relay_ns: str, name: str = "to_peer") -> int:
    """Elements in one map of the relay's table (0 when it is gone): the cheap poll."""
    done = subprocess.run(
        ["ip", "netns", "exec", relay_ns, "nft", "-j", "list", "map", "ip", TABLE, name],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        return 0
    items = json.loads(done.stdout)["nftables"]
    return sum(len(i["map"].get("elem", [])) for i in items if "map" in i)


def pairs_of(nodes: int, pairs: int) -> list[tuple[int, int]]:
    """A circulant graph: node i with i+1 .. i+PER_NODE/2 (mod nodes), the first `pairs`."""
    found = [(i, (i + k) % nodes) for k in range(1, PER_NODE // 2 + 1) for i in range(nodes)]
    return found[:pairs]


async def wait_until(check: Callable[[], bool], timeout: float, interval: float = 0.5) -> float:
    """Seconds until `check()` is true (raises TimeoutError past `timeout`)."""
    started = time.monotonic()
    while not check():
        if time.monotonic() - started > timeout:
            raise TimeoutError("not reached")
        await asyncio.sleep(interval)
    return time.monotonic() - started


def send_binds(grants: Sequence[UdpGrant], first_port: int = BIND_SOURCE_FIRST) -> None:
    """One valid bind packet per grant, each from its own source port."""
    for number, grant in enumerate(grants):
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((NODES_ADDRESS, first_port + number))
            sock.sendto(grant.bind_packet(1), (grant.relay_address, grant.relay_port))


async def start_relay(relay_ns: str, workdir: Path, chain: Chain, pairs: int, nodes: int) -> Relay:
    """`rustynet-relay serve` in the relay namespace, ready and forwarding in the kernel."""
    config, pin = relay_config(workdir, chain, pairs, nodes)
    log = workdir / "relay.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            ["ip", "netns", "exec", relay_ns, *RELAY, "serve", "--config", str(config)],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    relay = Relay(proc, pin, log)
    try:
        await wait_until(lambda: "rustynet-relay: ready" in log.read_text(), 30)
    except BaseException:
        relay.stop()
        raise
    if "udp_userspace_fallback" in log.read_text():
        relay.stop()
        raise RuntimeError("the relay fell back to userspace forwarding")
    return relay


@dataclass
class Relay:
    """The relay process (`ip netns exec` execs it: the PID is the relay's own)."""

    proc: subprocess.Popen[bytes]
    pin: SpkiPin
    log: Path

    def rss_kb(self) -> int:
        """VmRSS of the relay, KiB."""
        return rss_kb(self.proc.pid)

    def stop(self) -> None:
        """SIGKILL when still running (the clean stop is measured in `teardown`)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


async def open_sessions(
    relay: Relay, chain: Chain, nodes: int
) -> tuple[list[WebSocketRelaySession], list[SigningKey]]:
    """`nodes` authenticated sessions, opened at once."""
    endpoint = RelayEndpoint(RELAY_ID, f"wss://{RELAY_ADDRESS}:{RELAY_PORT}/v1/relay", relay.pin)
    transport = WebSocketRelayTransport(ssl_context=pinned_ssl_context, timeout=60.0)
    identities = [SigningKey.generate(ENTROPY) for _ in range(nodes)]
    sessions = await asyncio.gather(
        *(transport.connect(endpoint, chain.auth(f"node-{i}", k)) for i, k in enumerate(identities))
    )
    return list(sessions), identities


async def set_up(
    relay_ns: str, sessions: Sequence[WebSocketRelaySession], plan: Sequence[tuple[int, int]],
    relay: Relay,
) -> dict[str, Any]:  # fmt: skip
    """Both sides of every pair ask, then bind: the times and rates, the RSS once asked."""
    out: dict[str, Any] = {}
    started = time.monotonic()
    asks = [sessions[i].allocate_udp(f"node-{j}") for i, j in plan]
    asks += [sessions[j].allocate_udp(f"node-{i}") for i, j in plan]
    grants = list(await asyncio.gather(*asks))
    out["asks_s"] = round(time.monotonic() - started, 2)
    out["asks_per_s"] = round(len(grants) / max(out["asks_s"], 0.01), 1)
    out["rss_asked_kb"] = relay.rss_kb()
    started = time.monotonic()
    send_binds(grants)
    sent = time.monotonic() - started
    setup = sent + await wait_until(lambda: map_size(relay_ns) >= 2 * len(plan), 300)
    out["binds_sent_s"] = round(sent, 2)
    out["setup_s"] = round(setup, 2)
    out["setup_per_s"] = round(len(plan) / setup, 1)
    return out


async def tear_down(
    relay_ns: str, sessions: list[WebSocketRelaySession], relay: Relay, out: dict[str, Any]
) -> None:
    """Every session closes -> the maps are empty; then SIGTERM -> the relay has exited."""
    started = time.monotonic()
    await asyncio.gather(*(s.close() for s in sessions))
    sessions.clear()
    await wait_until(lambda: map_size(relay_ns) == 0, 300)
    out["teardown_s"] = round(time.monotonic() - started, 2)
    out["teardown_per_s"] = round((out["pairs"] + PROBE_PAIRS) / out["teardown_s"], 1)
    out["table_after_teardown"] = nft_table(relay_ns)
    started = time.monotonic()
    relay.proc.send_signal(signal.SIGTERM)
    relay.proc.wait(60)
    out["relay_stop_s"] = round(time.monotonic() - started, 2)
    out["table_left_after_stop"] = bool(nft_table(relay_ns))
    out["relay_exit"] = relay.proc.returncode


async def probe(
    relay_ns: str, sessions: Sequence[WebSocketRelaySession], pair: tuple[int, int], before: int
) -> float:
    """One more pair asks and binds (`before` allocations installed already): seconds from its
    binds to its elements present in `@to_peer`."""
    a, b = pair
    grants = [
        await sessions[a].allocate_udp(f"node-{b}"),
        await sessions[b].allocate_udp(f"node-{a}"),
    ]
    started = time.monotonic()
    send_binds(grants, BIND_SOURCE_FIRST + 2 * before)  # ports no earlier bind used
    await wait_until(lambda: map_size(relay_ns) >= 2 * (before + 1), 300, interval=0.05)
    return round(time.monotonic() - started, 2)


async def probes(
    relay_ns: str,
    sessions: Sequence[WebSocketRelaySession],
    chain: Chain,
    identities: Sequence[SigningKey],
    installed: int,
) -> dict[str, float]:
    """With `installed` allocations in place: one new pair's bind -> install on a quiet relay,
    then again right after every session renewed its token (each renewal queues a timeout
    refresh for that node's active allocations; the new pair's install goes first). The probe
    pairs are the last 2 x PROBE_PAIRS sessions."""
    first = len(sessions) - 2 * PROBE_PAIRS
    quiet = await probe(relay_ns, sessions, (first, first + 1), installed)
    started = time.monotonic()
    await renew_all(sessions, chain, identities)
    renewed = round(time.monotonic() - started, 2)
    busy = await probe(relay_ns, sessions, (first + 2, first + 3), installed + 1)
    return {
        "probe_install_quiet_s": quiet,
        "renew_all_s": renewed,
        "probe_install_after_renewals_s": busy,
    }


async def run_child(relay_ns: str, pairs: int) -> dict[str, Any]:
    """Everything in the module docstring's steps 1-6; the figures."""
    nodes = max(-(-2 * pairs // PER_NODE), PER_NODE + 1)
    plan = pairs_of(nodes, pairs)
    chain = Chain()
    out: dict[str, Any] = {"pairs": len(plan), "nodes": nodes, "per_node": PER_NODE}
    capacity, sessions_max = len(plan) + PROBE_PAIRS, nodes + 2 * PROBE_PAIRS
    out["relay_limits_raised"] = (
        f"[udp] port_first {PORT_FIRST} port_last {PORT_FIRST + 2 * capacity - 1} total "
        f"{capacity}; [limits] handshakes_per_second = handshakes_burst = {sessions_max}"
    )
    workdir = Path(tempfile.mkdtemp(prefix="rustynet-bench-alloc-"))
    relay = await start_relay(relay_ns, workdir, chain, capacity, sessions_max)
    sessions: list[WebSocketRelaySession] = []
    try:
        rss = {"no_session": relay.rss_kb()}
        started = time.monotonic()
        sessions, identities = await open_sessions(relay, chain, sessions_max)
        out["sessions_open_s"] = round(time.monotonic() - started, 2)
        rss["sessions"] = relay.rss_kb()
        renewals: list[float] = []
        renewer = asyncio.create_task(renew(sessions, chain, identities, renewals))
        try:
            out |= await set_up(relay_ns, sessions, plan, relay)
            rss["asked"] = out.pop("rss_asked_kb")
            await asyncio.sleep(1.0)  # let the relay settle before reading its memory
            rss["installed"] = relay.rss_kb()
            out["table"] = nft_table(relay_ns)
        finally:
            renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewer
        out["renewals_during_setup"] = len(renewals)
        out |= await probes(relay_ns, sessions, chain, identities, len(plan))
        out["rss_kb"] = rss
        out["kb_per_allocation"] = round((rss["installed"] - rss["sessions"]) / len(plan), 2)
        await tear_down(relay_ns, sessions, relay, out)
    finally:
        for session in sessions:
            await session.close()
        relay.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return out


async def renew(
    sessions: Sequence[WebSocketRelaySession],
    chain: Chain,
    identities: Sequence[SigningKey],
    renewals: list[float],
) -> None:
    """Renew every session's token every RENEW_EVERY_S (tokens live 120 s); counts them."""
    while True:
        await asyncio.sleep(RENEW_EVERY_S)
        renewals.append(time.monotonic())
        await renew_all(sessions, chain, identities)


async def renew_all(
    sessions: Sequence[WebSocketRelaySession], chain: Chain, identities: Sequence[SigningKey]
) -> None:
    """Every session renews its token (a fresh 120 s), all at once."""
    await asyncio.gather(
        *(
            s.renew(chain.token(f"node-{i}", key))
            for i, (s, key) in enumerate(zip(sessions, identities, strict=True))
        )
    )


def main(argv: Sequence[str] | None = None) -> int:
    """The parent (default) or the child (`--child RELAY_NS`)."""
    parser = argparse.ArgumentParser(prog="bench_relay_alloc")
    parser.add_argument("--pairs", type=int, default=1000)
    parser.add_argument("--child", metavar="RELAY_NS")
    args = parser.parse_args(argv)
    if args.child is not None:
        print(json.dumps(asyncio.run(run_child(args.child, args.pairs))), flush=True)
        return 0
    if os.geteuid() != 0:
        print("bench_relay_alloc: needs root", file=sys.stderr)
        return 2
    print(json.dumps(allocations(args.pairs), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
