"""`rustynetd`'s console entry point: light on purpose, so start-up work overlaps.

The one rule: nothing here weakens or reorders a check. Core dumps go off first, the config and
the crypto policy are checked, the key store is opened (its permission checks and passphrase
read run as before), then the deliberately slow Argon2id unlock of the node's two keys runs in a
worker thread (cryptography releases the GIL) while this thread imports the daemon
(`rustynet.bootstrap.node`: aiohttp, the agent, the adapters...). Measured on a 2-core lab machine
(bench/bench_node.py): imports ~0.6 s and unlock ~0.4 s of a start that had them in sequence
(before pyroute2, ~0.1 s of it, left the userspace path).

The unlock ahead is `Keystore.get` of each key with the secret wiped at once: the file key store
keeps the derived file keys (as it does after the agent's own first read) until it is closed,
so the agent's reads that follow cost one AEAD decryption each. Any failure there is ignored:
the agent reads the same keys and reports the same errors as if nothing had run ahead. Only the
file key store gains from this; others are read ahead too, harmlessly.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Final

from rustynet.adapters.cli.crypto_option import add_crypto_policy_option
from rustynet.adapters.clock import SystemClock
from rustynet.adapters.config import NodeConfig, load_node_config
from rustynet.bootstrap.crypto_policy import load_crypto_policy
from rustynet.bootstrap.keystores import KeystoreSettings, build_keystore
from rustynet.bootstrap.process import disable_core_dumps
from rustynet.domain.errors import RustynetError
from rustynet.ports.keystore import Keystore

UNLOCK_AHEAD: Final = ("node.identity", "node.tunnel")
"""The keys an enrolled daemon reads at start (application/node/credentials.py's IDENTITY_KEY and
TUNNEL_KEY; a unit test keeps the two in step)."""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rustynetd",
        description="Rustynet node daemon: joins a mesh and keeps its tunnel in line with the "
        "signed peer map. Exit 0 after SIGTERM, 1 when it cannot start.",
    )
    parser.add_argument(
        "--config", type=Path, metavar="FILE", help="rustynetd.toml (default: built-in defaults)"
    )
    add_crypto_policy_option(parser)
    return parser


def unlock_ahead(keystore: Keystore, names: Sequence[str] = UNLOCK_AHEAD) -> None:
    """Read each key that exists once and wipe it (warms the store's derived-key cache)."""
    for name in names:
        try:
            if not keystore.exists(name):
                continue
            secret = keystore.get(name)
        except (RustynetError, OSError):
            return  # the agent's own read reports it
        secret[:] = bytes(len(secret))


def open_keystore(config: NodeConfig) -> Keystore:
    """The daemon's key store (state dir created 0700 first); never prompts."""
    config.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    return build_keystore(
        KeystoreSettings(
            state_dir=config.state_dir,
            kind=config.keystore,
            passphrase_file=config.passphrase_file,
        ),
        interactive=False,
    )


def rustynetd_main(argv: Sequence[str] | None = None) -> int:
    """`rustynetd` console script."""
    disable_core_dumps()
    ns = _parser().parse_args(argv)
    try:
        config = load_node_config(ns.config)
        load_crypto_policy(SystemClock().now(), ns.crypto_policy_override)
    except RustynetError as exc:
        sys.stderr.write(f"rustynetd: {exc}\n")
        return 1
    os.umask(0o077)
    try:
        keystore = open_keystore(config)
    except (RustynetError, OSError) as exc:
        sys.stderr.write(f"rustynetd: cannot start: {exc}\n")
        return 1
    handed_over = False
    try:
        unlock = threading.Thread(
            target=unlock_ahead, args=(keystore,), name="rustynetd-unlock", daemon=True
        )
        unlock.start()
        # While the unlock runs: the daemon's imports (the reason they are not at the top).
        # structlog imports `rich` whenever it is installed, for console tracebacks the daemon
        # never renders (its lines are JSON, exceptions formatted as plain text first); rich is
        # only a development dependency (import-linter, pip-audit), so a node installed from
        # the package has none. Keeping it out here makes a checkout run like a deployed node:
        # 4.7 MB less RSS and ~80 ms less start-up (VmRSS, `python -X importtime`).
        sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
        import asyncio  # noqa: PLC0415

        from rustynet.adapters.logging import configure_logging  # noqa: PLC0415
        from rustynet.bootstrap.node import run_daemon  # noqa: PLC0415

        configure_logging(config.log_level, json=True)
        unlock.join()
        handed_over = True
        try:
            # The stock loop, not uvloop: uvloop hands children a socketpair as stdin, which
            # `nft -f -` cannot open as /dev/stdin (ENXIO); a node has few connections anyway.
            with asyncio.Runner() as runner:
                return runner.run(run_daemon(config, ns.config, keystore))
        except (RustynetError, OSError) as exc:
            sys.stderr.write(f"rustynetd: cannot start: {exc}\n")
            return 1
    finally:
        if not handed_over:  # run_daemon closes the store it was given
            keystore.close()
