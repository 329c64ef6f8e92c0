"""The tunnel process never outlives rustynetd, and what a crashed daemon left is removed.

The one rule: a wireguard-go we spawned dies with the daemon, and at the next start a
leftover of OUR OWN (recorded by us, verified to be the very process) is killed and cleared,
while anything we cannot prove is ours is refused, never killed.

Dying with the daemon (`guarded_argv`): the child runs
`setpriv --pdeathsig KILL -- sh -c CHECK rustynet-guard DAEMON_PID wireguard-go -f IF`.
setpriv (util-linux) sets `PR_SET_PDEATHSIG` = SIGKILL and execs; the kept signal survives the
following execs (none is set-uid). The daemon may die between the fork and that prctl, when
nothing would fire: so `CHECK` then compares `$PPID` (the shell's getppid()) with the daemon's
PID and exits 111 without starting wireguard-go when they differ. Every step execs without
forking (`ip netns exec` too), so the PID the daemon holds is wireguard-go's own.

PR_SET_PDEATHSIG fires when the THREAD that forked exits, not the process. asyncio forks in
the thread that runs the event loop; rustynetd runs its loop in the main thread, which lives
exactly as long as the daemon. A loop run in another thread (a test) ties wireguard-go to that
thread, which is also right: without its loop nobody reconciles the tunnel, so it must die.

Leftovers (`PidRecord`, `clear_leftover`): after the spawn the daemon writes
`<socket dir>/<if>.rustynetd-pid` (0600, atomic rename) holding the PID and the process start
time (/proc/PID/stat field 22, so a reused PID never matches). At start, when the UAPI socket
of the interface still answers, the recorded process is killed if and only if it still has
that start time and runs the configured program (through a pidfd, so the PID cannot be reused
between the check and the signal); anything else keeps the old refusal. A stale socket and a
stale record are removed. Routes and addresses go with the TUN link, which goes with the
process.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
from pathlib import Path
from typing import Final

import attrs
from rustynet.adapters.support.private_file import write_private

from rustynet.ports.tunnel import TunnelError

NOT_OUR_PARENT_EXIT: Final = 111
"""Exit status of the guard when the daemon died before the parent-death signal was armed."""
KILL_WAIT_S: Final = 3.0
_CHECK: Final = 'p=$1; shift; [ "$PPID" = "$p" ] || exit 111; exec "$@"'


def guarded_argv(argv: list[str], parent_pid: int) -> list[str]:
    """`argv` wrapped so that it gets SIGKILL when `parent_pid` dies (see the module doc)."""
    return [
        "setpriv",
        "--pdeathsig",
        "KILL",
        "--",
        "/bin/sh",
        "-c",
        _CHECK,
        "rustynet-guard",
        str(parent_pid),
        *argv,
    ]


def start_time(pid: int) -> int | None:
    """Start time of `pid` in clock ticks since boot (None: no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    return int(fields[19])  # field 22 of the whole line


def command_name(pid: int) -> str | None:
    """/proc/PID/comm (None: no such process)."""
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return None


@attrs.frozen
class PidRecord:
    """Which process serves an interface: PID and start time (written by the daemon)."""

    pid: int
    started: int

    @classmethod
    def of(cls, pid: int) -> PidRecord | None:
        """The record of a running process (None when it is already gone)."""
        started = start_time(pid)
        return None if started is None else cls(pid, started)

    def save(self, path: Path) -> None:
        """Write atomically, mode 0600 (`rustynet.adapters.support.private_file`)."""
        write_private(path, json.dumps({"pid": self.pid, "started": self.started}).encode())

    @classmethod
    def load(cls, path: Path) -> PidRecord | None:
        """The saved record; None when missing or unreadable (then nothing is ours to kill)."""
        try:
            doc = json.loads(path.read_text())
            pid, started = doc["pid"], doc["started"]
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if type(pid) is not int or type(started) is not int or pid <= 1:
            return None
        return cls(pid, started)


def record_path(socket_dir: Path, interface: str) -> Path:
    """Where the daemon records the wireguard-go serving `interface`."""
    return socket_dir / f"{interface}.rustynetd-pid"


def kill_recorded(record: PidRecord, program: str) -> bool:
    """SIGKILL the recorded process if it is still exactly that one running `program`; wait
    until it is gone (bounded). True when it was ours and is gone; False when not ours."""
    try:
        pidfd = os.pidfd_open(record.pid)
    except ProcessLookupError:
        return True  # already gone
    try:
        # The pidfd pins the process: once it matches, the signal reaches this very process.
        if start_time(record.pid) != record.started:
            return False
        if command_name(record.pid) != Path(program).name[:15]:
            return False
        with contextlib.suppress(ProcessLookupError):
            signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        readable, _, _ = select.select([pidfd], [], [], KILL_WAIT_S)
        if not readable:
            raise TunnelError(f"leftover {program} (pid {record.pid}) did not exit after SIGKILL")
        return True
    finally:
        os.close(pidfd)
