"""Admin API key expiry: an expired key is refused like an unknown one (401), at the boundary.

Through the service with a settable clock (memory and SQLite stores): the key works until the
last instant before `expires_at` and is refused from `expires_at` on, and the refusal is
audited. Over real HTTPS: a key created with a 1 s lifetime answers 200, then, once the clock has
passed its expiry, a 401 byte-identical to the one an unknown key gets.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from rustynet.application.control_types import AdminAuth
from rustynet.application.errors import Unauthorized
from rustynet.ports.wire.v1 import CreateApiKeyRequest
from tests.integration.http_server import running_api
from tests.integration.test_control_service import World, world

__all__ = ["world"]  # the store-parametrised fixture


@pytest.mark.asyncio
async def test_expired_admin_key_is_unauthorized_from_its_expiry_on(world: World) -> None:
    """Valid one microsecond before `expires_at`, refused at it and after; audited."""
    created = await world.service.create_api_key(
        world.admin, CreateApiKeyRequest("admin", ttl_seconds=3600)
    )
    key = AdminAuth(created.key, "198.51.100.21")
    expires_at = created.info.expires_at
    assert expires_at == world.clock.now() + timedelta(hours=1)
    world.clock.current = expires_at - timedelta(microseconds=1)
    assert await world.service.list_nodes(key) == ()
    for when in (expires_at, expires_at + timedelta(days=30)):
        world.clock.current = when
        with pytest.raises(Unauthorized):
            await world.service.list_nodes(key)
    entries = await world.service.list_audit(world.admin, 0, 1000)
    refused = [e for e in entries if e.action == "admin.auth_failed"]
    assert [e.target for e in refused] == [f"apikey:{created.id}"] * 2


@pytest.mark.asyncio
async def test_expired_admin_key_gets_the_unknown_keys_401_over_https(tmp_path: Path) -> None:
    """A 1 s key: 200, then after its expiry the same 401 bytes as an unknown key."""
    async with running_api(tmp_path) as api:
        connector = aiohttp.TCPConnector(ssl=api.client_ssl)
        async with aiohttp.ClientSession(base_url=api.base_url, connector=connector) as http:
            async with http.post(
                "/v1/admin/api-keys",
                json={"scope": "read-only", "ttl_seconds": 1},
                headers=api.admin_headers(),
            ) as response:
                assert response.status == 201
                created = await response.json()
            expired = {"Authorization": f"Bearer {created['key']}"}
            async with http.get("/v1/admin/nodes", headers=expired) as response:
                assert response.status == 200
            expires_at = datetime.fromisoformat(
                created["info"]["expires_at"].replace("Z", "+00:00")
            )
            # The answer shows whole seconds (truncated): the key expires within a second after.
            await asyncio.sleep((expires_at - datetime.now(UTC)).total_seconds() + 1.05)
            prefix, _, secret = created["key"].rpartition("_")
            unknown = {"Authorization": f"Bearer rnk_{'x' * len(prefix[4:])}_{secret}"}
            answers = []
            for headers in (expired, unknown):
                async with http.get("/v1/admin/nodes", headers=headers) as response:
                    answers.append((response.status, await response.read()))
            assert answers[0][0] == 401
            assert answers[0] == answers[1]
