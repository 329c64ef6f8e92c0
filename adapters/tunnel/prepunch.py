"""Pre-punch datagrams (and UDP relay binds) from the tunnel's UDP port while wireguard-go owns
it (`PrePunchPort`).

wireguard-go holds the tunnel's socket and sends only WireGuard messages, so the datagram is
written through a raw socket (`SOCK_RAW`, `IPPROTO_UDP`: we write the UDP header, the kernel the
IP header) with the tunnel's port as its source. It leaves the host exactly like tunnel traffic
to that peer: the same 5-tuple, hence the same conntrack entry and the same NAT mapping that the
tunnel's own handshake uses next (no second flow that could clash with the tunnel's, unlike a
socket on another port rewritten by SNAT). The payload is a fixed marker whose first byte is no
WireGuard message type, so the peer's tunnel drops it unread. Needs CAP_NET_RAW (rustynetd's
unit grants it); without it every send fails and is counted, never raised.

The raw socket is opened per call and closed at once: a raw UDP socket receives a copy of every
UDP datagram the host gets, which nothing here reads.
"""

from __future__ import annotations

import socket
import struct
from typing import Final

import structlog

from rustynet.domain.tunnel import UnderlayEndpoint

MARKER: Final = b"rnpunch1"
"""The payload: `r` (0x72) is no WireGuard message type (1..4), so the peer's tunnel drops it."""

_UDP_HEADER: Final = struct.Struct("!HHHH")
_IPV6_CHECKSUM_OFFSET: Final = 6  # the UDP checksum's offset: the kernel fills it in

_log = structlog.get_logger(__name__)


def datagram(source_port: int, target: UnderlayEndpoint, payload: bytes = MARKER) -> bytes:
    """The UDP header and payload (the marker: a pre-punch) for one datagram (IPv4 checksum 0:
    none; IPv6: the kernel's)."""
    return _UDP_HEADER.pack(source_port, target.port, _UDP_HEADER.size + len(payload), 0) + payload


class RawPrePunch:
    """Pre-punches from `port` (the tunnel's fixed underlay port)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.sent = 0
        self.failed = 0

    async def punch(self, targets: tuple[UnderlayEndpoint, ...], count: int) -> int:
        """`count` datagrams to each target (each a non-blocking sendto, no await needed)."""
        sent = 0
        for family in (socket.AF_INET, socket.AF_INET6):
            mine = [t for t in targets if (t.address.version == 4) == (family == socket.AF_INET)]
            if mine and count > 0:
                sent += self._send(family, mine, count)
        self.sent += sent
        return sent

    async def send(self, target: UnderlayEndpoint, payload: bytes) -> bool:
        """One datagram carrying `payload` (a relay bind) to `target`."""
        family = socket.AF_INET if target.address.version == 4 else socket.AF_INET6
        sent = self._send(family, [target], 1, payload) == 1
        self.sent += sent
        return sent

    def _send(
        self,
        family: socket.AddressFamily,
        targets: list[UnderlayEndpoint],
        count: int,
        payload: bytes = MARKER,
    ) -> int:
        sent = 0
        try:
            sock = socket.socket(family, socket.SOCK_RAW, socket.IPPROTO_UDP)
        except OSError as exc:
            self.failed += len(targets) * count
            _log.info("punch.unavailable", error=str(exc)[:200])
            return 0
        with sock:
            sock.setblocking(False)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_CHECKSUM, _IPV6_CHECKSUM_OFFSET)
            for target in targets:
                packet = datagram(self.port, target, payload)
                for _ in range(count):
                    try:
                        sock.sendto(packet, (str(target.address), 0))
                    except OSError as exc:
                        self.failed += 1
                        _log.debug("punch.failed", to=target.to_text(), error=str(exc)[:200])
                    else:
                        sent += 1
        return sent


__all__ = ["MARKER", "RawPrePunch", "datagram"]
