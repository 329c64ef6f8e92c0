"""Crypto policy: allowlist, denylist, deprecation cut-offs, exceptions, start-up check."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from rustynet.bootstrap.crypto_policy import load_crypto_policy, shipped_policy_text
from rustynet.domain.crypto_policy import (
    RUSTYNET_ALGORITHMS,
    AlgorithmUse,
    CryptoPolicy,
    CryptoPolicyError,
    CryptoPolicyViolation,
    Use,
)
from rustynet.domain.errors import LocalProtocolError

NOW = datetime(2025, 6, 1, tzinfo=UTC)
SHIPPED = CryptoPolicy.parse(shipped_policy_text())

SMALL = """
version = 1

[[allow]]
name = "Ed25519"
uses = ["sign", "verify"]
not_after_for_apply = 2030-01-01T00:00:00Z
not_after_for_process = 2031-01-01T00:00:00Z

[[allow]]
name = "SHA-256"
uses = ["hash", "hash-verify"]

[[deny]]
name = "SHA-1"
reason = "collisions"
"""

EXCEPTION = """
[[exception]]
id = "CPX-1"
algorithm = "SHA-1"
uses = ["hash-verify"]
owner = "ops@example.org"
reason = "legacy fingerprints"
created = 2025-01-01T00:00:00Z
expires = {expires}
"""


def _override(body: str) -> str:
    return "version = 1\n" + textwrap.dedent(body)


def test_every_denylisted_algorithm_is_refused_for_every_use() -> None:
    """No denied algorithm is permitted for any use, in any spelling of its case."""
    assert len(SHIPPED.denied) >= 15
    for denied in SHIPPED.denied.values():
        for use in Use:
            for spelling in (denied.name, denied.name.lower(), denied.name.upper()):
                with pytest.raises(CryptoPolicyViolation, match="is denied"):
                    SHIPPED.check_use(spelling, use, NOW)


@pytest.mark.parametrize("name", ["MD5", "SHA-1", "RC4", "DES", "3DES", "Blowfish", "JWT-none"])
def test_named_denylist_members_are_present(name: str) -> None:
    """The shipped denylist names the algorithms docs/threat-model/crypto-policy.md forbids."""
    with pytest.raises(CryptoPolicyViolation):
        SHIPPED.check_use(name, Use.HASH, NOW)
    assert name.casefold() in SHIPPED.denied


@pytest.mark.parametrize("name", ["RSA-1536", "Serpent", "", "ed25519-ph", "SHA-256 "])
def test_unknown_algorithm_is_refused(name: str) -> None:
    """Anything the policy does not name is refused (default deny)."""
    with pytest.raises(CryptoPolicyViolation, match="not in the crypto policy"):
        SHIPPED.check_use(name, Use.VERIFY, NOW)


def test_allowed_algorithm_is_refused_for_a_use_it_is_not_listed_for() -> None:
    """SHA-256 is a hash, not a cipher; ECDSA-P256 is for TLS and signatures only."""
    with pytest.raises(CryptoPolicyViolation, match="not allowed for encrypt"):
        SHIPPED.check_use("SHA-256", Use.ENCRYPT, NOW)
    with pytest.raises(CryptoPolicyViolation, match="not allowed for key-agreement"):
        SHIPPED.check_use("ECDSA-P256", Use.KEY_AGREEMENT, NOW)
    assert SHIPPED.check_use("ECDSA-P256", Use.TLS, NOW).exception is None


def test_apply_is_cut_off_while_process_is_still_allowed_between_the_two_dates() -> None:
    """Between the dates, verify works and sign is refused; after both, both are refused."""
    policy = CryptoPolicy.parse(SMALL)
    apply_cut = datetime(2030, 1, 1, tzinfo=UTC)
    process_cut = datetime(2031, 1, 1, tzinfo=UTC)
    policy.check_use("Ed25519", Use.SIGN, apply_cut)
    policy.check_use("Ed25519", Use.VERIFY, apply_cut)
    between = apply_cut + timedelta(seconds=1)
    with pytest.raises(CryptoPolicyViolation, match="no longer be used for sign"):
        policy.check_use("Ed25519", Use.SIGN, between)
    policy.check_use("Ed25519", Use.VERIFY, process_cut)
    after = process_cut + timedelta(seconds=1)
    for use in (Use.SIGN, Use.VERIFY):
        with pytest.raises(CryptoPolicyViolation):
            policy.check_use("Ed25519", use, after)


def test_process_cut_off_before_apply_cut_off_is_rejected_at_parse() -> None:
    """Apply must be cut off strictly first; the reverse order is a policy error with a path."""
    text = SMALL.replace("2031-01-01T00:00:00Z", "2029-01-01T00:00:00Z")
    with pytest.raises(CryptoPolicyError) as info:
        CryptoPolicy.parse(text)
    assert info.value.path == "allow[0].not_after_for_process"


def test_exception_longer_than_90_days_is_refused_at_parse() -> None:
    """90 days is accepted, 91 days is not, and the error names the path."""
    ok = SMALL + EXCEPTION.format(expires="2025-04-01T00:00:00Z")  # 90 d after 2025-01-01
    assert CryptoPolicy.parse(ok).exceptions[0].id == "CPX-1"
    too_long = SMALL + EXCEPTION.format(expires="2025-04-02T00:00:00Z")  # 91 d
    with pytest.raises(CryptoPolicyError, match="at most 90 days") as info:
        CryptoPolicy.parse(too_long)
    assert info.value.path == "exception[0].expires"


def test_active_exception_permits_then_expired_exception_fails_closed() -> None:
    """The exception permits its scope until `expires`; one second later it is refused."""
    expires = datetime(2025, 3, 1, tzinfo=UTC)
    policy = CryptoPolicy.parse(SMALL + EXCEPTION.format(expires="2025-03-01T00:00:00Z"))
    granted = policy.check_use("SHA-1", Use.HASH_VERIFY, expires)
    assert granted.exception is not None
    assert granted.exception.id == "CPX-1"
    with pytest.raises(CryptoPolicyViolation, match=r"is denied.*CPX-1.*expired"):
        policy.check_use("SHA-1", Use.HASH_VERIFY, expires + timedelta(seconds=1))


def test_exception_does_not_reach_beyond_its_scope() -> None:
    """An exception for hash-verify does not permit hash (new use) of the same algorithm."""
    policy = CryptoPolicy.parse(SMALL + EXCEPTION.format(expires="2025-03-01T00:00:00Z"))
    with pytest.raises(CryptoPolicyViolation):
        policy.check_use("SHA-1", Use.HASH, datetime(2025, 2, 1, tzinfo=UTC))
    with pytest.raises(CryptoPolicyViolation, match="not yet valid"):
        policy.check_use("SHA-1", Use.HASH_VERIFY, datetime(2024, 12, 31, tzinfo=UTC))


def test_expired_exception_refuses_start_even_if_unused() -> None:
    """A stale exception is a start-up problem: fail closed until it is renewed or removed."""
    policy = CryptoPolicy.parse(SMALL + EXCEPTION.format(expires="2025-03-01T00:00:00Z"))
    uses = [AlgorithmUse("SHA-256", Use.HASH)]
    policy.check_startup(uses, datetime(2025, 2, 1, tzinfo=UTC))
    with pytest.raises(CryptoPolicyViolation, match=r"exception CPX-1 .* expired"):
        policy.check_startup(uses, datetime(2025, 3, 2, tzinfo=UTC))


def test_startup_check_lists_every_problem_in_one_message() -> None:
    """Unknown, denied, wrong-use and past-cut-off uses all appear, one line each."""
    policy = CryptoPolicy.parse(SMALL)
    uses = [
        AlgorithmUse("Ed25519", Use.SIGN, "peer maps"),
        AlgorithmUse("SHA-256", Use.HASH),
        AlgorithmUse("SHA-1", Use.HASH, "legacy"),
        AlgorithmUse("Rot13", Use.ENCRYPT),
        AlgorithmUse("SHA-256", Use.MAC),
    ]
    with pytest.raises(CryptoPolicyViolation) as info:
        policy.check_startup(uses, datetime(2030, 6, 1, tzinfo=UTC))
    message = str(info.value)
    assert len(info.value.problems) == 4
    assert message.startswith("crypto policy (crypto-policy.toml) refuses to start: 4 problem")
    for fragment in ("Ed25519", "[peer maps]", "SHA-1 is denied", "'Rot13'", "not allowed for mac"):
        assert fragment in message
    assert len(message.splitlines()) == 5


@pytest.mark.parametrize(
    ("text", "path"),
    [
        ("extra = 1\n" + SMALL, "extra"),
        (SMALL + "\nextra = 1\n", "deny[0].extra"),
        (SMALL.replace('uses = ["hash", "hash-verify"]', 'uses = ["hash"]\ncolour = "x"'), None),
        (SMALL.replace('"hash-verify"]', '"hash-verfy"]'), "allow[1].uses[1]"),
        (SMALL.replace('reason = "collisions"', ""), "deny[0].reason"),
        (SMALL.replace("version = 1", "version = 2"), "version"),
        (SMALL.replace('name = "SHA-1"', 'name = "sha-256"'), "deny"),
        (SMALL + '\n[[allow]]\nname = "ed25519"\nuses = ["sign"]\n', "allow[2].name"),
        (SMALL.replace("2030-01-01T00:00:00Z", "2030-01-01T00:00:00"), None),
    ],
)
def test_malformed_policy_is_refused_with_a_path(text: str, path: str | None) -> None:
    """Unknown keys, unknown uses, missing keys, duplicates, allowed+denied, naive times."""
    with pytest.raises(CryptoPolicyError) as info:
        CryptoPolicy.parse(text)
    if path is not None:
        assert info.value.path == path
    assert info.value.path
    assert "crypto-policy.toml" in str(info.value)


def test_override_can_tighten_and_add_exceptions_but_never_widen() -> None:
    """Denials and earlier dates apply; an allow section or a later date is refused."""
    base = CryptoPolicy.parse(SMALL)
    tightened = base.tightened(
        _override(
            """
            [[deny]]
            name = "SHA-256"
            reason = "site rule"

            [[deprecate]]
            name = "Ed25519"
            not_after_for_apply = 2026-01-01T00:00:00Z
            """
        ),
        source="/etc/rustynet/crypto-policy.toml",
    )
    with pytest.raises(CryptoPolicyViolation, match="denied"):
        tightened.check_use("SHA-256", Use.HASH, NOW)
    with pytest.raises(CryptoPolicyViolation, match="apply cut-off 2026"):
        tightened.check_use("Ed25519", Use.SIGN, datetime(2026, 2, 1, tzinfo=UTC))
    assert tightened.sources == ("crypto-policy.toml", "/etc/rustynet/crypto-policy.toml")

    widen = _override('[[allow]]\nname = "MD5"\nuses = ["hash"]\n')
    with pytest.raises(CryptoPolicyError, match="unknown key") as info:
        base.tightened(widen, source="o.toml")
    assert info.value.path == "allow"
    later = _override(
        '[[deprecate]]\nname = "Ed25519"\nnot_after_for_apply = 2030-06-01T00:00:00Z\n'
    )
    with pytest.raises(CryptoPolicyError, match="only bring the date earlier"):
        base.tightened(later, source="o.toml")


def test_check_use_needs_an_aware_time() -> None:
    """A naive datetime is our bug, not a policy decision."""
    with pytest.raises(LocalProtocolError):
        # A naive time on purpose, hence the ignore below.
        SHIPPED.check_use("SHA-256", Use.HASH, datetime(2025, 1, 1))  # noqa: DTZ001


def test_shipped_policy_permits_everything_rustynet_uses_through_the_loader() -> None:
    """Start-up with the shipped file and the canonical algorithm list succeeds today."""
    policy = load_crypto_policy(datetime.now(UTC))
    for item in RUSTYNET_ALGORITHMS:
        assert policy.check_use(item.algorithm, item.use, datetime.now(UTC)).exception is None


def test_loader_applies_an_override_file_and_refuses_start_when_it_denies_a_used_algorithm(
    tmp_path: Path,
) -> None:
    """An operator override that denies SHA-256 stops every program at start-up."""
    override = tmp_path / "crypto-policy.toml"
    override.write_text(_override('[[deny]]\nname = "SHA-256"\nreason = "test"\n'))
    override.chmod(0o600)
    with pytest.raises(CryptoPolicyViolation, match="SHA-256 is denied") as info:
        load_crypto_policy(NOW, override)
    assert str(override) in str(info.value)


def test_loader_refuses_a_group_writable_or_symlinked_override(tmp_path: Path) -> None:
    """The override can grant exceptions, so a file others can write is refused."""
    override = tmp_path / "crypto-policy.toml"
    override.write_text("version = 1\n")
    override.chmod(0o620)
    with pytest.raises(CryptoPolicyError, match="writable by group or others"):
        load_crypto_policy(NOW, override)
    override.chmod(0o600)
    link = tmp_path / "link.toml"
    link.symlink_to(override)
    with pytest.raises(CryptoPolicyError, match="regular file"):
        load_crypto_policy(NOW, link)
    with pytest.raises(CryptoPolicyError, match="cannot read"):
        load_crypto_policy(NOW, tmp_path / "missing.toml")
    assert load_crypto_policy(NOW, override).sources[-1] == str(override)
