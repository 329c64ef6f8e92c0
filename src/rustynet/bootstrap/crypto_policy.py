"""Start-up crypto policy check: load the shipped policy, apply the operator override, check.

Every program (and `rustynet doctor`) calls `load_crypto_policy(now)` before it does anything
else; a policy problem refuses start-up with one message listing every problem.
"""

from __future__ import annotations

import importlib.resources
import stat
from collections.abc import Iterable
from datetime import datetime
from pathlib import Path
from typing import Final

from rustynet.domain.crypto_policy import (
    RUSTYNET_ALGORITHMS,
    AlgorithmUse,
    CryptoPolicy,
    CryptoPolicyError,
)

SHIPPED_POLICY: Final = "domain/data/crypto-policy.toml"


def shipped_policy_text() -> str:
    """The policy shipped inside the package."""
    return importlib.resources.files("rustynet").joinpath(SHIPPED_POLICY).read_text("utf-8")


def _read_override(path: Path) -> str:
    # The override can grant exceptions, so only its owner (or root) may be able to write it.
    try:
        info = path.lstat()
        if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
            raise CryptoPolicyError(str(path), "", "must be a regular file, not a symlink")
        if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            raise CryptoPolicyError(
                str(path),
                "",
                f"is writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}); "
                "refusing it (chmod go-w)",
            )
        return path.read_text("utf-8")
    except OSError as exc:
        raise CryptoPolicyError(str(path), "", f"cannot read the override: {exc}") from exc
    except UnicodeDecodeError as exc:
        raise CryptoPolicyError(str(path), "", "is not UTF-8 text") from exc


def load_crypto_policy(
    now: datetime,
    override_path: Path | None = None,
    *,
    uses: Iterable[AlgorithmUse] = RUSTYNET_ALGORITHMS,
) -> CryptoPolicy:
    """Load, tighten with the override (if any), check `uses` at `now`; return the policy.

    Raises `CryptoPolicyError` for a malformed or unreadable file and `CryptoPolicyViolation`
    (listing every problem) when a use is refused or an exception has expired.
    """
    policy = CryptoPolicy.parse(shipped_policy_text(), source=f"rustynet:{SHIPPED_POLICY}")
    if override_path is not None:
        path = Path(override_path)
        policy = policy.tightened(_read_override(path), source=str(path))
    policy.check_startup(uses, now)
    return policy
