"""`rustynet-control`: argument parsing and output of the control-plane server's command line.

The one rule: this module parses and formats; `init` and `serve` are composed in
`rustynet.bootstrap.control`, which receives typed requests through `ControlCommands`.

    rustynet-control init  --data-dir DIR --url https://HOST:PORT [--listen ADDR:PORT]
                           [--database URL] [--keystore auto|file|os]
    rustynet-control serve --data-dir DIR [--database URL] [--log-level LEVEL]
    rustynet-control show  --data-dir DIR [--json]

Every command also takes `--crypto-policy-override FILE` (`rustynet.adapters.cli.crypto_option`):
the crypto policy is checked with it before anything else, and a refusal exits 1.

`show` prints what other components must be told about this control plane: its URL, the TLS
SPKI pin, the root key fingerprint (`rnfp_...`, what `rustynet-relay init --root-fingerprint`
needs and every join token carries) and the relays of control.toml. It reads the key store
like `serve` and prints public values only.

Exit codes: 0 ok (serve: stopped cleanly by SIGTERM/SIGINT), 1 the command failed (the
message says why; nothing half-made is left by init), 2 usage error.
"""

from __future__ import annotations

import argparse
import enum
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Literal, Protocol, TextIO

import attrs
from rustynet.adapters.cli.crypto_option import add_crypto_policy_option

from rustynet.domain.errors import RustynetError

InitKeystore = Literal["auto", "file", "os"]


class ControlExit(enum.IntEnum):
    """Exit codes of `rustynet-control`."""

    OK = 0
    FAILED = 1
    USAGE = 2


@attrs.frozen
class InitRequest:
    """`rustynet-control init`."""

    data_dir: Path
    url: str
    listen: str | None
    database: str | None = attrs.field(default=None, repr=False)  # may hold a password
    keystore: InitKeystore = "auto"
    crypto_policy_override: Path | None = None


@attrs.frozen
class InitReport:
    """What init made, for the operator."""

    data_dir: Path
    url: str
    listen: str
    database: str
    spki_pin: str
    keystore: str
    created: tuple[Path, ...]
    admin_config: Path
    notes: tuple[str, ...] = ()


@attrs.frozen
class ServeRequest:
    """`rustynet-control serve`."""

    data_dir: Path
    database: str | None = attrs.field(default=None, repr=False)
    log_level: str = "info"
    log_json: bool = True
    crypto_policy_override: Path | None = None


@attrs.frozen
class ShowRequest:
    """`rustynet-control show`."""

    data_dir: Path
    crypto_policy_override: Path | None = None


@attrs.frozen
class ShowReport:
    """Public facts about a control plane (no secret)."""

    url: str
    listen: str
    spki_pin: str
    root_fingerprint: str
    relays: tuple[tuple[str, str, str], ...]  # (id, url, tls_spki_sha256)

    def to_json(self) -> dict[str, object]:
        """The `--json` document."""
        return {
            "url": self.url,
            "listen": self.listen,
            "tls_spki_pin": self.spki_pin,
            "root_fingerprint": self.root_fingerprint,
            "relays": [{"id": i, "url": u, "tls_spki_sha256": p} for i, u, p in self.relays],
        }


class ControlCommands(Protocol):
    """What the composition root provides."""

    def init(self, request: InitRequest) -> InitReport:
        """Create a data directory; raise a `RustynetError` (and leave nothing) on failure."""
        ...

    def serve(self, request: ServeRequest) -> int:
        """Run until SIGTERM/SIGINT; return the exit code."""
        ...

    def show(self, request: ShowRequest) -> ShowReport:
        """Read the data directory and key store; public values only."""
        ...


def build_parser() -> argparse.ArgumentParser:
    """The `rustynet-control` parser."""
    parser = argparse.ArgumentParser(
        prog="rustynet-control",
        description="Rustynet control plane. Exit codes: 0 ok, 1 failed, 2 usage.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    init = sub.add_parser(
        "init",
        help="create config, keys, TLS certificate, database and the first admin key",
        description="Create everything a first start needs in DIR. Refuses to run twice.",
    )
    init.add_argument("--data-dir", type=Path, required=True, metavar="DIR")
    init.add_argument(
        "--url", required=True, help="public URL nodes and admins use, https://HOST:PORT"
    )
    init.add_argument("--listen", metavar="ADDR:PORT", help="bind address (default 0.0.0.0:PORT)")
    init.add_argument(
        "--database", metavar="URL", help="postgresql://... (default: SQLite DIR/control.db)"
    )
    init.add_argument(
        "--keystore",
        choices=("auto", "file", "os"),
        default="auto",
        help="auto: the OS key store when a real backend exists, else encrypted files",
    )
    add_crypto_policy_option(init)
    init.set_defaults(run=_run_init)
    serve = sub.add_parser("serve", help="run the control plane until SIGTERM")
    serve.add_argument("--data-dir", type=Path, required=True, metavar="DIR")
    serve.add_argument("--database", metavar="URL", help="override control.toml's database")
    serve.add_argument("--log-level", default="info", choices=("debug", "info", "warning"))
    serve.add_argument(
        "--log-format", choices=("json", "console"), default="json", help="log line format"
    )
    add_crypto_policy_option(serve)
    serve.set_defaults(run=_run_serve)
    show = sub.add_parser(
        "show",
        help="print URL, TLS pin, root fingerprint (for rustynet-relay init) and relays",
        description="Print the public facts other components need: URL, TLS SPKI pin, the "
        "root key fingerprint (rustynet-relay init --root-fingerprint) and the relays.",
    )
    show.add_argument("--data-dir", type=Path, required=True, metavar="DIR")
    show.add_argument("--json", action="store_true", help="print JSON")
    add_crypto_policy_option(show)
    show.set_defaults(run=_run_show)
    return parser


def render_show(report: ShowReport) -> str:
    """Human output of `show`, with the relay init line ready to fill in."""
    lines = [
        f"url               {report.url}",
        f"listen            {report.listen}",
        f"TLS pin           {report.spki_pin}",
        f"root fingerprint  {report.root_fingerprint}",
    ]
    lines += [f"relay             {i} {u} {p}" for i, u, p in report.relays] or [
        "relays            none"
    ]
    lines += [
        "a relay for this control plane:",
        "  rustynet-relay init --config relay.toml --url wss://HOST:PORT/v1/relay "
        f"--control-url {report.url} --root-fingerprint {report.root_fingerprint}",
    ]
    return "\n".join(lines) + "\n"


def _run_show(commands: ControlCommands, ns: argparse.Namespace, out: TextIO) -> int:
    report = commands.show(
        ShowRequest(data_dir=ns.data_dir, crypto_policy_override=ns.crypto_policy_override)
    )
    if ns.json:
        out.write(json.dumps(report.to_json(), indent=2) + "\n")
    else:
        out.write(render_show(report))
    return int(ControlExit.OK)


def render_init(report: InitReport) -> str:
    """Human summary of init: files, pin, and what the key store protects."""
    lines = [f"initialised {report.data_dir}", f"  url        {report.url}"]
    lines += [f"  listen     {report.listen}", f"  database   {report.database}"]
    lines += [f"  key store  {report.keystore}", f"  TLS pin    {report.spki_pin}", "created:"]
    lines += [f"  {p}" for p in report.created]
    lines += [f"notes:\n  - {n}" if i == 0 else f"  - {n}" for i, n in enumerate(report.notes)]
    lines += [
        "next:",
        f"  rustynet-control serve --data-dir {report.data_dir}",
        f"  rustynet admin --config {report.admin_config} keys create",
    ]
    return "\n".join(lines) + "\n"


def _run_init(commands: ControlCommands, ns: argparse.Namespace, out: TextIO) -> int:
    report = commands.init(
        InitRequest(
            data_dir=ns.data_dir,
            url=ns.url,
            listen=ns.listen,
            database=ns.database,
            keystore=ns.keystore,
            crypto_policy_override=ns.crypto_policy_override,
        )
    )
    out.write(render_init(report))
    return int(ControlExit.OK)


def _run_serve(commands: ControlCommands, ns: argparse.Namespace, _out: TextIO) -> int:
    return commands.serve(
        ServeRequest(
            data_dir=ns.data_dir,
            database=ns.database,
            log_level=ns.log_level,
            log_json=ns.log_format == "json",
            crypto_policy_override=ns.crypto_policy_override,
        )
    )


def main(
    argv: Sequence[str] | None,
    commands: ControlCommands,
    *,
    stdout: TextIO | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Parse `argv`, run the command, return the exit code."""
    out = sys.stdout if stdout is None else stdout
    err = sys.stderr if stderr is None else stderr
    try:
        ns = build_parser().parse_args(argv)
    except SystemExit as exc:  # argparse: 2 on usage errors, 0 on --help
        return int(exc.code) if isinstance(exc.code, int) else int(ControlExit.USAGE)
    try:
        return int(ns.run(commands, ns, out))
    except RustynetError as exc:
        err.write(f"rustynet-control {ns.command}: {exc}\n")
        return int(ControlExit.FAILED)
