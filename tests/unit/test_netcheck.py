"""`rustynet netcheck`: the one document builder (application/node/netcheck.py) and the CLI
(adapters/cli/netcheck.py): text and --json, bad input, daemon and standalone paths."""

from __future__ import annotations

import argparse
import asyncio
import io
import ipaddress
import json
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from rustynet.adapters.cli import main as cli
from rustynet.adapters.cli import netcheck as netcheck_cli
from rustynet.adapters.cli import node as node_cli

from rustynet.application.doctor import DoctorReport
from rustynet.application.node.netcheck import (
    Latency,
    LatencyTarget,
    NetcheckTargets,
    NetcheckTools,
    build_document,
    daemon_netcheck,
    run_netcheck,
    targets_from_map,
)
from rustynet.domain.errors import RustynetError
from rustynet.domain.nat import StunObservation
from rustynet.domain.tunnel import IPAddress, UnderlayEndpoint
from rustynet.ports.interfaces import ProbeUnavailableError

LOCAL = ipaddress.ip_address("198.51.100.2")
WAN = "203.0.113.10"
S1, S2 = UnderlayEndpoint.parse("203.0.113.1:3478"), UnderlayEndpoint.parse("203.0.113.1:3479")
S6 = UnderlayEndpoint.parse("[2001:db8::1]:3478")
DOC_KEYS = {
    "netcheck",
    "measured",
    "local_port",
    "udp",
    "probe_error",
    "ipv4",
    "ipv6",
    "skipped",
    "latency",
}
FAMILY_KEYS = {
    "reachable",
    "answered",
    "asked",
    "nat",
    "description",
    "reflexive",
    "port_preserved",
    "servers",
}


def _obs(server: UnderlayEndpoint, mapped: str | None, rtt: float = 0.0012) -> StunObservation:
    seen = None if mapped is None else UnderlayEndpoint.parse(mapped)
    return StunObservation(server, seen, rtt if seen else None)


@pytest.mark.parametrize(
    ("observations", "nat", "reflexive", "preserved"),
    [
        ([_obs(S1, f"{LOCAL}:4000"), _obs(S2, f"{LOCAL}:4000")], "public", [f"{LOCAL}:4000"], True),
        (
            [_obs(S1, f"{WAN}:4000"), _obs(S2, f"{WAN}:4000")],
            "eim-port-preserving",
            [f"{WAN}:4000"],
            True,
        ),
        ([_obs(S1, f"{WAN}:999"), _obs(S2, f"{WAN}:999")], "eim", [f"{WAN}:999"], False),
        (
            [_obs(S1, f"{WAN}:1001"), _obs(S2, f"{WAN}:1002")],
            "hard",
            [f"{WAN}:1001", f"{WAN}:1002"],
            False,
        ),
        ([_obs(S1, None), _obs(S2, None)], "udp-blocked", [], None),
        ([_obs(S1, f"{WAN}:4000")], "unknown", [f"{WAN}:4000"], True),
    ],
)
def test_document_classifies_ipv4(
    observations: list[StunObservation], nat: str, reflexive: list[str], preserved: bool | None
) -> None:
    doc = build_document("ephemeral-port", 4000, observations, [LOCAL])
    assert set(doc) == DOC_KEYS
    v4 = doc["ipv4"]
    assert isinstance(v4, dict)
    assert set(v4) == FAMILY_KEYS
    assert (v4["nat"], v4["reflexive"], v4["port_preserved"]) == (nat, reflexive, preserved)
    assert doc["udp"] is (nat != "udp-blocked")
    assert doc["ipv6"] is None  # no IPv6 server asked


def test_document_ipv6_and_latency_and_rtts() -> None:
    me6 = ipaddress.ip_address("2001:db8::5")
    observations = [_obs(S1, f"{WAN}:4000"), _obs(S2, f"{WAN}:4000"), _obs(S6, f"[{me6}]:4000")]
    control = LatencyTarget("control", None, "control.example", 443)
    relay = LatencyTarget("relay", "relay-1", "relay.example", 8443)
    doc = build_document(
        "tunnel-port",
        4000,
        observations,
        [LOCAL, me6],
        [Latency(control, 0.0021), Latency(relay, None)],
    )
    v6 = doc["ipv6"]
    assert isinstance(v6, dict)
    assert (v6["reachable"], v6["nat"], v6["reflexive"]) == (True, "public", [f"[{me6}]:4000"])
    v4 = doc["ipv4"]
    assert isinstance(v4, dict)
    assert v4["servers"][0] == {"server": str(S1), "mapped": f"{WAN}:4000", "rtt_ms": 1.2}
    assert doc["latency"] == [
        {
            "kind": "control",
            "id": None,
            "target": "control.example:443",
            "method": "tcp-connect",
            "rtt_ms": 2.1,
        },
        {
            "kind": "relay",
            "id": "relay-1",
            "target": "relay.example:8443",
            "method": "tcp-connect",
            "rtt_ms": None,
        },
    ]
    json.dumps(doc)  # a JSON document as it stands


def test_latency_targets_from_urls() -> None:
    assert LatencyTarget.from_url("relay", "r", "wss://relay.example/v1/relay") == LatencyTarget(
        "relay", "r", "relay.example", 443
    )
    assert LatencyTarget.from_url("control", None, "https://[2001:db8::1]:8443/") == (
        LatencyTarget("control", None, "2001:db8::1", 8443)
    )
    assert LatencyTarget.from_url("control", None, "https://:99999/") is None


class FakeProbe:
    def __init__(self, answers: Mapping[UnderlayEndpoint, str | None]) -> None:
        self.answers = answers
        self.ports: list[int | None] = []

    async def observe(
        self, servers: Sequence[UnderlayEndpoint], port: int | None
    ) -> tuple[StunObservation, ...]:
        self.ports.append(port)
        return tuple(_obs(s, self.answers.get(s)) for s in servers)


class FakeLatency:
    async def connect(self, host: str, port: int) -> float | None:
        return 0.005 if host == "control.example" else None


class FakeInterfaces:
    async def addresses(self) -> Mapping[str, tuple[IPAddress, ...]]:
        return {"eth0": (LOCAL,)}


def _tools(probe: FakeProbe, *, tunnel_port: bool = False) -> NetcheckTools:
    return NetcheckTools(probe, FakeLatency(), FakeInterfaces(), lambda: 40000, tunnel_port)


def test_run_netcheck_measures_everything_from_one_port() -> None:
    probe = FakeProbe({S1: f"{WAN}:41641", S2: f"{WAN}:41641"})
    targets = NetcheckTargets((S1, S2), (LatencyTarget("control", None, "control.example", 443),))
    doc = asyncio.run(run_netcheck(_tools(probe), targets, 41641, "tunnel-port"))
    assert probe.ports == [41641]
    assert doc["measured"] == "tunnel-port"
    v4 = doc["ipv4"]
    assert isinstance(v4, dict)
    assert v4["nat"] == "eim-port-preserving"
    assert doc["latency"][0]["rtt_ms"] == 5.0  # type: ignore[index]


def _peer_map_stub() -> object:
    from rustynet.domain.netmap import RelayEntry  # noqa: PLC0415 - only this test

    class Stub:
        stun = ("203.0.113.1:3478", "203.0.113.1:3479", "203.0.113.2:3478")
        peers = ()
        relays = (
            RelayEntry.from_texts(
                "relay-1", "wss://relay.example:8443/v1/relay", "sha256//" + "A" * 43 + "="
            ),
            RelayEntry.from_texts(  # an IP literal: the tunnel talks to it (relayed UDP)
                "relay-2",
                "wss://203.0.113.2:443/v1/relay",
                "sha256//" + "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE=",
            ),
        )

    return Stub()


def test_daemon_netcheck_uses_the_tunnel_port_only_when_the_probe_can() -> None:
    peer_map = _peer_map_stub()
    for can, port, measured in ((True, 41641, "tunnel-port"), (False, 40000, "ephemeral-port")):
        probe = FakeProbe({S1: f"{WAN}:{port}", S2: f"{WAN}:{port}"})
        doc = asyncio.run(
            daemon_netcheck(
                _tools(probe, tunnel_port=can),
                peer_map,  # type: ignore[arg-type]
                "https://control.example:443",
                41641,
            )
        )
        assert (probe.ports, doc["measured"], doc["local_port"]) == ([port], measured, port)
        v4 = doc["ipv4"]
        assert isinstance(v4, dict)
        probed = [s["server"] for s in v4["servers"]]
        if can:  # never from the tunnel port toward an address the tunnel talks to
            assert (probed, doc["skipped"]) == ([str(S1), str(S2)], ["203.0.113.2:3478"])
        else:
            assert (probed[2:], doc["skipped"]) == (["203.0.113.2:3478"], [])
    targets = targets_from_map(peer_map, "https://control.example")  # type: ignore[arg-type]
    assert targets.stun == (S1, S2, UnderlayEndpoint.parse("203.0.113.2:3478"))
    assert [(t.kind, t.id, t.host, t.port) for t in targets.latency] == [
        ("control", None, "control.example", 443),
        ("relay", "relay-1", "relay.example", 8443),
        ("relay", "relay-2", "203.0.113.2", 443),
    ]


def test_skipped_servers_are_named_in_the_text() -> None:
    doc = {**_doc("tunnel-port"), "skipped": ["203.0.113.2:3478"]}
    text = netcheck_cli.render_netcheck(doc, "through rustynetd")
    assert "skipped:        203.0.113.2:3478 (the tunnel talks to it" in text
    assert "skipped" not in netcheck_cli.render_netcheck(_doc(), "standalone")


# --- the CLI ---------------------------------------------------------------------------------


class FakeCommands:
    def __init__(self, doc: dict[str, object]) -> None:
        self.doc = doc
        self.asked: list[NetcheckTargets] = []

    def doctor(self, request: cli.DoctorRequest) -> DoctorReport:
        raise AssertionError("not this command")

    def netcheck(self, targets: NetcheckTargets) -> dict[str, object]:
        self.asked.append(targets)
        return self.doc


def _doc(measured: str = "ephemeral-port") -> dict[str, object]:
    observations = [_obs(S1, f"{WAN}:4000"), _obs(S2, f"{WAN}:4000"), _obs(S6, None)]
    control = LatencyTarget("control", None, "203.0.113.1", 443)
    return build_document(
        measured,  # type: ignore[arg-type]
        4000,
        observations,
        [LOCAL],
        [
            Latency(control, 0.0031),
            Latency(LatencyTarget("relay", "relay-1", "r.example", 443), None),
        ],
    )


def _run(argv: list[str], commands: FakeCommands) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = cli.main(argv, commands, stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


EXPECTED_TEXT = """\
measured:       an ephemeral port 4000, not the tunnel port (standalone)
udp:            yes (2 of 2 IPv4 STUN servers answered)
reflexive:      203.0.113.10:4000
mapping:        eim-port-preserving: NAT with endpoint-independent mapping that keeps the local port (easy to traverse)
port preserved: yes
ipv6:           no (0 of 1 IPv6 STUN servers answered)
stun:
  203.0.113.1:3478             1.2 ms     saw 203.0.113.10:4000
  203.0.113.1:3479             1.2 ms     saw 203.0.113.10:4000
  [2001:db8::1]:3478           no answer
latency:
  control          203.0.113.1:443              tcp-connect 3.1 ms
  relay relay-1    r.example:443                tcp-connect no connection
"""  # noqa: E501 - the exact lines a user pastes


def test_standalone_text_says_it_measured_an_ephemeral_port() -> None:
    commands = FakeCommands(_doc())
    code, out, err = _run(
        [
            "netcheck",
            "--stun",
            "203.0.113.1:3478",
            "--stun",
            "[2001:db8::1]:3478",
            "--control",
            "https://203.0.113.1",
            "--relay",
            "wss://r.example/v1/relay",
        ],
        commands,
    )
    assert (code, err) == (0, "")
    assert out == EXPECTED_TEXT
    [asked] = commands.asked
    assert asked.stun == (S1, S6)
    assert [(t.kind, t.host, t.port) for t in asked.latency] == [
        ("control", "203.0.113.1", 443),
        ("relay", "r.example", 443),
    ]


def test_standalone_json_is_the_document() -> None:
    code, out, _ = _run(["netcheck", "--json", "--stun", "203.0.113.1:3478"], FakeCommands(_doc()))
    assert code == 0
    assert json.loads(out) == json.loads(json.dumps(_doc()))


@pytest.mark.parametrize(
    "argv",
    [
        ["netcheck", "--stun", "garbage"],
        ["netcheck", "--stun", "stun.example:3478"],  # names are not resolved for discovery
        ["netcheck", "--stun", "203.0.113.1:0"],
        ["netcheck", "--stun", "203.0.113.1:3478", "--relay", "http://r.example"],
        ["netcheck", "--stun", "203.0.113.1:3478", "--control", "https://"],
        ["netcheck", "--relay", "wss://r.example"],  # needs --stun
    ],
)
def test_bad_input_is_a_usage_error(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    commands = FakeCommands(_doc())
    code, out, err = _run(argv, commands)
    err += capsys.readouterr().err  # argparse's own messages go to sys.stderr
    assert code == 2
    assert out == ""
    assert "rustynet netcheck" in err
    assert commands.asked == []


def test_no_daemon_and_no_stun_names_both_ways(tmp_path: Path) -> None:
    code, out, err = _run(["--socket", str(tmp_path / "none.sock"), "netcheck"], FakeCommands({}))
    assert (code, out) == (2, "")
    assert "rustynetd does not answer" in err
    assert "--stun ADDR:PORT" in err


def test_through_the_daemon(monkeypatch: pytest.MonkeyPatch) -> None:
    asked: list[tuple[str, str]] = []

    def fake_call(path: Path, method: str, route: str, body: object = None) -> object:
        asked.append((method, route))
        return _doc("tunnel-port")

    monkeypatch.setattr(node_cli, "call", fake_call)
    commands = FakeCommands({})
    code, out, _ = _run(["netcheck"], commands)
    assert code == 0
    assert asked == [("GET", "/netcheck")]
    assert commands.asked == []
    assert out.splitlines()[0] == "measured:       the tunnel port 4000 (through rustynetd)"
    assert out.splitlines()[1:] == EXPECTED_TEXT.splitlines()[1:]


def test_daemon_refusal_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    def refused(path: Path, method: str, route: str, body: object = None) -> object:
        raise node_cli.DaemonRefused("netcheck needs the tunnel up with a peer map")

    monkeypatch.setattr(node_cli, "call", refused)
    code, _, err = _run(["netcheck"], FakeCommands({}))
    assert code == 1
    assert "needs the tunnel up" in err


def test_nothing_secret_in_the_output() -> None:
    """The document holds only addresses, ports, classes and times: no field can carry a
    token or a key, whatever the inputs."""
    text = netcheck_cli.render_netcheck(_doc(), "standalone") + json.dumps(_doc())
    for marker in ("rnjoin1_", "rnk_", "token", "key", "sha256/", "private"):
        assert marker not in text.lower()


def test_parser_lists_netcheck() -> None:
    parser = cli.build_parser()
    ns = parser.parse_args(["netcheck", "--stun", "203.0.113.1:3478"])
    assert isinstance(ns, argparse.Namespace)
    assert ns.stun == [S1]


class BrokenInterfaces:
    async def addresses(self) -> Mapping[str, tuple[IPAddress, ...]]:
        raise RustynetError("ip: not found")


def test_unreadable_interfaces_never_make_a_public_verdict() -> None:
    probe = FakeProbe({S1: f"{LOCAL}:4000", S2: f"{LOCAL}:4000"})
    tools = NetcheckTools(probe, FakeLatency(), BrokenInterfaces(), lambda: 4000)
    doc = asyncio.run(run_netcheck(tools, NetcheckTargets((S1, S2)), 4000, "ephemeral-port"))
    v4 = doc["ipv4"]
    assert isinstance(v4, dict)
    assert v4["nat"] == "eim-port-preserving"  # own addresses unknown: not claimed public


class BrokenProbe:
    async def observe(
        self, servers: Sequence[UnderlayEndpoint], port: int | None
    ) -> tuple[StunObservation, ...]:
        raise ProbeUnavailableError("cannot install the probe rule: permission denied")


def test_a_probe_that_cannot_run_says_so_instead_of_udp_blocked() -> None:
    tools = NetcheckTools(BrokenProbe(), FakeLatency(), FakeInterfaces(), lambda: 40000, True)
    targets = NetcheckTargets((S1, S2), (LatencyTarget("control", None, "control.example", 443),))
    doc = asyncio.run(run_netcheck(tools, targets, 41641, "tunnel-port"))
    assert doc["udp"] is None
    assert doc["probe_error"] == "cannot install the probe rule: permission denied"
    assert doc["latency"][0]["rtt_ms"] == 5.0  # type: ignore[index]  # still measured
    text = netcheck_cli.render_netcheck(doc, "through rustynetd")
    assert "udp:            unknown: the probe could not run (cannot install" in text
    assert "udp-blocked" not in text
