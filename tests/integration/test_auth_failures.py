"""Failed authentications against a real server (HTTPS on loopback, SQLite file): the per-IP
failure budget answers 429 before any write, one address cannot spend another's budget, the
audit log folds repeats into one counted entry, and a flood grows the database by less than
the bound documented in docs/threat-model/auth-controls.md.

Every request goes over HTTPS; the attacker's and the bystander's sources are two loopback
addresses (127.0.0.1 and 127.0.0.2), so the server sees two source networks.
"""

from __future__ import annotations

import asyncio
import math
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
from rustynet.adapters.storage.sqlite import SqliteStore

from rustynet.domain.audit import AuditEntry
from rustynet.domain.keys import b64encode
from rustynet.domain.limits import BucketPolicy, LimitPolicy
from tests.integration.http_server import LiveApi, enroll_over_http, running_api

ATTACKER = "127.0.0.1"
BYSTANDER = "127.0.0.2"
DEFAULTS = LimitPolicy()
WIDE = BucketPolicy(burst=10_000, refill=10_000, per=timedelta(minutes=1))
ONLY_FAILURES = attrs.evolve(DEFAULTS, per_ip=WIDE, per_identity=WIDE)
BUDGET = DEFAULTS.auth_failures_per_ip
# The flood runs FLOOD_SECONDS (RUSTYNET_FLOOD_SECONDS=10 for the full 10 s of the issue); its
# bound is computed by the formula of auth-controls.md for the time it actually ran.
FLOOD_SECONDS = float(os.environ.get("RUSTYNET_FLOOD_SECONDS", "3"))
# Constants of the documented bound (auth-controls.md, "Audit growth under attack").
ENTRY_BYTES = 1024  # one audit entry or checkpoint row, with its index entry, at most
ROW_BYTES = 512  # one limiter row (bucket or failure record), with its index entry, at most
SLACK_BYTES = 64 * 1024  # first pages of tables and indexes touched for the first time


def admitted_failures(seconds: float, policy: LimitPolicy = DEFAULTS) -> int:
    """GCRA: at most burst + ⌊W / T⌋ failures from one source in any window W."""
    bucket = policy.auth_failures_per_ip
    return bucket.burst + math.floor(seconds / bucket.interval.total_seconds())


def growth_bound(seconds: float, policy: LimitPolicy = DEFAULTS) -> int:
    """Bytes a flood of `seconds` from one source may add to the database (documented)."""
    failures = admitted_failures(seconds, policy)
    entries = 2 * failures + math.ceil(seconds / 60) + 1  # first + summary each; checkpoints
    rows = 3 * failures  # a failure record, an identity bucket and a source bucket each
    return entries * ENTRY_BYTES + rows * ROW_BYTES + SLACK_BYTES


def test_the_documented_bound_is_the_formula_at_the_real_defaults() -> None:
    """auth-controls.md states 21 failures and 142,848 bytes for 10 s of flood."""
    assert (BUDGET.burst, BUDGET.refill, BUDGET.per) == (20, 10, timedelta(minutes=1))
    assert admitted_failures(10) == 21
    assert growth_bound(10) == 142_848
    doc = Path(__file__).parents[2] / "docs/threat-model/auth-controls.md"
    assert "142,848 bytes" in doc.read_text(encoding="utf-8")


def _database_bytes(path: Path) -> int:
    """Size of the database file once its write-ahead log is folded in."""
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return path.stat().st_size


async def _entries(api: LiveApi) -> list[AuditEntry]:
    async with api.store.unit_of_work() as uow:
        return await uow.audit.entries()


def _session(api: LiveApi, source: str, limit: int = 8) -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(ssl=api.client_ssl, local_addr=(source, 0), limit=limit)
    return aiohttp.ClientSession(base_url=api.base_url, connector=connector)


async def _status(http: aiohttp.ClientSession, method: str, path: str, **kwargs: Any) -> int:
    async with http.request(method, path, **kwargs) as response:
        await response.read()
        return response.status


def _unknown_node(n: int) -> dict[str, str]:
    return {"Authorization": "Bearer v4.public.AAAA", "Rustynet-Node": f"node_unknown{n}"}


def _bad_renewal(n: int) -> dict[str, str]:
    return {
        "node_id": f"node_unknown{n}",
        "challenge_id": b64encode(bytes(32)),
        "signature": b64encode(bytes(64)),
    }


Attempt = Callable[[aiohttp.ClientSession, int], Awaitable[int]]


async def _node_token(http: aiohttp.ClientSession, n: int) -> int:
    return await _status(http, "GET", "/v1/peermap?after=0", headers=_unknown_node(n))


async def _renewal(http: aiohttp.ClientSession, n: int) -> int:
    return await _status(http, "POST", "/v1/token", json=_bad_renewal(n))


async def _admin_key(http: aiohttp.ClientSession, n: int) -> int:
    unknown = f"rnk_{n:016x}_{b64encode(bytes(32))}"  # well formed, no such key
    return await _status(
        http, "GET", "/v1/admin/nodes", headers={"Authorization": f"Bearer {unknown}"}
    )


async def _enrollment(http: aiohttp.ClientSession, n: int) -> int:
    return (await enroll_over_http(http, "rnjoin1_" + "A" * 120, f"bad-{n}")).status


async def _proof(http: aiohttp.ClientSession, n: int) -> int:
    body = {"challenge_id": b64encode(bytes([n % 256]) * 32), "signature": b64encode(bytes(64))}
    return await _status(http, "POST", "/v1/enroll/complete", json=body)


def _dump(path: Path) -> list[str]:
    """Every row of the database as SQL text (what "no write" is compared by)."""
    conn = sqlite3.connect(path)
    try:
        return list(conn.iterdump())
    finally:
        conn.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "attempt",
    [_node_token, _renewal, _admin_key, _enrollment, _proof],
    ids=["node-token", "renewal", "admin-key", "enrollment", "enrollment-proof"],
)
async def test_failures_past_the_budget_get_429_before_any_write(
    tmp_path: Path, attempt: Attempt
) -> None:
    """On every authenticated route: 20 failures are 401, then 429 with Retry-After, and from
    then on the database does not change by one byte (no limiter, no audit write). The request
    buckets are opened wide so that only the failure budget can refuse."""
    async with running_api(tmp_path, limits=ONLY_FAILURES) as api, _session(api, ATTACKER) as http:
        statuses = [await attempt(http, n) for n in range(BUDGET.burst)]
        assert set(statuses) == {401}, statuses
        before = _dump(tmp_path / "control.db")
        refused = [await attempt(http, BUDGET.burst + n) for n in range(10)]
        assert set(refused) == {429}, refused
        assert _dump(tmp_path / "control.db") == before


@pytest.mark.asyncio
async def test_an_attacker_cannot_spend_another_addresses_failure_budget(tmp_path: Path) -> None:
    """127.0.0.1 uses up its budget; 127.0.0.2 still gets its own 20 failures (401, not 429)
    and its admin still works. Successes never take from the failure budget either."""
    async with (
        running_api(tmp_path) as api,
        _session(api, ATTACKER) as attacker,
        _session(api, BYSTANDER) as bystander,
    ):
        statuses = Counter([await _node_token(attacker, n) for n in range(BUDGET.burst + 5)])
        assert statuses == Counter({401: BUDGET.burst, 429: 5})
        assert await _status(bystander, "GET", "/v1/admin/nodes", headers=api.admin_headers()) == (
            200
        )
        for _ in range(30):  # authenticated admin calls: their own bucket
            ok = await _status(bystander, "GET", "/v1/admin/nodes", headers=api.admin_headers())
            assert ok == 200
        theirs = [await _node_token(bystander, n) for n in range(BUDGET.burst)]
        assert set(theirs) == {401}, theirs
        assert await _node_token(bystander, 99) == 429


@pytest.mark.asyncio
async def test_authenticated_admin_calls_have_a_larger_bucket_than_failed_ones(
    tmp_path: Path,
) -> None:
    """Failed admin authentications: burst 20 per IP. Authenticated calls: burst 120."""
    async with running_api(tmp_path) as api, _session(api, ATTACKER) as http:
        headers = api.admin_headers()
        started = time.monotonic()
        ok = [await _status(http, "GET", "/v1/admin/nodes", headers=headers) for _ in range(120)]
        assert set(ok) == {200}
        # The bucket refills one token a second (60/min): a slow machine earns a few more 200s
        # before the 429, never more than one per second elapsed.
        extra = 0
        while await _status(http, "GET", "/v1/admin/nodes", headers=headers) == 200:
            extra += 1
            assert extra <= math.ceil(time.monotonic() - started) + 1, "bucket larger than 120"
    (tmp_path / "2").mkdir()
    async with running_api(tmp_path / "2") as api, _session(api, ATTACKER) as http:
        failed = Counter([await _admin_key(http, n) for n in range(25)])
        assert failed == Counter({401: 20, 429: 5})


@pytest.mark.asyncio
async def test_repeated_failures_fold_into_one_entry_whose_count_is_the_number_sent(
    tmp_path: Path,
) -> None:
    """17 identical failures: one entry at once, and at shutdown one summary with count 17;
    the chain still verifies. A second source is folded separately."""
    (tmp_path / "a").mkdir()
    async with running_api(tmp_path / "a") as api:
        async with _session(api, ATTACKER) as attacker, _session(api, BYSTANDER) as other:
            sent = [await _node_token(attacker, n) for n in range(17)]
            assert set(sent) == {401}
            assert {await _node_token(other, n) for n in range(3)} == {401}
        failures = [e for e in await _entries(api) if e.action == "node.auth_failed"]
        assert [e.actor for e in failures] == [f"ip:{ATTACKER}", f"ip:{BYSTANDER}"]
        assert "count" not in failures[0].details
    store = SqliteStore(tmp_path / "a" / "control.db")  # after a graceful shutdown
    await store.open()
    try:
        async with store.unit_of_work() as uow:
            entries = [e for e in await uow.audit.entries() if e.action == "node.auth_failed"]
    finally:
        await store.close()
    summaries = {e.actor: e.details for e in entries if "count" in e.details}
    assert summaries[f"ip:{ATTACKER}"]["count"] == 17
    assert summaries[f"ip:{BYSTANDER}"]["count"] == 3
    assert summaries[f"ip:{ATTACKER}"]["reason"] == "unknown or revoked node"
    assert summaries[f"ip:{ATTACKER}"]["first_seen"] <= summaries[f"ip:{ATTACKER}"]["last_seen"]
    assert len(entries) == 4
    assert _failures_in(entries) == 20


@pytest.mark.asyncio
async def test_a_closed_fold_window_is_written_by_the_tick_and_the_chain_verifies(
    tmp_path: Path,
) -> None:
    """With a 1 s window: the tick after it writes the summary; the audit chain verifies."""
    async with running_api(tmp_path, audit_fold_window=timedelta(seconds=1)) as api:
        async with _session(api, ATTACKER) as http:
            assert {await _renewal(http, 7) for _ in range(5)} == {401}
        await asyncio.sleep(1.1)
        await api.service.tick()
        renewals = [e for e in await _entries(api) if e.action == "token.renewal_failed"]
        assert [e.details.get("count") for e in renewals] == [None, 5]
        assert renewals[0].target == "unknown-node"  # the caller's text is not recorded
        report = await api.service.audit_report()
        assert report.ok, report.message


async def _flood(api: LiveApi, seconds: float, node: dict[str, str]) -> tuple[Counter[int], float]:
    """Bad tokens from one address for `seconds`: unknown node ids, a real node id with a
    token whose signature is broken, renewals for unknown nodes (8 requests in flight)."""
    loop = asyncio.get_running_loop()
    statuses: Counter[int] = Counter()
    kinds: list[Attempt] = [_node_token, _renewal]

    async def forged(http: aiohttp.ClientSession, n: int) -> int:
        return await _status(http, "GET", "/v1/peermap?after=0", headers=node)

    kinds.append(forged)
    async with _session(api, ATTACKER, limit=8) as http:
        start = loop.time()
        deadline = start + seconds

        async def worker(w: int) -> None:
            n = w
            while loop.time() < deadline:
                statuses[await kinds[n % len(kinds)](http, n)] += 1
                n += 8

        await asyncio.gather(*(worker(w) for w in range(8)))
        return statuses, loop.time() - start


@pytest.mark.asyncio
@pytest.mark.slow
async def test_a_flood_of_bad_tokens_grows_the_database_by_less_than_the_bound(
    tmp_path: Path,
) -> None:
    """FLOOD_SECONDS of bad tokens from one address with the real default limits: at most
    burst + ⌊W / T⌋ of them are failures (401), all others 429, and the database file (WAL
    folded in, after a graceful shutdown) grows by less than the documented bound."""
    path = tmp_path / "control.db"
    async with running_api(tmp_path) as api:
        async with _session(api, BYSTANDER) as setup:
            join = await _admin_join_key(setup, api)
            enrolled = await enroll_over_http(setup, join, "victim")
            assert enrolled.status == 200
        result = enrolled.body
        token = result["access_token"]
        broken = token[:-6] + ("AAAAAA" if not token.endswith("AAAAAA") else "BBBBBB")
        node = {"Authorization": f"Bearer {broken}", "Rustynet-Node": result["node_id"]}
        before = _database_bytes(path)
        entries_before = len(await _entries(api))
        statuses, elapsed = await _flood(api, FLOOD_SECONDS, node)
    after = _database_bytes(path)
    sent = sum(statuses.values())
    print(
        f"flood {elapsed:.1f} s: {sent} requests, {statuses[401]} failures (401), "
        f"database +{after - before} bytes (bound {growth_bound(elapsed)})"
    )
    assert after - before < growth_bound(elapsed)
    assert set(statuses) <= {401, 429}, statuses
    assert statuses[401] <= admitted_failures(elapsed), (statuses, elapsed)
    assert sent > 10 * admitted_failures(elapsed)  # a flood, not a trickle
    store = SqliteStore(path)
    await store.open()
    try:
        async with store.unit_of_work() as uow:
            new = (await uow.audit.entries())[entries_before:]
    finally:
        await store.close()
    failed = [e for e in new if e.action in {"node.auth_failed", "token.renewal_failed"}]
    assert _failures_in(failed) == statuses[401]  # every failure counted, none twice
    assert len(new) <= 2 * statuses[401] + 2


def _failures_in(entries: list[AuditEntry]) -> int:
    """Failures the entries account for: each summary's count (it covers the first entry of
    its window, written at its `first_seen`), plus each first entry no summary covers."""
    summaries = [e for e in entries if "count" in e.details]
    covered = {
        (e.actor, e.action, e.target, e.details.get("reason"), e.details["first_seen"])
        for e in summaries
    }
    alone = [
        e
        for e in entries
        if "count" not in e.details
        and (e.actor, e.action, e.target, e.details.get("reason"), _text(e)) not in covered
    ]
    return sum(int(e.details["count"]) for e in summaries) + len(alone)


def _text(entry: AuditEntry) -> str:
    return entry.time.isoformat(timespec="microseconds")


async def _admin_join_key(http: aiohttp.ClientSession, api: LiveApi) -> str:
    async with http.post("/v1/admin/join-keys", json={}, headers=api.admin_headers()) as r:
        assert r.status == 201
        token = (await r.json())["token"]
        assert isinstance(token, str)
        return token
