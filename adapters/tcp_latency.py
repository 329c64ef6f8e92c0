"""TCP connect time to a host (`rustynet.ports.netcheck.ConnectLatency`), for `rustynet netcheck`.

The one rule: open a TCP connection, time the handshake, close it without sending a byte (no
TLS, no request: nothing to authenticate, nothing logged by the other side's application), all
under one deadline that covers the name lookup too.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from typing import Final

DEFAULT_TIMEOUT: Final = 1.5


class TcpConnectLatency:
    """Times `asyncio.open_connection` to a host and port."""

    def __init__(self, timeout: float = DEFAULT_TIMEOUT) -> None:
        self._timeout = timeout

    async def connect(self, host: str, port: int) -> float | None:
        """Seconds to open the connection (None: refused, unresolvable or too slow)."""
        start = time.monotonic()
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), self._timeout)
        except (OSError, TimeoutError):
            return None
        elapsed = time.monotonic() - start
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return elapsed


__all__ = ["DEFAULT_TIMEOUT", "TcpConnectLatency"]
