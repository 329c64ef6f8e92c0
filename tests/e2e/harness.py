"""The end-to-end mesh lab: a control plane and N nodes in network namespaces, real programs.

The one rule: the harness drives the system only the way an operator would — the `rustynet`
CLI (`up`, `status`, `peers`, `ping`, `admin ...`), the control plane's REST API and plain
tools (`ping`, `wg show` for cross-checks) — and removes everything it made, even on failure.

Layout (docs/lab.md address rules: underlay 198.51.100.0/24 inside our namespaces only, overlay
100.64.0.0/10, never 192.0.2.0/24, no route to the outside)::

    rnb<rand>  bridge namespace, Linux bridge br0
      ├── veth ── control namespace   198.51.100.1   rustynet-control serve (:8443)
      ├── veth ── node namespace #0   198.51.100.11  rustynetd --config (interface rn<rand>)
      ├── veth ── node namespace #1   198.51.100.12  ...

Every program runs as `ip netns exec NS PROGRAM ...` (which execs, so the PID we hold is the
program's) in a session of its own, so `os.killpg` ends it with everything it spawned
(wireguard-go) and nothing else. `Mesh.close()` stops our process groups, then `NetLab.close()`
deletes the namespaces (taking veths, TUN devices and routes with them) and the stale UAPI
sockets of our interface names. Logs of every program go to files under the work directory;
`Mesh.logs()` returns their tails for a failing test's report.

Used by `tests/e2e/` (pytest) and by `tools/demo.py` (the newcomer's demo), so it imports no
pytest itself beyond what `tests.netns` does.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Final, TypeVar

from rustynet.adapters.cli.node import DaemonRefused, DaemonUnreachable
from rustynet.adapters.cli.node import call as local_api_call

from rustynet.domain.join_tokens import JoinToken
from tests.netns import Namespace, NetLab, unique_name

BIN: Final = Path(sys.executable).parent
CONTROL_BIN: Final = str(BIN / "rustynet-control")
RUSTYNET_BIN: Final = str(BIN / "rustynet")
RUSTYNETD_BIN: Final = str(BIN / "rustynetd")
PYTHON: Final = sys.executable

PREFIX_LEN: Final = 24
CONTROL_IP: Final = "198.51.100.1"
CONTROL_PORT: Final = 8443
FIRST_NODE_HOST: Final = 11
NODE_UNDERLAY_PORT: Final = 41641
START_TIMEOUT: Final = 30.0
TOOLS: Final = ("ip", "wireguard-go", "nft", "ping", "wg")

ALLOW_ALL_POLICY: Final[Mapping[str, object]] = {
    "acls": [{"action": "accept", "src": ["*"], "dst": ["*:*"]}],
}

T = TypeVar("T")


class LabError(AssertionError):
    """The lab could not reach a wanted state; the message says which and shows the logs."""


def missing_programs() -> list[str]:
    """Programs the lab needs that are not installed (system tools and our console scripts)."""
    missing = [t for t in TOOLS if shutil.which(t) is None]
    missing += [p for p in (CONTROL_BIN, RUSTYNET_BIN, RUSTYNETD_BIN) if not Path(p).exists()]
    return missing


def wait_for(
    what: str, probe: Callable[[], T | None], timeout: float, interval: float = 0.05
) -> tuple[T, float]:
    """Call `probe` until it returns something truthy; (its value, seconds waited) or LabError."""
    start = time.monotonic()
    while True:
        value = probe()
        elapsed = time.monotonic() - start
        if value:
            return value, elapsed
        if elapsed > timeout:
            raise LabError(f"timed out after {timeout:.1f} s waiting for {what}")
        time.sleep(interval)


def dig(document: object, *keys: str) -> object:
    """`document[k1][k2]...` for decoded JSON objects (LabError naming the path if absent)."""
    value = document
    for key in keys:
        if not isinstance(value, dict) or key not in value:
            raise LabError(f"no {'.'.join(keys)} in {document!r}")
        value = value[key]
    return value


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "CREDENTIALS_DIRECTORY"}
    env["HOME"] = "/nonexistent"  # no CLI may fall back to a real ~/.config
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '/usr/sbin:/usr/bin:/sbin:/bin')}"
    return env


def run_in(
    ns: Namespace, *argv: str, timeout: float = 30, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a program inside `ns`; text output captured; the exit status is the caller's call."""
    return subprocess.run(  # noqa: PLW1510 - callers look at returncode
        ["ip", "netns", "exec", ns.name, *argv],
        capture_output=True,
        text=True,
        timeout=timeout,
        input=stdin,
        env=_env(),
    )


class Program:
    """One long-running program inside a namespace, in its own process group, logging to a file."""

    def __init__(self, ns: Namespace, argv: Sequence[str], log: Path) -> None:
        self.ns = ns
        self.argv = list(argv)
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it (appending to its log)."""
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                ["ip", "netns", "exec", self.ns.name, *self.argv],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=_env(),
                start_new_session=True,
            )

    @property
    def running(self) -> bool:
        """Started and not exited."""
        return self.proc is not None and self.proc.poll() is None

    def log_text(self) -> str:
        """Everything it logged so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_log(self, marker: str, timeout: float = START_TIMEOUT) -> float:
        """Wait until the log contains `marker` (fails early if the program exits)."""

        def probe() -> bool:
            if marker in self.log_text():
                return True
            if not self.running:
                raise LabError(f"{self.argv[0]} exited before {marker!r}:\n{self.tail()}")
            return False

        return wait_for(f"{marker!r} from {self.argv[0]}", probe, timeout)[1]

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to its whole process group (only ours)."""
        if self.proc is not None and self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)

    def stop(self, timeout: float = 10) -> int | None:
        """SIGTERM, SIGKILL after `timeout`; the exit status (None if never started)."""
        if self.proc is None:
            return None
        self.signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the process group and reap the leader."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(5)

    def tail(self, lines: int = 40) -> str:
        """The last lines of its log."""
        return "\n".join(self.log_text().splitlines()[-lines:])


# Runs inside a namespace: one HTTPS request to the control plane, trusting only its
# self-signed certificate; the API key (if any) arrives on stdin, never in argv.
_REST_SNIPPET: Final = r"""
import json, ssl, sys, urllib.error, urllib.request
url, cafile, method, body = sys.argv[1:5]
key = sys.stdin.read().strip()
ctx = ssl.create_default_context(cafile=cafile)
headers = {"Content-Type": "application/json"}
if key:
    headers["Authorization"] = "Bearer " + key
data = body.encode() if body else None
req = urllib.request.Request(url, data=data, method=method, headers=headers)
try:
    with urllib.request.urlopen(req, context=ctx, timeout=10) as resp:
        status, text = resp.status, resp.read().decode()
except urllib.error.HTTPError as exc:
    status, text = exc.code, exc.read().decode()
print(json.dumps({"status": status, "body": text}))
"""


class ControlPlane:
    """`rustynet-control` in its namespace: init once, serve (restartable), admin CLI, REST."""

    def __init__(
        self, ns: Namespace, workdir: Path, port: int = CONTROL_PORT, address: str = CONTROL_IP
    ) -> None:
        self.ns = ns
        self.port = port
        self.address = address
        self.data_dir = workdir / "control"
        self.url = f"https://{address}:{port}"
        self.program = Program(
            ns, [CONTROL_BIN, "serve", "--data-dir", str(self.data_dir)], workdir / "control.log"
        )

    def init(self) -> None:
        """`rustynet-control init` (file key store, SQLite)."""
        done = run_in(
            self.ns,
            CONTROL_BIN,
            "init",
            "--data-dir",
            str(self.data_dir),
            "--url",
            self.url,
            "--listen",
            f"{self.address}:{self.port}",
            "--keystore",
            "file",
        )
        if done.returncode != 0:
            raise LabError(f"rustynet-control init failed:\n{done.stderr}")

    def start(self) -> float:
        """`serve`; returns once it logged `ready;` (seconds taken)."""
        self.program.start()
        return self.program.wait_log("ready;")

    def restart(self) -> float:
        """Start again after a stop or kill (waits for a new `ready;`)."""
        before = self.program.log_text().count("ready;")
        self.program.start()

        def probe() -> bool:
            if not self.program.running:
                raise LabError(f"control exited on restart:\n{self.program.tail()}")
            return self.program.log_text().count("ready;") > before

        return wait_for("control ready after restart", probe, START_TIMEOUT)[1]

    def kill9(self) -> None:
        """SIGKILL the control plane (no clean shutdown)."""
        self.program.kill()

    def admin(self, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """`rustynet admin --config admin.toml ARGS` run in the control namespace."""
        return run_in(
            self.ns,
            RUSTYNET_BIN,
            "admin",
            "--config",
            str(self.data_dir / "admin.toml"),
            *args,
            timeout=timeout,
        )

    def admin_ok(self, *args: str) -> str:
        """`admin` that must succeed; its stdout."""
        done = self.admin(*args)
        if done.returncode != 0:
            raise LabError(f"rustynet admin {' '.join(args)} → {done.returncode}:\n{done.stderr}")
        return done.stdout

    def admin_json(self, *args: str) -> object:
        """`admin --json ARGS`, decoded."""
        return json.loads(self.admin_ok("--json", *args))

    def join_token(self, tags: Iterable[str] = ()) -> str:
        """A fresh one-time join token (optionally pre-tagged)."""
        tag_list = ",".join(tags)
        extra = ["--tags", tag_list] if tag_list else []
        return self.admin_ok("keys", "create", *extra).strip()

    def set_policy(self, document: Mapping[str, object], workdir: Path) -> None:
        """`admin policy set` with a JSON document."""
        path = workdir / f"policy-{time.monotonic_ns()}.json"
        path.write_text(json.dumps(document))
        self.admin_ok("policy", "set", str(path))

    def rest(
        self,
        method: str,
        path: str,
        body: object | None = None,
        *,
        admin: bool = True,
        from_ns: Namespace | None = None,
    ) -> tuple[int, object]:
        """One HTTPS request to the REST API (from `from_ns`, default the control namespace)."""
        key = (self.data_dir / "admin.key").read_text().strip() if admin else ""
        done = run_in(
            from_ns or self.ns,
            PYTHON,
            "-c",
            _REST_SNIPPET,
            self.url + path,
            str(self.data_dir / "tls" / "control.crt"),
            method,
            "" if body is None else json.dumps(body),
            stdin=key,
        )
        if done.returncode != 0:
            raise LabError(f"REST {method} {path} failed:\n{done.stderr}")
        answer = json.loads(done.stdout)
        text = answer["body"]
        return int(answer["status"]), (json.loads(text) if text else None)

    def node_id(self, name: str) -> str:
        """The id of the node named `name` (REST: list nodes)."""
        status, listing = self.rest("GET", "/v1/admin/nodes")
        assert status == 200, listing
        assert isinstance(listing, dict)
        for node in listing["nodes"]:
            if node["name"] == name:
                return str(node["id"])
        raise LabError(f"no node named {name!r} at control: {listing}")


class Node:
    """`rustynetd` in its own namespace with its own state dir, socket and interface."""

    def __init__(self, name: str, ns: Namespace, underlay_ip: str, interface: str, workdir: Path):
        self.name = name
        self.ns = ns
        self.underlay_ip = underlay_ip
        self.interface = interface
        self.dir = workdir / name
        self.state_dir = self.dir / "state"
        self.socket = self.dir / "rustynetd.sock"
        self.config = self.dir / "rustynetd.toml"
        self.passphrase = self.dir / "keystore.pass"
        self.dir.mkdir(parents=True)
        self.passphrase.write_text(secrets.token_urlsafe(32) + "\n")
        self.passphrase.chmod(0o600)
        self.config.write_text(self.config_text())
        self.config.chmod(0o600)
        self.program = Program(
            ns, [RUSTYNETD_BIN, "--config", str(self.config)], workdir / f"{name}.log"
        )
        self.overlay_ip = ""

    def config_text(self) -> str:
        """rustynetd's TOML for this node."""
        return (
            "# rustynetd for the e2e lab (tests/e2e/harness.py)\n"
            f'state_dir = "{self.state_dir}"\n'
            f'socket = "{self.socket}"\n'
            f'interface = "{self.interface}"\n'
            'backend = "userspace"\n'
            'keystore = "file"\n'
            f'passphrase_file = "{self.passphrase}"\n'
            'log_level = "info"\n'
            f"underlay_port = {NODE_UNDERLAY_PORT}\n"
            f'underlay_endpoints = ["{self.underlay_ip}:{NODE_UNDERLAY_PORT}"]\n'
        )

    def start(self) -> float:
        """Start the daemon; returns once its local API socket answers `status` (seconds)."""
        self.program.start()

        def probe() -> bool:
            if not self.program.running:
                raise LabError(f"rustynetd {self.name} exited:\n{self.program.tail()}")
            return self.socket.exists() and self.cli("status", "--json").returncode == 0

        return wait_for(f"rustynetd {self.name} socket", probe, START_TIMEOUT)[1]

    def cli(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        """`rustynet --socket S ARGS` inside the node's namespace."""
        return run_in(self.ns, RUSTYNET_BIN, "--socket", str(self.socket), *args, stdin=stdin)

    def cli_ok(self, *args: str, stdin: str | None = None) -> str:
        """`cli` that must succeed; its stdout."""
        done = self.cli(*args, stdin=stdin)
        if done.returncode != 0:
            raise LabError(
                f"{self.name}: rustynet {' '.join(args)} → {done.returncode}:\n"
                f"{done.stdout}{done.stderr}"
            )
        return done.stdout

    def up(self, token: str) -> None:
        """`rustynet up --token-file - --hostname NAME` (the token on stdin, never in argv)."""
        self.cli_ok("up", "--token-file", "-", "--hostname", self.name, stdin=token + "\n")
        self.overlay_ip = str(dig(self.status(), "node", "overlay_ip"))

    def status(self) -> dict[str, object]:
        """`rustynet status --json`, decoded."""
        decoded = json.loads(self.cli_ok("status", "--json"))
        assert isinstance(decoded, dict)
        return decoded

    def connected(self) -> bool:
        """Does `status` say the daemon is connected to the control plane?"""
        return dig(self.status(), "control", "connected") is True

    def peers(self) -> dict[str, dict[str, object]]:
        """The peers in `status --json`, by name."""
        peers = self.status().get("peers", [])
        assert isinstance(peers, list)
        return {str(p["name"]): p for p in peers}

    def path_to(self, peer: Node) -> str:
        """The path `status` reports for `peer` (`direct`, `relay`, ...; "None" if unlisted)."""
        return str(self.peers().get(peer.name, {}).get("path"))

    def ping(self, other: Node, timeout_s: int = 1) -> bool:
        """One ICMP echo from this namespace to `other`'s overlay address."""
        done = run_in(self.ns, "ping", "-c1", "-n", f"-W{timeout_s}", other.overlay_ip)
        return done.returncode == 0

    def cli_ping(self, other: Node) -> bool:
        """`rustynet ping PEER` (the daemon's own path check)."""
        return self.cli("ping", other.name).returncode == 0

    def tcp_connect(self, other: Node, port: int, timeout_s: float = 1.0) -> str:
        """Open a TCP connection to `other`'s overlay address.

        "ok", "refused" (RST), "timeout" (silently dropped) or "unreachable" (no route, ICMP).
        """
        snippet = (
            "import socket, sys\n"
            "try:\n"
            f"    socket.create_connection(({other.overlay_ip!r}, {port}), {timeout_s}).close()\n"
            "except ConnectionRefusedError:\n"
            "    print('refused')\n"
            "except TimeoutError:\n"
            "    print('timeout')\n"
            "except OSError:\n"
            "    print('unreachable')\n"
            "else:\n"
            "    print('ok')\n"
        )
        return run_in(self.ns, PYTHON, "-c", snippet).stdout.strip()

    def metrics(self) -> dict[str, float]:
        """The daemon's `GET /metrics` on its local socket, as a scraper reads it: sample name
        (with its labels, if any) → value."""
        # The CLI's own client of the local API (path sockets are not bound to a namespace).
        try:
            text = local_api_call(self.socket, "GET", "/metrics")
        except (DaemonRefused, DaemonUnreachable) as exc:
            raise LabError(f"{self.name}: GET /metrics: {exc}") from exc
        if not isinstance(text, str):
            raise LabError(f"{self.name}: GET /metrics answered JSON, not the text format")
        lines = [line for line in text.splitlines() if line and not line.startswith("#")]
        samples = (line.rsplit(" ", 1) for line in lines)
        return {name: float(value) for name, value in samples}

    def tunnel_key(self) -> str:
        """This node's tunnel public key as the interface holds it (`wg show`, a cross-check)."""
        return run_in(self.ns, "wg", "show", self.interface, "public-key").stdout.strip()

    def tunnel_peer_keys(self) -> set[str]:
        """The peer keys configured on this node's interface (`wg show ... peers`)."""
        return set(run_in(self.ns, "wg", "show", self.interface, "peers").stdout.split())


class Mesh:
    """The lab: bridge, control plane, nodes; everything removed by `close()`."""

    def __init__(self, lab: NetLab, workdir: Path) -> None:
        self.lab = lab
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.control_ns = lab.namespace("rnc")
        lab.attach(self.control_ns, f"{CONTROL_IP}/{PREFIX_LEN}")
        self.control = ControlPlane(self.control_ns, workdir)
        self.nodes: dict[str, Node] = {}
        self.servers: list[Program] = []

    def start_control(self) -> float:
        """init + serve; seconds until ready."""
        self.control.init()
        return self.control.start()

    def add_node(self, name: str) -> Node:
        """A new namespace on the bridge with a not-yet-started daemon configured in it."""
        host = FIRST_NODE_HOST + len(self.nodes)
        ns = self.lab.namespace("rnn")
        underlay_ip = f"198.51.100.{host}"
        self.lab.attach(ns, f"{underlay_ip}/{PREFIX_LEN}")
        node = Node(name, ns, underlay_ip, self.lab.interface_name(), self.workdir)
        self.nodes[name] = node
        return node

    def join(self, node: Node, tags: Iterable[str] = ()) -> None:
        """Start `node`'s daemon (if needed) and enroll it with a fresh one-time token."""
        if not node.program.running:
            node.start()
        node.up(self.control.join_token(tags))

    def build(self, names: Sequence[str], tags: Mapping[str, Sequence[str]] | None = None) -> None:
        """Control plane + the named nodes, all enrolled."""
        self.start_control()
        for name in names:
            self.join(self.add_node(name), (tags or {}).get(name, ()))

    def pairs(self) -> list[tuple[Node, Node]]:
        """Every ordered pair of distinct nodes."""
        nodes = list(self.nodes.values())
        return [(a, b) for a in nodes for b in nodes if a is not b]

    def wait_all_ping(self, timeout: float = 20) -> float:
        """Wait until every ordered pair pings over the overlay; seconds taken."""
        pending = self.pairs()

        def probe() -> bool:
            pending[:] = [(a, b) for a, b in pending if not a.ping(b)]
            return not pending

        try:
            return wait_for("every pair to ping", probe, timeout, interval=0.0)[1]
        except LabError as exc:
            names = [f"{a.name}→{b.name}" for a, b in pending]
            raise LabError(f"{exc}; still failing: {names}\n{self.logs()}") from None

    def ping_matrix(self, tries: int = 3) -> dict[tuple[str, str], bool]:
        """(from, to) → answered, for every ordered pair (up to `tries` one-second pings each,
        so one echo lost on a loaded machine is not reported as a broken path)."""
        return {(a.name, b.name): any(a.ping(b) for _ in range(tries)) for a, b in self.pairs()}

    def serve_tcp(self, node: Node, port: int) -> Program:
        """A TCP listener in `node`'s namespace that accepts and closes (for policy checks)."""
        snippet = (
            "import socket\n"
            "s = socket.socket()\n"
            "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n"
            f"s.bind(('0.0.0.0', {port})); s.listen(16); print('listening', flush=True)\n"
            "while True:\n"
            "    s.accept()[0].close()\n"
        )
        server = Program(node.ns, [PYTHON, "-c", snippet], self.workdir / f"tcp-{node.name}.log")
        server.start()
        server.wait_log("listening")
        self.servers.append(server)
        return server

    def logs(self, lines: int = 30) -> str:
        """Tails of every program's log, for a failure report."""
        parts = [f"--- control ---\n{self.control.program.tail(lines)}"]
        parts += [f"--- {n.name} ---\n{n.program.tail(lines)}" for n in self.nodes.values()]
        parts += [f"--- {s.log.name} ---\n{s.tail(lines)}" for s in self.servers]
        return "\n".join(parts)

    def close(self) -> None:
        """Stop our programs (process groups), then the lab removes namespaces and sockets."""
        programs = [n.program for n in self.nodes.values()] + [self.control.program]
        for program in programs:  # all at once: each daemon's teardown takes a while
            program.signal(signal.SIGTERM)
        for program in programs:
            program.stop(timeout=5)
        for server in self.servers:
            server.kill()
        self.lab.close()


RELAY_BIN: Final = str(BIN / "rustynet-relay")
RELAY_PORT: Final = 8445
BLOCK_TABLE: Final = "e2eblock"


class Relay:
    """`rustynet-relay`, listed in control.toml before control starts: in the control namespace
    at control's address, or in namespace `ns` at `address` (a host of its own)."""

    def __init__(
        self,
        mesh: Mesh,
        relay_id: str = "relay-e2e",
        port: int = RELAY_PORT,
        ns: Namespace | None = None,
        address: str | None = None,
    ) -> None:
        self.mesh = mesh
        self.relay_id = relay_id
        self.port = port
        self.ns = ns or mesh.control_ns
        self.address = address or mesh.control.address
        self.config = mesh.workdir / "relay" / "relay.toml"
        self.config.parent.mkdir(parents=True)
        self.program = Program(
            self.ns,
            [RELAY_BIN, "serve", "--config", str(self.config)],
            mesh.workdir / "relay.log",
        )
        mesh.servers.append(self.program)

    def init(self, root_fingerprint: str) -> str:
        """`rustynet-relay init`; returns the `[[relays]]` block it printed for control.toml."""
        done = run_in(
            self.ns,
            RELAY_BIN,
            "init",
            "--config",
            str(self.config),
            "--url",
            f"wss://{self.address}:{self.port}/v1/relay",
            "--control-url",
            self.mesh.control.url,
            "--root-fingerprint",
            root_fingerprint,
            "--id",
            self.relay_id,
            "--listen",
            f"{self.address}:{self.port}",
        )
        if done.returncode != 0:
            raise LabError(f"rustynet-relay init failed:\n{done.stderr}")
        return done.stdout[done.stdout.index("[[relays]]") :]

    def start(self) -> None:
        """`serve`; returns once it logged `ready;`."""
        self.program.start()
        self.program.wait_log("ready;")


def start_control_with_relay(
    mesh: Mesh, ns: Namespace | None = None, address: str | None = None, relay_toml: str = ""
) -> Relay:
    """Control plane initialised with a relay listed in its control.toml; both serving (the
    relay in the control namespace, or in `ns` at `address`; `relay_toml` is appended to the
    relay's relay.toml, e.g. a `[udp]` table).

    The root fingerprint the relay pins is taken from a join token (which stays unused), as an
    operator would copy it; control is restarted to read the `[[relays]]` block.
    """
    mesh.control.init()
    relay = Relay(mesh, ns=ns, address=address)
    mesh.control.start()
    token = mesh.control.join_token()
    fingerprint = JoinToken.parse(token).root_fingerprint.to_text()
    mesh.control.program.stop()
    block = relay.init(fingerprint)
    if relay_toml:
        relay.config.write_text(relay.config.read_text() + "\n" + relay_toml)
    found = sorted(mesh.control.data_dir.glob("*.toml"))
    if not found:
        raise LabError(f"no control config under {mesh.control.data_dir}")
    config = next((p for p in found if p.name == "control.toml"), found[0])
    config.write_text(config.read_text() + "\n" + block)
    mesh.control.restart()
    relay.start()
    return relay


def block_direct(mesh: Mesh, a: Node, b: Node, table: str = BLOCK_TABLE) -> None:
    """Drop UDP between A and B on the switch (a `bridge` table in the bridge namespace).

    Calling it again for another pair adds that pair's rules to the same table.
    """
    rules = (
        f"table bridge {table} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n"
        f"    ip saddr {a.underlay_ip} ip daddr {b.underlay_ip} meta l4proto udp counter drop\n"
        f"    ip saddr {b.underlay_ip} ip daddr {a.underlay_ip} meta l4proto udp counter drop\n"
        "  }\n"
        "}\n"
    )
    done = run_in(mesh.lab.bridge(), "nft", "-f", "-", stdin=rules)
    if done.returncode != 0:
        raise LabError(f"nft: blocking {a.name}<->{b.name} failed:\n{done.stderr}")


def unblock_direct(mesh: Mesh, table: str = BLOCK_TABLE) -> None:
    """Remove a `block_direct` table: the switch forwards UDP between its pairs again."""
    done = run_in(mesh.lab.bridge(), "nft", "delete", "table", "bridge", table)
    if done.returncode != 0:
        raise LabError(f"nft: deleting table {table} failed:\n{done.stderr}")


def new_mesh(workdir: Path) -> Mesh:
    """A Mesh on a fresh NetLab (the caller closes it)."""
    lab = NetLab()
    try:
        return Mesh(lab, workdir / unique_name("mesh", 12))
    except BaseException:
        lab.close()
        raise
