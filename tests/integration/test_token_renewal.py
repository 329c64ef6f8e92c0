"""Token renewal against hostile clients: challenges cost the server no row, are bound to their
node, expire, are single use, and garbage never gets more than a 400/401.

The black-box finding this answers: `POST /v1/token/challenge` stored a row for any well-formed
node id under a global cap of 10,000, so ~520 unauthenticated addresses x 20 requests filled it
and every node's renewal answered 429 until the rows expired (and ~1,000 addresses kept it full).
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import aiohttp
import attrs
import pytest
import pytest_asyncio
from rustynet.adapters.storage.sqlite import SqliteStore

from rustynet.application.errors import RateLimited, Unauthorized, ValidationError
from rustynet.domain.keys import Purpose, SigningKey, b64decode, b64encode
from rustynet.domain.tokens import token_renewal_message
from rustynet.ports.store import ChallengeKind
from rustynet.ports.wire.v1 import TokenChallengeRequest, TokenRenewRequest
from tests.integration.http_server import GENEROUS_LIMITS, enroll_over_http, running_api
from tests.integration.test_control_service import NOW, World, enroll, make_world

pytestmark = pytest.mark.asyncio

# Failures are the point here: no backoff or lockout gets in the way of the checks under test.
PATIENT = attrs.evolve(
    GENEROUS_LIMITS, backoff_after_failures=10_000, disable_after_failures=10_000
)
FLOOD_ADDRESSES = tuple(f"203.0.113.{n}" for n in range(1, 31)) + tuple(
    f"198.51.100.{n}" for n in range(100, 130)
)
DEFAULT_PER_IP_BURST = 20  # LimitPolicy().per_ip, what the black-box test ran against


@pytest_asyncio.fixture
async def sqlite_world(tmp_path: Path) -> AsyncIterator[tuple[World, Path]]:
    path = tmp_path / "control.db"
    world = await make_world(SqliteStore(path))
    try:
        yield world, path
    finally:
        await world.store.close()


@pytest_asyncio.fixture
async def patient(tmp_path: Path) -> AsyncIterator[World]:
    world = await make_world(SqliteStore(tmp_path / "control.db"), PATIENT)
    try:
        yield world
    finally:
        await world.store.close()


def _rows(path: Path) -> dict[str, int]:
    """Rows per table, read through a second connection (what is committed)."""
    with sqlite3.connect(path) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        return {t: db.execute(f'SELECT COUNT(*) FROM "{t}"').fetchone()[0] for t in tables}


async def _challenge(w: World, node_id: str, ip: str = "198.51.100.9") -> bytes:
    answer = await w.service.token_challenge(TokenChallengeRequest(node_id), client_ip=ip)
    return b64decode(answer.challenge_id)


def _signed(
    signer: SigningKey, challenge: bytes, presented_as: str, signed_for: str | None = None
) -> TokenRenewRequest:
    message = token_renewal_message(challenge, signed_for or presented_as)
    signature = signer.sign(Purpose.TOKEN_RENEWAL, message)
    return TokenRenewRequest(presented_as, b64encode(challenge), b64encode(signature))


async def _renew(w: World, request: TokenRenewRequest, ip: str = "198.51.100.9") -> str:
    return (await w.service.renew_token(request, client_ip=ip)).access_token


# --- the exhaustion attack --------------------------------------------------------------------


async def test_a_challenge_flood_from_many_addresses_stores_no_row(
    sqlite_world: tuple[World, Path],
) -> None:
    """60 addresses each spend their whole per-IP burst (20) on challenges, for the victim's
    node id and for unknown ids: 1,200 challenges, and the store gained exactly one row per
    address (its per-IP bucket, which the client pays an address for) and nothing else: no
    challenge row, no nonce, no audit entry. The victim then renews as usual."""
    w, path = sqlite_world
    victim = await enroll(w, "victim")
    before = _rows(path)
    unknown = iter(f"node_{n:016d}" for n in range(10_000))
    for ip in FLOOD_ADDRESSES:
        for n in range(DEFAULT_PER_IP_BURST):
            node_id = victim.result.node_id if n % 2 else next(unknown)
            await _challenge(w, node_id, ip)
        with pytest.raises(RateLimited):  # the per-IP bucket still bites
            await _challenge(w, next(unknown), ip)
    after = _rows(path)
    grown = {t: after[t] - before[t] for t in after if after[t] != before[t]}
    assert grown == {"limiter_buckets": len(FLOOD_ADDRESSES)}  # challenges, nonces, audit: +0
    challenge = await _challenge(w, victim.result.node_id, "198.51.100.200")
    token = await _renew(w, _signed(victim.identity, challenge, victim.result.node_id))
    assert token.startswith("v4.public.")
    assert _rows(path)["nonces"] == before["nonces"] + 1  # the one row: a proven node's renewal


# --- node binding (issue 12, 1g) ----------------------------------------------------------------


async def test_a_renewal_challenge_is_bound_to_the_node_it_was_issued_for(
    patient: World,
) -> None:
    """A challenge issued for A: B's signature presented as B is 401 (the MAC names A), and B's
    signature presented as A is 401 (A's key does not verify it). Neither refusal uses up the
    challenge: A still renews with it, and B renews with a challenge of its own."""
    w = patient
    a, b = await enroll(w, "node-a"), await enroll(w, "node-b")
    a_id, b_id = a.result.node_id, b.result.node_id
    for_a = await _challenge(w, a_id)
    with pytest.raises(Unauthorized):
        await _renew(w, _signed(b.identity, for_a, presented_as=b_id))
    with pytest.raises(Unauthorized):
        await _renew(w, _signed(b.identity, for_a, presented_as=a_id))
    with pytest.raises(Unauthorized):  # the message bound to B, presented as A
        await _renew(w, _signed(a.identity, for_a, presented_as=a_id, signed_for=b_id))
    assert await _renew(w, _signed(a.identity, for_a, presented_as=a_id))
    assert await _renew(w, _signed(b.identity, await _challenge(w, b_id), presented_as=b_id))


# --- expiry and single use -----------------------------------------------------------------------


async def test_an_expired_challenge_is_refused(patient: World) -> None:
    """Live for 60 s from issue: answered at +59 s it renews, at +60 s it is 401."""
    w = patient
    node = await enroll(w, "late")
    node_id = node.result.node_id
    early, late = await _challenge(w, node_id), await _challenge(w, node_id)
    w.clock.advance(timedelta(seconds=59))
    assert await _renew(w, _signed(node.identity, early, node_id))
    w.clock.advance(timedelta(seconds=1))
    with pytest.raises(Unauthorized):
        await _renew(w, _signed(node.identity, late, node_id))


async def test_a_replayed_answer_is_refused_while_the_challenge_lives_and_after(
    patient: World,
) -> None:
    """The signed answer renews once. Replayed from elsewhere at once, after upkeep purged
    what it may (+30 s, still inside the challenge's life), and after expiry: 401 each time."""
    w = patient
    node = await enroll(w, "replayed")
    request = _signed(node.identity, await _challenge(w, node.result.node_id), node.result.node_id)
    assert await _renew(w, request)
    with pytest.raises(Unauthorized):
        await _renew(w, request, ip="203.0.113.77")
    for step in (30, 45, 300):
        w.clock.advance(timedelta(seconds=step))
        await w.service.tick()
        with pytest.raises(Unauthorized):
            await _renew(w, request, ip="203.0.113.78")


# --- tampering and garbage ---------------------------------------------------------------------


async def test_tampered_and_malformed_challenges_are_401_and_non_base64_is_400(
    patient: World,
) -> None:
    """Signed correctly by the node itself, a challenge with any byte changed, cut, padded or
    replaced is 401; text that is not base64url is a 400 naming /challenge_id."""
    w = patient
    node = await enroll(w, "tamper")
    node_id = node.result.node_id
    real = await _challenge(w, node_id)
    forged = [real[:i] + bytes([real[i] ^ 0x01]) + real[i + 1 :] for i in (0, 3, 4, 15, 16, 31)]
    forged += [real[:16], real[:31], real + b"\x00", real * 2, bytes(32), b"\xff" * 32]
    for challenge in forged:
        with pytest.raises(Unauthorized):
            await _renew(w, _signed(node.identity, challenge, node_id))
    for text in ("", "!!!!", real.hex() + "=", "AAAA=="):
        request = TokenRenewRequest(node_id, text, b64encode(bytes(64)))
        with pytest.raises(ValidationError) as caught:
            await _renew(w, request)
        assert caught.value.problems[0].pointer == "/challenge_id"
    assert await _renew(w, _signed(node.identity, real, node_id))  # none of it used it up


async def test_hostile_renewal_bodies_over_https_never_answer_5xx(tmp_path: Path) -> None:
    """Over the real TLS server: forged, cut, foreign and malformed challenges and node ids get
    400 or 401 in the JSON error shape; the node then renews (200)."""
    async with running_api(tmp_path, limits=PATIENT) as api:
        connector = aiohttp.TCPConnector(ssl=api.client_ssl)
        async with aiohttp.ClientSession(base_url=api.base_url, connector=connector) as http:
            join = await _post(http, "/v1/admin/join-keys", {}, api.admin_headers())
            enrolled = await enroll_over_http(http, join[1]["token"], "hostile")
            assert enrolled.status == 200, enrolled.body
            node_id, identity = enrolled.body["node_id"], enrolled.identity
            status, body = await _post(http, "/v1/token/challenge", {"node_id": node_id})
            assert status == 200
            real = b64decode(body["challenge_id"])
            other = b64decode(
                (await _post(http, "/v1/token/challenge", {"node_id": "node_" + "B" * 16}))[1][
                    "challenge_id"
                ]
            )

            def signed(challenge: bytes, as_id: str = node_id) -> dict[str, Any]:
                signature = identity.sign(
                    Purpose.TOKEN_RENEWAL, token_renewal_message(challenge, as_id)
                )
                return {
                    "node_id": as_id,
                    "challenge_id": b64encode(challenge),
                    "signature": b64encode(signature),
                }

            refused: list[tuple[dict[str, Any], int]] = [
                (signed(real[:-1] + bytes([real[-1] ^ 0x80])), 401),
                (signed(real[:20]), 401),
                (signed(real + real), 401),
                (signed(other), 401),
                (signed(real, "node_" + "B" * 16), 401),
                ({**signed(real), "node_id": "node_\ud800AAAAAAAAAAAAAAA"}, 400),
                ({**signed(real), "node_id": "x" * 5000}, 401),
                ({**signed(real), "challenge_id": "***"}, 400),
                ({**signed(real), "challenge_id": 12}, 400),
                ({**signed(real), "challenge_id": None}, 400),
                ({**signed(real), "signature": "AAAA"}, 401),
            ]
            for payload, expected in refused:
                status, body = await _post(http, "/v1/token", payload)
                assert status == expected, (payload, body)
                assert body["error"] == ("unauthorized" if expected == 401 else "bad_request")
                assert set(body) <= {"error", "detail", "pointer"}
            status, body = await _post(http, "/v1/token", signed(real))
            assert status == 200, body
            assert body["access_token"].startswith("v4.public.")


async def _post(
    http: aiohttp.ClientSession,
    path: str,
    payload: dict[str, Any],
    headers: dict[str, str] | None = None,
) -> tuple[int, Any]:
    async with http.post(path, json=payload, headers=headers) as response:
        return response.status, await response.json()


# --- upgrade from a version that stored renewal challenges -------------------------------------


async def test_renewal_rows_left_by_an_older_version_are_never_read_and_get_purged(
    sqlite_world: tuple[World, Path],
) -> None:
    """A database that still holds `renewal` challenge rows (written before this change):
    enrollment still works beside them, renewals ignore them, and upkeep removes them once
    expired."""
    w, path = sqlite_world
    legacy = bytes(range(32))
    with sqlite3.connect(path) as db:
        db.execute(
            "INSERT INTO challenges (id, kind, subject, payload, expires_at, used)"
            " VALUES (?, 'renewal', 'node_AAAAAAAAAAAAAAAA', '', ?, 0)",
            (legacy, int((NOW + timedelta(seconds=30)).timestamp() * 1_000_000)),
        )
    node = await enroll(w, "after-upgrade")
    with pytest.raises(Unauthorized):  # the stored row is no challenge any more
        await _renew(w, _signed(node.identity, legacy, node.result.node_id))
    async with w.store.unit_of_work() as uow:
        assert await uow.challenges.count(ChallengeKind.ENROLLMENT, NOW) == 0
        assert await uow.challenges.get(ChallengeKind.ENROLLMENT, legacy) is None
    w.clock.advance(timedelta(seconds=61))  # past the legacy row and the enrollment's own
    await w.service.tick()
    assert _rows(path)["challenges"] == 0


async def test_concurrent_answers_to_one_challenge_have_one_winner(patient: World) -> None:
    """Ten copies of one signed answer at once: exactly one access token."""
    w = patient
    node = await enroll(w, "racer")
    request = _signed(node.identity, await _challenge(w, node.result.node_id), node.result.node_id)

    async def attempt(n: int) -> bool:
        try:
            await _renew(w, request, ip=f"203.0.113.{100 + n}")
        except Unauthorized:
            return False
        return True

    assert sorted(await asyncio.gather(*(attempt(n) for n in range(10)))) == [False] * 9 + [True]
