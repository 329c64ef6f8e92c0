"""Config values every config adapter parses and renders the same way.

The control plane's `control.toml`/`admin.toml`/`rustynetd.toml` (`rustynet.adapters.config`)
and the relay's `relay.toml` (`rustynet.adapters.relay.config`) both hold a listen address and
the control plane's URL, and both write TOML back out: one parser and one renderer per value,
so the two files cannot drift apart (they had: the relay's control URL parser reported a bad
port with Python's own message and checked the path in another order).
"""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path
from urllib.parse import urlsplit


def parse_listen(text: str) -> tuple[str, int]:
    """`ADDR:PORT` or `[V6]:PORT` → (address, port); ValueError names what is wrong."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ValueError("expected ADDR:PORT (IPv6 as [ADDR]:PORT)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    ipaddress.ip_address(host)  # listen on an address, not a name
    port = int(port_text)
    if not 0 < port < 65536:
        raise ValueError("port must be 1-65535")
    return host, port


def render_listen(host: str, port: int) -> str:
    """The `ADDR:PORT` text of a listen address (`[V6]:PORT` for IPv6)."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def parse_control_url(text: str) -> str:
    """An `https://HOST[:PORT]` URL without path, query or user info (the issuer tokens carry)."""
    parts = urlsplit(text)
    if parts.scheme != "https" or not parts.hostname:
        raise ValueError("expected https://HOST[:PORT]")
    if parts.path not in ("", "/") or parts.query or parts.fragment or parts.username:
        raise ValueError("the control URL has no path, query or user part")
    try:
        _ = parts.port
    except ValueError as exc:
        raise ValueError(f"bad port: {exc}") from None
    return f"https://{parts.netloc}"


def toml_string(text: str) -> str:
    """`text` as a TOML basic string."""
    # JSON string escapes are valid TOML basic-string escapes for everything json.dumps emits.
    return json.dumps(text, ensure_ascii=True)


def relative_path(path: Path, base: Path) -> str:
    """`path` relative to `base` when it lies under it, else as given (for rendered configs)."""
    try:
        return str(path.relative_to(base))
    except ValueError:
        return str(path)
