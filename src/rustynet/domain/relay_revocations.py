"""The relay revocation feed: the signed document the control plane serves and relays follow.

The one rule: a relay acts on a revocation feed only when it verifies against the root the
relay pins (a signing certificate chaining to it, role `signing`, scope `revocation`, valid
now), is for this control plane (`issuer`) and carries a serial strictly above the last one the
relay applied; anything else raises `FeedRejected` and changes nothing, so a forged, replayed
or rolled-back feed cannot un-revoke a node or stall the watermark. A feed only ever adds
revocations: the worst a stale one can do is repeat what the relay already knows.

Payload (signed for `Purpose.REVOCATION` by the control plane's signing key, the key that also
signs peer maps and relay tokens):

    {"kind": "relay-revocations", "serial": N, "issuer": "https://ctl...",
     "issued_at": "...Z", "revoked": [{"node_id": "...", "revoked_at": "...Z"}, ...]}

`serial` is the audit index of the newest revocation the document lists (strictly increasing
across restarts and instances sharing one database). The list holds the nodes revoked within
`FEED_WINDOW` (the relay-token lifetime plus clock skew): a node revoked earlier holds no relay
token that has not expired, so the relay's token check already refuses it. `RevokedNodes` is
the relay's side: the ids it refuses, each until `revoked_at + FEED_WINDOW`, in a bounded table.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from typing import Final

import attrs

from rustynet.domain.errors import DecodeError, LocalProtocolError, RemoteProtocolError
from rustynet.domain.key_hierarchy import KeyRole, SigningKeyring, verify_certificate
from rustynet.domain.keys import KeyFingerprint, Purpose
from rustynet.domain.netmap import MAX_ISSUED_AHEAD, PeerMapTrust, format_time, parse_time
from rustynet.domain.signed import JsonObject, SignedEnvelope

FEED_KIND: Final = "relay-revocations"
FEED_WINDOW: Final = timedelta(seconds=180)  # relay-token lifetime (120 s) + 60 s of skew
MAX_FEED_ENTRIES: Final = 1024  # newest first; older ones fall back to token expiry
MAX_REVOKED_TRACKED: Final = 4096  # the relay's table
MAX_NODE_ID_CHARS: Final = 255
MAX_SIGNING_CERTIFICATES: Final = 8
_PAYLOAD_KEYS: Final = frozenset({"kind", "serial", "issuer", "issued_at", "revoked"})
_ENTRY_KEYS: Final = frozenset({"node_id", "revoked_at"})


class FeedRejected(RemoteProtocolError):  # noqa: N818 - named for the outcome
    """The feed must not be applied (nothing changed)."""


@attrs.frozen
class Revocation:
    """One revoked node and when control revoked it."""

    node_id: str
    revoked_at: datetime


@attrs.frozen
class RevocationFeed:
    """The feed document (see the module docstring)."""

    serial: int
    issuer: str
    issued_at: datetime
    revoked: tuple[Revocation, ...]

    def to_payload(self) -> JsonObject:
        """The signed payload."""
        return {
            "kind": FEED_KIND,
            "serial": self.serial,
            "issuer": self.issuer,
            "issued_at": format_time(self.issued_at),
            "revoked": [
                {"node_id": r.node_id, "revoked_at": format_time(r.revoked_at)}
                for r in self.revoked
            ],
        }

    @classmethod
    def from_payload(cls, payload: Mapping[str, object]) -> RevocationFeed:
        """Strict inverse of `to_payload`; anything else raises `FeedRejected`."""
        if set(payload) != _PAYLOAD_KEYS or payload["kind"] != FEED_KIND:
            raise FeedRejected("not a relay revocation feed")
        serial, issuer, entries = payload["serial"], payload["issuer"], payload["revoked"]
        if type(serial) is not int or serial < 0:
            raise FeedRejected("serial must be a non-negative integer")
        if not isinstance(issuer, str) or not issuer:
            raise FeedRejected("issuer must be a non-empty string")
        if not isinstance(entries, list) or len(entries) > MAX_FEED_ENTRIES:
            raise FeedRejected(f"revoked must be a list of at most {MAX_FEED_ENTRIES}")
        try:
            issued_at = parse_time(payload["issued_at"], "issued_at")
            revoked = tuple(_entry(e) for e in entries)
        except RemoteProtocolError as exc:
            raise FeedRejected(str(exc)) from None
        return cls(serial, issuer, issued_at, revoked)


def _entry(value: object) -> Revocation:
    if not isinstance(value, Mapping) or set(value) != _ENTRY_KEYS:
        raise FeedRejected(f"each revocation has exactly the fields {sorted(_ENTRY_KEYS)}")
    node_id = value["node_id"]
    if not isinstance(node_id, str) or not 0 < len(node_id) <= MAX_NODE_ID_CHARS:
        raise FeedRejected("node_id must be a non-empty string")
    return Revocation(node_id, parse_time(value["revoked_at"], "revoked_at"))


def feed_of(
    issuer: str, revocations: Iterable[tuple[int, Revocation]], now: datetime
) -> RevocationFeed:
    """The feed at `now` from (audit index, revocation) pairs: those within `FEED_WINDOW`,
    one per node (its latest), newest first, at most `MAX_FEED_ENTRIES`; the serial is the
    newest listed index (0 when none)."""
    latest: dict[str, tuple[int, Revocation]] = {}
    for index, revocation in revocations:
        if revocation.revoked_at + FEED_WINDOW <= now:
            continue
        seen = latest.get(revocation.node_id)
        if seen is None or seen[0] < index:
            latest[revocation.node_id] = (index, revocation)
    newest = sorted(latest.values(), key=lambda pair: pair[0], reverse=True)[:MAX_FEED_ENTRIES]
    serial = newest[0][0] if newest else 0
    return RevocationFeed(serial, issuer, now, tuple(r for _, r in newest))


def seal_revocation_feed(
    keyring: SigningKeyring, feed: RevocationFeed, now: datetime
) -> SignedEnvelope:
    """Sign the feed with the keyring's newest live signing key."""
    return keyring.seal(Purpose.REVOCATION, feed.to_payload(), now)


def accept_revocation_feed(
    envelope_text: str,
    root_certificate: str,
    signing_certificates: Sequence[str],
    *,
    root_fingerprint: KeyFingerprint,
    issuer: str,
    watermark: int,
    now: datetime,
) -> RevocationFeed:
    """Verify a delivered feed as a relay does; raises `FeedRejected` unless the root is the
    pinned one, the signer's certificate chains to it (role `signing`, scope `revocation`,
    valid now), the feed is for `issuer`, not issued in the future, with a serial above
    `watermark`."""
    if len(signing_certificates) > MAX_SIGNING_CERTIFICATES:
        raise FeedRejected("too many signing certificates")
    try:
        trust = PeerMapTrust.from_texts(
            root_certificate, root_fingerprint, signing_certificates, now
        )
        envelope = SignedEnvelope.from_text(envelope_text)
        cert = trust.certificate_for(envelope.key_id)
        verify_certificate(cert, trust.root, now)
        payload = envelope.open(cert.subject, Purpose.REVOCATION)
    except (RemoteProtocolError, DecodeError) as exc:
        raise FeedRejected(f"{type(exc).__name__}: {exc}") from None
    if cert.role is not KeyRole.SIGNING or Purpose.REVOCATION not in cert.scope:
        raise FeedRejected("the certificate does not cover revocations")
    feed = RevocationFeed.from_payload(payload)
    if feed.issuer != issuer:
        raise FeedRejected("the feed is another control plane's")
    if feed.issued_at > now + MAX_ISSUED_AHEAD:
        raise FeedRejected("the feed was issued in the future")
    if feed.serial <= watermark:
        raise FeedRejected(f"serial {feed.serial} is not above {watermark}")
    return feed


class RevokedNodes:
    """The relay's side: the feed watermark and the node ids it refuses, each until its
    `revoked_at + FEED_WINDOW`; never more than `max_tracked` of them (the soonest to lapse
    go first: their tokens are the nearest to expiry anyway)."""

    def __init__(self, max_tracked: int = MAX_REVOKED_TRACKED) -> None:
        if max_tracked < 1:
            raise LocalProtocolError("max_tracked must be positive")
        self.max_tracked = max_tracked
        self.watermark = 0
        self._until: dict[str, datetime] = {}

    def __len__(self) -> int:
        return len(self._until)

    def apply(self, feed: RevocationFeed, now: datetime) -> frozenset[str]:
        """Raise the watermark to the (accepted) feed's serial and add its revocations; the
        listed node ids still refused at `now` (the caller closes their sessions)."""
        if feed.serial <= self.watermark:
            raise LocalProtocolError("apply only a feed accepted above the watermark")
        self.watermark = feed.serial
        listed: set[str] = set()
        for revocation in feed.revoked:
            until = revocation.revoked_at + FEED_WINDOW
            if until <= now:
                continue
            listed.add(revocation.node_id)
            current = self._until.get(revocation.node_id)
            if current is None or current < until:
                self._until[revocation.node_id] = until
        self._prune(now)
        return frozenset(n for n in listed if n in self._until)

    def is_revoked(self, node_id: str, now: datetime) -> bool:
        """True while `node_id` is on the list."""
        until = self._until.get(node_id)
        return until is not None and now < until

    def _prune(self, now: datetime) -> None:
        for node_id in [n for n, until in self._until.items() if until <= now]:
            del self._until[node_id]
        if len(self._until) > self.max_tracked:
            keep = sorted(self._until.items(), key=lambda item: item[1])[-self.max_tracked :]
            self._until = dict(keep)
