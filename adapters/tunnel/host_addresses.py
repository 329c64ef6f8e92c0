"""The node's interface addresses for candidate gathering (`ports.interfaces.InterfaceAddresses`),
read with ip(8) `-json address show`, and their changes (`InterfaceChanges`), watched with one
long-running `ip monitor address route`; not pyroute2 (see `links.py` for why)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Mapping

import structlog
from rustynet.adapters.tunnel.links import Links

from rustynet.domain.tunnel import IPAddress


class IpInterfaceAddresses:
    """Every interface's addresses in one network namespace (None: ours)."""

    def __init__(self, netns: str | None = None) -> None:
        self._links = Links(netns)

    async def addresses(self) -> Mapping[str, tuple[IPAddress, ...]]:
        """Interface name → its addresses (all families and scopes; the use case filters)."""
        return await self._links.all_addresses()


_log = structlog.get_logger(__name__)
RESTART_DELAY_S = 1.0


class IpMonitorChanges:
    """`InterfaceChanges` from `ip monitor address route` (in `netns`, None: ours): every line
    it prints is a change; a monitor that dies is restarted after `RESTART_DELAY_S`."""

    def __init__(self, netns: str | None = None) -> None:
        self._argv = ["ip", "monitor", "address", "route"]
        if netns is not None:
            self._argv = ["ip", "netns", "exec", netns, *self._argv]
        self._event = asyncio.Event()
        self._reader: asyncio.Task[None] | None = None

    async def changed(self) -> None:
        """Return at the next change (the caller debounces)."""
        if self._reader is None or self._reader.done():
            self._reader = asyncio.create_task(self._read(), name="ip-monitor")
        await self._event.wait()
        self._event.clear()

    async def close(self) -> None:
        """Stop the monitor process."""
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None

    async def _read(self) -> None:
        while True:
            proc = await asyncio.create_subprocess_exec(
                *self._argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                assert proc.stdout is not None
                while line := await proc.stdout.readline():
                    if line.strip():
                        self._event.set()
            finally:
                if proc.returncode is None:
                    proc.kill()
                    await proc.wait()
            _log.warning("interfaces.monitor_exited", code=proc.returncode)
            await asyncio.sleep(RESTART_DELAY_S)


__all__ = ["IpInterfaceAddresses", "IpMonitorChanges"]
