"""Process hardening every Rustynet program applies before it touches a secret.

Core dumps would write key material (seeds, passphrases, derived keys) to disk, so every entry
point turns them off: RLIMIT_CORE = 0 and, on Linux, PR_SET_DUMPABLE = 0 (which also stops
non-root ptrace attach and /proc/PID/mem reads by the same uid). Rustynet's programs run on
Linux only (netlink, nftables), so prctl is not optional.

The servers also size their descriptor limit to their connection caps
(`fit_connections_to_fd_limit`), so clients can never use up the descriptors.
"""

from __future__ import annotations

import contextlib
import ctypes
import resource

from rustynet.domain.connection_limits import ConnectionLimits

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


# Descriptors kept free for everything that is not a client connection: the database (a pool
# on PostgreSQL), log and key files, the event loop's own, the listening socket.
FD_RESERVE = 256


def fit_connections_to_fd_limit(
    limits: ConnectionLimits, reserve: int = FD_RESERVE
) -> tuple[ConnectionLimits, str | None]:
    """Make `limits.max_connections` + `reserve` fit RLIMIT_NOFILE: raise the soft limit up
    to the hard one if needed, else lower the cap. Returns the limits to serve with and, when
    the cap was lowered, a warning for the operator. With the caps, clients can never exhaust
    the descriptors (accept(2) would fail with EMFILE for everyone)."""
    want = limits.max_connections + reserve
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < want:
        target = want if hard == resource.RLIM_INFINITY else min(want, hard)
        with contextlib.suppress(OSError, ValueError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= want:
        return limits, None
    fitted = limits.capped(soft - reserve)
    return fitted, (
        f"the descriptor limit (RLIMIT_NOFILE {soft}) leaves room for {fitted.max_connections} "
        f"connections, not max_connections = {limits.max_connections}; serving with "
        f"{fitted.max_connections} (raise LimitNOFILE, or lower [connections].max_connections)"
    )
