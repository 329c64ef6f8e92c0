"""Direct-path probes: is the peer's underlay reachable over UDP while we use the relay?

The one rule: a probe answers only "did a fresh echo come back from that address", nothing
else; it carries no secret and changes no tunnel state. A forged echo can at worst make a node
try the direct path again (the tunnel's own handshake still decides whether data flows, and
the path controller returns to the relay when it does not), so probes are not authenticated.

Wire format (UDP, one datagram each way): `rnprobe1 ping <16 random bytes, hex>` answered by
`rnprobe1 pong <same hex>` from the probed address. The probe port is the node's tunnel
underlay port + 1 (`probe_port`), on the same addresses, so the same firewall holes serve both.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from typing import Final, cast

from rustynet.domain.tunnel import UnderlayEndpoint

MAGIC: Final = b"rnprobe1 "
PING: Final = MAGIC + b"ping "
PONG: Final = MAGIC + b"pong "
NONCE_HEX: Final = 32
DATAGRAM_SIZE: Final = len(PING) + NONCE_HEX


def probe_port(underlay_port: int) -> int:
    """The probe port that goes with a tunnel underlay port."""
    return underlay_port + 1 if underlay_port < 65535 else underlay_port - 1


class _Responder(asyncio.DatagramProtocol):
    def __init__(self, prober: DirectProber) -> None:
        self.prober = prober
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A datagram endpoint's transport (3.11's selector transport does not subclass
        # DatagramTransport, so no isinstance check).
        self.transport = cast("asyncio.DatagramTransport", transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if len(data) != DATAGRAM_SIZE or self.transport is None:
            return
        if data.startswith(PING):
            self.transport.sendto(PONG + data[len(PING) :], addr)
            self.prober.answered += 1
        elif data.startswith(PONG):
            waiter = self.prober.pending.pop(data[len(PONG) :], None)
            if waiter is not None and not waiter.done():
                waiter.set_result(str(addr[0]))


class DirectProber:
    """Answers probes on `port` and sends its own (one socket for both)."""

    def __init__(self, port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - the underlay
        self.port = port
        self.host = host
        self.pending: dict[bytes, asyncio.Future[str]] = {}
        self.answered = 0
        self._protocol: _Responder | None = None

    async def start(self) -> None:
        """Bind the probe socket."""
        loop = asyncio.get_running_loop()
        _, self._protocol = await loop.create_datagram_endpoint(
            lambda: _Responder(self), local_addr=(self.host, self.port)
        )

    async def probe(self, endpoint: UnderlayEndpoint, timeout: float = 1.0) -> bool:
        """Ping the probe port that goes with `endpoint`; True when the echo came back."""
        if self._protocol is None or self._protocol.transport is None:
            return False
        nonce = secrets.token_hex(NONCE_HEX // 2).encode("ascii")
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.pending[nonce] = waiter
        target = (str(endpoint.address), probe_port(endpoint.port))
        try:
            self._protocol.transport.sendto(PING + nonce, target)
            source = await asyncio.wait_for(waiter, timeout)
        except (TimeoutError, OSError):
            return False
        finally:
            self.pending.pop(nonce, None)
        return source == str(endpoint.address)

    def close(self) -> None:
        """Close the socket; pending probes fail."""
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()
        for waiter in self.pending.values():
            with contextlib.suppress(asyncio.InvalidStateError):
                waiter.cancel()
        self.pending.clear()
