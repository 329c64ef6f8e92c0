"""UDP endpoints for the NAT lab, run inside a namespace as a script (standard library only).

`tests/natlab.py` starts it as `python tests/natlab_udp.py COMMAND ...` under
`ip netns exec`; every result is one JSON object per line on stdout, flushed at once, so the
test can read a mapping and act on it while the process keeps its socket open.

    reflect PORT [PORT ...] [--knock IP:PORT]
        Answer every datagram on each PORT with the address it came from ("ip:port"). With
        `--knock`, first send one datagram from the first PORT to IP:PORT (an early "punch"
        packet from outside, before the inside host has a mapping). Prints {"ready": true}
        once bound; runs until killed.
    probe --port P --to IP:PORT [--to ...] [--listen SECONDS]
        From one socket bound to P, ask each reflector what it sees: one line
        {"to": "ip:port", "seen": "ip:port" | null} per destination (null: no answer). Then,
        with `--listen`, stay open SECONDS and print {"from": "ip:port", "data": "..."} for
        every datagram that arrives.
    send --port P --to IP:PORT [--count N]
        Send N datagrams from port P (fire and forget, 50 ms apart).
"""

from __future__ import annotations

import argparse
import json
import selectors
import socket
import sys
import time

_ATTEMPTS = 25
_ATTEMPT_TIMEOUT = 0.2


def _addr(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def _emit(**fields: object) -> None:
    sys.stdout.write(json.dumps(fields) + "\n")
    sys.stdout.flush()


def _bound(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("0.0.0.0", port))
    return sock


def reflect(ports: list[int], knock: str | None) -> None:
    """Serve every port forever, answering each datagram with its source address."""
    sel = selectors.DefaultSelector()
    socks = [_bound(port) for port in ports]
    for sock in socks:
        sel.register(sock, selectors.EVENT_READ, data=sock)
    if knock is not None:
        socks[0].sendto(b"knock", _addr(knock))
    _emit(ready=True)
    while True:
        for key, _ in sel.select():
            server: socket.socket = key.data
            _, (ip, port) = server.recvfrom(2048)
            server.sendto(f"{ip}:{port}".encode(), (ip, port))


def probe(port: int, targets: list[str], listen: float) -> None:
    """Ask each reflector for the mapping, then report whatever else arrives for `listen` s."""
    sock = _bound(port)
    sock.settimeout(_ATTEMPT_TIMEOUT)
    for target in targets:
        dest, seen = _addr(target), None
        for _ in range(_ATTEMPTS):
            sock.sendto(b"probe", dest)
            try:
                data, source = sock.recvfrom(2048)
            except TimeoutError:
                continue
            if source == dest:
                seen = data.decode()
                break
        _emit(to=target, seen=seen)
    deadline = time.monotonic() + listen
    while (left := deadline - time.monotonic()) > 0:
        sock.settimeout(left)
        try:
            data, (ip, src_port) = sock.recvfrom(2048)
        except TimeoutError:
            break
        _emit(**{"from": f"{ip}:{src_port}", "data": data.decode(errors="replace")})


def send(port: int, target: str, count: int) -> None:
    """Fire `count` datagrams at `target` from `port`."""
    sock = _bound(port)
    for _ in range(count):
        sock.sendto(b"unsolicited", _addr(target))
        time.sleep(0.05)


def main(argv: list[str]) -> None:
    """Parse the command line and run one command."""
    parser = argparse.ArgumentParser(prog="natlab_udp")
    sub = parser.add_subparsers(dest="command", required=True)
    p_reflect = sub.add_parser("reflect")
    p_reflect.add_argument("ports", type=int, nargs="+")
    p_reflect.add_argument("--knock")
    p_probe = sub.add_parser("probe")
    p_probe.add_argument("--port", type=int, required=True)
    p_probe.add_argument("--to", action="append", default=[])
    p_probe.add_argument("--listen", type=float, default=0.0)
    p_send = sub.add_parser("send")
    p_send.add_argument("--port", type=int, required=True)
    p_send.add_argument("--to", required=True)
    p_send.add_argument("--count", type=int, default=3)
    args = parser.parse_args(argv)
    if args.command == "reflect":
        reflect(args.ports, args.knock)
    elif args.command == "probe":
        probe(args.port, args.to, args.listen)
    else:
        send(args.port, args.to, args.count)


if __name__ == "__main__":
    main(sys.argv[1:])
