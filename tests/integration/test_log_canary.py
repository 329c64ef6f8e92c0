"""Log canary: a whole control-plane session with unique secrets, then every log byte is scanned.

The real server runs as a subprocess (`rustynet-control init` + `serve --log-level debug` on
127.0.0.1), its stdout and stderr go to files. The session: admin CLI use, join-key creation,
a node enrolls over pinned TLS, then failures (wrong join secret, unknown join key, wrong and
unknown API keys, `?token=<canary>` queries, malformed / oversized / mistyped bodies carrying
secrets, an access token replayed after revocation), a SIGKILL while requests are in flight
and a restart. Every byte the server wrote, plus init's and the admin CLI's output, is then
searched for every secret in several encodings: zero hits.

The scan has teeth: `test_scanner_finds_a_canary_logged_without_redaction` logs a canary the
same way the server logs (through `rustynet.adapters.logging`) and the same scanner finds it,
and the session test checks that the requests carrying secrets WERE logged (as route, status).
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import aiohttp
import attrs
import pytest
from rustynet.adapters.control_client import ControlClient, NodeAuth, pinned_ssl_context
from rustynet.adapters.entropy import OsEntropy

from rustynet.domain.credentials import CredentialId
from rustynet.domain.join_tokens import JoinToken
from rustynet.domain.key_hierarchy import issue_tunnel_key_binding
from rustynet.domain.keys import SigningKey, TunnelKeyScheme, TunnelPrivateKey, b64encode
from rustynet.domain.tls_pin import SpkiPin
from rustynet.ports.control_api import ControlApiError, ControlRejected
from tests.integration.test_control_cli import (
    CONTROL,
    RUSTYNET,
    START_TIMEOUT,
    _enroll,
    _env,
    _free_port,
    _peer_map,
    run,
)

pytestmark = pytest.mark.slow

MIN_FORM = 12  # shorter derived forms could match by chance; every secret here is far longer


def _canary(label: str) -> str:
    """A unique string no log would contain by chance, with no secret marker in it."""
    return f"cnry{label}{secrets.token_hex(16)}"


def _b64_forms(raw: bytes) -> set[str]:
    return {
        b64encode(raw),
        base64.b64encode(raw).decode("ascii"),
        base64.b64encode(raw).decode("ascii").rstrip("="),
        raw.hex(),
    }


def secret_forms(secret: str) -> set[str]:
    """The text, its URL-encoded and JSON-escaped forms, and the part after a known prefix."""
    forms = {secret, quote(secret, safe=""), json.dumps(secret)[1:-1]}
    for prefix in ("rnjoin1_", "v4.public.", "rnk_"):
        if secret.startswith(prefix):
            forms.add(secret.removeprefix(prefix))
    if secret.startswith("rnk_") and secret.count("_") >= 2:
        forms.add(secret.split("_", 2)[2])  # the secret part of an API key alone
    return {f for f in forms if len(f) >= MIN_FORM}


def hits(blobs: dict[str, bytes], needles: dict[str, set[str]]) -> list[tuple[str, str]]:
    """(secret label, file) for every secret form found in any blob."""
    found = []
    for label, forms in needles.items():
        for name, blob in blobs.items():
            if any(form.encode("utf-8") in blob for form in forms):
                found.append((label, name))
    return found


@attrs.define
class Secrets:
    """Every secret of the session, by label, in every form the scan looks for."""

    needles: dict[str, set[str]] = attrs.field(factory=dict)

    def add(self, label: str, secret: str) -> None:
        self.needles.setdefault(label, set()).update(secret_forms(secret))

    def add_raw(self, label: str, raw: bytes | bytearray) -> None:
        self.needles.setdefault(label, set()).update(_b64_forms(bytes(raw)))

    def add_join_token(self, label: str, text: str) -> None:
        self.add(label, text)
        token = JoinToken.parse(text)
        secret = token.export_secret()
        try:
            self.add_raw(label + "-secret", secret)
        finally:
            secret[:] = bytes(len(secret))


@attrs.define
class Server:
    """One `rustynet-control serve` subprocess writing stdout/stderr to files."""

    proc: subprocess.Popen[bytes]
    out: Path
    err: Path

    def lines(self) -> list[dict[str, object]]:
        """The JSON log records on stderr (other lines skipped)."""
        text = self.err.read_text("utf-8", errors="replace")
        return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def _serve(data_dir: Path, log_dir: Path, n: int) -> Server:
    out, err = log_dir / f"serve-{n}.out", log_dir / f"serve-{n}.err"
    with out.open("wb") as out_file, err.open("wb") as err_file:
        proc = subprocess.Popen(
            [CONTROL, "serve", "--data-dir", str(data_dir), "--log-level", "debug"],
            stdout=out_file,
            stderr=err_file,
            env=_env(),
        )
    deadline = time.monotonic() + START_TIMEOUT
    while b"ready;" not in err.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            proc.wait()
            raise AssertionError("server did not start:\n" + err.read_text())
        time.sleep(0.05)
    return Server(proc, out, err)


def _stop(server: Server) -> int:
    if server.proc.poll() is None:
        server.proc.send_signal(signal.SIGTERM)
        try:
            server.proc.wait(10)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait()
    return server.proc.returncode


@attrs.define
class Session:
    """What the session needs to reach the server and what the admin CLI printed."""

    data_dir: Path
    url: str
    pin: SpkiPin
    admin_key: bytes
    cli_output: dict[str, bytes] = attrs.field(factory=dict)

    def admin(self, label: str, *args: str, config: Path | None = None) -> str:
        """Run `rustynet admin`; keep its stderr for the scan (stdout may be a new secret)."""
        done = run(
            RUSTYNET, "admin", "--config", str(config or self.data_dir / "admin.toml"), *args
        )
        self.cli_output[f"admin {label} stderr"] = done.stderr.encode("utf-8")
        return done.stdout if done.returncode == 0 else f"exit {done.returncode}"


def _valid_enroll_fields() -> dict[str, str]:
    """Well-formed enrollment fields of a fresh node, so only the join secret can fail."""
    entropy = OsEntropy()
    identity = SigningKey.generate(entropy)
    tunnel = TunnelPrivateKey.generate(entropy, TunnelKeyScheme.X25519).public_key
    binding = issue_tunnel_key_binding(identity, tunnel, datetime.now(UTC))
    return {
        "identity_key": identity.public_key.to_text(),
        "tunnel_key": tunnel.to_text(),
        "tunnel_key_binding": binding.to_text(),
        "hostname": "probe",
    }


async def _rejected(call: object) -> ControlRejected:
    """Await `call` and return the ControlRejected it raised (fail if it succeeded)."""
    assert asyncio.iscoroutine(call)
    with pytest.raises(ControlRejected) as caught:
        await call
    return caught.value


async def _raw(
    session: Session, method: str, path: str, body: bytes, headers: dict[str, str]
) -> int:
    """One request with a raw body over the pinned TLS 1.3 context; returns the status."""
    connector = aiohttp.TCPConnector(ssl=pinned_ssl_context(session.pin))
    async with (
        aiohttp.ClientSession(connector=connector) as http,
        http.request(method, session.url + path, data=body, headers=headers) as response,
    ):
        await response.read()
        return response.status


async def _failures(session: Session, known: Secrets, node: NodeAuth, join_text: str) -> None:
    """Every failure path with a secret in it; each is refused with the expected status."""
    token = JoinToken.parse(join_text)
    wrong = JoinToken(
        control_url=token.control_url,
        root_fingerprint=token.root_fingerprint,
        tls_spki_sha256=token.tls_spki_sha256,
        token_id=token.token_id,
        secret=bytearray(secrets.token_bytes(32)),
    ).to_text()
    known.add_join_token("wrong-join-token", wrong)
    unknown_id = JoinToken(
        control_url=token.control_url,
        root_fingerprint=token.root_fingerprint,
        tls_spki_sha256=token.tls_spki_sha256,
        token_id=CredentialId.generate(OsEntropy()),
        secret=bytearray(secrets.token_bytes(32)),
    ).to_text()
    known.add_join_token("unknown-join-token", unknown_id)
    enroll_body = _valid_enroll_fields()
    async with ControlClient(session.url, session.pin) as anonymous:
        for label, text in (("wrong", wrong), ("unknown", unknown_id)):
            refused = await _rejected(
                anonymous.request("POST", "/v1/enroll", body={**enroll_body, "join_secret": text})
            )
            assert refused.status == 401, (label, refused)
        # a join secret (and a canary) in the query string
        query = _canary("query")
        known.add("query-canary", query)
        for path in (f"/v1/peermap?after=0&token={query}", f"/v1/admin/nodes?api_key={wrong}"):
            refused = await _rejected(anonymous.request("GET", path))
            assert refused.status == 400
        # wrong and unknown API keys, and a bearer canary
        admin_id = session.admin_key.decode().split("_")[1]
        bad_keys = {
            "wrong-api-key": f"rnk_{admin_id}_{b64encode(secrets.token_bytes(32))}",
            "unknown-api-key": f"rnk_{secrets.token_hex(8)}_{b64encode(secrets.token_bytes(32))}",
            "bearer-canary": _canary("bearer"),
        }
        for label, key in bad_keys.items():
            known.add(label, key)
            refused = await _rejected(
                anonymous.request(
                    "GET", "/v1/admin/nodes", headers={"Authorization": "Bearer " + key}
                )
            )
            assert refused.status == 401, label
        forged = NodeAuth(node.node_id, "v4.public." + _canary("access"))
        known.add("forged-access-token", forged.access_token)
        refused = await _rejected(anonymous.peer_map(forged, after=0, timeout=10))
        assert refused.status == 401
    # malformed bodies that carry the secrets: truncated JSON, wrong types, oversized, text/plain
    body_canary = _canary("body")
    known.add("body-canary", body_canary)
    json_headers = {"Content-Type": "application/json"}
    truncated = json.dumps({"join_secret": join_text, "hostname": body_canary})[:-3].encode()
    assert await _raw(session, "POST", "/v1/enroll", truncated, json_headers) == 400
    mistyped = {
        **enroll_body,
        "join_secret": join_text,
        "identity_key": 7,
        "hostname": [body_canary],
    }
    status = await _raw(session, "POST", "/v1/enroll", json.dumps(mistyped).encode(), json_headers)
    assert status == 400
    extra = {**enroll_body, "join_secret": join_text, body_canary: body_canary}
    status = await _raw(session, "POST", "/v1/enroll", json.dumps(extra).encode(), json_headers)
    assert status == 400
    huge = json.dumps({"join_secret": join_text, "hostname": body_canary * 4000}).encode()
    assert await _raw(session, "POST", "/v1/enroll", huge, json_headers) == 413
    plain = {"Content-Type": "text/plain"}
    status = await _raw(session, "POST", "/v1/enroll", f"{join_text} {body_canary}".encode(), plain)
    assert status == 415


async def _crash_under_requests(
    session: Session, server: Server, node: NodeAuth, after: int
) -> None:
    """SIGKILL while a long-poll and an enrollment are in flight; both fail on the client."""

    async def poll() -> None:
        async with ControlClient(session.url, session.pin) as client:
            await client.peer_map(node, after=after, timeout=30)

    waiting = asyncio.create_task(poll())
    await asyncio.sleep(0.5)  # the long-poll is parked on the server
    assert not waiting.done()
    server.proc.send_signal(signal.SIGKILL)
    with pytest.raises(ControlApiError):
        await waiting


def test_no_secret_reaches_any_log_through_enrollment_failures_and_a_crash(tmp_path: Path) -> None:
    """A full session at debug level with unique secrets; every log byte scanned: zero hits."""
    data_dir, log_dir = tmp_path / "data", tmp_path / "logs"
    log_dir.mkdir()
    port = _free_port()
    url = f"https://127.0.0.1:{port}"
    init = run(
        CONTROL, "init", "--data-dir", str(data_dir), "--url", url,
        "--listen", f"127.0.0.1:{port}", "--keystore", "file",
    )  # fmt: skip
    assert init.returncode == 0, init.stderr
    known = Secrets()
    known.add("keystore-passphrase", (data_dir / "keystore.pass").read_text().strip())
    admin_key = (data_dir / "admin.key").read_bytes().strip()
    known.add("admin-api-key", admin_key.decode())
    session = Session(data_dir, url, SpkiPin.from_text(_pin_of(data_dir)), admin_key)
    session.cli_output["init stdout"] = init.stdout.encode()
    session.cli_output["init stderr"] = init.stderr.encode()

    first = _serve(data_dir, log_dir, 1)
    try:
        join_text = session.admin("keys create", "keys", "create", "--ttl", "10m").strip()
        known.add_join_token("join-token", join_text)
        second_join = session.admin("keys create 2", "keys", "create", "--ttl", "10m").strip()
        known.add_join_token("join-token-2", second_join)
        read_only = session.admin("apikeys", "apikeys", "create", "--scope", "read-only").strip()
        assert read_only.startswith("rnk_")
        known.add("read-only-api-key", read_only)
        assert session.admin("nodes list", "nodes", "list").startswith("exit") is False
        cli_wrong = f"rnk_{read_only.split('_')[1]}_{b64encode(secrets.token_bytes(32))}"
        known.add("cli-wrong-key", cli_wrong)
        wrong_config = _config_with_key(data_dir, cli_wrong, tmp_path)
        assert session.admin("wrong key", "keys", "list", config=wrong_config) == "exit 2"

        node_id, node, acceptor = asyncio.run(_enroll(join_text, "canary-node"))
        known.add("access-token", node.access_token)
        _, other, other_acceptor = asyncio.run(_enroll(second_join, "canary-peer"))
        known.add("access-token-2", other.access_token)
        # both verify their signed peer maps (no policy yet: default deny, so no peers)
        assert asyncio.run(_peer_map(url, session.pin, node, acceptor)) == set()
        assert asyncio.run(_peer_map(url, session.pin, other, other_acceptor)) == set()

        asyncio.run(_failures(session, known, node, join_text))
        # the first join key is used: presenting it again fails
        refused = asyncio.run(_rejected_enroll(join_text))
        assert refused.status in (401, 410)
        # revocation: the node's access token is replayed and refused
        assert session.admin("revoke", "nodes", "revoke", node_id) != "exit 2"
        replayed = asyncio.run(_rejected_peer_map(session, node))
        assert replayed.status == 401

        asyncio.run(_crash_under_requests(session, first, other, other_acceptor.watermark))
        assert first.proc.wait(10) == -signal.SIGKILL
    finally:
        _stop(first)

    second = _serve(data_dir, log_dir, 2)
    try:
        assert session.admin("audit verify", "audit", "verify").startswith("ok")
        assert asyncio.run(_rejected_peer_map(session, node)).status == 401
    finally:
        assert _stop(second) == 0

    blobs = {p.name: p.read_bytes() for p in sorted(log_dir.iterdir())}
    blobs.update(session.cli_output)
    assert hits(blobs, known.needles) == []

    # The requests that carried secrets were logged (route + status), so a leak would show.
    served = {
        (r.get("route"), r.get("status"))
        for s in (first, second)
        for r in s.lines()
        if r.get("event") == "http.request_served"
    }
    for expected in [
        ("/v1/enroll", 200),
        ("/v1/enroll/complete", 200),
        ("/v1/enroll", 401),
        ("/v1/enroll", 413),
        ("/v1/enroll", 415),
        ("/v1/peermap", 400),
        ("/v1/admin/nodes", 400),
        ("/v1/admin/nodes", 401),
        ("/v1/peermap", 401),
    ]:
        assert expected in served, (expected, sorted(map(str, served)))

    # Security events reach the operator's log too (with context, never the secret).
    events = {r.get("event") for s in (first, second) for r in s.lines()}
    for event in ["node.enrolled", "enroll.failed", "admin.auth_failed", "node.auth_failed"]:
        assert event in events, (event, sorted(map(str, events)))


def _config_with_key(data_dir: Path, key: str, where: Path) -> Path:
    """A copy of admin.toml that uses `key` (written 0600 next to it) instead of admin.key."""
    key_file = where / "other.key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    lines = [
        ln
        for ln in (data_dir / "admin.toml").read_text().splitlines()
        if not ln.startswith("key_file")
    ]
    config = where / "other.toml"
    config.write_text("\n".join([*lines, f'key_file = "{key_file}"']) + "\n")
    return config


def _pin_of(data_dir: Path) -> str:
    for line in (data_dir / "admin.toml").read_text().splitlines():
        if line.startswith("spki_pin"):
            return line.split("=", 1)[1].strip().strip('"')
    raise AssertionError("no pin in admin.toml")


async def _rejected_enroll(join_text: str) -> ControlRejected:
    with pytest.raises(ControlRejected) as caught:
        await _enroll(join_text, "again")
    return caught.value


async def _rejected_peer_map(session: Session, node: NodeAuth) -> ControlRejected:
    async with ControlClient(session.url, session.pin) as client:
        return await _rejected(client.peer_map(node, after=0, timeout=10))


def _log_through_the_server_logger(stream: Path, fields: dict[str, str]) -> None:
    """Log one record the way the server does (configure_logging + stdlib extra fields)."""
    code = (
        "import json, logging, sys\n"
        "from rustynet.adapters.logging import configure_logging\n"
        "configure_logging('debug')\n"
        "logging.getLogger('rustynet.http').info('planted', extra=json.loads(sys.argv[1]))\n"
    )
    with stream.open("wb") as err:
        subprocess.run(
            [sys.executable, "-c", code, json.dumps(fields)], stderr=err, check=True, env=_env()
        )


def test_scanner_finds_a_canary_logged_without_redaction(tmp_path: Path) -> None:
    """Negative control: a canary in a plain field is found; the same value in a secret-named
    field or behind a secret marker is redacted by the logger and not found."""
    plain, named, marked = _canary("plain"), _canary("named"), _canary("marked")
    log = tmp_path / "planted.err"
    _log_through_the_server_logger(
        log, {"hostname": plain, "join_secret": named, "note": "rnk_0123456789abcdef_" + marked}
    )
    needles = {"plain": secret_forms(plain), "named": secret_forms(named)}
    needles["marked"] = secret_forms(marked)
    found = hits({log.name: log.read_bytes()}, needles)
    assert found == [("plain", "planted.err")]


def test_secret_forms_cover_prefix_free_and_encoded_spellings() -> None:
    """An API key's secret part alone, a token without its marker, URL- and base64 forms."""
    key = "rnk_0123456789abcdef_" + "s" * 43
    assert "s" * 43 in secret_forms(key)
    assert "0123456789abcdef_" + "s" * 43 in secret_forms(key)
    assert "payload.sig-part" in secret_forms("v4.public.payload.sig-part")
    assert quote("a/b+c=d?e&f%g", safe="") in secret_forms("a/b+c=d?e&f%g")
    raw = os.urandom(32)
    forms = _b64_forms(raw)
    assert {raw.hex(), base64.b64encode(raw).decode()} <= forms
