"""Control-plane benchmark over real HTTPS: enrollment rate and peer-map propagation.

Run standalone (not part of the test suite; `nox -s bench -- control` runs the defaults):

    .venv/bin/python -m bench.bench_control                     # N = 1000 and 10000, SQLite
    .venv/bin/python -m bench.bench_control --nodes 200 --output /tmp/control-200.json
    .venv/bin/python -m bench.bench_control --database postgresql://user@host/db

Each N in `--nodes` is a separate run on a fresh server. The figures are printed next to their
budgets from bench/budgets.toml [control]; JSON goes to bench/results/control.json and a
markdown report (with propagation latency vs node count) to bench/results/control.md; the exit
status is 1 when a budgeted figure misses.

What it does: `rustynet-control init` into a temporary directory, `serve` as a subprocess
(only that process is stopped at the end; the directory is removed), then through the pinned
TLS 1.3 client (`rustynet.adapters.control_client`):

1. The admin sets policy A (nodes in blocks of 50 names: each block may reach itself on
   tcp/22, so every node sees ~49 peers, ~10 KB maps) and creates ONE reusable join key
   (`uses` = N, tag:bench, TTL 1 h).
2. Baseline: N operations, each a new TLS connection + 2 x `GET /healthz` (the shape of an
   enrollment: one handshake, two requests), at the given concurrency.
   Enrollment: N simulated nodes enroll (enroll + proof of possession) at the same concurrency.
   Keys and tunnel-key bindings are made before the clock starts. The per-IP limit (burst 20,
   two takes per enrollment) is real: clients bind distinct loopback source addresses
   (127.1.x.y), 8 nodes per address.
3. Propagation: every node fetches its map, then holds `GET /v1/peermap?after=SERIAL` on its
   own connection (start jittered). Once /metrics shows N waiters, the admin PUTs policy B
   (the blocks shifted by 25: every node's peer set changes). Latency per node = PUT start →
   that node's response with a newer serial. Every map is then verified with
   `PeerMapAcceptor` (signature chain, addressee, serial) and its peer set checked against B.
   Baseline: the same N open connections fire `GET /healthz` at once (the transport fan-out
   floor for tiny responses).
   Revocation: all nodes wait again, the admin revokes one node; latency until every node
   that had it as a peer holds a (verified) map without it.
4. Enrollment while connected: all N nodes hold long-polls again and `--enroll-extra` more
   nodes enroll (the target is "≥ 200/s while 10,000 nodes are connected").
5. Server RSS before the long-polls and with N waiting (→ KB per connected node), server CPU
   seconds per phase.

Targets (budgets.toml [control], performance-budgets.md): policy change / revocation applied on
every node p95 ≤ 0.3 s at 1,000 nodes, ≤ 2 s at 10,000; enrollment ≥ 200 nodes/s (SQLite, 2
cores) while 10,000 are connected; ≤ 100 KB per connected node.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import os
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final

import aiohttp
import attrs
import uvloop
from bench.report import BIN, RESULTS, budgets_of, start_py_spy, write_results
from rustynet.adapters.control_client import ControlClient, NodeAuth, pinned_ssl_context
from rustynet.adapters.entropy import OsEntropy

from rustynet.domain.enrollment import EnrollmentClient, IssueChallenge
from rustynet.domain.join_tokens import JoinToken
from rustynet.domain.key_hierarchy import TunnelKeyBinding, issue_tunnel_key_binding
from rustynet.domain.keys import (
    SigningKey,
    TunnelKey,
    TunnelKeyScheme,
    TunnelPrivateKey,
    b64decode,
    b64encode,
)
from rustynet.domain.netmap import PeerMap, PeerMapAcceptor, PeerMapTrust
from rustynet.domain.tls_pin import SpkiPin
from rustynet.ports.control_api import ControlRejected

CONTROL: Final = str(BIN / "rustynet-control")
BLOCK: Final = 50  # nodes per policy block: ~49 peers per map (N/2 when N < 100)
NODES_PER_IP: Final = 8  # 2 per-IP takes per enrollment, burst 20
TAG: Final = "tag:bench"
START_TIMEOUT: Final = 60.0
PHASE_TIMEOUT: Final = 120.0

# --- small helpers -------------------------------------------------------------------------------


def percentile(samples: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    rank = max(1, -(-len(ordered) * q // 100))
    return ordered[int(rank) - 1]


def dist(samples: Sequence[float]) -> dict[str, float]:
    """p50 / p95 / max in milliseconds."""
    if not samples:
        return {"count": 0}
    return {
        "count": len(samples),
        "p50_ms": round(percentile(samples, 50) * 1000, 2),
        "p95_ms": round(percentile(samples, 95) * 1000, 2),
        "max_ms": round(max(samples) * 1000, 2),
    }


def source_ip(index: int) -> str:
    """Loopback source address of node `index` (8 nodes per address, never 127.0.0.1)."""
    k = index // NODES_PER_IP
    return f"127.1.{k // 250}.{k % 250 + 1}"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


FD_WANTED: Final = 65536


def raise_fd_limit() -> None:
    """Server and client each hold > N sockets (the client, at 10,000 nodes, also keeps the
    sockets of keep-alive connections the server closed until aiohttp reaps them: > 20,000);
    root may raise the hard limit too. The child inherits the limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < FD_WANTED and os.geteuid() == 0:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (FD_WANTED, FD_WANTED))
            return
    if soft < min(hard, FD_WANTED):
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, FD_WANTED), hard))


def client_cpu_seconds() -> float:
    """CPU (user + system) of this process: the simulated nodes share the machine's cores."""
    times = os.times()
    return times.user + times.system


def hostname(index: int) -> str:
    return f"bench-{index:05d}"


# --- the server ----------------------------------------------------------------------------------


@attrs.define
class Server:
    """`rustynet-control serve` as a subprocess (stderr pumped into `log`)."""

    proc: subprocess.Popen[str]
    log: list[str]
    reader: threading.Thread

    def rss_kb(self) -> int:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def cpu_seconds(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        ticks = os.sysconf("SC_CLK_TCK")
        return (int(fields[11]) + int(fields[12])) / ticks  # utime + stime

    def stop(self) -> int | None:
        """SIGTERM this PID only (SIGKILL after 15 s)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.reader.join(5)
        return self.proc.returncode


def server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    env["HOME"] = "/nonexistent"
    return env


def init_server(data_dir: Path, url: str, database: str) -> None:
    listen = "127.0.0.1:" + url.rsplit(":", 1)[1]
    cmd = [CONTROL, "init", "--data-dir", str(data_dir), "--url", url, "--listen", listen]
    cmd += ["--keystore", "file"]
    if database != "sqlite":
        cmd += ["--database", database]
    done = subprocess.run(cmd, capture_output=True, text=True, env=server_env(), check=False)
    if done.returncode != 0:
        raise RuntimeError(f"rustynet-control init failed:\n{done.stderr}")


def start_server(data_dir: Path) -> Server:
    proc = subprocess.Popen(
        [CONTROL, "serve", "--data-dir", str(data_dir), "--log-level", "warning"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=server_env(),
    )
    log: list[str] = []
    ready = threading.Event()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if len(log) < 10_000:
                log.append(line)
            if "ready;" in line:
                ready.set()

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    server = Server(proc, log, reader)
    if not ready.wait(START_TIMEOUT):
        server.stop()
        raise RuntimeError("server did not start:\n" + "".join(log[-50:]))
    return server


# --- policies ------------------------------------------------------------------------------------


def blocks(names: Sequence[str], offset: int) -> list[list[str]]:
    """Names rotated by `offset`, cut into blocks of BLOCK (of N/2 for N < 2 x BLOCK, so the
    shift by half a block changes every view)."""
    size = block_size(len(names))
    rotated = list(names[offset:]) + list(names[:offset])
    return [rotated[i : i + size] for i in range(0, len(rotated), size)]


def block_size(n: int) -> int:
    return max(2, min(BLOCK, n // 2))


def policy_document(names: Sequence[str], offset: int) -> dict[str, Any]:
    """Each block may reach itself on tcp/22 (visibility: the block mates)."""
    groups = {f"group:b{i}": block for i, block in enumerate(blocks(names, offset))}
    return {
        "groups": groups,
        "tagOwners": {TAG: []},
        "acls": [
            {"action": "accept", "src": [g], "dst": [f"{g}:22"], "proto": "tcp"} for g in groups
        ],
    }


def expected_peers(names: Sequence[str], offset: int) -> dict[str, frozenset[str]]:
    """Name → the names it must see under the policy with this offset."""
    out: dict[str, frozenset[str]] = {}
    for block in blocks(names, offset):
        members = frozenset(block)
        for name in block:
            out[name] = members - {name}
    return out


# --- simulated nodes -----------------------------------------------------------------------------


@attrs.define
class SimNode:
    """One simulated node: pre-made keys, then its enrollment result and peer-map state."""

    index: int
    ip: str
    identity: SigningKey
    tunnel: TunnelKey
    binding: TunnelKeyBinding
    auth: NodeAuth | None = None
    acceptor: PeerMapAcceptor | None = None
    client: ControlClient | None = None
    received: tuple[float, str] | None = None  # (perf_counter, envelope) of the phase
    last_map: PeerMap | None = None

    @property
    def name(self) -> str:
        return hostname(self.index)


def make_nodes(count: int, first: int = 0) -> list[SimNode]:
    entropy = OsEntropy()
    now = datetime.now(UTC)
    nodes = []
    for i in range(first, first + count):
        identity = SigningKey.generate(entropy)
        tunnel = TunnelPrivateKey.generate(entropy, TunnelKeyScheme.X25519).public_key
        binding = issue_tunnel_key_binding(identity, tunnel, now)
        nodes.append(SimNode(i, source_ip(i), identity, tunnel, binding))
    return nodes


async def bounded(
    concurrency: int, jobs: Sequence[Callable[[], Awaitable[float]]]
) -> tuple[float, list[float]]:
    """Run jobs at most `concurrency` at a time; (wall seconds, each job's returned latency)."""
    gate = asyncio.Semaphore(concurrency)

    async def run(job: Callable[[], Awaitable[float]]) -> float:
        async with gate:
            return await job()

    started = time.perf_counter()
    latencies = await asyncio.gather(*(run(j) for j in jobs))
    return time.perf_counter() - started, list(latencies)


@attrs.frozen
class Target:
    url: str
    pin: SpkiPin


async def healthz_op(target: Target, ip: str) -> float:
    """One baseline operation: a new TLS connection and two GET /healthz."""
    started = time.perf_counter()
    async with ControlClient(target.url, target.pin, local_addr=(ip, 0)) as client:
        await client.healthz()
        await client.healthz()
    return time.perf_counter() - started


async def enroll_op(target: Target, join_text: str, node: SimNode, trust: list[Any]) -> float:
    """Enroll one node (challenge + proof) on one new connection; returns its latency."""
    token = JoinToken.parse(join_text)
    started = time.perf_counter()
    machine = EnrollmentClient(node.identity, node.tunnel, node.name)
    machine.start(token.token_id.to_text())
    async with ControlClient(target.url, target.pin, local_addr=(node.ip, 0)) as client:
        challenge = await client.enroll(
            join_secret=join_text,
            identity_key=node.identity.public_key.to_text(),
            tunnel_key=node.tunnel.to_text(),
            tunnel_key_binding=node.binding.to_text(),
            hostname=node.name,
        )
        challenge_id, expires_at = str(challenge["challenge_id"]), str(challenge["expires_at"])
        proof = machine.receive(
            IssueChallenge(b64decode(challenge_id), datetime.fromisoformat(expires_at))
        )
        assert proof is not None
        result = await client.complete_enrollment(
            challenge_id=challenge_id, signature=b64encode(proof.signature)
        )
    elapsed = time.perf_counter() - started
    node_id, access = str(result["node_id"]), str(result["access_token"])
    node.auth = NodeAuth(node_id, access)
    if not trust:
        raw = result["trust"]
        assert isinstance(raw, dict)
        signing = raw["signing_certificates"]
        assert isinstance(signing, list)
        trust.append(
            PeerMapTrust.from_texts(
                str(raw["root_certificate"]),
                token.root_fingerprint,
                [str(s) for s in signing],
                datetime.now(UTC),
            )
        )
    return elapsed


# --- propagation ---------------------------------------------------------------------------------


async def waiters(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url + "/metrics") as response:
        text = await response.text()
    for line in text.splitlines():
        if line.startswith("rustynet_peer_map_waiters "):
            return int(float(line.split()[1]))
    raise RuntimeError("no rustynet_peer_map_waiters in /metrics")


async def wait_for_waiters(session: aiohttp.ClientSession, url: str, count: int) -> float:
    """Poll /metrics until `count` long-polls wait; returns how long that took."""
    started = time.perf_counter()
    while (now := await waiters(session, url)) < count:
        if time.perf_counter() - started > PHASE_TIMEOUT:
            raise RuntimeError(f"only {now} of {count} long-polls are waiting")
        await asyncio.sleep(0.1)
    return time.perf_counter() - started


async def wait_until_idle(server: Server, window: float = 0.25, busy: float = 0.05) -> float:
    """Wait until the server uses < `busy` of a core over a `window`; returns the time waited."""
    started = time.perf_counter()
    while time.perf_counter() - started < PHASE_TIMEOUT:
        before = server.cpu_seconds()
        await asyncio.sleep(window)
        if server.cpu_seconds() - before < busy * window:
            return time.perf_counter() - started
    raise RuntimeError("the server did not go idle")


async def hold_poll(node: SimNode, jitter: float) -> None:
    """Long-poll until a newer map arrives; record its arrival time and text (verify later)."""
    assert node.client is not None
    assert node.auth is not None
    assert node.acceptor is not None
    await asyncio.sleep(random.uniform(0, jitter))
    while True:
        try:
            response = await node.client.peer_map(node.auth, after=node.acceptor.watermark)
        except ControlRejected as exc:
            node.received = (time.perf_counter(), f"rejected:{exc.status}")
            return
        if response is not None:
            node.received = (time.perf_counter(), str(response["envelope"]))
            return


async def first_map(node: SimNode) -> float:
    """The node's current map (answered at once), verified; sets its watermark."""
    assert node.client is not None
    assert node.auth is not None
    assert node.acceptor is not None
    started = time.perf_counter()
    response = await node.client.peer_map(node.auth, after=0, timeout=30)
    assert response is not None, f"{node.name}: no map at serial 0"
    node.last_map = node.acceptor.accept(str(response["envelope"]), datetime.now(UTC))
    return time.perf_counter() - started


def accept_received(nodes: Sequence[SimNode]) -> int:
    """Verify every received envelope with the node's acceptor; returns how many verified."""
    now = datetime.now(UTC)
    verified = 0
    for node in nodes:
        assert node.acceptor is not None
        if node.received is None or node.received[1].startswith("rejected:"):
            continue
        node.last_map = node.acceptor.accept(node.received[1], now)
        verified += 1
    return verified


async def start_polls(
    nodes: Sequence[SimNode], session: aiohttp.ClientSession, url: str, jitter: float
) -> list[asyncio.Task[None]]:
    for node in nodes:
        node.received = None
    tasks = [asyncio.create_task(hold_poll(n, jitter)) for n in nodes]
    await wait_for_waiters(session, url, len(nodes))
    await asyncio.sleep(0.3)  # settle: the last subscribers are parked in wait()
    return tasks


async def fanout_baseline(nodes: Sequence[SimNode]) -> list[float]:
    """The same N open connections fire GET /healthz at once: latency from the common start."""
    started = time.perf_counter()

    async def one(node: SimNode) -> float:
        assert node.client is not None
        await node.client.healthz()
        return time.perf_counter() - started

    return list(await asyncio.gather(*(one(n) for n in nodes)))


# --- the run -------------------------------------------------------------------------------------


@attrs.define
class Bench:
    """One run: the server, the admin client, the simulated nodes and the results so far."""

    args: argparse.Namespace
    server: Server
    target: Target
    admin: ControlClient
    metrics: aiohttp.ClientSession
    names: list[str]
    results: dict[str, Any]
    nodes: list[SimNode] = attrs.field(factory=list)
    trust: list[PeerMapTrust] = attrs.field(factory=list)
    by_id: dict[str, SimNode] = attrs.field(factory=dict)
    revoked: set[str] = attrs.field(factory=set)
    holding: dict[str, asyncio.Task[None]] = attrs.field(factory=dict)

    @property
    def n(self) -> int:
        return len(self.names)

    def peer_names(self, node: SimNode) -> frozenset[str]:
        assert node.last_map is not None
        return frozenset(self.by_id[p.id].name for p in node.last_map.peers)

    async def enrollment(self) -> None:
        """Policy A, the join key, then the healthz baseline and the enrollment."""
        n, server, target = self.n, self.server, self.target
        await self.admin.put_policy(policy_document(self.names, 0))
        created = await self.admin.create_join_key(
            reusable=True, uses=n, tags=[TAG], ttl_seconds=3600
        )
        join_text = str(created["token"])
        self.nodes = make_nodes(n)
        print(f"server pid {server.proc.pid}; {n} nodes' keys made", file=sys.stderr)
        # Warm-up (imports, first handshakes), then the baseline and the enrollment.
        await bounded(8, [partial(healthz_op, target, "127.0.0.1") for _ in range(16)])
        gc.collect()
        gc.freeze()
        cpu0 = server.cpu_seconds()
        wall, lat = await bounded(
            self.args.concurrency, [partial(healthz_op, target, nd.ip) for nd in self.nodes]
        )
        cpu1 = server.cpu_seconds()
        baseline = n / wall
        self.results["healthz_baseline"] = {
            "what": "per op: new TLS 1.3 connection + 2 x GET /healthz",
            "ops_per_s": round(baseline, 1),
            "wall_s": round(wall, 3),
            "latency": dist(lat),
            "server_cpu_s": round(cpu1 - cpu0, 2),
        }
        print(f"healthz baseline: {baseline:.1f} ops/s", file=sys.stderr)
        mine1 = client_cpu_seconds()
        wall, lat = await bounded(
            self.args.concurrency,
            [partial(enroll_op, target, join_text, nd, self.trust) for nd in self.nodes],
        )
        cpu2, mine2 = server.cpu_seconds(), client_cpu_seconds()
        self.results["enrollment"] = {
            "what": "per node: new TLS 1.3 connection, POST /v1/enroll + /v1/enroll/complete",
            "nodes_per_s": round(n / wall, 1),
            "wall_s": round(wall, 3),
            "latency": dist(lat),
            "server_cpu_s": round(cpu2 - cpu1, 2),
            "server_cpu_ms_per_node": round((cpu2 - cpu1) / n * 1000, 2),
            "client_cpu_ms_per_node": round((mine2 - mine1) / n * 1000, 2),
            "vs_healthz_baseline": round((n / wall) / baseline, 3),
        }
        print(f"enrollment: {n / wall:.1f} nodes/s", file=sys.stderr)
        self.by_id = {nd.auth.node_id: nd for nd in self.nodes if nd.auth is not None}

    async def connect(self) -> int:
        """One client (one connection) per node from its own source address; first maps.

        Returns the server's RSS (KB) before any node connected."""
        await asyncio.sleep(1.0)
        rss_before = self.server.rss_kb()
        for node in self.nodes:
            assert node.auth is not None
            node.acceptor = PeerMapAcceptor(self.trust[0], node.auth.node_id)
            node.client = ControlClient(
                self.target.url, self.target.pin, local_addr=(node.ip, 0), timeout=120
            )
        await bounded(self.args.concurrency, [partial(first_map, nd) for nd in self.nodes])
        return rss_before

    async def start_polls(self) -> list[asyncio.Task[None]]:
        """Every live node holds a long-poll; returns once /metrics shows all of them waiting."""
        for node in self.nodes:
            node.received = None
        live = [nd for nd in self.nodes if nd.name not in self.revoked]
        tasks = [asyncio.create_task(hold_poll(nd, self.args.jitter)) for nd in live]
        await wait_for_waiters(self.metrics, self.target.url, len(live))
        # The waiter gauge counts a request from its subscription, i.e. BEFORE it has read its
        # serial (under the service lock); wait until the server is idle, so every request
        # is parked in wait() and no admin request queues behind the last serial reads.
        await wait_until_idle(self.server)
        return tasks

    async def policy_change(self) -> None:
        """All N wait; PUT policy B; time until each node holds a newer (verified) map."""
        n, nodes = self.n, self.nodes
        rss_before = await self.connect()
        want_a = expected_peers(self.names, 0)
        wrong_a = sum(self.peer_names(nd) != want_a[nd.name] for nd in nodes)
        tasks = await self.start_polls()
        rss_waiting = self.server.rss_kb()
        serial_before = {nd.name: nd.acceptor.watermark for nd in nodes if nd.acceptor}
        cpu0 = self.server.cpu_seconds()
        started = time.perf_counter()
        await self.admin.put_policy(policy_document(self.names, block_size(self.n) // 2))
        put_done = time.perf_counter() - started
        await asyncio.wait_for(asyncio.gather(*tasks), PHASE_TIMEOUT)
        cpu1 = self.server.cpu_seconds()
        lat = [nd.received[0] - started for nd in nodes if nd.received is not None]
        # Baseline: the same open connections answer a tiny request each, all at once. Right
        # away: verifying N maps first (~1 ms each) idled the connections past the client's
        # 15 s keep-alive, and at 10,000 nodes closing + reopening ran out of descriptors.
        await wait_until_idle(self.server)
        base = await fanout_baseline(nodes)
        verified = accept_received(nodes)
        want_b = expected_peers(self.names, block_size(self.n) // 2)
        wrong_b = sum(self.peer_names(nd) != want_b[nd.name] for nd in nodes)
        newer = sum(
            nd.acceptor is not None and nd.acceptor.watermark > serial_before[nd.name]
            for nd in nodes
        )
        self.results["memory"] = {
            "server_rss_before_kb": rss_before,
            "server_rss_with_n_waiting_kb": rss_waiting,
            "kb_per_connected_node": round((rss_waiting - rss_before) / n, 1),
        }
        self.results["policy_change"] = {
            "what": "PUT start -> node holds a map with a newer serial (all N nodes' views change)",
            "latency": dist(lat),
            "put_request_ms": round(put_done * 1000, 1),
            "nodes_with_newer_serial": newer,
            "verified_with_acceptor": verified,
            "peer_sets_wrong_before": wrong_a,
            "peer_sets_wrong_after": wrong_b,
            "server_cpu_s": round(cpu1 - cpu0, 2),
            "server_cpu_ms_per_map": round((cpu1 - cpu0) / n * 1000, 2),
        }
        print(f"policy change: {dist(lat)}", file=sys.stderr)
        self.results["fanout_baseline"] = {
            "what": "the same N open connections fire GET /healthz at once (tiny responses)",
            "latency": dist(base),
        }
        self.results["policy_change"]["p95_vs_fanout_baseline"] = round(
            percentile(lat, 95) / percentile(base, 95), 2
        )

    async def revocation(self) -> None:
        """All N wait; revoke one node; time until every node that saw it has a map without it."""
        nodes = self.nodes
        victim = nodes[self.n // 2]
        assert victim.auth is not None
        affected = [nd for nd in nodes if nd is not victim and victim.name in self.peer_names(nd)]
        tasks = await self.start_polls()
        cpu0 = self.server.cpu_seconds()
        started = time.perf_counter()
        await self.admin.revoke_node(victim.auth.node_id)
        revoke_done = time.perf_counter() - started
        self.revoked.add(victim.name)
        pending = [t for nd, t in zip(nodes, tasks, strict=True) if nd in affected]
        await asyncio.wait_for(asyncio.gather(*pending), PHASE_TIMEOUT)
        await asyncio.sleep(1.0)  # is anyone else sent a map?
        cpu1 = self.server.cpu_seconds()
        # The unaffected nodes keep their polls for the next phase: a poll cancelled here would
        # stay parked on the server (it does not see the client give up) until it times out.
        self.holding = {nd.name: t for nd, t in zip(nodes, tasks, strict=True) if not t.done()}
        lat = [nd.received[0] - started for nd in affected if nd.received is not None]
        others = [nd for nd in nodes if nd is not victim and nd not in affected]
        victim_answer = victim.received[1] if victim.received else "none"
        verified = accept_received(affected)
        still_listed = sum(victim.name in self.peer_names(nd) for nd in affected)
        self.results["revocation"] = {
            "what": "revoke start -> every node that saw the revoked node holds a map without it",
            "affected_nodes": len(affected),
            "latency": dist(lat),
            "revoke_request_ms": round(revoke_done * 1000, 1),
            "verified_with_acceptor": verified,
            "maps_still_listing_revoked": still_listed,
            "unaffected_nodes_sent_a_map": sum(nd.received is not None for nd in others),
            "revoked_node_poll_answer": victim_answer[:20],
            "server_cpu_s": round(cpu1 - cpu0, 2),
        }
        print(f"revocation: {dist(lat)}", file=sys.stderr)

    async def enrollment_connected(self) -> None:
        """All live nodes hold long-polls; `--enroll-extra` new nodes enroll meanwhile."""
        extra = self.args.enroll_extra
        if extra <= 0:
            return
        live = [nd for nd in self.nodes if nd.name not in self.revoked]
        tasks = [
            self.holding.get(nd.name) or asyncio.create_task(hold_poll(nd, self.args.jitter))
            for nd in live
        ]
        await wait_for_waiters(self.metrics, self.target.url, len(live))
        await wait_until_idle(self.server)
        connected = await waiters(self.metrics, self.target.url)
        newcomers = make_nodes(extra, first=self.n)
        created = await self.admin.create_join_key(  # a key allows at most 10,000 uses
            reusable=True, uses=extra, tags=[TAG], ttl_seconds=3600
        )
        join_text = str(created["token"])
        cpu0, mine0 = self.server.cpu_seconds(), client_cpu_seconds()
        wall, lat = await bounded(
            self.args.concurrency,
            [partial(enroll_op, self.target, join_text, nd, self.trust) for nd in newcomers],
        )
        cpu1, mine1 = self.server.cpu_seconds(), client_cpu_seconds()
        still = await waiters(self.metrics, self.target.url)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.results["enrollment_connected"] = {
            "what": "enrollment (as above) while the run's nodes hold peer-map long-polls",
            "connected_nodes": connected,
            "connected_nodes_after": still,
            "enrolled": len(lat),
            "nodes_per_s": round(extra / wall, 1),
            "wall_s": round(wall, 3),
            "latency": dist(lat),
            "server_cpu_ms_per_node": round((cpu1 - cpu0) / extra * 1000, 2),
            "client_cpu_ms_per_node": round((mine1 - mine0) / extra * 1000, 2),
        }
        print(
            f"enrollment while {connected} connected: {extra / wall:.1f} nodes/s", file=sys.stderr
        )

    async def close(self) -> None:
        for task in self.holding.values():
            task.cancel()
        await asyncio.gather(*self.holding.values(), return_exceptions=True)
        for node in self.nodes:
            if node.client is not None:
                await node.client.close()
        await self.admin.close()
        await self.metrics.close()


async def run(args: argparse.Namespace, data_dir: Path, port: int) -> dict[str, Any]:
    """Start the server, run the three phases, stop the server (this PID only)."""
    url = f"https://127.0.0.1:{port}"
    admin_config = tomllib.loads((data_dir / "admin.toml").read_text())
    target = Target(url, SpkiPin.from_text(admin_config["spki_pin"]))
    api_key = (data_dir / "admin.key").read_bytes().strip()
    server = start_server(data_dir)
    results: dict[str, Any] = {
        "nodes": args.nodes,
        "concurrency": args.concurrency,
        "database": "sqlite" if args.database == "sqlite" else "postgresql",
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "policy": f"blocks of {block_size(args.nodes)} node names, each reaches itself on tcp/22",
    }
    bench = Bench(
        args=args,
        server=server,
        target=target,
        admin=ControlClient(url, target.pin, api_key=api_key, timeout=120),
        metrics=aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=pinned_ssl_context(target.pin))
        ),
        names=[hostname(i) for i in range(args.nodes)],
        results=results,
    )
    try:
        phases = (bench.enrollment, bench.policy_change, bench.revocation)
        for phase in (*phases, bench.enrollment_connected):
            spy = None
            if args.py_spy is not None:
                out = args.py_spy.with_name(f"{args.py_spy.name}.{phase.__name__}.txt")
                spy = start_py_spy(server.proc.pid, out, rate=200, gil=False)
                await asyncio.sleep(1.0)  # py-spy attaches
            try:
                await phase()
            finally:
                if spy is not None:
                    spy.send_signal(signal.SIGINT)
                    spy.wait(30)
    except Exception as exc:  # noqa: BLE001 - the figures so far stay; the rest "not achieved"
        state = "running" if server.proc.poll() is None else f"exited {server.proc.returncode}"
        sys.stderr.write(f"server ({state}) log tail:\n" + "".join(server.log[-40:]))
        results["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        await bench.close()
        results["server_exit"] = server.stop()
    return results


def table(results: dict[str, Any]) -> str:
    """One run's figures (stderr, as the run ends)."""

    def lat(d: dict[str, Any]) -> str:
        return f"p50 {d['p50_ms']:8.1f} ms  p95 {d['p95_ms']:8.1f} ms  max {d['max_ms']:8.1f} ms"

    h, e = results["healthz_baseline"], results["enrollment"]
    p, r, f, m = (
        results["policy_change"],
        results["revocation"],
        results["fanout_baseline"],
        results["memory"],
    )
    rows = [
        f"control-plane bench: N={results['nodes']} concurrency={results['concurrency']} "
        f"db={results['database']} cpus={results['cpus']}",
        f"  healthz baseline  {h['ops_per_s']:8.1f} ops/s    {lat(h['latency'])}",
        f"  enrollment        {e['nodes_per_s']:8.1f} nodes/s  {lat(e['latency'])}"
        f"  ({e['vs_healthz_baseline']:.2f} x baseline)",
        f"  policy change     {lat(p['latency'])}  ("
        f"{p['nodes_with_newer_serial']}/{results['nodes']} newer, "
        f"{p['verified_with_acceptor']} verified, {p['peer_sets_wrong_after']} wrong)",
        f"  fan-out baseline  {lat(f['latency'])}  (policy p95 = "
        f"{p['p95_vs_fanout_baseline']:.1f} x)",
        f"  revocation        {lat(r['latency'])}  ({r['affected_nodes']} affected, "
        f"{r['maps_still_listing_revoked']} still list it)",
        f"  memory            {m['server_rss_before_kb'] / 1024:.1f} MB -> "
        f"{m['server_rss_with_n_waiting_kb'] / 1024:.1f} MB with N waiting = "
        f"{m['kb_per_connected_node']:.1f} KB/node",
    ]
    if "enrollment_connected" in results:
        c = results["enrollment_connected"]
        rows.append(
            f"  enroll, connected {c['nodes_per_s']:8.1f} nodes/s  {lat(c['latency'])}"
            f"  ({c['connected_nodes']} long-polls held; CPU ms/node server "
            f"{c['server_cpu_ms_per_node']}, client {c['client_cpu_ms_per_node']})"
        )
    return "\n".join(rows)


# --- budgets and the report ----------------------------------------------------------------------


def figures(runs: dict[str, dict[str, Any]], budgets: dict[str, float]) -> list[dict[str, Any]]:
    """Every budgeted figure: name, measured value (None: not achieved), target, verdict."""
    out: list[dict[str, Any]] = []

    def add(name: str, value: float | None, target: float | None, higher_is_better: bool) -> None:
        if target is None:
            verdict = "no budget"
        elif value is None:
            verdict = "not achieved"
        elif (value >= target) if higher_is_better else (value <= target):
            verdict = "ok"
        else:
            verdict = "MISS"
        out.append(
            {
                "figure": name,
                "value": value,
                "target": target,
                "verdict": verdict,
                "op": ">=" if higher_is_better else "<=",
            }
        )

    for n, run in sorted(runs.items(), key=lambda kv: int(kv[0])):
        target = budgets.get(f"propagation_p95_max_ms_{n}")
        for phase in ("policy_change", "revocation"):
            lat = run.get(phase, {}).get("latency", {})
            add(f"{phase.replace('_', ' ')} p95 ms, N={n}", lat.get("p95_ms"), target, False)
        mem = run.get("memory", {}).get("kb_per_connected_node")
        add(f"KB per connected node, N={n}", mem, budgets.get("memory_per_node_max_kb"), False)
    largest = max(runs, key=int) if runs else None
    if largest is not None:
        connected = runs[largest].get("enrollment_connected", {})
        add(
            f"enrollment/s while {connected.get('connected_nodes', '?')} connected (N={largest})",
            connected.get("nodes_per_s"),
            budgets.get("enrollment_min_per_s"),
            True,
        )
    return out


def markdown(report: dict[str, Any]) -> str:
    """The short report: budgeted figures, then every run's distributions (the curve)."""
    runs: dict[str, dict[str, Any]] = report["runs"]

    def num(v: object) -> str:
        return "—" if v is None else f"{v:g}" if isinstance(v, float | int) else str(v)

    lines = [
        "# Control plane at scale",
        "",
        f"`{report['command']}` — {report['database']}, {report['cpus']} CPUs (shared with the "
        "simulated nodes' client process), Python " + report["python"] + ".",
        "",
        "| figure | measured | target | verdict |",
        "|---|---|---|---|",
    ]
    for fig in report["figures"]:
        target = "—" if fig["target"] is None else f"{fig['op']} {num(fig['target'])}"
        lines.append(f"| {fig['figure']} | {num(fig['value'])} | {target} | {fig['verdict']} |")
    lines += [
        "",
        "## Propagation latency vs node count (ms from the admin request to each node holding",
        "the new serial; the fan-out baseline is the same connections answering GET /healthz)",
        "",
        "| N | policy p50 | policy p95 | policy max | revocation p95 | fan-out baseline p95 |"
        " server CPU s (policy) |",
        "|---|---|---|---|---|---|---|",
    ]
    for n, run in sorted(runs.items(), key=lambda kv: int(kv[0])):
        p, r = run.get("policy_change", {}), run.get("revocation", {})
        pl, rl = p.get("latency", {}), r.get("latency", {})
        f = run.get("fanout_baseline", {}).get("latency", {})
        lines.append(
            f"| {n} | {num(pl.get('p50_ms'))} | {num(pl.get('p95_ms'))} | "
            f"{num(pl.get('max_ms'))} | {num(rl.get('p95_ms'))} | "
            f"{num(f.get('p95_ms'))} | {num(p.get('server_cpu_s'))} |"
        )
    lines += [
        "",
        "## Enrollment and memory",
        "",
        "| N | enroll/s (idle) | enroll/s (N connected) | healthz baseline ops/s |"
        " server / client CPU ms per enrollment | KB per connected node |",
        "|---|---|---|---|---|---|",
    ]
    for n, run in sorted(runs.items(), key=lambda kv: int(kv[0])):
        c, e = run.get("enrollment_connected", {}), run.get("enrollment", {})
        lines.append(
            f"| {n} | {num(e.get('nodes_per_s'))} | {num(c.get('nodes_per_s'))} | "
            f"{num(run.get('healthz_baseline', {}).get('ops_per_s'))} | "
            f"{num(c.get('server_cpu_ms_per_node', e.get('server_cpu_ms_per_node')))} / "
            f"{num(c.get('client_cpu_ms_per_node', e.get('client_cpu_ms_per_node')))}"
            f" | {num(run.get('memory', {}).get('kb_per_connected_node'))} |"
        )
    errors = [f"- N={n}: {run['error']}" for n, run in runs.items() if "error" in run]
    if errors:
        lines += ["", "## Runs that stopped early (later figures not achieved)", "", *errors]
    return "\n".join(lines) + "\n"


def run_one(args: argparse.Namespace, n: int) -> dict[str, Any]:
    """One N on a fresh server in a fresh directory (removed afterwards)."""
    tmp = Path(tempfile.mkdtemp(prefix="rustynet-bench-"))
    one = argparse.Namespace(**{**vars(args), "nodes": n})
    try:
        port = free_port()
        init_server(tmp / "data", f"https://127.0.0.1:{port}", args.database)
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            return runner.run(run(one, tmp / "data", port))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--nodes",
        type=lambda text: [int(v) for v in text.split(",")],
        default=[1000, 10000],
        help="comma-separated node counts, one run each (default 1000,10000)",
    )
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--database", default="sqlite", help="sqlite or postgresql://...")
    parser.add_argument("--jitter", type=float, default=2.0, help="long-poll start jitter, s")
    parser.add_argument(
        "--enroll-extra", type=int, default=500, help="nodes enrolled while N are connected"
    )
    parser.add_argument("--output", type=Path, default=RESULTS / "control.json")
    parser.add_argument(
        "--py-spy",
        type=Path,
        metavar="PREFIX",
        help="sample the server per phase with py-spy into PREFIX.<phase>.txt (collapsed stacks)",
    )
    args = parser.parse_args(argv)
    if args.database != "sqlite" and not args.database.startswith("postgresql://"):
        parser.error("--database is sqlite or postgresql://...")
    if any(n < 4 or n + args.enroll_extra > 250 * 250 * NODES_PER_IP for n in args.nodes):
        parser.error("--nodes out of range")
    raise_fd_limit()
    budgets = budgets_of("control")
    runs: dict[str, dict[str, Any]] = {}
    for n in args.nodes:
        try:
            runs[str(n)] = run_one(args, n)
        except Exception as exc:  # noqa: BLE001 - one N failing is a figure "not achieved"
            runs[str(n)] = {"nodes": n, "error": f"{type(exc).__name__}: {exc}"}
            print(f"N={n} not achieved: {exc}", file=sys.stderr)
            continue
        if "error" not in runs[str(n)]:
            print(table(runs[str(n)]), file=sys.stderr)
    first = next((r for r in runs.values() if "error" not in r), {})
    report: dict[str, Any] = {
        "command": " ".join(["python -m bench.bench_control", *(argv or sys.argv[1:])]),
        "database": "sqlite" if args.database == "sqlite" else "postgresql",
        "cpus": os.cpu_count(),
        "python": sys.version.split()[0],
        "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        "policy": first.get("policy"),
        "budgets": budgets,
        "runs": runs,
    }
    report["figures"] = figures(runs, budgets)
    text = markdown(report)
    write_results(args.output, report, text)
    print(text)
    print(f"(JSON: {args.output}, report: {args.output.with_suffix('.md')})")
    return 1 if any(f["verdict"] in {"MISS", "not achieved"} for f in report["figures"]) else 0


if __name__ == "__main__":
    sys.exit(main())
