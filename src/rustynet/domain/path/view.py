"""The path vocabulary, defined once: what `rustynet status`, `status --json` and the daemon's
`path.changed` log say about the path a peer's tunnel uses.

The one rule: every place that shows a peer's path shows a `PathView`, in its text form
(`trying`, `direct 203.0.113.7:41641 (reflexive)`, `relay relay-1`, `none`) or its JSON form
(`{"path", "endpoint", "endpoint_kind", "relay"}`). The word is the controller's
(`status.peer_status`); a `direct` view may name the endpoint in use and its
`candidates.EndpointKind`, a `relay` view the relay's id; nothing else carries either.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import get_args

import attrs

from rustynet.domain.candidates import Candidate, EndpointKind, endpoint_kind
from rustynet.domain.errors import DecodeError
from rustynet.domain.path.phases import StatusPath
from rustynet.domain.tunnel import UnderlayEndpoint

WORDS: tuple[StatusPath, ...] = get_args(StatusPath)


def _word(_: object, __: attrs.Attribute[StatusPath], value: object) -> None:
    _as_word(value)


@attrs.frozen
class PathView:
    """A peer's path as status and logs show it."""

    kind: StatusPath = attrs.field(validator=_word)
    endpoint: UnderlayEndpoint | None = None
    endpoint_kind: EndpointKind | None = None
    relay_id: str | None = None

    def __attrs_post_init__(self) -> None:
        if self.kind != "direct" and (self.endpoint or self.endpoint_kind):
            raise DecodeError("only a direct path names an endpoint")
        if (self.endpoint is None) != (self.endpoint_kind is None):
            raise DecodeError("an endpoint and its kind go together")
        if self.kind != "relay" and self.relay_id is not None:
            raise DecodeError("only a relay path names a relay")

    def text(self) -> str:
        """`trying`, `direct 203.0.113.7:41641 (reflexive)`, `relay relay-1`, `none`."""
        if self.endpoint is not None and self.endpoint_kind is not None:
            return f"{self.kind} {self.endpoint.to_text()} ({self.endpoint_kind.value})"
        if self.relay_id is not None:
            return f"{self.kind} {self.relay_id}"
        return self.kind

    def to_json(self) -> dict[str, str | None]:
        """The `status --json` fields (`path` stays the bare word)."""
        return {
            "path": self.kind,
            "endpoint": None if self.endpoint is None else self.endpoint.to_text(),
            "endpoint_kind": None if self.endpoint_kind is None else self.endpoint_kind.value,
            "relay": self.relay_id,
        }

    @classmethod
    def from_json(cls, doc: Mapping[str, object]) -> PathView:
        """Back from `to_json` (the CLI reading the daemon); raises `DecodeError`."""
        word, endpoint, kind, relay = (
            doc.get(k) for k in ("path", "endpoint", "endpoint_kind", "relay")
        )
        if not isinstance(relay, str | None) or not isinstance(endpoint, str | None):
            raise DecodeError("endpoint and relay are strings or null")
        try:
            found = None if kind is None else EndpointKind(kind)
        except ValueError:
            raise DecodeError("unknown endpoint kind") from None
        parsed = None if endpoint is None else UnderlayEndpoint.parse(endpoint)
        return cls(_as_word(word), parsed, found, relay)


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
) -> PathView:
    """The view of a peer on path `word`: a `direct` one names the tunnel's current `endpoint`
    (when it has one) and its kind among the peer's `candidates`; a `relay` one the relay."""
    if word == "direct" and endpoint is not None:
        return PathView(word, endpoint, endpoint_kind(endpoint, candidates))
    if word == "relay":
        return PathView(word, relay_id=relay_id)
    return PathView(word)


__all__ = ["WORDS", "PathView", "path_view"]
