"""Probes of what a TLS 1.3 context or a live server negotiates, for the crypto-policy tests.

`handshake(client, server)` runs a full handshake between two contexts in memory (no socket)
and returns the negotiated suite, or None when either side refuses. `s_client(...)` runs
`openssl s_client` (a TLS stack nobody here wrote) against a live server and returns its
output; `assert_groups_and_alerts(host, port)` is the black-box check both servers must pass.
"""

from __future__ import annotations

import asyncio
import shutil
import ssl
from typing import Final

import pytest

# Every TLS 1.3 group OpenSSL 3 implements, by curve short name (`set_ecdh_curve`).
CANDIDATE_GROUPS: Final = (
    "X25519",
    "X448",
    "prime256v1",
    "secp384r1",
    "secp521r1",
    "ffdhe2048",
    "ffdhe3072",
    "ffdhe4096",
    "ffdhe6144",
    "ffdhe8192",
)
# `openssl s_client -groups` names: refused ones, and accepted ones with the "Server Temp Key".
REFUSED_GROUPS: Final = ("ffdhe2048", "ffdhe3072", "X448", "P-384", "P-521")
ACCEPTED_GROUPS: Final = {"X25519": "X25519, 253 bits", "P-256": "ECDH, prime256v1, 256 bits"}


def handshake(client: ssl.SSLContext, server: ssl.SSLContext) -> str | None:
    """Handshake `client` with `server` through memory BIOs: the suite, or None if refused."""
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    cli = client.wrap_bio(c_in, c_out, server_side=False)
    srv = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(10):
        sides = (("client", cli, c_out, s_in), ("server", srv, s_out, c_in))
        for name, side, out, peer_in in sides:
            try:
                side.do_handshake()
                done[name] = True
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError:
                return None
            finally:
                peer_in.write(out.read())
        if all(done.values()):
            suite = cli.cipher()
            assert suite is not None
            return suite[0]
    raise AssertionError("the in-memory handshake did not finish")


def probe_client(group: str) -> ssl.SSLContext:
    """A client that offers only `group` (and any suite, any certificate)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_ecdh_curve(group)
    return context


def probe_server(group: str, cert: str, key: str) -> ssl.SSLContext:
    """A server that accepts only `group`, with the given certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.set_ecdh_curve(group)
    context.load_cert_chain(cert, key)
    return context


def openssl() -> str:
    path = shutil.which("openssl")
    if path is None:
        pytest.skip("the openssl command is not installed")
    return path


async def s_client(host: str, port: int, *options: str) -> str:
    """`openssl s_client -connect host:port OPTIONS` with stdin closed: its whole output."""
    proc = await asyncio.create_subprocess_exec(
        openssl(),
        "s_client",
        "-connect",
        f"{host}:{port}",
        *options,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), 20)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    return out.decode("utf-8", "replace")


async def assert_groups_and_alerts(host: str, port: int) -> None:
    """Groups outside the policy, TLS_AES_128_GCM_SHA256 and TLS 1.2 are refused with an alert;
    X25519 and P-256 are accepted."""
    for group in REFUSED_GROUPS:
        out = await s_client(host, port, "-groups", group)
        assert "Server Temp Key" not in out, (group, out)
        assert "alert handshake failure" in out, (group, out)
    for group, temp_key in ACCEPTED_GROUPS.items():
        out = await s_client(host, port, "-groups", group)
        assert f"Server Temp Key: {temp_key}" in out, (group, out)
        assert "New, TLSv1.3, Cipher is TLS_" in out, (group, out)
    out = await s_client(host, port, "-ciphersuites", "TLS_AES_128_GCM_SHA256")
    assert "alert handshake failure" in out, out
    out = await s_client(host, port, "-tls1_2")
    assert "alert protocol version" in out, out
