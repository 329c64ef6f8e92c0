"""`rustynet doctor` use case: check what a program would start with, change nothing.

The one rule: doctor only inspects. It loads the crypto policy, asks the key store that the
composition root would use for its findings (modes, owners, symlinks) and description, and
reports where the key-file passphrase would come from. It never creates, repairs or reads keys,
and never reads the passphrase. A failed check makes the report not ok (exit 1 at the CLI);
warnings are printed but pass.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Literal

import attrs

from rustynet.domain.errors import RustynetError
from rustynet.ports.keystore import (
    Keystore,
    KeystoreError,
    KeystoreFinding,
    PassphraseDescription,
)

if TYPE_CHECKING:
    from rustynet.domain.crypto_policy import CryptoPolicy

CheckStatus = Literal["pass", "warn", "fail"]
DetailValue = str | bool | int | tuple[str, ...] | None


@attrs.frozen
class CheckResult:
    """One line of the report: a named check, its status, a summary and details."""

    name: str
    status: CheckStatus
    summary: str
    details: tuple[tuple[str, DetailValue], ...] = ()
    problems: tuple[str, ...] = ()


@attrs.frozen
class DoctorReport:
    """Every check, in order; `ok` is False when any check failed."""

    checks: tuple[CheckResult, ...]

    @property
    def ok(self) -> bool:
        """True when no check failed (warnings allowed)."""
        return all(c.status != "fail" for c in self.checks)

    def check(self, name: str) -> CheckResult:
        """The check called `name` (KeyError if absent)."""
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)


@attrs.frozen
class KeystoreChoice:
    """Which store the composition root picked, why, and the passphrase source it would use.

    `keystore` is None when no store could be built (`error` says why). `passphrase` is None
    for stores that need none (OS key store, memory).
    """

    keystore: Keystore | None
    requested: str
    reason: str
    error: str | None = None
    passphrase: PassphraseDescription | None = None
    passphrase_findings: tuple[KeystoreFinding, ...] = ()
    passphrase_error: str | None = None


def _status(findings: tuple[KeystoreFinding, ...]) -> CheckStatus:
    if any(f.severity == "error" for f in findings):
        return "fail"
    return "warn" if findings else "pass"


def check_crypto_policy(
    now: datetime, load_crypto_policy: Callable[[datetime], CryptoPolicy]
) -> CheckResult:
    """Load the policy as every program does at start; a refusal fails the check."""
    try:
        policy = load_crypto_policy(now)
    except (RustynetError, OSError, ValueError) as exc:
        return CheckResult(
            "crypto-policy",
            "fail",
            "the crypto policy refuses start-up",
            problems=tuple(str(exc).splitlines()),
        )
    warnings = tuple(policy.warnings(now))
    return CheckResult(
        "crypto-policy",
        "warn" if warnings else "pass",
        "crypto policy loaded" + (" with warnings" if warnings else ""),
        problems=warnings,
    )


def check_keystore(choice: KeystoreChoice) -> tuple[CheckResult, ...]:
    """Which store, its description, and its permission findings."""
    if choice.keystore is None:
        return (
            CheckResult(
                "keystore",
                "fail",
                f"no usable key store for --keystore {choice.requested}",
                details=(("requested", choice.requested), ("reason", choice.reason)),
                problems=(choice.error or choice.reason,),
            ),
        )
    desc = choice.keystore.describe()
    selection = CheckResult(
        "keystore",
        "pass",
        f"would use the {desc.kind} key store at {desc.location}",
        details=(
            ("requested", choice.requested),
            ("kind", desc.kind),
            ("location", desc.location),
            ("reason", choice.reason),
            ("protects_against", desc.protects_against),
            ("does_not_protect_against", desc.does_not_protect_against),
            ("notes", desc.notes),
        ),
    )
    try:
        findings = choice.keystore.check()
    except (KeystoreError, OSError) as exc:
        findings = (KeystoreFinding(desc.location, f"could not be inspected: {exc}"),)
    status = _status(findings)
    permissions = CheckResult(
        "keystore-permissions",
        status,
        {
            "pass": "storage is private (directory 0700, files 0600, our uid, no symlinks)",
            "warn": "storage usable, with warnings",
            "fail": "storage is NOT private: start-up would be refused",
        }[status],
        problems=tuple(f.message() for f in findings),
    )
    return (selection, permissions)


def check_passphrase(choice: KeystoreChoice) -> CheckResult | None:
    """Where the key-file passphrase would come from, and what that protects against."""
    if choice.passphrase_error is not None:
        return CheckResult(
            "passphrase-source",
            "fail",
            "the passphrase source is refused",
            problems=(choice.passphrase_error,),
        )
    desc = choice.passphrase
    if desc is None:
        return None
    problems = tuple(f.message() for f in choice.passphrase_findings)
    status = _status(choice.passphrase_findings)
    if status == "pass" and (desc.weaker or not desc.unattended):
        status = "warn"
    if desc.weaker:
        problems += ("a passphrase file is weaker than a (TPM-sealed) systemd credential",)
    if not desc.unattended:
        problems += ("an unattended daemon could not open the key store with this source",)
    return CheckResult(
        "passphrase-source",
        status,
        f"passphrase from {desc.kind}: {desc.location}",
        details=(
            ("kind", desc.kind),
            ("location", desc.location),
            ("unattended", desc.unattended),
            ("weaker", desc.weaker),
            ("protects_against", desc.protects_against),
            ("does_not_protect_against", desc.does_not_protect_against),
        ),
        problems=problems,
    )


def run_doctor(
    *,
    now: datetime,
    load_crypto_policy: Callable[[datetime], CryptoPolicy],
    keystore: KeystoreChoice,
) -> DoctorReport:
    """Run every check and collect the report."""
    checks = [check_crypto_policy(now, load_crypto_policy), *check_keystore(keystore)]
    passphrase = check_passphrase(keystore)
    if passphrase is not None:
        checks.append(passphrase)
    return DoctorReport(tuple(checks))
