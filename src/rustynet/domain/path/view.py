"""The path vocabulary, defined once: what `rustynet status`, `status --json` and the daemon's
`path.changed` log say about the path a peer's tunnel uses.

The one rule: every place that shows a peer's path shows a `PathView`, in its text form
(`trying`, `direct 203.0.113.7:41641 (reflexive)`, `relay relay-1`, `none`) or its JSON form
(`{"path", "endpoint", "endpoint_kind", "relay", "relay_transport"}`). The word is the
controller's (`status.peer_status`); a `direct` view may name the endpoint in use and its
`candidates.EndpointKind`, a `relay` view the relay's id and its transport (`udp`: the relay's
UDP port, `wss`: its WebSocket session); nothing else carries any of these.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Final, Literal, get_args

import attrs

from rustynet.domain.candidates import Candidate, EndpointKind, endpoint_kind
from rustynet.domain.errors import DecodeError
from rustynet.domain.path.phases import StatusPath
from rustynet.domain.tunnel import UnderlayEndpoint

WORDS: tuple[StatusPath, ...] = get_args(StatusPath)

RelayTransport = Literal["udp", "wss"]
TRANSPORTS: Final[tuple[RelayTransport, ...]] = get_args(RelayTransport)


def _word(_: object, __: attrs.Attribute[StatusPath], value: object) -> None:
    _as_word(value)


@attrs.frozen
class PathView:
    """A peer's path as status and logs show it."""

    kind: StatusPath = attrs.field(validator=_word)
    endpoint: UnderlayEndpoint | None = None
    endpoint_kind: EndpointKind | None = None
    relay_id: str | None = None
    transport: RelayTransport | None = None
    """How a relayed peer's packets go: `udp` (the relay's UDP port) or `wss` (its WebSocket)."""

    def __attrs_post_init__(self) -> None:
        if self.kind != "direct" and (self.endpoint or self.endpoint_kind):
            raise DecodeError("only a direct path names an endpoint")
        if (self.endpoint is None) != (self.endpoint_kind is None):
            raise DecodeError("an endpoint and its kind go together")
        if self.kind != "relay" and (self.relay_id is not None or self.transport is not None):
            raise DecodeError("only a relay path names a relay and its transport")
        if self.transport not in (None, *TRANSPORTS):
            raise DecodeError(f"a relay transport is one of {', '.join(TRANSPORTS)}")

    def text(self) -> str:
        """`trying`, `direct 203.0.113.7:41641 (reflexive)`, `relay relay-1 (udp)`, `none`."""
        if self.endpoint is not None and self.endpoint_kind is not None:
            return f"{self.kind} {self.endpoint.to_text()} ({self.endpoint_kind.value})"
        words: list[str] = [self.kind]
        if self.relay_id is not None:
            words.append(self.relay_id)
        if self.transport is not None:
            words.append(f"({self.transport})")
        return " ".join(words)

    def to_json(self) -> dict[str, str | None]:
        """The `status --json` fields (`path` stays the bare word)."""
        return {
            "path": self.kind,
            "endpoint": None if self.endpoint is None else self.endpoint.to_text(),
            "endpoint_kind": None if self.endpoint_kind is None else self.endpoint_kind.value,
            "relay": self.relay_id,
            "relay_transport": self.transport,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> PathView:
        """Back from `to_json` (the CLI reading the daemon); raises `DecodeError`."""
        word, endpoint, kind, relay, transport = (
            doc.get(k) for k in ("path", "endpoint", "endpoint_kind", "relay", "relay_transport")
        )
        if not isinstance(relay, str | None) or not isinstance(endpoint, str | None):
            raise DecodeError("endpoint and relay are strings or null")
        known = next((t for t in TRANSPORTS if t == transport), None)
        if transport is not None and known is None:
            raise DecodeError(f"a relay transport is one of {', '.join(TRANSPORTS)}")
        try:
            found = None if kind is None else EndpointKind(kind)
        except ValueError:
            raise DecodeError("unknown endpoint kind") from None
        parsed = None if endpoint is None else UnderlayEndpoint.parse(endpoint)
        return cls(_as_word(word), parsed, found, relay, known)


def _as_word(word: object) -> StatusPath:
    """`word` as one of `WORDS` (typed), or `DecodeError`."""
    known = next((w for w in WORDS if w == word), None)
    if known is None:
        raise DecodeError(f"path is one of {', '.join(WORDS)}")
    return known


def path_view(
    word: StatusPath,
    endpoint: UnderlayEndpoint | None = None,
    candidates: Iterable[Candidate] = (),
    relay_id: str | None = None,
    transport: RelayTransport | None = None,
) -> PathView:
    """The view of a peer on path `word`: a `direct` one names the tunnel's current `endpoint`
    (when it has one) and its kind among the peer's `candidates`; a `relay` one the relay and
    how its packets go there (`transport`)."""
    if word == "direct" and endpoint is not None:
        return PathView(word, endpoint, endpoint_kind(endpoint, candidates))
    if word == "relay":
        return PathView(word, relay_id=relay_id, transport=transport)
    return PathView(word)


__all__ = ["TRANSPORTS", "WORDS", "PathView", "RelayTransport", "path_view"]
