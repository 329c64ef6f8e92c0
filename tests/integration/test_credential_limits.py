"""Per-identity limit, backoff and lockout of join keys and node credentials, on the live path.

The attacker here spreads over many source addresses, so that neither the per-IP request bucket
nor the per-IP failed-authentication budget is what refuses him: every address below is used
for ONE request. What must still refuse is the control keyed by what he targets — the claimed
identity (`ControlService._decide`, table IDENTITY) or the credential's failure record
(`AuthGuard.failed` counts it, `ControlService._decide` enforces backoff and the disabled flag).
The limits are the real defaults (`LimitPolicy()`): burst 10 then 5 per 15 min per identity,
backoff from the 5th consecutive failure (30 s doubling to 15 min), disabled at the 100th.
Each test runs on MemoryStore and SqliteStore (the `world` fixture).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from rustynet.adapters.storage.sqlite import SqliteStore

from rustynet.application.control import ControlService
from rustynet.application.errors import RateLimited, Unauthorized
from rustynet.domain.join_tokens import JoinToken
from rustynet.domain.keys import Purpose, SigningKey, b64decode, b64encode
from rustynet.domain.limits import LimitPolicy
from rustynet.domain.tokens import token_renewal_message
from rustynet.ports.wire.v1 import (
    CreateJoinKeyRequest,
    EnrollCompleteRequest,
    TokenChallengeRequest,
    TokenRenewRequest,
)
from tests.integration.test_control_service import (
    Node,
    World,
    enroll,
    make_world,
    start_enroll,
    world,
)

__all__ = ["world"]  # the store-parametrised fixture (memory and sqlite)

DEFAULTS = LimitPolicy()
WEEK = 7 * 24 * 3600  # the longest join-key TTL: the lockout test runs a day of failures


def addresses() -> Iterator[str]:
    """Distinct source addresses, each a bucket of its own (/32): the two test /24s."""
    for network in ("198.51.100.0/24", "203.0.113.0/24"):
        for host in ipaddress.ip_network(network).hosts():
            yield str(host)


def wrong_secret(join_text: str, w: World) -> str:
    """A join token naming the real key id, with a secret that is not its secret."""
    real = JoinToken.parse(join_text)
    other = JoinToken.create(
        control_url=real.control_url,
        root_fingerprint=real.root_fingerprint,
        tls_spki_sha256=real.tls_spki_sha256,
        entropy=w.entropy,
    )
    return JoinToken(
        control_url=real.control_url,
        root_fingerprint=real.root_fingerprint,
        tls_spki_sha256=real.tls_spki_sha256,
        token_id=real.token_id,
        secret=other.export_secret(),
    ).to_text()


async def renew(w: World, node: Node, ip: str, signer: SigningKey | None = None) -> None:
    """One renewal of `node` from `ip`: a fresh challenge, signed by `signer` (default: the
    node's own identity key; another key is a failed authentication)."""
    node_id = node.result.node_id
    challenge = await w.service.token_challenge(TokenChallengeRequest(node_id), client_ip=ip)
    message = token_renewal_message(b64decode(challenge.challenge_id), node_id)
    key = signer if signer is not None else node.identity
    signature = b64encode(key.sign(Purpose.TOKEN_RENEWAL, message))
    await w.service.renew_token(
        TokenRenewRequest(node_id, challenge.challenge_id, signature), client_ip=ip
    )


def wait_out_backoff(w: World, caught: pytest.ExceptionInfo[RateLimited]) -> None:
    w.clock.advance(timedelta(seconds=caught.value.retry_after))


# --- per-identity bucket ----------------------------------------------------------------------


@pytest.mark.asyncio
async def test_one_identity_from_many_addresses_is_limited_per_identity(world: World) -> None:
    """Enrollment: one identity key presenting a valid join key from 11 addresses (one request
    each) gets 10 challenges, then 429 with the identity bucket's 3-minute Retry-After; after
    3 minutes one more (refill 5 per 15 min). The per-IP buckets never run dry."""
    created = await world.service.create_join_key(world.admin, CreateJoinKeyRequest())
    identity = SigningKey.generate(world.entropy)
    source = addresses()
    for _ in range(DEFAULTS.per_identity.burst):
        await start_enroll(world, created.token, "one", next(source), identity=identity)
    with pytest.raises(RateLimited) as caught:
        await start_enroll(world, created.token, "one", next(source), identity=identity)
    assert caught.value.retry_after == 180  # 15 min / 5: the identity bucket, not per-IP (6 s)
    await start_enroll(world, created.token, "other", next(source))  # another identity: fine
    world.clock.advance(timedelta(minutes=3))
    await start_enroll(world, created.token, "one", next(source), identity=identity)
    with pytest.raises(RateLimited):
        await start_enroll(world, created.token, "one", next(source), identity=identity)


@pytest.mark.asyncio
async def test_one_node_renewing_from_many_addresses_is_limited_per_identity(
    world: World,
) -> None:
    """Token renewal: valid renewals of one node from 11 addresses (one each): 10 succeed, the
    11th is 429 even though its signature is right and its address is fresh."""
    node = await enroll(world, "renewer")
    source = addresses()
    for _ in range(DEFAULTS.per_identity.burst):
        await renew(world, node, next(source))
    with pytest.raises(RateLimited) as caught:
        await renew(world, node, next(source))
    assert caught.value.retry_after == 180
    world.clock.advance(timedelta(minutes=3))
    await renew(world, node, next(source))


# --- join keys: backoff and lockout -----------------------------------------------------------


@pytest.mark.asyncio
async def test_join_key_backs_off_after_five_failures_spread_over_five_addresses(
    world: World,
) -> None:
    """Five wrong secrets for one join key, each from its own address and identity key: the
    right secret from a sixth address is then refused (429, 30 s); after 30 s it works."""
    created = await world.service.create_join_key(world.admin, CreateJoinKeyRequest())
    bad = wrong_secret(created.token, world)
    source = addresses()
    for _ in range(DEFAULTS.backoff_after_failures):
        with pytest.raises(Unauthorized):
            await start_enroll(world, bad, "guess", next(source))
    with pytest.raises(RateLimited) as caught:
        await start_enroll(world, created.token, "genuine", next(source))
    assert caught.value.retry_after == 30
    wait_out_backoff(world, caught)
    await start_enroll(world, created.token, "genuine", next(source))


@pytest.mark.asyncio
async def test_join_key_is_disabled_after_100_failures_spread_over_100_addresses(
    world: World,
) -> None:
    """100 consecutive wrong secrets for one join key (each from its own address, each after
    the backoff ran out) disable it: the right secret is refused from a fresh address, and
    still after the longest backoff has passed."""
    created = await world.service.create_join_key(
        world.admin, CreateJoinKeyRequest(ttl_seconds=WEEK)
    )
    bad = wrong_secret(created.token, world)
    source = addresses()
    failures = 0
    while failures < DEFAULTS.disable_after_failures:
        try:
            await start_enroll(world, bad, "guess", next(source))
        except Unauthorized:
            failures += 1
        except RateLimited as limited:  # backing off: wait it out, as a patient attacker does
            world.clock.advance(timedelta(seconds=limited.retry_after))
    world.clock.advance(DEFAULTS.backoff_max + timedelta(seconds=1))
    for _ in range(3):
        with pytest.raises(RateLimited):
            await start_enroll(world, created.token, "genuine", next(source))
        world.clock.advance(DEFAULTS.backoff_max + timedelta(seconds=1))


@pytest.mark.asyncio
async def test_failed_proofs_count_against_the_join_key(world: World) -> None:
    """Enrollment proofs signed by the wrong key, from five addresses: the join key backs off
    (its next request is 429), though each address failed once."""
    created = await world.service.create_join_key(world.admin, CreateJoinKeyRequest())
    source = addresses()
    stranger = SigningKey.generate(world.entropy)
    for _ in range(DEFAULTS.backoff_after_failures):
        ip = next(source)
        _, _, challenge_id, _ = await start_enroll(world, created.token, "guess", ip)
        forged = b64encode(stranger.sign(Purpose.ENROLLMENT_PROOF, b64decode(challenge_id)))
        with pytest.raises(Unauthorized):
            await world.service.enroll_complete(
                EnrollCompleteRequest(challenge_id, forged), client_ip=ip
            )
    with pytest.raises(RateLimited):
        await start_enroll(world, created.token, "genuine", next(source))


# --- node credentials (token renewal): backoff and lockout -----------------------------------


@pytest.mark.asyncio
async def test_node_credential_backs_off_after_five_failures_spread_over_five_addresses(
    world: World,
) -> None:
    """Five renewals of one node signed by another key, each from its own address: the node's
    own, correct renewal from a sixth address is then refused (429, 30 s); after 30 s it works."""
    node = await enroll(world, "target")
    stranger = SigningKey.generate(world.entropy)
    source = addresses()
    for _ in range(DEFAULTS.backoff_after_failures):
        with pytest.raises(Unauthorized):
            await renew(world, node, next(source), signer=stranger)
    with pytest.raises(RateLimited) as caught:
        await renew(world, node, next(source))
    assert caught.value.retry_after == 30
    wait_out_backoff(world, caught)
    await renew(world, node, next(source))


@pytest.mark.asyncio
async def test_node_credential_is_disabled_after_100_failures_spread_over_100_addresses(
    world: World,
) -> None:
    """100 consecutive bad renewals of one node (each from its own address, each after the
    backoff ran out) disable its renewal: its genuine renewal is refused from a fresh address,
    and still after the longest backoff has passed (only re-enrollment helps)."""
    node = await enroll(world, "target")
    stranger = SigningKey.generate(world.entropy)
    source = addresses()
    failures = 0
    while failures < DEFAULTS.disable_after_failures:
        try:
            await renew(world, node, next(source), signer=stranger)
        except Unauthorized:
            failures += 1
        except RateLimited as limited:
            world.clock.advance(timedelta(seconds=limited.retry_after))
    for _ in range(3):
        world.clock.advance(DEFAULTS.backoff_max + timedelta(seconds=1))
        with pytest.raises(RateLimited):
            await renew(world, node, next(source))


@pytest.mark.asyncio
async def test_a_join_keys_backoff_survives_a_restart_of_the_control_plane(tmp_path: Path) -> None:
    """The limiter state that refuses is the store's, not the process's: after five failures
    the control plane restarts on the same SQLite file and the right secret is still 429."""
    store = SqliteStore(tmp_path / "control.db")
    w = await make_world(store)
    created = await w.service.create_join_key(w.admin, CreateJoinKeyRequest())
    bad = wrong_secret(created.token, w)
    source = addresses()
    for _ in range(DEFAULTS.backoff_after_failures):
        with pytest.raises(Unauthorized):
            await start_enroll(w, bad, "guess", next(source))
    await w.service.close()
    await store.close()
    reopened = SqliteStore(tmp_path / "control.db")
    await reopened.open()
    try:
        w.service = ControlService(reopened, w.keys, w.clock, w.entropy, w.service.settings)
        with pytest.raises(RateLimited) as caught:
            await start_enroll(w, created.token, "genuine", next(source))
        assert caught.value.retry_after == 30
    finally:
        await reopened.close()
