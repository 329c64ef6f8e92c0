"""The `rustynet` command line: argument parsing, output formatting and the exit-code table.

The one rule: this module parses and formats, nothing else. Each subcommand becomes a typed
request handed to a `Commands` object that the composition root
(`rustynet.bootstrap.entrypoints`) builds; the answer comes back as an application value that
is printed here, human or `--json`. Later subcommands (`up`, `status`, `admin ...`) add a
subparser, a request type and a `Commands` method.

Exit codes of `rustynet doctor` (and later node commands): 0 everything passed, 1 a check or
the command failed, 2 usage error (argparse's convention). The `rustynet admin` group follows
issue 3's table instead — 0 ok, 1 usage, 2 rejected by the server, 3 cannot reach or trust the
server — documented and implemented once in `rustynet.adapters.cli.admin`.
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol, TextIO

import attrs
from rustynet.adapters.cli import admin as admin_cli
from rustynet.adapters.cli import netcheck as netcheck_cli
from rustynet.adapters.cli import node as node_cli
from rustynet.adapters.cli.crypto_option import add_crypto_policy_option

from rustynet.application.doctor import CheckResult, DoctorReport
from rustynet.domain.errors import RustynetError

KEYSTORE_CHOICES = ("auto", "os", "file")
DEFAULT_STATE_DIR = Path("/var/lib/rustynet")


class ExitCode(enum.IntEnum):
    """Process exit codes of every `rustynet` subcommand."""

    OK = 0
    FAILED = 1
    USAGE = 2


@attrs.frozen
class KeystoreOptions:
    """Options shared by every subcommand that opens the key store."""

    state_dir: Path
    keystore: str
    passphrase_fd: int | None
    passphrase_file: Path | None


@attrs.frozen
class DoctorRequest:
    """`rustynet doctor`."""

    keystore: KeystoreOptions
    json_output: bool
    crypto_policy_override: Path | None = None


class Commands(netcheck_cli.NetcheckCommands, Protocol):
    """What the composition root provides, one method per subcommand."""

    def doctor(self, request: DoctorRequest) -> DoctorReport:
        """Run the self-check."""
        ...


def _fd(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a file descriptor number: {text!r}") from None
    if value < 3:
        raise argparse.ArgumentTypeError("use a descriptor >= 3 (0-2 are the terminal streams)")
    return value


def _keystore_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("key store")
    group.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        help="state directory; encrypted keys live in STATE_DIR/keys (default: %(default)s)",
    )
    group.add_argument(
        "--keystore",
        choices=KEYSTORE_CHOICES,
        default="auto",
        help="auto: OS key store when a real backend exists, else encrypted files",
    )
    group.add_argument(
        "--passphrase-fd",
        type=_fd,
        metavar="N",
        help="read the key-file passphrase from this open descriptor (never argv or env)",
    )
    group.add_argument(
        "--passphrase-file",
        type=Path,
        metavar="PATH",
        help="key-file passphrase in a 0600 file outside the state directory (weaker)",
    )
    return parent


def _keystore_options(ns: argparse.Namespace) -> KeystoreOptions:
    return KeystoreOptions(
        state_dir=ns.state_dir,
        keystore=ns.keystore,
        passphrase_fd=ns.passphrase_fd,
        passphrase_file=ns.passphrase_file,
    )


def build_parser() -> argparse.ArgumentParser:
    """The full parser; each subparser sets `run` to a function (commands, ns, out) -> code."""
    parser = argparse.ArgumentParser(
        prog="rustynet", description="Rustynet mesh VPN: operator command line."
    )
    parser.add_argument(
        "--socket",
        type=Path,
        default=node_cli.DEFAULT_SOCKET,
        metavar="PATH",
        help="rustynetd's local API socket, for the node commands (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    node_cli.add_node_commands(sub)
    netcheck_cli.add_netcheck_command(sub)
    doctor = sub.add_parser(
        "doctor",
        parents=[_keystore_parent()],
        help="check crypto policy, key store and permissions; change nothing",
        description="Check what Rustynet would start with. Exit 0: all passed, 1: a check "
        "failed, 2: usage error.",
    )
    doctor.add_argument("--json", action="store_true", help="print the report as JSON")
    add_crypto_policy_option(doctor)
    doctor.set_defaults(run=_run_doctor)
    # Listed for --help only: main() hands `admin ...` to its own parser (other exit codes).
    sub.add_parser(
        "admin",
        add_help=False,
        help="administer a control plane (see `rustynet admin --help`)",
    )
    return parser


def _run_doctor(commands: Commands, ns: argparse.Namespace, out: TextIO) -> ExitCode:
    report = commands.doctor(
        DoctorRequest(
            _keystore_options(ns),
            json_output=ns.json,
            crypto_policy_override=ns.crypto_policy_override,
        )
    )
    if ns.json:
        out.write(json.dumps(report_to_json(report), indent=2, sort_keys=False) + "\n")
    else:
        out.write(render_report(report))
    return ExitCode.OK if report.ok else ExitCode.FAILED


def _check_to_json(check: CheckResult) -> dict[str, object]:
    return {
        "name": check.name,
        "status": check.status,
        "summary": check.summary,
        "details": {k: list(v) if isinstance(v, tuple) else v for k, v in check.details},
        "problems": list(check.problems),
    }


def report_to_json(report: DoctorReport) -> dict[str, object]:
    """The `--json` document: `ok` plus every check with status, details and problems."""
    return {"ok": report.ok, "checks": [_check_to_json(c) for c in report.checks]}


_MARK = {"pass": "ok  ", "warn": "WARN", "fail": "FAIL"}


def render_report(report: DoctorReport) -> str:
    """Human report: one line per check, its problems, then the security notes."""
    lines: list[str] = []
    for check in report.checks:
        lines.append(f"[{_MARK[check.status]}] {check.name}: {check.summary}")
        lines.extend(f"         - {p}" for p in check.problems)
        for key, value in check.details:
            if key in ("protects_against", "does_not_protect_against") and isinstance(value, tuple):
                label = "protects against" if key == "protects_against" else "does NOT protect"
                lines.extend(f"         {label}: {v}" for v in value)
            elif key == "reason" and value:
                lines.append(f"         why: {value}")
    lines.append("all checks passed" if report.ok else "some checks FAILED")
    return "\n".join(lines) + "\n"


Runner = Callable[[Commands, argparse.Namespace, TextIO], int]


def main(
    argv: Sequence[str] | None,
    commands: Commands,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
    admin: admin_cli.AdminConnector | None = None,
) -> int:
    """Parse `argv`, run the subcommand through `commands`, print, return the exit code."""
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["admin"]:
        if admin is None:
            err.write("rustynet admin: not available in this build\n")
            return int(admin_cli.AdminExit.USAGE)
        return admin_cli.main(args[1:], admin, stdout=out, stderr=err)
    parser = build_parser()
    try:
        ns = parser.parse_args(args)
    except SystemExit as exc:  # argparse exits 2 on usage errors and 0 on --help
        return int(exc.code) if isinstance(exc.code, int) else int(ExitCode.USAGE)
    if getattr(ns, "node_run", None) is not None:  # up/down/status/peers/ping: see cli/node.py
        return node_cli.run_node_command(ns, out, err)
    ns.err = err  # `netcheck` reports its usage problems itself (cli/netcheck.py)
    run: Runner = ns.run
    try:
        return int(run(commands, ns, out))
    except RustynetError as exc:
        err.write(f"rustynet {ns.command}: {exc}\n")
        return int(ExitCode.FAILED)
