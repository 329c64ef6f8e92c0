"""Two live control instances (real TLS, real HTTP) on ONE real PostgreSQL 15 database keep the
guarantees of a single instance (docs/operations/scale-out.md, issue 6 "Scale-out"):

* a policy change, a revocation, an enrollment and a key rotation made on A wake a node that
  long-polls B within ~1 s (LISTEN/NOTIFY; the latency is printed);
* one join token redeemed concurrently on A and B yields exactly one node, 20 times over;
* an enrollment challenge (and a token-renewal challenge, which is stored nowhere) issued by A
  is completed on B once, and every replay, on either instance, fails;
* failed attempts spread over A and B lock a credential out as if on one instance, and the
  per-IP bucket is shared;
* a killed listener connection (pg_terminate_backend) heals and B still hears A;
* a forged or oversized wake-up never produces a wrong answer: wake-ups are hints only.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import psycopg
import pytest
from rustynet.adapters.clock import SystemClock
from rustynet.adapters.entropy import OsEntropy
from rustynet.adapters.http_api.app import ApiSettings, create_app, make_runner
from rustynet.adapters.http_api.tls import server_ssl_context
from rustynet.adapters.storage.postgres import (
    CHANNEL,
    MAX_NOTIFY_PAYLOAD,
    PostgresChangeFeed,
    PostgresStore,
    notify_payload,
    parse_payload,
)

from rustynet.application.control import (
    ControlService,
    ControlSettings,
    create_initial_admin_key,
)
from rustynet.application.control_keys import ControlKeys, create_control_keys
from rustynet.domain.enrollment import EnrollmentClient, IssueChallenge
from rustynet.domain.join_tokens import JoinToken
from rustynet.domain.key_hierarchy import issue_tunnel_key_binding
from rustynet.domain.keys import (
    Purpose,
    SigningKey,
    TunnelKeyScheme,
    TunnelPrivateKey,
    b64decode,
    b64encode,
)
from rustynet.domain.limits import BucketPolicy, LimitPolicy
from rustynet.domain.tokens import token_renewal_message
from tests.integration.http_server import (
    GENEROUS_LIMITS,
    HOST,
    client_context,
    enroll_over_http,
    forged_join_tokens,
    node_headers,
    peer_map_acceptor,
    throwaway_certificate,
)

pytestmark = pytest.mark.asyncio

URL = "https://127.0.0.1"  # the load balancer's URL: both instances issue tokens for it
WAKE_BUDGET = 1.0  # seconds: a change on A reaches a long poll on B
UNKNOWN_NODE = "node_AAAAAAAAAAAAAAAA"  # well formed, never enrolled
MESH: dict[str, Any] = {
    "tagOwners": {"tag:mesh": []},
    "acls": [{"action": "accept", "src": ["tag:mesh"], "dst": ["tag:mesh:*"]}],
}
CLOSED: dict[str, Any] = {"tagOwners": {"tag:mesh": []}, "acls": []}


@attrs.frozen
class Instance:
    """One running control instance: its service, store, feed and HTTPS client session."""

    name: str
    service: ControlService
    store: PostgresStore
    feed: PostgresChangeFeed
    http: aiohttp.ClientSession
    admin: dict[str, str] = attrs.field(repr=False)


@contextlib.asynccontextmanager
async def running_instance(
    tmp_path: Path, dsn: str, keys: ControlKeys, name: str, limits: LimitPolicy
) -> AsyncIterator[Instance]:
    """Serve one instance as `serve` composes it (PostgresStore + its change feed), sharing the
    database and the keystore material with its siblings; yield it with a pinned session."""
    directory = tmp_path / name
    directory.mkdir()
    certificate = throwaway_certificate(directory)
    store = PostgresStore(dsn, max_size=8)
    await store.open()
    feed = store.change_feed(check_every=2.0)
    settings = ControlSettings(control_url=URL, tls_spki_sha256=bytes(32), limits=limits)
    service = ControlService(store, keys, SystemClock(), OsEntropy(), settings, changes=feed)
    await service.start()
    runner = make_runner(create_app(service, ApiSettings(tick_interval=None)), shutdown_timeout=1)
    try:
        admin = await create_initial_admin_key(
            store, now=service.clock.now(), entropy=service.entropy, keys=keys
        )
        await runner.setup()
        from aiohttp import web  # noqa: PLC0415 - as bootstrap does

        ssl_context = server_ssl_context(certificate.cert_path, certificate.key_path)
        site = web.TCPSite(runner, HOST, 0, ssl_context=ssl_context)
        await site.start()
        port = runner.addresses[0][1]
        connector = aiohttp.TCPConnector(ssl=client_context(certificate), limit=0)
        async with aiohttp.ClientSession(f"https://{HOST}:{port}", connector=connector) as http:
            yield Instance(
                name, service, store, feed, http, {"Authorization": f"Bearer {admin.key}"}
            )
    finally:
        await runner.cleanup()
        await service.close()
        await store.close()


@contextlib.asynccontextmanager
async def two_instances(
    tmp_path: Path, dsn: str, limits: LimitPolicy = GENEROUS_LIMITS
) -> AsyncIterator[tuple[Instance, Instance]]:
    """Instances A and B on one database with the same control keys."""
    keys, _ = create_control_keys(OsEntropy(), datetime.now(UTC))
    try:
        async with (
            running_instance(tmp_path, dsn, keys, "a", limits) as a,
            running_instance(tmp_path, dsn, keys, "b", limits) as b,
        ):
            yield a, b
    finally:
        keys.wipe()


async def _call(
    instance: Instance, method: str, path: str, **kwargs: Any
) -> tuple[int, dict[str, str], Any]:
    async with instance.http.request(method, path, **kwargs) as response:
        body = None if response.status == 204 else await response.json()
        return response.status, dict(response.headers), body


async def _join_key(instance: Instance, **body: Any) -> str:
    body.setdefault("tags", ["tag:mesh"])
    status, _, created = await _call(
        instance, "POST", "/v1/admin/join-keys", json=body, headers=instance.admin
    )
    assert status == 201, created
    return str(created["token"])


async def _put_policy(instance: Instance, document: dict[str, Any]) -> None:
    status, _, body = await _call(
        instance, "PUT", "/v1/admin/policy", json=document, headers=instance.admin
    )
    assert status == 200, body


@attrs.define
class Node:
    """An enrolled simulated node: its enrollment answer and verifier."""

    join: str = attrs.field(repr=False)
    result: dict[str, Any] = attrs.field(repr=False)
    identity: SigningKey = attrs.field(repr=False)
    serial: int = 0

    @property
    def id(self) -> str:
        return str(self.result["node_id"])

    def headers(self) -> dict[str, str]:
        return node_headers(self.result)


async def _enroll(instance: Instance, hostname: str, join: str | None = None) -> Node:
    join = join if join is not None else await _join_key(instance)
    attempt = await enroll_over_http(instance.http, join, hostname)
    assert attempt.status == 200, attempt.body
    return Node(join, attempt.body, attempt.identity)


async def _poll(instance: Instance, node: Node, wait: int = 20) -> tuple[int, Any]:
    """One long poll for a map above the node's serial; a 200 is verified and moves it."""
    status, _, body = await _call(
        instance,
        "GET",
        "/v1/peermap",
        params={"after": str(node.serial), "wait": str(wait)},
        headers=node.headers(),
    )
    if status == 200:
        acceptor = peer_map_acceptor(node.join, node.result)
        acceptor.watermark = node.serial
        accepted = acceptor.accept(body["envelope"], datetime.now(UTC))
        node.serial = accepted.serial
        return status, accepted
    return status, body


async def _parked(instance: Instance, node: Node) -> asyncio.Task[tuple[int, Any]]:
    """Start a long poll on `instance` and return once it is parked in the waiter table."""
    task = asyncio.create_task(_poll(instance, node))
    for _ in range(500):
        if instance.service.waiters.waiting(node.id):
            return task
        await asyncio.sleep(0.01)
    raise AssertionError("the long poll never parked")


async def _woken_after(
    change: Any, task: asyncio.Task[tuple[int, Any]], what: str
) -> tuple[float, int, Any]:
    """Run `change` (a coroutine on A), then time how long the parked poll on B takes."""
    started = time.perf_counter()
    await change
    status, body = await asyncio.wait_for(task, timeout=10)
    latency = time.perf_counter() - started
    print(f"\ncross-instance wake-up after {what}: {latency * 1000:.1f} ms")
    return latency, status, body


async def _synced(instance: Instance, node: Node) -> None:
    status, _ = await _poll(instance, node, wait=0)
    assert status in {200, 204}


# --- (a) wake-ups across instances -----------------------------------------------------------


async def test_policy_change_revocation_enrollment_and_rotation_on_a_wake_long_poll_on_b(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """A node long-polling B gets its new, verified map within ~1 s after a policy change,
    an enrollment, a key rotation and a revocation made on A (latencies printed)."""
    async with two_instances(tmp_path, postgres_dsn) as (a, b):
        await _put_policy(a, CLOSED)
        n1 = await _enroll(a, "one")
        n2 = await _enroll(b, "two")
        await _synced(b, n1)
        await _synced(b, n2)

        task = await _parked(b, n1)
        latency, status, peer_map = await _woken_after(
            _put_policy(a, MESH), task, "a policy change"
        )
        assert status == 200
        assert [p.id for p in peer_map.peers] == [n2.id]
        assert latency < WAKE_BUDGET

        task = await _parked(b, n1)
        latency, status, peer_map = await _woken_after(_enroll(a, "three"), task, "an enrollment")
        assert status == 200
        assert len(peer_map.peers) == 2  # B's cached compilation was refreshed, not stale
        assert latency < WAKE_BUDGET

        task = await _parked(b, n1)
        rotated = TunnelPrivateKey.generate(OsEntropy(), TunnelKeyScheme.X25519).public_key
        binding = issue_tunnel_key_binding(n2.identity, rotated, datetime.now(UTC))
        body = {"tunnel_key": rotated.to_text(), "tunnel_key_binding": binding.to_text()}
        rotate = _call(a, "POST", "/v1/node/tunnel-key", json=body, headers=n2.headers())
        latency, status, peer_map = await _woken_after(rotate, task, "a key rotation")
        assert status == 200
        assert {p.id: p.tunnel_key for p in peer_map.peers}[n2.id] == rotated
        assert latency < WAKE_BUDGET

        await _synced(b, n2)
        task = await _parked(b, n1)
        own = await _parked(b, n2)
        revoke = _call(a, "POST", f"/v1/admin/nodes/{n2.id}/revoke", headers=a.admin)
        latency, status, peer_map = await _woken_after(revoke, task, "a revocation")
        assert status == 200
        assert n2.id not in {p.id for p in peer_map.peers}
        assert latency < WAKE_BUDGET
        status, _ = await asyncio.wait_for(own, timeout=WAKE_BUDGET)
        assert status == 401  # the revoked node's own poll on B ends at once, refused


# --- (b) one join token, two instances, one node ----------------------------------------------


async def test_join_token_redeemed_concurrently_on_a_and_b_yields_exactly_one_node(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """20 times: the same one-time token enrolled at once through A and through B → one 200,
    the other refused (410 Gone), and exactly one node per token in the shared database."""
    rounds = 20
    async with two_instances(tmp_path, postgres_dsn) as (a, b):
        for n in range(rounds):
            join = await _join_key(a)
            first, second = await asyncio.gather(
                enroll_over_http(a.http, join, f"race-{n}-a"),
                enroll_over_http(b.http, join, f"race-{n}-b"),
            )
            assert sorted([first.status, second.status]) == [200, 410], (first, second)
        async with a.store.unit_of_work() as uow:
            nodes = await uow.nodes.list_all()
            credentials = await uow.credentials.list_all()
        assert len(nodes) == rounds
        assert all(c.uses == 1 for c in credentials)
        assert (await a.service.audit_report()).ok  # one chain, written by both instances


async def test_concurrent_enrollments_with_different_tokens_on_a_and_b_all_succeed(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """Writers on two instances serialize instead of failing: 10 enrollments at once, split
    over A and B, all succeed and the audit chain both wrote verifies."""
    async with two_instances(tmp_path, postgres_dsn) as (a, b):
        joins = [await _join_key(a) for _ in range(10)]
        attempts = await asyncio.gather(
            *(
                enroll_over_http((a if i % 2 else b).http, join, f"host-{i}")
                for i, join in enumerate(joins)
            )
        )
        assert [x.status for x in attempts] == [200] * 10
        assert (await b.service.audit_report()).ok


# --- (c) challenges are shared and single use -------------------------------------------------


async def _challenge(instance: Instance, join: str, hostname: str) -> tuple[dict[str, str], Any]:
    """POST /v1/enroll on `instance`; return a valid /complete body and the identity key."""
    now = datetime.now(UTC)
    entropy = OsEntropy()
    identity = SigningKey.generate(entropy)
    tunnel = TunnelPrivateKey.generate(entropy, TunnelKeyScheme.X25519).public_key
    client = EnrollmentClient(identity, tunnel, hostname)
    token = JoinToken.parse(join)
    client.start(token.token_id.to_text())
    token.wipe()
    body = {
        "join_secret": join,
        "identity_key": identity.public_key.to_text(),
        "tunnel_key": tunnel.to_text(),
        "tunnel_key_binding": issue_tunnel_key_binding(identity, tunnel, now).to_text(),
        "hostname": hostname,
    }
    status, _, challenge = await _call(instance, "POST", "/v1/enroll", json=body)
    assert status == 200, challenge
    expires_at = datetime.fromisoformat(challenge["expires_at"].replace("Z", "+00:00"))
    proof = client.receive(IssueChallenge(b64decode(challenge["challenge_id"]), expires_at))
    assert proof is not None
    complete = {"challenge_id": challenge["challenge_id"], "signature": b64encode(proof.signature)}
    return complete, identity


async def test_enrollment_challenge_from_a_completes_on_b_once_and_replays_fail(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """A challenge issued by A: a forged proof on B is refused (and does not burn it), the
    genuine proof on B enrolls, and replaying it on A or on B (also both at once) fails."""
    async with two_instances(tmp_path, postgres_dsn) as (a, b):
        join = await _join_key(a, reusable=True, uses=5, ttl_seconds=600)
        complete, _ = await _challenge(a, join, "roamer")
        forged = dict(complete, signature=b64encode(bytes(64)))
        status, _, _ = await _call(b, "POST", "/v1/enroll/complete", json=forged)
        assert status == 401
        status, _, result = await _call(b, "POST", "/v1/enroll/complete", json=complete)
        assert status == 200, result
        for instance in (a, b):
            status, _, _ = await _call(instance, "POST", "/v1/enroll/complete", json=complete)
            assert status == 401, instance.name
        # A second challenge answered on A and on B at the same time: exactly one wins.
        complete, _ = await _challenge(b, join, "racer")
        answers = await asyncio.gather(
            _call(a, "POST", "/v1/enroll/complete", json=complete),
            _call(b, "POST", "/v1/enroll/complete", json=complete),
        )
        assert sorted(status for status, _, _ in answers) == [200, 401]
        async with a.store.unit_of_work() as uow:
            names = sorted(n.name for n in await uow.nodes.list_all())
        assert names == ["racer", "roamer"]


async def test_token_renewal_challenge_from_a_renews_on_b_once(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """A renewal challenge issued by A is answered on B once; a replay on A or B is 401.
    Issuing it wrote nothing to the shared database; the one row is B's nonce on success."""
    async with two_instances(tmp_path, postgres_dsn) as (a, b):
        node = await _enroll(a, "renewer")
        rows_before = _challenge_and_nonce_rows(postgres_dsn)
        status, _, challenge = await _call(
            a, "POST", "/v1/token/challenge", json={"node_id": node.id}
        )
        assert status == 200
        assert _challenge_and_nonce_rows(postgres_dsn) == rows_before
        challenge_id = b64decode(challenge["challenge_id"])
        signature = node.identity.sign(
            Purpose.TOKEN_RENEWAL, token_renewal_message(challenge_id, node.id)
        )
        body = {
            "node_id": node.id,
            "challenge_id": challenge["challenge_id"],
            "signature": b64encode(signature),
        }
        status, _, token = await _call(b, "POST", "/v1/token", json=body)
        assert status == 200, token
        assert _challenge_and_nonce_rows(postgres_dsn) == (rows_before[0], rows_before[1] + 1)
        for instance in (a, b):
            status, _, _ = await _call(instance, "POST", "/v1/token", json=body)
            assert status == 401, instance.name


def _challenge_and_nonce_rows(dsn: str) -> tuple[int, int]:
    with psycopg.connect(dsn, autocommit=True) as db:
        challenges = db.execute("SELECT COUNT(*) FROM challenges").fetchone()
        nonces = db.execute("SELECT COUNT(*) FROM nonces").fetchone()
    assert challenges is not None
    assert nonces is not None
    return int(challenges[0]), int(nonces[0])


# --- (d) limiter state is shared --------------------------------------------------------------


async def test_failed_attempts_spread_over_a_and_b_back_off_as_on_one_instance(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """Wrong secrets for one join key, alternating A and B: after `backoff_after_failures`
    failures in total the key is backed off (429) on BOTH instances."""
    limits = attrs.evolve(GENEROUS_LIMITS, backoff_after_failures=4)
    async with two_instances(tmp_path, postgres_dsn, limits) as (a, b):
        join = await _join_key(a)
        wrong, _ = forged_join_tokens(join)
        statuses = []
        for n in range(4):
            attempt = await enroll_over_http((a, b)[n % 2].http, wrong, "guess")
            statuses.append(attempt.status)
        assert statuses == [401] * 4  # 2 per instance: neither alone reached the threshold
        for instance in (a, b):
            attempt = await enroll_over_http(instance.http, wrong, "guess")
            assert attempt.status == 429, instance.name
            assert attempt.retry_after is not None
        # The genuine secret is backed off too until the block ends (the key is under attack).
        attempt = await enroll_over_http(b.http, join, "owner")
        assert attempt.status == 429


async def test_per_ip_bucket_is_shared_by_a_and_b(tmp_path: Path, postgres_dsn: str) -> None:
    """A per-IP burst of 6 spent alternately on A and B: the 7th request is refused on
    either instance (two separate buckets would have allowed 12)."""
    limits = attrs.evolve(
        GENEROUS_LIMITS, per_ip=BucketPolicy(burst=6, refill=1, per=timedelta(hours=1))
    )
    async with two_instances(tmp_path, postgres_dsn, limits) as (a, b):
        statuses = []
        for n in range(6):
            status, _, _ = await _call(
                (a, b)[n % 2], "POST", "/v1/token/challenge", json={"node_id": UNKNOWN_NODE}
            )
            statuses.append(status)
        assert statuses == [200] * 6
        for instance in (a, b):
            status, headers, _ = await _call(
                instance, "POST", "/v1/token/challenge", json={"node_id": UNKNOWN_NODE}
            )
            assert status == 429, instance.name
            assert "Retry-After" in headers


# --- (e) a lost listener heals ----------------------------------------------------------------


async def test_killed_listener_connection_reconnects_and_b_still_wakes(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """pg_terminate_backend on B's LISTEN connection: a poll parked on B during the outage
    still gets the change made on A meanwhile (wake-all after reconnecting), and later
    changes arrive within the budget over the new connection."""
    async with two_instances(tmp_path, postgres_dsn) as (a, b):
        await _put_policy(a, CLOSED)
        n1 = await _enroll(a, "one")
        await _enroll(a, "two")
        await _synced(b, n1)
        pid = b.feed.backend_pid
        assert pid is not None
        task = await _parked(b, n1)
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            killed = admin.execute("SELECT pg_terminate_backend(%s)", (pid,)).fetchone()
        assert killed == (True,)
        await _put_policy(a, MESH)  # likely committed while B is not listening
        status, peer_map = await asyncio.wait_for(task, timeout=10)
        assert status == 200
        assert len(peer_map.peers) == 1
        for _ in range(500):
            if b.feed.reconnects >= 1 and b.feed.backend_pid not in {None, pid}:
                break
            await asyncio.sleep(0.01)
        assert b.feed.reconnects >= 1
        assert b.feed.backend_pid not in {None, pid}
        task = await _parked(b, n1)
        latency, status, _ = await _woken_after(
            _put_policy(a, CLOSED), task, "a policy change after the listener reconnected"
        )
        assert status == 200
        assert latency < WAKE_BUDGET


# --- wake-ups are hints: forged and oversized ones change no answer ---------------------------


async def test_forged_notification_wakes_but_yields_no_map(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """Anyone able to NOTIFY the channel (garbage, a fake node list, "all") only makes B's
    waiters re-check: with no committed change the poll stays parked and ends 204."""
    async with two_instances(tmp_path, postgres_dsn) as (_, b):
        node = await _enroll(b, "quiet")
        await _synced(b, node)
        task = asyncio.create_task(_poll(b, node, wait=2))
        for _ in range(500):
            if b.service.waiters.waiting(node.id):
                break
            await asyncio.sleep(0.01)
        forged = ["garbage", notify_payload("intruder", [node.id]), '{"all":true}']
        with psycopg.connect(postgres_dsn, autocommit=True) as admin:
            for payload in forged:
                admin.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
        status, _ = await asyncio.wait_for(task, timeout=10)
        assert status == 204
        assert node.serial >= 1


async def test_oversized_announcement_becomes_wake_all_and_fits_the_limit() -> None:
    """A node list above PostgreSQL's 8000-byte payload limit is sent as "wake all"; a short
    one round-trips; malformed payloads read as "all" (fail towards re-checking)."""
    ids = [f"node_{n:020d}" for n in range(1000)]
    big = notify_payload("me", ids)
    assert len(big.encode()) <= MAX_NOTIFY_PAYLOAD
    assert parse_payload(big) == ("me", None)
    assert parse_payload(notify_payload("me", ids[:3])) == ("me", frozenset(ids[:3]))
    for bad in ("", "[]", '{"n": [1]}', "{"):
        assert parse_payload(bad)[1] is None


async def test_oversized_change_on_a_wakes_every_poll_on_b(
    tmp_path: Path, postgres_dsn: str
) -> None:
    """When A's announcement overflows the payload, B wakes every waiter (they re-check)."""
    async with two_instances(tmp_path, postgres_dsn) as (a, b):
        node = await _enroll(b, "watcher")
        await _synced(b, node)
        task = asyncio.create_task(_poll(b, node, wait=20))
        for _ in range(500):
            if b.service.waiters.waiting(node.id):
                break
            await asyncio.sleep(0.01)
        async with a.store.unit_of_work() as uow:
            await uow.serials.bump([node.id])
            await uow.announce([f"node_{n:020d}" for n in range(1000)])
        status, peer_map = await asyncio.wait_for(task, timeout=WAKE_BUDGET)
        assert status == 200
        assert peer_map.serial == node.serial


async def test_rolled_back_change_announces_nothing(tmp_path: Path, postgres_dsn: str) -> None:
    """NOTIFY rides the transaction: a unit of work that rolls back wakes nobody on B."""
    async with two_instances(tmp_path, postgres_dsn) as (a, b):
        node = await _enroll(b, "still")
        await _synced(b, node)
        heard: list[frozenset[str] | None] = []
        spy = PostgresChangeFeed(postgres_dsn)
        await spy.subscribe(heard.append)
        try:
            with pytest.raises(RuntimeError):  # noqa: PT012 - the whole unit of work aborts
                async with a.store.unit_of_work() as uow:
                    await uow.serials.bump([node.id])
                    await uow.announce([node.id])
                    raise RuntimeError("abort")
            async with a.store.unit_of_work() as uow:
                await uow.announce(["node_committed"])
            for _ in range(300):
                if heard:
                    break
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.2)
        finally:
            await spy.close()
        assert heard == [frozenset({"node_committed"})]
