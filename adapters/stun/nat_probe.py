"""A NatProbe (`rustynet.ports.interfaces.NatProbe`) from a plain UDP socket the probe binds itself.

The one rule: one socket per address family, bound to the asked local port (an ephemeral one
for None), sends one Binding request to every server at once and then reads answers until ONE
deadline for all of them, so a probe of N blocked servers takes `timeout`, not N x `timeout`.
An answer is believed only from the address its request went to and with its transaction id
(the same checks as `client.probe`); everything else is ignored and counted.

This socket is not the tunnel's: `rustynet netcheck` run without a daemon (and a daemon whose
tunnel-port probe is not wired) measures the port this probe bound, and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import time
from collections.abc import Sequence

from rustynet.adapters.stun.client import ProbeCounters, _resolve, _same_address

from rustynet.domain.entropy import Entropy
from rustynet.domain.nat import StunObservation
from rustynet.domain.stun import StunError, accept_binding_response, binding_request
from rustynet.domain.tunnel import UnderlayEndpoint

DEFAULT_TIMEOUT = 1.5
_MAX_DATAGRAM = 2048


def _bind(family: socket.AddressFamily, port: int) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        sock.bind(("::" if family == socket.AF_INET6 else "0.0.0.0", port))  # noqa: S104
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock


def free_port() -> int:
    """A UDP port free on both families right now (the standalone netcheck's local port)."""
    for _ in range(20):
        with _bind(socket.AF_INET, 0) as v4:
            port = int(v4.getsockname()[1])
            try:
                _bind(socket.AF_INET6, port).close()
            except OSError as exc:
                if exc.errno == errno.EAFNOSUPPORT:  # no IPv6 on this host: any v4 port is fine
                    return port
                continue
            return port
    raise OSError("no UDP port free on both IPv4 and IPv6")


class SocketNatProbe:
    """`NatProbe` from its own socket on the given port (None: an ephemeral one)."""

    def __init__(
        self,
        entropy: Entropy,
        timeout: float = DEFAULT_TIMEOUT,
        counters: ProbeCounters | None = None,
    ) -> None:
        self._entropy = entropy
        self._timeout = timeout
        self.counters = counters if counters is not None else ProbeCounters()

    async def observe(
        self, servers: Sequence[UnderlayEndpoint], port: int | None
    ) -> tuple[StunObservation, ...]:
        """One Binding request to each server from local UDP `port`, all at once."""
        local = free_port() if port is None else port
        results = await asyncio.gather(
            *(
                self._one_family(
                    family, [s for s in servers if s.address.version == version], local
                )
                for family, version in ((socket.AF_INET, 4), (socket.AF_INET6, 6))
                if any(s.address.version == version for s in servers)
            )
        )
        found = {k: v for result in results for k, v in result.items()}
        return tuple(found.get(s, StunObservation(s, None)) for s in servers)

    async def _one_family(
        self, family: socket.AddressFamily, servers: Sequence[UnderlayEndpoint], port: int
    ) -> dict[UnderlayEndpoint, StunObservation]:
        entropy, timeout, counters = self._entropy, self._timeout, self.counters
        loop = asyncio.get_running_loop()
        found: dict[UnderlayEndpoint, StunObservation] = {}
        try:
            sock = _bind(family, port)
        except OSError:
            return found  # this family unusable here: its servers stay unanswered
        with sock:
            pending: dict[UnderlayEndpoint, tuple[bytes, float]] = {}
            for each in servers:
                transaction_id, request = binding_request(entropy)
                with contextlib.suppress(OSError):  # unreachable network: unanswered
                    await loop.sock_sendto(
                        sock, request, _resolve((str(each.address), each.port), family)
                    )
                    pending[each] = (transaction_id, time.monotonic())
            deadline = loop.time() + timeout
            while pending and (left := deadline - loop.time()) > 0:
                try:
                    data, addr = await asyncio.wait_for(
                        loop.sock_recvfrom(sock, _MAX_DATAGRAM), left
                    )
                except (TimeoutError, OSError):
                    break
                server = next(
                    (s for s in pending if _same_address(addr, (str(s.address), s.port))), None
                )
                if server is None:
                    counters.wrong_source += 1
                    continue
                transaction_id, sent = pending[server]
                try:
                    result = accept_binding_response(data, transaction_id)
                except StunError as exc:
                    if "transaction id" in str(exc):
                        counters.wrong_transaction += 1
                    else:
                        counters.malformed += 1
                    continue
                del pending[server]
                ip, mapped_port = result.mapped
                mapped = UnderlayEndpoint(ipaddress.ip_address(ip), mapped_port)
                found[server] = StunObservation(server, mapped, time.monotonic() - sent)
        return found


__all__ = ["DEFAULT_TIMEOUT", "SocketNatProbe", "free_port"]
