"""The node's STUN probe: one Binding request from a given local socket, one answer or None.

The one rule: only a success response to our transaction id, from the exact address we sent
that request to, is believed (`rustynet.domain.stun.accept_binding_response` checks the message,
this module the source); every other datagram on the socket — a forged or stale response, a
request, noise — is ignored, counted in `ProbeCounters`, and the probe keeps waiting until
its deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Sequence

import attrs
import structlog

from rustynet.domain.entropy import Entropy
from rustynet.domain.nat import StunObservation
from rustynet.domain.stun import BindingResult, StunError, accept_binding_response, binding_request
from rustynet.domain.tunnel import UnderlayEndpoint

_log = structlog.get_logger(__name__)
_MAX_DATAGRAM = 2048


@attrs.define
class ProbeCounters:
    """Datagrams a probe ignored, by reason (shared across probes by the caller)."""

    wrong_source: int = 0
    wrong_transaction: int = 0
    malformed: int = 0


def _same_address(a: tuple[str | int, ...], b: tuple[str, int]) -> bool:
    try:
        ip_a = ipaddress.ip_address(str(a[0]).split("%", 1)[0])
        ip_b = ipaddress.ip_address(b[0])
    except ValueError:
        return False
    if isinstance(ip_a, ipaddress.IPv6Address) and ip_a.ipv4_mapped is not None:
        ip_a = ip_a.ipv4_mapped
    return ip_a == ip_b and int(a[1]) == b[1]


def _resolve(server: tuple[str, int], family: int) -> tuple[str, int]:
    ip = ipaddress.ip_address(server[0])  # servers are IP literals (peer map, config)
    if family == socket.AF_INET6 and ip.version == 4:
        return (f"::ffff:{ip}", server[1])
    return (str(ip), server[1])


async def probe(
    sock: socket.socket,
    server: tuple[str, int],
    entropy: Entropy,
    timeout: float,
    counters: ProbeCounters | None = None,
) -> BindingResult | None:
    """Send one Binding request from `sock` (a bound, non-blocking UDP socket) to `server`
    (IP literal, port) and wait up to `timeout` seconds for its answer; None on timeout."""
    return (await probe_all(sock, [server], entropy, timeout, counters))[0]


async def probe_all(
    sock: socket.socket,
    servers: Sequence[tuple[str, int]],
    entropy: Entropy,
    timeout: float,
    counters: ProbeCounters | None = None,
    *,
    rtts: list[float | None] | None = None,
) -> list[BindingResult | None]:
    """One Binding request from `sock` to each of `servers` at once, then one receive loop
    until every server answered or `timeout` seconds passed; answers in `servers` order (None:
    no valid answer). One socket, so every server sees the same local port. `rtts`, when
    given, is filled with each server's round trip in seconds (None: no valid answer)."""
    counters = counters if counters is not None else ProbeCounters()
    loop = asyncio.get_running_loop()
    sock.setblocking(False)
    pending: dict[tuple[str, int], bytes] = {}
    sent: dict[tuple[str, int], float] = {}
    for server in servers:
        transaction_id, request = binding_request(entropy)
        key = (str(ipaddress.ip_address(server[0])), server[1])
        pending[key] = transaction_id
        await loop.sock_sendto(sock, request, _resolve(server, sock.family))
        sent[key] = loop.time()
    results: dict[tuple[str, int], BindingResult] = {}
    deadline = loop.time() + timeout
    while len(results) < len(pending) and (left := deadline - loop.time()) > 0:
        try:
            data, addr = await asyncio.wait_for(loop.sock_recvfrom(sock, _MAX_DATAGRAM), left)
        except TimeoutError:
            break
        source = next((k for k in pending if _same_address(addr, k)), None)
        if source is None or source in results:
            counters.wrong_source += 1
            continue
        server = source
        try:
            results[server] = accept_binding_response(data, pending[server])
            sent[server] = loop.time() - sent[server]  # from now on: the round trip
        except StunError as exc:
            if "transaction id" in str(exc):
                counters.wrong_transaction += 1
            else:
                counters.malformed += 1
            _log.debug("stun.response_ignored", server=f"{server[0]}:{server[1]}", reason=str(exc))
    keys = [(str(ipaddress.ip_address(s[0])), s[1]) for s in servers]
    if rtts is not None:
        rtts[:] = [sent[k] if k in results else None for k in keys]
    return [results.get(k) for k in keys]


async def observe_all(
    sock: socket.socket,
    servers: Sequence[UnderlayEndpoint],
    entropy: Entropy,
    timeout: float,
    counters: ProbeCounters | None = None,
) -> list[StunObservation]:
    """`probe_all` as `NatProbe` observations: each server's mapped endpoint (an IPv4-mapped
    IPv6 answer as the IPv4 address) and round trip, in `servers` order."""
    rtts: list[float | None] = []
    targets = [(str(s.address), s.port) for s in servers]
    answers = await probe_all(sock, targets, entropy, timeout, counters, rtts=rtts)
    out = []
    for server, answer, rtt in zip(servers, answers, rtts, strict=True):
        if answer is None:
            out.append(StunObservation(server, None))
            continue
        address = answer.mapped[0]
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        out.append(StunObservation(server, UnderlayEndpoint(address, answer.mapped[1]), rtt))
    return out
