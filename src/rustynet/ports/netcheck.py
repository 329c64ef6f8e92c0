"""What `rustynet netcheck` times besides STUN: a TCP connect to the control plane's HTTPS port
and to each relay's WSS port (I/O, so a port; `adapters/tcp_latency.py` implements it)."""

from __future__ import annotations

from typing import Protocol


class ConnectLatency(Protocol):
    """How long a TCP connection to a host takes."""

    async def connect(self, host: str, port: int) -> float | None:
        """Seconds until a TCP connection to `host`:`port` opened (closed at once, nothing sent);
        None when it did not open before the adapter's deadline."""
        ...


__all__ = ["ConnectLatency"]
