"""Process hardening every Rustynet program applies before it touches a secret.

Core dumps would write key material (seeds, passphrases, derived keys) to disk, so every entry
point turns them off: RLIMIT_CORE = 0 and, on Linux, PR_SET_DUMPABLE = 0 (which also stops
non-root ptrace attach and /proc/PID/mem reads by the same uid). Rustynet's programs run on
Linux only (netlink, nftables), so prctl is not optional.
"""

from __future__ import annotations

import ctypes
import resource

_PR_GET_DUMPABLE = 3
_PR_SET_DUMPABLE = 4


def disable_core_dumps() -> None:
    """Forbid core dumps of this process (and ptrace by same-uid processes on Linux)."""
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_DUMPABLE, 0) failed")


def is_dumpable() -> bool:
    """Whether this process may still dump core (for doctor and tests)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_CORE)
    if soft != 0:
        return True
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(_PR_GET_DUMPABLE, 0, 0, 0, 0))
