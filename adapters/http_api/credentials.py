"""The credentials a request carries, read without judging them (the use cases judge).

Missing or unusable credentials are passed on as empty strings, so the use case answers them
exactly like wrong ones (one 401, one rate-limit counter).
"""

from __future__ import annotations

from typing import Final

from aiohttp import web

from rustynet.application.control_types import AdminAuth, NodeAuth

NODE_HEADER: Final = "Rustynet-Node"


def client_ip(request: web.Request) -> str:
    """The peer address the per-IP limits key on."""
    return request.remote or "unknown"


def header(request: web.Request, name: str) -> str:
    """A credential header's text, or "" (answered like a missing one) unless printable ASCII.

    aiohttp decodes header bytes that are not UTF-8 to lone surrogates; those reached the
    SQL driver (UnicodeEncodeError, a 500). No credential of this API is anything but ASCII.
    """
    value = request.headers.get(name, "")
    return value if value.isascii() and value.isprintable() else ""


def bearer(request: web.Request) -> str:
    """The `Authorization: Bearer` credential, or ""."""
    scheme, _, credentials = header(request, "Authorization").partition(" ")
    return credentials.strip() if scheme.lower() == "bearer" else ""


def admin_auth(request: web.Request) -> AdminAuth:
    """What an admin request presents: its API key and address."""
    return AdminAuth(api_key=bearer(request), client_ip=client_ip(request))


def node_auth(request: web.Request) -> NodeAuth:
    """What a node request presents: node id, access token and address."""
    return NodeAuth(
        node_id=header(request, NODE_HEADER),
        access_token=bearer(request),
        client_ip=client_ip(request),
    )
