"""End-to-end scenario 6 of issue 4: a malicious control-plane stand-in cannot move a node.

The real `rustynet-control` brings A and B up (allow-all policy) and is then killed with
SIGKILL; `standin_control.py` takes its address with the REAL TLS certificate and key (an
attacker who stole the TLS key or sits where control was: A's SPKI pin passes) but without the
signing keys. It serves A, one at a time, a tampered map, maps signed by a key of its own (with
its own root, or with a certificate from its own root next to the genuine one, or with no
certificate at all, the last one dropping B) and genuine maps A had already applied (an older
serial and the current one). Each must be rejected for the intended reason, counted in
`rustynet_peermap_rejected_total`, logged as `peer_map.rejected`, and change nothing: the serial,
the saved state file, the tunnel's peers, the firewall table and A↔B traffic stay as they were.

Each forged map is first shown to have teeth: it would pass every other check (it parses, it is
addressed to A, unexpired, with a higher serial; the rogue maps verify under the rogue root; the
replays are genuine signed maps), so only the check under test stands between it and the tunnel.
"""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Final

import attrs
import pytest
from rustynet.adapters.entropy import OsEntropy

from rustynet.domain.keys import KeyFingerprint, Purpose, SigningKey
from rustynet.domain.netmap import PeerMap, PeerMapTrust, accept_peer_map, format_time
from rustynet.domain.signed import JsonObject, SignedEnvelope
from tests.e2e.harness import (
    ALLOW_ALL_POLICY,
    CONTROL_IP,
    PYTHON,
    Mesh,
    Node,
    Program,
    dig,
    run_in,
    wait_for,
)
from tests.key_chain import SigningChain

pytestmark = [pytest.mark.root, pytest.mark.slow]

STANDIN: Final = Path(__file__).with_name("standin_control.py")
STATE_FILE: Final = "node-state.json"  # rustynet.bootstrap.node.STATE_FILE
MESH_UP_S: Final = 10.0
# After control dies the node retries with jittered backoff 0.5, 1, 2, 4 s ...: the stand-in is
# listening within about a second, so A reaches it on its second or third retry.
RECONNECT_S: Final = 15.0
# After each rejection the node backs off like after an outage (jittered 0.5, 1, 2, 4, 8, 16 s:
# a server answering bad maps must not make it spin), then its next poll takes the delivery.
REJECT_S: Final = 20.0
REJECTED: Final = "rustynet_peermap_rejected_total"


@attrs.frozen
class Attack:
    """One delivery the stand-in serves and the reason A must give for refusing it."""

    label: str
    envelope: str
    trust: Mapping[str, object]
    reason: str


def _saved_state(node: Node) -> dict[str, object]:
    decoded = json.loads((node.state_dir / STATE_FILE).read_bytes())
    assert isinstance(decoded, dict)
    return decoded


def _text(state: Mapping[str, object], key: str) -> str:
    value = state[key]
    assert isinstance(value, str), key
    return value


def _trust_texts(state: Mapping[str, object]) -> dict[str, object]:
    return {
        "root_certificate": state["root_certificate"],
        "signing_certificates": state["signing_certificates"],
    }


def _genuine_trust(state: Mapping[str, object], now: datetime) -> PeerMapTrust:
    certs = state["signing_certificates"]
    assert isinstance(certs, list)
    return PeerMapTrust.from_texts(
        _text(state, "root_certificate"),
        KeyFingerprint.from_text(_text(state, "root_fingerprint")),
        [str(c) for c in certs],
        now,
    )


def _raise_serial_by_one_byte(envelope_text: str) -> str:
    """The envelope with ONE payload byte changed: a digit of the serial raised (a higher serial,
    still canonical JSON); the signature is left as it was."""
    envelope = SignedEnvelope.from_text(envelope_text)
    match = re.search(rb'"serial":(\d+)', envelope.payload)
    assert match is not None
    digits = match.group(1)
    position = next(i for i, d in enumerate(digits) if d != ord("9"))  # serials here are small
    offset = match.start(1) + position
    payload = envelope.payload[:offset] + b"9" + envelope.payload[offset + 1 :]
    forged = SignedEnvelope(envelope.purpose, envelope.key_id, payload, envelope.signature)
    return forged.to_text()


@attrs.frozen
class Rogue:
    """The attacker's own hierarchy: a root, a signing key and the certificate between them."""

    root_certificate: str
    root_fingerprint: KeyFingerprint
    signing_certificate: str
    signing_key: SigningKey

    @classmethod
    def create(cls, now: datetime) -> Rogue:
        """Fresh keys; certificates valid around `now`."""
        entropy = OsEntropy()
        start = now.replace(microsecond=0) - timedelta(minutes=5)
        chain = SigningChain.make(
            entropy, start, root_not_after=start + timedelta(days=60), pinned_at=now
        )
        root_cert = chain.root_certificate
        return cls(
            root_cert.to_text(),
            root_cert.key_id,
            chain.signing_certificate.to_text(),
            chain.signing_key,
        )

    def seal(self, payload: JsonObject) -> str:
        """`payload` signed as a peer map by the rogue signing key."""
        return SignedEnvelope.seal(self.signing_key, Purpose.PEER_MAP, payload).to_text()

    def trust(self, now: datetime) -> PeerMapTrust:
        """What a node pinned to the ROGUE root would trust (to show the forged maps' teeth)."""
        return PeerMapTrust.from_texts(
            self.root_certificate, self.root_fingerprint, [self.signing_certificate], now
        )


def _rogue_payload(good: PeerMap, serial: int, now: datetime, drop_peers: bool) -> JsonObject:
    """A's current map, re-issued now with `serial` (and without any peer if `drop_peers`)."""
    issued = now.replace(microsecond=0)
    payload = good.to_payload()
    payload["serial"] = serial
    payload["issued_at"] = format_time(issued)
    payload["expires_at"] = format_time(issued + timedelta(hours=1))
    if drop_peers:
        payload["peers"] = []
    return payload


def _attacks(early: Mapping[str, object], good: Mapping[str, object], a_id: str) -> list[Attack]:
    """The deliveries, each checked first to fail ONLY the check it is aimed at."""
    now = datetime.now(UTC)
    watermark = good["peer_map_watermark"]
    assert isinstance(watermark, int)
    genuine, trust = _genuine_trust(good, now), _trust_texts(good)
    good_envelope, early_envelope = _text(good, "last_peer_map"), _text(early, "last_peer_map")
    current = accept_peer_map(good_envelope, genuine, a_id, watermark - 1, now)
    rogue = Rogue.create(now)

    tampered = _raise_serial_by_one_byte(good_envelope)
    claims = PeerMap.from_payload(SignedEnvelope.from_text(tampered).unverified_payload())
    assert claims.addressee == a_id
    assert claims.serial > watermark
    assert claims.expires_at > now

    rogue_map = rogue.seal(_rogue_payload(current, watermark + 100, now, drop_peers=False))
    drop_b = rogue.seal(_rogue_payload(current, watermark + 200, now, drop_peers=True))
    for envelope in (rogue_map, drop_b):  # valid maps for A, had A pinned the rogue root
        accept_peer_map(envelope, rogue.trust(now), a_id, watermark, now)

    older = accept_peer_map(early_envelope, genuine, a_id, 0, now)  # a genuine, unexpired map
    assert older.serial < watermark
    assert not older.peers, "the early map predates B: replaying it would drop B"

    root_cert = _text(good, "root_certificate")
    return [
        Attack("tampered-serial-byte", tampered, trust, "PeerMapSignatureError"),
        Attack(
            "unknown-root",
            rogue_map,
            {
                "root_certificate": rogue.root_certificate,
                "signing_certificates": [rogue.signing_certificate],
            },
            "UnknownSigner",
        ),
        Attack(
            "unknown-signing-cert-under-genuine-root",
            rogue_map,
            {"root_certificate": root_cert, "signing_certificates": [rogue.signing_certificate]},
            "PeerMapSignatureError",
        ),
        Attack("replay-older-serial", early_envelope, trust, "StaleSerial"),
        Attack("replay-current-serial", good_envelope, trust, "StaleSerial"),
        Attack("unknown-signer-drops-b", drop_b, trust, "PeerMapSignatureError"),
    ]


def _queue(directory: Path, index: int, attack: Attack) -> None:
    """Hand one delivery to the stand-in (written aside, then renamed into place)."""
    body = {"label": attack.label, "envelope": attack.envelope, "trust": dict(attack.trust)}
    temporary = directory / f".{index:03d}.tmp"
    temporary.write_text(json.dumps(body))
    temporary.rename(directory / f"{index:03d}.json")


def _rejections(node: Node) -> list[dict[str, object]]:
    """The `peer_map.rejected` security events in the node's JSON log."""
    events = []
    for line in node.program.log_text().splitlines():
        if "peer_map.rejected" not in line:
            continue
        event = json.loads(line)
        assert isinstance(event, dict)
        if event.get("event") == "peer_map.rejected":
            events.append(event)
    return events


def _rejected_reaches(node: Node, count: float) -> bool:
    return node.metrics()[REJECTED] == count


def _firewall(node: Node) -> str:
    done = run_in(node.ns, "nft", "list", "table", "inet", f"rustynet-{node.interface}")
    assert done.returncode == 0, done.stderr
    return done.stdout


def _pings_both_ways(a: Node, b: Node, tries: int = 3) -> bool:
    """A→B and B→A each answer one of up to `tries` one-second pings."""
    return any(a.ping(b) for _ in range(tries)) and any(b.ping(a) for _ in range(tries))


def test_malicious_control_standin_maps_are_rejected_and_last_good_state_kept(
    mesh: Mesh,
) -> None:
    """A stand-in holding control's TLS key serves a tampered map, maps signed by unknown keys
    and replays of older and current serials: each is rejected (counted, logged with its
    reason) and A keeps its serial, saved state, tunnel peers, firewall and traffic to B."""
    mesh.start_control()
    mesh.control.set_policy(ALLOW_ALL_POLICY, mesh.workdir)
    a, b = mesh.add_node("a"), mesh.add_node("b")
    mesh.join(a)
    wait_for("A's first map", lambda: dig(a.status(), "peermap_serial") != 0, MESH_UP_S)
    early = _saved_state(a)  # a genuine map A applied, from before B existed
    mesh.join(b)
    mesh.wait_all_ping(MESH_UP_S)
    a_id = str(dig(a.status(), "node", "id"))

    mesh.control.kill9()  # from here on nothing genuine can change A's state
    queue = mesh.workdir / "standin-queue"
    queue.mkdir()
    tls = mesh.control.data_dir / "tls"
    standin = Program(
        mesh.control_ns,
        [
            PYTHON,
            str(STANDIN),
            "--listen",
            f"{CONTROL_IP}:{mesh.control.port}",
            "--cert",
            str(tls / "control.crt"),
            "--key",
            str(tls / "control.key"),
            "--target",
            a_id,
            "--queue",
            str(queue),
        ],
        mesh.workdir / "standin.log",
    )
    mesh.servers.append(standin)  # the mesh fixture kills it, whatever happens below
    standin.start()
    standin.wait_log("ready;")
    # A reached the stand-in through its pinned TLS (it answered 204: "connected"); any map in
    # flight when control died has been applied by now, so this is A's last good state.
    wait_for(
        "A to poll the stand-in",
        lambda: f"node={a_id}" in standin.log_text() and a.connected(),
        RECONNECT_S,
    )
    good = _saved_state(a)
    attacks = _attacks(early, good, a_id)
    serial = good["peer_map_watermark"]
    assert dig(a.status(), "peermap_serial") == serial
    state_bytes = (a.state_dir / STATE_FILE).read_bytes()
    peer_keys, b_key = a.tunnel_peer_keys(), b.tunnel_key()
    assert b_key in peer_keys
    firewall = _firewall(a)
    rejected = a.metrics()[REJECTED]

    for index, attack in enumerate(attacks):
        _queue(queue, index, attack)
        standin.wait_log(f"served {index} {attack.label}", REJECT_S)
        wait_for(
            f"A to reject {attack.label}",
            functools.partial(_rejected_reaches, a, rejected + index + 1),
            REJECT_S,
        )
        metrics = a.metrics()
        assert metrics["rustynet_peermap_serial"] == serial, attack.label
        assert metrics["rustynet_peers"] == 1, attack.label
        assert (a.state_dir / STATE_FILE).read_bytes() == state_bytes, attack.label
        assert a.tunnel_peer_keys() == peer_keys, attack.label
        assert _firewall(a) == firewall, attack.label
        assert _pings_both_ways(a, b), f"A↔B after {attack.label}"

    events = _rejections(a)
    assert [e.get("reason") for e in events] == [t.reason for t in attacks], events
    assert all(e.get("watermark") == serial for e in events), events
    assert set(a.peers()) == {"b"}
    assert a.connected()
    # A keeps asking for maps above the watermark it kept.
    polls = re.findall(rf"node={a_id} after=(\d+)", standin.log_text())
    assert polls, standin.tail()
    assert int(polls[-1]) == serial
