"""Authorization scope: the tags a credential may grant. Scopes only ever narrow.

A join token carries a scope; the authorization that enrollment issues must be a subset of
it, and certificates carry the scope of what the certified key may sign.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import attrs

from rustynet.domain.errors import DecodeError

_TAG = re.compile(r"tag:[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")


@attrs.frozen(order=True)
class Tag:
    """A policy tag such as `tag:server`."""

    value: str

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.value, str) or not _TAG.fullmatch(self.value):
            raise DecodeError(f"not a tag: {self.value!r} (expected tag:lowercase-name)")

    def __str__(self) -> str:
        return self.value


@attrs.frozen
class Scope:
    """A set of tags; `a <= b` means a grants nothing b does not."""

    tags: frozenset[Tag] = attrs.field(factory=frozenset)

    def __attrs_post_init__(self) -> None:
        if not isinstance(self.tags, frozenset) or not all(isinstance(t, Tag) for t in self.tags):
            raise DecodeError("a scope is a frozenset of Tag")

    @classmethod
    def of(cls, tags: Iterable[str]) -> Scope:
        """Parse tag strings."""
        return cls(frozenset(Tag(t) for t in tags))

    def issubset(self, other: Scope) -> bool:
        """True when this scope grants nothing `other` does not."""
        return self.tags <= other.tags

    def __le__(self, other: Scope) -> bool:
        return self.issubset(other)

    def as_strings(self) -> list[str]:
        """Sorted tag strings (stable for signing and storage)."""
        return sorted(t.value for t in self.tags)
