"""Console-script entry points: wire concrete adapters to use cases and hand them to the CLI.

The one rule: nothing runs at import time; each entry point builds what its command needs,
only when that command runs (so `rustynet doctor` never imports the network stack).
"""

from __future__ import annotations

import asyncio
import functools
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from rustynet.adapters.cli import admin as admin_cli
from rustynet.adapters.cli import main as cli
from rustynet.adapters.clock import SystemClock
from rustynet.adapters.keystore.files import read_private_path
from rustynet.application.doctor import DoctorReport, run_doctor
from rustynet.application.node.netcheck import NetcheckTargets, NetcheckTools, run_netcheck
from rustynet.bootstrap.crypto_policy import load_crypto_policy
from rustynet.bootstrap.keystores import KeystoreSettings, choose_keystore
from rustynet.bootstrap.process import disable_core_dumps
from rustynet.ports.control_api import AdminApi


class _Commands:
    """The `Commands` the CLI adapter calls; each method composes one use case."""

    def doctor(self, request: cli.DoctorRequest) -> DoctorReport:
        opts = request.keystore
        settings = KeystoreSettings(
            state_dir=opts.state_dir,
            kind="file" if opts.keystore == "file" else "os" if opts.keystore == "os" else "auto",
            passphrase_fd=opts.passphrase_fd,
            passphrase_file=opts.passphrase_file,
        )
        choice = choose_keystore(settings, environ=os.environ, interactive=sys.stdin.isatty())
        return run_doctor(
            now=SystemClock().now(),
            load_crypto_policy=functools.partial(
                load_crypto_policy, override_path=request.crypto_policy_override
            ),
            keystore=choice,
        )

    def netcheck(self, targets: NetcheckTargets) -> dict[str, object]:
        """Standalone `rustynet netcheck --stun ...`: from an ephemeral port of this host."""
        from rustynet.adapters.entropy import OsEntropy  # noqa: PLC0415 - netcheck only
        from rustynet.adapters.stun.nat_probe import SocketNatProbe, free_port  # noqa: PLC0415
        from rustynet.adapters.tcp_latency import TcpConnectLatency  # noqa: PLC0415
        from rustynet.adapters.tunnel.host_addresses import IpInterfaceAddresses  # noqa: PLC0415

        tools = NetcheckTools(
            SocketNatProbe(OsEntropy()), TcpConnectLatency(), IpInterfaceAddresses(), free_port
        )
        return asyncio.run(run_netcheck(tools, targets, free_port(), "ephemeral-port"))


class _AdminConnector:
    """`AdminConnector`: admin.toml → typed admin API over a pinned HTTPS client with the API
    key from its key file."""

    def admin_api(self, config: Path) -> AdminApi:
        from rustynet.adapters.config import load_admin_config  # noqa: PLC0415 - admin only
        from rustynet.adapters.control_admin_http import HttpAdminApi  # noqa: PLC0415
        from rustynet.adapters.control_client import ControlClient  # noqa: PLC0415

        settings = load_admin_config(config)
        try:
            raw = bytearray(read_private_path(settings.key_file, uid=os.geteuid()))
        except FileNotFoundError:
            raise admin_cli.UsageError(f"{settings.key_file}: API key file not found") from None
        except OSError as exc:
            raise admin_cli.UsageError(f"{settings.key_file}: cannot read: {exc}") from exc
        try:
            key = raw.strip()
            if not key.startswith(b"rnk_"):
                raise admin_cli.UsageError(f"{settings.key_file}: not an API key (rnk_...)")
            return HttpAdminApi(ControlClient(settings.url, settings.spki_pin, api_key=key))
        finally:
            raw[:] = bytes(len(raw))


def rustynet_main(argv: Sequence[str] | None = None) -> int:
    """`rustynet` console script."""
    disable_core_dumps()
    return cli.main(argv, _Commands(), admin=_AdminConnector())
