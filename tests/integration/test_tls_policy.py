"""The TLS contexts Rustynet makes offer only what the crypto policy permits, read off the
contexts themselves: every group they negotiate and every TLS 1.3 suite they offer."""

from __future__ import annotations

import ssl
from datetime import UTC, datetime

import pytest
from rustynet.adapters.control_client import pinned_ssl_context
from rustynet.adapters.http_api.tls import server_ssl_context
from rustynet.adapters.support.tls_policy import (
    GROUP_SHORT_NAMES,
    TlsPolicyError,
    group_uses,
    offered_suites,
    restrict_to_policy,
    suite_uses,
)
from rustynet.adapters.tls_cert import CertificateInfo, create_self_signed

from rustynet.bootstrap.crypto_policy import load_crypto_policy
from rustynet.domain.crypto_policy import RUSTYNET_ALGORITHMS, AlgorithmUse
from tests.integration.tls_probe import CANDIDATE_GROUPS, handshake, probe_client, probe_server


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> CertificateInfo:
    directory = tmp_path_factory.mktemp("tls-policy")
    return create_self_signed(
        "https://127.0.0.1:1",
        directory / "tls.crt",
        directory / "tls.key",
        now=datetime.now(UTC),
    )


def _server_groups(cert: CertificateInfo) -> set[str]:
    server = server_ssl_context(cert.certificate, cert.private_key)
    return {g for g in CANDIDATE_GROUPS if handshake(probe_client(g), server) is not None}


def _client_groups(cert: CertificateInfo) -> set[str]:
    client = pinned_ssl_context(cert.pin)
    key, crt = str(cert.private_key), str(cert.certificate)
    return {g for g in CANDIDATE_GROUPS if handshake(client, probe_server(g, crt, key)) is not None}


def _uses_of(groups: set[str], suites: frozenset[str]) -> list[AlgorithmUse]:
    uses: list[AlgorithmUse] = []
    for group in sorted(groups):
        assert group in GROUP_SHORT_NAMES, f"the context negotiates {group}, not a policy group"
        uses.extend(group_uses(GROUP_SHORT_NAMES[group]))
    for suite in sorted(suites):
        uses.extend(suite_uses(suite))  # KeyError: a suite the policy module does not name
    return uses


def test_shipped_policy_permits_every_group_and_suite_the_tls_contexts_negotiate(
    cert: CertificateInfo,
) -> None:
    """Server and pinned client: each group is tried alone against the real context, each
    offered TLS 1.3 suite is read from OpenSSL; all map to policy algorithms that the shipped
    policy permits and that the start-up check (RUSTYNET_ALGORITHMS) covers. ffdhe2048 (DH-2048
    is denied), the other FFDHE groups, X448, P-384 and P-521 are refused both ways."""
    policy = load_crypto_policy(datetime.now(UTC))
    checked = {(item.algorithm, item.use) for item in RUSTYNET_ALGORITHMS}
    server = server_ssl_context(cert.certificate, cert.private_key)
    client = pinned_ssl_context(cert.pin)
    for groups, context in ((_server_groups(cert), server), (_client_groups(cert), client)):
        assert groups == {"X25519", "prime256v1"}
        suites = offered_suites(context)
        assert suites == {"TLS_AES_256_GCM_SHA384", "TLS_CHACHA20_POLY1305_SHA256"}
        uses = _uses_of(groups, suites)
        policy.check_startup(uses, datetime.now(UTC))
        assert {(u.algorithm, u.use) for u in uses} <= checked


def test_restriction_refuses_a_context_that_is_not_tls13_only() -> None:
    """restrict_to_policy fails closed on a context it was not built for."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    with pytest.raises(TlsPolicyError, match=r"TLS 1\.3-only"):
        restrict_to_policy(context)


def test_unrestricted_context_would_negotiate_ffdhe2048(cert: CertificateInfo) -> None:
    """The probe itself can see a violation: OpenSSL's default server accepts ffdhe2048."""
    default = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    default.load_cert_chain(str(cert.certificate), str(cert.private_key))
    assert handshake(probe_client("ffdhe2048"), default) is not None
