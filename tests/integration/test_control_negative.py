"""Negative tests for control-plane controls that had code but no attack (threat model rows
T07, T13, T18, T34, T62): each test tries the attack and sees it fail.

- T07: one node's access token presented under another node's id (use case and HTTPS);
- T13: the limiter's store fails → enrollment and admin auth are denied (429), nothing enrolls;
- T18: an unexpected exception → 500 with the fixed body; a store outage → 503; no internals;
- T34: `rustynet-control serve` with tampered stored certificates exits 1 and never listens;
- T62: the running `rustynet-control serve` process has RLIMIT_CORE 0 and is not dumpable.
"""

from __future__ import annotations

import contextlib
import json
import logging
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Self, cast

import aiohttp
import pytest
from rustynet.adapters.entropy import OsEntropy
from rustynet.adapters.storage.sqlite import SqliteStore

from rustynet.application.control_keys import (
    AUDIT_KEY,
    CERTIFICATES,
    SIGNING_KEY,
    create_control_keys,
)
from rustynet.application.control_types import AdminAuth, NodeAuth
from rustynet.application.errors import RateLimited, Unauthorized
from rustynet.bootstrap.keystores import KeystoreSettings, build_keystore
from rustynet.domain.key_hierarchy import (
    ROLE_MAX_LIFETIME,
    KeyRole,
    SigningKeyring,
    issue_certificate,
)
from rustynet.domain.keys import Purpose, SigningKey
from rustynet.domain.signed import canonical_json, parse_canonical_json
from rustynet.domain.tokens import TokenKind, issue_token
from rustynet.ports.store import (
    ApiKeyRepository,
    AuditRepository,
    ChallengeRepository,
    CredentialRepository,
    IpamRepository,
    LimiterRepository,
    NodeRepository,
    NonceRepository,
    PolicyRepository,
    SerialRepository,
    Store,
    StoreUnavailable,
    UnitOfWork,
)
from rustynet.ports.wire.v1 import CreateJoinKeyRequest
from tests.integration.http_server import (
    LiveApi,
    enroll_over_http,
    node_headers,
    running_api,
)
from tests.integration.test_control_cli import (
    CONTROL,
    _free_port,
    init_listening,
    run,
    spawn_until_ready,
    terminate,
)
from tests.integration.test_control_service import (
    URL,
    World,
    enroll,
    make_world,
    start_enroll,
    world,
)
from tests.log_records import event_fields, event_name

__all__ = ["world"]  # the fixture, re-exported for pytest

CANARY = "canary-internal-detail"

# --- a store with an injected outage -----------------------------------------------------------


class _Outage:
    """A repository whose every method raises the store's own `StoreUnavailable`."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, method: str) -> Callable[..., Any]:
        async def fail(*_args: object, **_kwargs: object) -> None:
            raise StoreUnavailable(f"{CANARY}: {self._name}.{method} injected outage")

        return fail


class _FaultyUnitOfWork:
    """The real unit of work, with the repositories named in `failing` replaced by outages."""

    def __init__(self, inner: UnitOfWork, failing: frozenset[str]) -> None:
        self._inner = inner
        self._failing = failing

    def _repo(self, name: str, real: object) -> object:
        return _Outage(name) if name in self._failing else real

    @property
    def nodes(self) -> NodeRepository:
        return cast(NodeRepository, self._repo("nodes", self._inner.nodes))

    @property
    def credentials(self) -> CredentialRepository:
        return cast(CredentialRepository, self._repo("credentials", self._inner.credentials))

    @property
    def api_keys(self) -> ApiKeyRepository:
        return cast(ApiKeyRepository, self._repo("api_keys", self._inner.api_keys))

    @property
    def policies(self) -> PolicyRepository:
        return cast(PolicyRepository, self._repo("policies", self._inner.policies))

    @property
    def audit(self) -> AuditRepository:
        return cast(AuditRepository, self._repo("audit", self._inner.audit))

    @property
    def nonces(self) -> NonceRepository:
        return cast(NonceRepository, self._repo("nonces", self._inner.nonces))

    @property
    def limiter(self) -> LimiterRepository:
        return cast(LimiterRepository, self._repo("limiter", self._inner.limiter))

    @property
    def serials(self) -> SerialRepository:
        return cast(SerialRepository, self._repo("serials", self._inner.serials))

    @property
    def ipam(self) -> IpamRepository:
        return cast(IpamRepository, self._repo("ipam", self._inner.ipam))

    @property
    def challenges(self) -> ChallengeRepository:
        return cast(ChallengeRepository, self._repo("challenges", self._inner.challenges))

    async def lock_writers(self) -> None:
        await self._inner.lock_writers()

    async def announce(self, node_ids: Iterable[str]) -> None:
        await self._inner.announce(node_ids)

    async def __aenter__(self) -> Self:
        await self._inner.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._inner.__aexit__(exc_type, exc, tb)


class FaultyStore:
    """A real store whose repositories named in `failing` are down (set it at any time)."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.failing: set[str] = set()

    async def open(self) -> None:
        await self.inner.open()

    async def close(self) -> None:
        await self.inner.close()

    def unit_of_work(self) -> UnitOfWork:
        return _FaultyUnitOfWork(self.inner.unit_of_work(), frozenset(self.failing))


# --- shared HTTP helpers -----------------------------------------------------------------------


def _session(api: LiveApi) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(ssl=api.client_ssl)
    return aiohttp.ClientSession(base_url=api.base_url, connector=connector)


async def _call(
    http: aiohttp.ClientSession, method: str, path: str, **kwargs: Any
) -> tuple[int, dict[str, str], bytes]:
    async with http.request(method, path, **kwargs) as response:
        return response.status, dict(response.headers), await response.read()


async def _join_key(http: aiohttp.ClientSession, api: LiveApi) -> str:
    status, _, body = await _call(
        http, "POST", "/v1/admin/join-keys", json={}, headers=api.admin_headers()
    )
    assert status == 201, body
    token = json.loads(body)["token"]
    assert isinstance(token, str)
    return token


def _assert_no_internals(raw: bytes) -> None:
    text = raw.decode("utf-8", "replace")
    for leak in (CANARY, "Traceback", 'File "', "RuntimeError", "StoreUnavailable", ".py"):
        assert leak not in text, (leak, text)


# --- T07: a token lifted from one node and presented under another node's id ------------------


@pytest.mark.asyncio
async def test_node_token_under_another_node_id_is_unauthorized(world: World) -> None:
    """Node A's valid access token sent with node B's id is refused (and audited against B);
    A's token still works under A's own id, so the mismatch is what is refused."""
    a = await enroll(world, "node-a")
    b = await enroll(world, "node-b", ip="198.51.100.8")
    lifted = NodeAuth(b.result.node_id, a.result.access_token, "203.0.113.66")
    with pytest.raises(Unauthorized):
        await world.service.peer_map(lifted, 0, timeout=0)
    assert await world.service.peer_map(a.auth(), 0, timeout=0) is not None
    entries = await world.service.list_audit(world.admin, 0, 1000)
    failures = [e for e in entries if e.action == "node.auth_failed"]
    assert [e.target for e in failures] == [b.result.node_id]


@pytest.mark.asyncio
async def test_token_bound_to_the_presenter_but_issued_to_another_subject_is_refused(
    world: World,
) -> None:
    """The subject check on its own: a token signed by the real token key and bound to B's
    identity key but issued to A is refused under B's id; the same token issued to B passes."""
    a = await enroll(world, "node-a")
    b = await enroll(world, "node-b", ip="198.51.100.8")

    def minted(subject: str) -> str:
        return issue_token(
            world.keys.token_key,
            kind=TokenKind.ACCESS,
            issuer=URL,
            subject=subject,
            audience=URL,
            bound_identity=b.identity.public_key,
            now=world.clock.now(),
            lifetime=timedelta(minutes=5),
            entropy=world.entropy,
        )

    with pytest.raises(Unauthorized):
        await world.service.peer_map(
            NodeAuth(b.result.node_id, minted(a.result.node_id), "203.0.113.67"), 0, timeout=0
        )
    honest = NodeAuth(b.result.node_id, minted(b.result.node_id), "203.0.113.67")
    assert await world.service.peer_map(honest, 0, timeout=0) is not None


@pytest.mark.asyncio
async def test_node_token_under_another_node_id_is_401_over_https(tmp_path: Path) -> None:
    """Over HTTPS: A's bearer token with `Rustynet-Node: <B>` answers 401 `unauthorized` on the
    node routes; the same token under A's own id answers 200."""
    async with running_api(tmp_path) as api, _session(api) as http:
        a = await enroll_over_http(http, await _join_key(http, api), "node-a")
        b = await enroll_over_http(http, await _join_key(http, api), "node-b")
        assert a.status == b.status == 200, (a.body, b.body)
        lifted = node_headers(a.body) | {"Rustynet-Node": b.body["node_id"]}
        status, _, body = await _call(
            http, "GET", "/v1/peermap", params={"after": "0"}, headers=lifted
        )
        assert status == 401
        assert json.loads(body)["error"] == "unauthorized"
        status, _, body = await _call(
            http,
            "PUT",
            "/v1/node/endpoints",
            json={"underlay_endpoints": ["192.0.2.10:41641"]},
            headers=lifted,
        )
        assert status == 401, body
        assert json.loads(body)["error"] == "unauthorized"
        status, _, _ = await _call(
            http, "GET", "/v1/peermap", params={"after": "0"}, headers=node_headers(a.body)
        )
        assert status == 200


# --- T13: a limiter that cannot decide denies ---------------------------------------------------


@pytest.mark.asyncio
async def test_failing_limiter_store_denies_enrollment_and_admin_auth(tmp_path: Path) -> None:
    """With the limiter's repository down, enroll and admin requests are RateLimited (never
    allowed); once it is back, no node exists and the join key is still unused and works."""
    store = FaultyStore(SqliteStore(tmp_path / "c.db"))
    w = await make_world(store)
    try:
        created = await w.service.create_join_key(w.admin, CreateJoinKeyRequest())
        store.failing = {"limiter"}
        with pytest.raises(RateLimited) as caught:
            await start_enroll(w, created.token, "host", "203.0.113.5")
        assert caught.value.retry_after >= 1
        with pytest.raises(RateLimited):
            await w.service.list_nodes(w.admin)
        with pytest.raises(RateLimited):
            await w.service.list_nodes(AdminAuth("rnk_nobody_nothing", "192.0.2.77"))
        store.failing = set()
        assert await w.service.list_nodes(w.admin) == ()
        (info,) = await w.service.list_join_keys(w.admin)
        assert (info.state, info.uses) == ("created", 0)
        await start_enroll(w, created.token, "host", "203.0.113.5")  # the key still works
    finally:
        await store.close()


@pytest.mark.asyncio
async def test_failing_limiter_store_answers_429_over_https(tmp_path: Path) -> None:
    """Over HTTPS with the limiter's repository down: POST /v1/enroll and an admin request
    answer 429 `rate_limited` with Retry-After; afterwards the node list is empty."""
    store = FaultyStore(SqliteStore(tmp_path / "control.db"))
    async with running_api(tmp_path, store=store) as api, _session(api) as http:
        join = await _join_key(http, api)
        store.failing = {"limiter"}
        attempt = await enroll_over_http(http, join, "host")
        assert attempt.status == 429, attempt.body
        assert attempt.body["error"] == "rate_limited"
        assert attempt.retry_after is not None
        assert int(attempt.retry_after) >= 1
        status, headers, body = await _call(
            http, "GET", "/v1/admin/nodes", headers=api.admin_headers()
        )
        assert status == 429, body
        assert json.loads(body)["error"] == "rate_limited"
        assert int(headers["Retry-After"]) >= 1
        store.failing = set()
        status, _, body = await _call(http, "GET", "/v1/admin/nodes", headers=api.admin_headers())
        assert status == 200
        assert json.loads(body)["nodes"] == []


# --- T18: a 5xx carries a fixed text, never internals -----------------------------------------


@pytest.mark.asyncio
async def test_unexpected_exception_is_a_fixed_500_and_the_trace_goes_only_to_the_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A RuntimeError inside the use case answers 500 with exactly the fixed body: no trace,
    no exception text; the server log gets the trace under `http.request_failed`."""

    async def broken(*_args: object, **_kwargs: object) -> None:
        raise RuntimeError(f"{CANARY} at /srv/secret/path.py line 42")

    async with running_api(tmp_path) as api, _session(api) as http:
        monkeypatch.setattr(api.service, "list_nodes", broken)
        with caplog.at_level(logging.ERROR, logger="rustynet.http"):
            status, headers, raw = await _call(
                http, "GET", "/v1/admin/nodes", headers=api.admin_headers()
            )
    assert status == 500
    assert headers["Content-Type"].startswith("application/json")
    assert json.loads(raw) == {"error": "internal", "detail": "internal error"}
    _assert_no_internals(raw)
    logged = [event_fields(r) for r in caplog.records if event_name(r) == "http.request_failed"]
    assert len(logged) == 1
    # structlog formats the trace into the event's `exception` field (format_exc_info).
    assert "RuntimeError" in logged[0]["exception"]
    assert logged[0]["exception"].startswith("Traceback")


@pytest.mark.asyncio
async def test_store_outage_is_a_fixed_503(tmp_path: Path) -> None:
    """The node repository down (StoreUnavailable carrying a canary): an authenticated admin
    request answers 503 `unavailable` with the fixed text and nothing of the error."""
    store = FaultyStore(SqliteStore(tmp_path / "control.db"))
    async with running_api(tmp_path, store=store) as api, _session(api) as http:
        store.failing = {"nodes"}
        status, _, raw = await _call(http, "GET", "/v1/admin/nodes", headers=api.admin_headers())
    assert status == 503
    assert json.loads(raw) == {
        "error": "unavailable",
        "detail": "the control plane is temporarily unavailable",
    }
    _assert_no_internals(raw)


# --- T34 and T62: the `rustynet-control serve` process ----------------------------------------

START_TIMEOUT = 30.0


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """One `rustynet-control init` (file key store) listening on 127.0.0.1:<free port>."""
    data_dir = tmp_path_factory.mktemp("negative") / "data"
    port = _free_port()
    init_listening(data_dir, port)
    return data_dir, port


@pytest.fixture
def plane_copy(pristine: tuple[Path, int], tmp_path: Path) -> tuple[Path, int]:
    """A private copy of the initialised data directory (paths in control.toml are relative)."""
    source, port = pristine
    target = tmp_path / "data"
    shutil.copytree(source, target, symlinks=True)
    return target, port


def _keystore_settings(data_dir: Path) -> KeystoreSettings:
    return KeystoreSettings(
        state_dir=data_dir, kind="file", passphrase_file=data_dir / "keystore.pass"
    )


def _foreign_certificate(data_dir: Path, which: str) -> None:
    """Re-certify the stored signing or audit key under a DIFFERENT root and store that."""
    store = build_keystore(_keystore_settings(data_dir), environ={}, interactive=False)
    try:
        public = dict(parse_canonical_json(bytes(store.get(CERTIFICATES))))
        now = datetime.now(UTC)
        start = now.replace(microsecond=0)
        foreign, _ = create_control_keys(OsEntropy(), now)
        name, role, scope = (
            (SIGNING_KEY, KeyRole.SIGNING, frozenset({Purpose.PEER_MAP, Purpose.REVOCATION}))
            if which == "signing"
            else (AUDIT_KEY, KeyRole.AUDIT, frozenset({Purpose.AUDIT_CHECKPOINT}))
        )
        key = SigningKey.from_secret_text(bytes(store.get(name)).decode("ascii"))
        certificate = issue_certificate(
            foreign.root_key,
            foreign.root,
            subject=key.public_key,
            role=role,
            not_before=start,
            not_after=start + ROLE_MAX_LIFETIME[role],
            scope=scope,
        )
        if which == "signing":
            keyring = SigningKeyring(foreign.root, KeyRole.SIGNING)
            keyring.add(certificate, now, key)
            public["signing"] = keyring.snapshot()
        else:
            key.wipe()
            public["audit"] = certificate.to_text()
        foreign.wipe()
        store.put(CERTIFICATES, canonical_json(public))
    finally:
        store.close()


def _flip_signing_certificate_byte(data_dir: Path) -> None:
    """Change one character in the middle of the stored signing certificate text."""
    store = build_keystore(_keystore_settings(data_dir), environ={}, interactive=False)
    try:
        public = dict(parse_canonical_json(bytes(store.get(CERTIFICATES))))
        snapshot = dict(cast(dict[str, Any], public["signing"]))
        text = snapshot["certificates"][0]
        middle = len(text) // 2
        flipped = "B" if text[middle] == "A" else "A"
        snapshot["certificates"] = [text[:middle] + flipped + text[middle + 1 :]]
        public["signing"] = snapshot
        store.put(CERTIFICATES, canonical_json(public))
    finally:
        store.close()


TAMPERINGS: dict[str, Callable[[Path], None]] = {
    "signing-cert-from-another-root": lambda d: _foreign_certificate(d, "signing"),
    "audit-cert-from-another-root": lambda d: _foreign_certificate(d, "audit"),
    "signing-cert-byte-flipped": _flip_signing_certificate_byte,
}


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1.0)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.slow
@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
def test_serve_refuses_to_start_with_tampered_control_certificates(
    plane_copy: tuple[Path, int], tampering: str
) -> None:
    """`serve` re-verifies the stored certificates against the root: a certificate from
    another root, or a flipped byte, makes it exit 1 with a clear message, never ready."""
    data_dir, port = plane_copy
    TAMPERINGS[tampering](data_dir)
    done = run(CONTROL, "serve", "--data-dir", str(data_dir), timeout=START_TIMEOUT)
    assert done.returncode == 1, done.stderr
    assert "rustynet-control serve: stored control certificates do not verify" in done.stderr
    assert "ready;" not in done.stderr
    assert "Traceback" not in done.stderr
    assert not _listening(port)


# T62: observe the flags from outside. RLIMIT_CORE is in /proc/PID/limits. The dumpable flag
# shows through ptrace access: without CAP_SYS_PTRACE (dropped from the bounding set of both
# the target and the prober, so their capability sets match), a same-uid process may open
# /proc/PID/mem of a dumpable process but not of a non-dumpable one. `prlimit` raises the
# inherited core limit first, so a 0 is the program's own doing.
SETPRIV = shutil.which("setpriv")
PRLIMIT = shutil.which("prlimit")
NO_PTRACE = ("--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace")
PROBE = (
    "import sys\n"
    "try:\n"
    "    open(f'/proc/{sys.argv[1]}/mem', 'rb').close()\n"
    "except PermissionError:\n"
    "    print('denied')\n"
    "else:\n"
    "    print('opened')\n"
)


def _wrapped(*command: str) -> list[str]:
    assert SETPRIV is not None
    assert PRLIMIT is not None
    return [SETPRIV, *NO_PTRACE, PRLIMIT, "--core=unlimited:unlimited", "--", *command]


def _core_limit(pid: int) -> str:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max core file size"):
            return " ".join(line.split()[4:6])
    raise AssertionError("no core limit line")


def _mem_probe(pid: int) -> str:
    assert SETPRIV is not None
    done = subprocess.run(  # noqa: PLW1510 - asserted below
        [SETPRIV, *NO_PTRACE, str(Path(CONTROL).parent / "python"), "-c", PROBE, str(pid)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@contextlib.contextmanager
def _serving(data_dir: Path) -> Iterator[subprocess.Popen[str]]:
    proc, _log, reader = spawn_until_ready(_wrapped(CONTROL, "serve", "--data-dir", str(data_dir)))
    try:
        yield proc
    finally:
        terminate(proc, reader)


@pytest.mark.slow
@pytest.mark.skipif(SETPRIV is None or PRLIMIT is None, reason="needs util-linux setpriv, prlimit")
def test_running_control_server_has_core_dumps_off_and_is_not_dumpable(
    plane_copy: tuple[Path, int],
) -> None:
    """The live `rustynet-control serve` (started with an unlimited core limit) reports core
    size 0 and refuses a same-credential /proc/PID/mem open; a `sleep` started the same way
    keeps an unlimited core limit and is openable (the probe can see the difference)."""
    data_dir, port = plane_copy
    with _serving(data_dir) as proc:
        assert _listening(port)
        assert _core_limit(proc.pid) == "0 0"
        assert _mem_probe(proc.pid) == "denied"
        assert proc.poll() is None
    assert proc.returncode == 0
    with subprocess.Popen(_wrapped("sleep", "30")) as control:
        try:
            deadline = datetime.now(UTC) + timedelta(seconds=10)
            while "sleep" not in Path(f"/proc/{control.pid}/comm").read_text():
                assert datetime.now(UTC) < deadline
                time.sleep(0.05)
            assert _core_limit(control.pid) == "unlimited unlimited"
            assert _mem_probe(control.pid) == "opened"
        finally:
            control.kill()
