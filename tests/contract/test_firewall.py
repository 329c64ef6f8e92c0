"""One contract suite for the `Firewall` port, over the in-memory and the nftables adapter.

The nftables adapter runs for real: `nft` inside a fresh network namespace per test (created
and deleted by the `netns` fixture here; nothing touches the host's own ruleset). The
nftables-only tests then check what the contract cannot see through the port: no table left
behind, other tables untouched, a refused batch leaving the old rules, hand edits detected, and
the real data path: two namespaces joined by a veth whose far end is named like a tunnel
interface, where TCP connects and pings pass or are dropped exactly as the ruleset says.
"""

from __future__ import annotations

import ipaddress
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import pytest
from rustynet.adapters.firewall.memory import MemoryFirewall
from rustynet.adapters.firewall.nftables import NftablesFirewall

from rustynet.domain.netmap import InboundRule
from rustynet.domain.packet_filter import FlowRule, Ruleset
from rustynet.domain.policy import Proto
from rustynet.ports.firewall import Firewall, FirewallError

TOOLS = ("ip", "nft", "ping")


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root (network namespaces, nftables)"
    missing = [tool for tool in TOOLS if shutil.which(tool) is None]
    return f"missing tools: {', '.join(missing)}" if missing else None


def _need_root() -> None:
    reason = _skip_reason()
    if reason is not None:
        print(f"skipping: {reason}")
        pytest.skip(reason)


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, check=check, capture_output=True, text=True, timeout=30)


def _suffix() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture
def netns() -> Iterator[str]:
    """A fresh, empty network namespace, deleted afterwards (even on failure)."""
    _need_root()
    name = f"rnfw{_suffix()}"
    _run("ip", "netns", "add", name)
    try:
        _run("ip", "-n", name, "link", "set", "lo", "up")
        yield name
    finally:
        _run("ip", "netns", "del", name, check=False)


def _nft(ns: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return _run("ip", "netns", "exec", ns, "nft", *args, check=check)


def _tables(ns: str) -> list[dict[str, Any]]:
    listing = json.loads(_nft(ns, "-j", "list", "tables").stdout)
    return [item["table"] for item in listing["nftables"] if "table" in item]


@attrs.define
class Subject:
    """A firewall under test and a probe that changes whenever it really re-applied."""

    firewall: Firewall
    generation: Callable[[], object]


def _memory() -> Subject:
    fw = MemoryFirewall()
    return Subject(fw, lambda: fw.applies)


def _nftables(ns: str) -> Subject:
    fw = NftablesFirewall(netns=ns)

    def generation() -> object:
        # Every apply recreates the table, so its handle changes; a no-op keeps it.
        return [(t["name"], t["handle"]) for t in _tables(ns)]

    return Subject(fw, generation)


@pytest.fixture(params=["memory", "nftables"])
def subject(request: pytest.FixtureRequest) -> Subject:
    """Each adapter in turn (nftables inside its own namespace)."""
    if request.param == "memory":
        return _memory()
    return _nftables(request.getfixturevalue("netns"))


IFACE = "rnt0"
SSH_FROM_A = Ruleset.from_inbound([InboundRule(("100.64.0.1/32",), "tcp", ((22, 22),))])
MIXED = Ruleset.from_inbound(
    [
        InboundRule(("100.64.0.0/24", "fd7a:115c:a1e0::/48"), "any", ((53, 53), (8000, 8100))),
        InboundRule(("100.64.1.7/32",), "icmp", ()),
        InboundRule(("100.64.0.9/32",), "udp", ((0, 65535),)),
    ]
)


def _malformed() -> Ruleset:
    """A ruleset that bypassed the constructors: a port above 65535."""
    return Ruleset((FlowRule((ipaddress.ip_network("100.64.0.1/32"),), Proto.TCP, ((22, 70000),)),))


# --- the contract ----------------------------------------------------------------------------


@pytest.mark.asyncio
async def test_nothing_is_applied_at_first(subject: Subject) -> None:
    """A fresh firewall reports no ruleset, and remove() is harmless."""
    assert await subject.firewall.current() is None
    await subject.firewall.remove()
    assert await subject.firewall.current() is None


@pytest.mark.asyncio
@pytest.mark.parametrize("ruleset", [SSH_FROM_A, MIXED, Ruleset()], ids=["ssh", "mixed", "deny"])
async def test_apply_then_current_round_trips(subject: Subject, ruleset: Ruleset) -> None:
    """What was applied is what current() reads back (for nftables: parsed from the kernel)."""
    await subject.firewall.apply(IFACE, ruleset)
    assert await subject.firewall.current() == ruleset


@pytest.mark.asyncio
async def test_apply_replaces_the_whole_ruleset(subject: Subject) -> None:
    """A second apply leaves exactly the new rules: nothing of the old set survives."""
    await subject.firewall.apply(IFACE, MIXED)
    await subject.firewall.apply(IFACE, SSH_FROM_A)
    assert await subject.firewall.current() == SSH_FROM_A


@pytest.mark.asyncio
async def test_reapplying_an_equal_ruleset_is_a_no_op(subject: Subject) -> None:
    """Re-applying an equal (re-built) ruleset changes nothing where it is enforced."""
    await subject.firewall.apply(IFACE, MIXED)
    before = subject.generation()
    rebuilt = Ruleset.of(reversed(MIXED.rules))
    await subject.firewall.apply(IFACE, rebuilt)
    assert subject.generation() == before
    assert await subject.firewall.current() == MIXED


@pytest.mark.asyncio
async def test_remove_is_idempotent_and_leaves_nothing(subject: Subject) -> None:
    """remove() twice: no error, and no ruleset is left."""
    await subject.firewall.apply(IFACE, SSH_FROM_A)
    await subject.firewall.remove()
    await subject.firewall.remove()
    assert await subject.firewall.current() is None


@pytest.mark.asyncio
async def test_a_malformed_ruleset_is_refused_and_the_old_rules_stay(subject: Subject) -> None:
    """A ruleset outside its canonical form raises FirewallError; the previous rules remain."""
    await subject.firewall.apply(IFACE, SSH_FROM_A)
    with pytest.raises(FirewallError):
        await subject.firewall.apply(IFACE, _malformed())
    assert await subject.firewall.current() == SSH_FROM_A


@pytest.mark.asyncio
@pytest.mark.parametrize("name", ["", "a" * 16, "rn t0", "rn/t0", "-rnt0", 'rnt0"; drop'])
async def test_an_invalid_interface_name_is_refused(subject: Subject, name: str) -> None:
    """Names Linux cannot have (or that would smuggle syntax) are refused; nothing changes."""
    await subject.firewall.apply(IFACE, SSH_FROM_A)
    with pytest.raises(FirewallError):
        await subject.firewall.apply(name, MIXED)
    assert await subject.firewall.current() == SSH_FROM_A


# --- nftables only: what the port cannot see ---------------------------------------------------


@pytest.mark.root
@pytest.mark.asyncio
async def test_nftables_remove_deletes_only_its_table(netns: str) -> None:
    """After remove() our table is gone; a table someone else made is byte-for-byte untouched."""
    other = (
        "table inet other {\n chain c {\n  type filter hook input priority 10; policy accept;\n"
        "  tcp dport 1 drop\n }\n}\n"
        "table ip rustynet-x {\n chain c {\n  tcp dport 2 drop\n }\n}\n"
    )
    subprocess.run(
        ["ip", "netns", "exec", netns, "nft", "-f", "-"], input=other, text=True, check=True
    )
    before = _nft(netns, "-j", "list", "ruleset").stdout
    fw = NftablesFirewall(netns=netns)
    await fw.apply(IFACE, MIXED)
    assert {t["name"] for t in _tables(netns)} == {"other", "rustynet-x", f"rustynet-{IFACE}"}
    await fw.apply(IFACE, SSH_FROM_A)
    await fw.remove()
    assert _nft(netns, "-j", "list", "ruleset").stdout == before


@pytest.mark.root
@pytest.mark.asyncio
async def test_nftables_rules_match_only_the_tunnel_interface(netns: str) -> None:
    """Every rule in our table starts with `iifname <tunnel>`, and the chain policy is accept."""
    fw = NftablesFirewall(netns=netns)
    await fw.apply(IFACE, MIXED)
    text = _nft(netns, "list", "table", "inet", f"rustynet-{IFACE}").stdout
    rules = [line.strip() for line in text.splitlines() if "accept" in line or "drop" in line]
    assert "policy accept;" in rules[0]
    assert rules[1:]
    assert all(r.startswith(f'iifname "{IFACE}" ') for r in rules[1:])
    assert rules[-1] == f'iifname "{IFACE}" drop'


class PlantedRefusal(NftablesFirewall):
    """Broken on purpose: renders a valid batch plus one rule nft refuses (port 70000)."""

    def _batch(self, table: str, interface: str, ruleset: Ruleset) -> list[object]:
        bad = {
            "match": {
                "op": "==",
                "left": {"payload": {"protocol": "tcp", "field": "dport"}},
                "right": 70000,
            }
        }
        rule = {"family": "inet", "table": table, "chain": "input", "expr": [bad, {"accept": None}]}
        return [*super()._batch(table, interface, ruleset), {"add": {"rule": rule}}]


@pytest.mark.root
@pytest.mark.asyncio
async def test_nftables_a_refused_batch_leaves_the_previous_rules(netns: str) -> None:
    """When nft refuses the last element of the batch, the flush before it is undone too."""
    good = NftablesFirewall(netns=netns)
    await good.apply(IFACE, SSH_FROM_A)
    before = _nft(netns, "-j", "list", "ruleset").stdout
    with pytest.raises(FirewallError, match="nft refused"):
        await PlantedRefusal(netns=netns).apply(IFACE, MIXED)
    assert _nft(netns, "-j", "list", "ruleset").stdout == before
    assert await good.current() == SSH_FROM_A


@pytest.mark.root
@pytest.mark.asyncio
async def test_nftables_hand_edits_are_reported_then_repaired(netns: str) -> None:
    """A rule added by hand makes current() raise; the next apply replaces the table."""
    fw = NftablesFirewall(netns=netns)
    await fw.apply(IFACE, SSH_FROM_A)
    table = f"rustynet-{IFACE}"
    _nft(
        netns,
        "add",
        "rule",
        "inet",
        table,
        "input",
        "iifname",
        IFACE,
        "tcp",
        "dport",
        "99",
        "accept",
    )
    with pytest.raises(FirewallError):
        await fw.current()
    await fw.apply(IFACE, SSH_FROM_A)
    assert await fw.current() == SSH_FROM_A


@pytest.mark.root
@pytest.mark.asyncio
async def test_nftables_moving_to_another_interface_drops_the_old_table(netns: str) -> None:
    """With a derived table name, applying to a new interface leaves only the new table."""
    fw = NftablesFirewall(netns=netns)
    await fw.apply("rnt0", SSH_FROM_A)
    await fw.apply("rnt1", SSH_FROM_A)
    assert [t["name"] for t in _tables(netns)] == ["rustynet-rnt1"]
    await fw.remove()
    assert _tables(netns) == []


@pytest.mark.asyncio
async def test_nftables_without_nft_reports_a_firewall_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No nft binary on PATH: a FirewallError naming the problem, not a bare OSError."""
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(FirewallError, match="cannot run nft"):
        await NftablesFirewall().apply(IFACE, SSH_FROM_A)


# --- the real data path --------------------------------------------------------------------------

LISTENER = """
import socket, sys
socks = []
for port in (22, 23):
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("0.0.0.0", port))
    s.listen(64)  # the kernel completes handshakes without accept()
    socks.append(s)
print("ready", flush=True)
sys.stdin.read()
"""

CLIENT = """
import json, socket, sys
out = []
for src, dst, port in json.loads(sys.argv[1]):
    s = socket.socket()
    s.settimeout(float(sys.argv[2]))
    s.bind((src, 0))
    try:
        s.connect((dst, port))
        out.append("open")
    except TimeoutError:
        out.append("dropped")
    except ConnectionRefusedError:
        out.append("refused")
    finally:
        s.close()
print(json.dumps(out))
"""

A1, A3, B2 = "198.51.100.1", "198.51.100.3", "198.51.100.2"
SIDE_A, SIDE_B = "203.0.113.1", "203.0.113.2"
DROP_WAIT = "1.0"


@attrs.frozen
class Lab:
    """Namespace a (198.51.100.1 and .3) ↔ namespace b (198.51.100.2 on tunnel-named veth)."""

    a: str
    b: str
    tunnel: str

    def connect(self, probes: list[tuple[str, str, int]]) -> list[str]:
        """TCP connect from a to b for each (source, destination, port)."""
        argv = ["ip", "netns", "exec", self.a, sys.executable, "-c", CLIENT]
        done = _run(*argv, json.dumps(probes), DROP_WAIT)
        result: list[str] = json.loads(done.stdout)
        return result

    def ping(self, source: str) -> bool:
        """One echo from a (bound to `source`) to b; True when the reply came back."""
        argv = ["ip", "netns", "exec", self.a, "ping", "-n", "-c1", "-W1", "-I", source, B2]
        return _run(*argv, check=False).returncode == 0


@pytest.fixture
def lab() -> Iterator[Lab]:
    """Two namespaces, a veth named like a tunnel interface, a second plain veth, listeners."""
    _need_root()
    sfx = _suffix()
    a, b, tunnel = f"rnfwa{sfx}", f"rnfwb{sfx}", f"rnt{sfx}"
    listener: subprocess.Popen[str] | None = None
    try:
        for ns in (a, b):
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        _run("ip", "-n", a, "link", "add", f"rnv{sfx}", "type", "veth", "peer", tunnel, "netns", b)
        _run(
            "ip",
            "-n",
            a,
            "link",
            "add",
            f"rnw{sfx}",
            "type",
            "veth",
            "peer",
            f"rnx{sfx}",
            "netns",
            b,
        )
        for ns, dev, addrs in (
            (a, f"rnv{sfx}", [f"{A1}/24", f"{A3}/24"]),
            (b, tunnel, [f"{B2}/24"]),
            (a, f"rnw{sfx}", [f"{SIDE_A}/24"]),
            (b, f"rnx{sfx}", [f"{SIDE_B}/24"]),
        ):
            for addr in addrs:
                _run("ip", "-n", ns, "addr", "add", addr, "dev", dev, "nodad")
            _run("ip", "-n", ns, "link", "set", dev, "up")
        listener = subprocess.Popen(
            ["ip", "netns", "exec", b, sys.executable, "-c", LISTENER],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert listener.stdout is not None
        assert listener.stdout.readline().strip() == "ready"
        yield Lab(a, b, tunnel)
    finally:
        if listener is not None:
            listener.kill()  # our own child; closing its pipes then reaps it cleanly
            listener.communicate(timeout=10)
        for ns in (a, b):
            _run("ip", "netns", "del", ns, check=False)


@pytest.mark.root
@pytest.mark.asyncio
async def test_nftables_enforces_the_ruleset_on_the_real_data_path(lab: Lab) -> None:
    """tcp/22 from .1 only: .1→22 connects, .1→23 and .3→22 are dropped, icmp only when allowed.

    Negative control first: with no rules every probe connects, so a later 'dropped' is the
    firewall's doing (a closed port would say 'refused', an absent host would not answer at all).
    """
    probes = [(A1, B2, 22), (A1, B2, 23), (A3, B2, 22)]
    assert lab.connect(probes) == ["open", "open", "open"]
    assert lab.ping(A1)
    assert lab.ping(A3)

    fw = NftablesFirewall(netns=lab.b)
    ssh_from_1 = Ruleset.from_inbound([InboundRule((f"{A1}/32",), "tcp", ((22, 22),))])
    await fw.apply(lab.tunnel, ssh_from_1)
    assert lab.connect(probes) == ["open", "dropped", "dropped"]
    assert not lab.ping(A1)
    assert not lab.ping(A3)
    # Another interface of the same host is not judged by our table.
    assert lab.connect([(SIDE_A, SIDE_B, 23)]) == ["open"]

    with_icmp = Ruleset.from_inbound(
        [
            InboundRule((f"{A1}/32",), "tcp", ((22, 22),)),
            InboundRule((f"{A1}/32",), "icmp", ()),
        ]
    )
    await fw.apply(lab.tunnel, with_icmp)
    assert lab.ping(A1)
    assert not lab.ping(A3)
    assert lab.connect(probes) == ["open", "dropped", "dropped"]

    await fw.remove()
    assert lab.connect(probes) == ["open", "open", "open"]


@pytest.mark.root
@pytest.mark.asyncio
async def test_nftables_a_restarted_daemon_adopts_its_table_without_a_change(netns: str) -> None:
    """A new instance (daemon restart) re-applying the same ruleset leaves the table as it is."""
    await NftablesFirewall(netns=netns).apply(IFACE, MIXED)
    before = _tables(netns)
    restarted = NftablesFirewall(netns=netns)
    await restarted.apply(IFACE, MIXED)
    assert _tables(netns) == before
    await restarted.remove()
    assert _tables(netns) == []
