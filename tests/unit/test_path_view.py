"""The path vocabulary (`domain.path.view`): `PathView`'s text and JSON forms, the combinations
it refuses, the endpoint kinds (`domain.candidates.endpoint_kind`) and the CLI's rendering."""

from __future__ import annotations

import pytest
from rustynet.adapters.cli.node import path_text, render_peers

from rustynet.domain.candidates import Candidate, CandidateKind, EndpointKind, endpoint_kind
from rustynet.domain.errors import DecodeError
from rustynet.domain.path import WORDS, PathView, path_view
from rustynet.domain.tunnel import UnderlayEndpoint

EP = UnderlayEndpoint.parse("203.0.113.7:41641")
V6 = UnderlayEndpoint.parse("[2001:db8::7]:41641")


def _c(text: str, kind: CandidateKind) -> Candidate:
    return Candidate(UnderlayEndpoint.parse(text), kind)


@pytest.mark.parametrize(
    ("view", "text", "doc"),
    [
        (PathView("trying"), "trying", {"path": "trying"}),
        (PathView("none"), "none", {"path": "none"}),
        (PathView("direct"), "direct", {"path": "direct"}),
        (
            PathView("direct", EP, EndpointKind.REFLEXIVE),
            "direct 203.0.113.7:41641 (reflexive)",
            {"path": "direct", "endpoint": "203.0.113.7:41641", "endpoint_kind": "reflexive"},
        ),
        (
            PathView("direct", V6, EndpointKind.IPV6),
            "direct [2001:db8::7]:41641 (ipv6)",
            {"path": "direct", "endpoint": "[2001:db8::7]:41641", "endpoint_kind": "ipv6"},
        ),
        (
            PathView("relay", relay_id="relay-1"),
            "relay relay-1",
            {"path": "relay", "relay": "relay-1"},
        ),
        (
            PathView("relay", relay_id="relay-1", transport="udp"),
            "relay relay-1 (udp)",
            {"path": "relay", "relay": "relay-1", "relay_transport": "udp"},
        ),
        (
            PathView("relay", relay_id="relay-1", transport="wss"),
            "relay relay-1 (wss)",
            {"path": "relay", "relay": "relay-1", "relay_transport": "wss"},
        ),
    ],
)
def test_text_and_json_forms(view: PathView, text: str, doc: dict[str, str]) -> None:
    """Each view's text form, its JSON form (absent fields are null) and the round trip."""
    full = {
        "path": None,
        "endpoint": None,
        "endpoint_kind": None,
        "relay": None,
        "relay_transport": None,
    } | doc
    assert view.text() == text
    assert view.to_json() == full
    assert PathView.from_json(view.to_json()) == view
    assert path_text(dict(view.to_json())) == text


def test_the_words_are_the_four() -> None:
    assert set(WORDS) == {"trying", "direct", "relay", "none"}


@pytest.mark.parametrize(
    "make",
    [
        lambda: PathView("bogus"),  # type: ignore[arg-type]
        lambda: PathView("relay", EP, EndpointKind.LOCAL),
        lambda: PathView("trying", EP, EndpointKind.LOCAL),
        lambda: PathView("direct", EP, None),
        lambda: PathView("direct", None, EndpointKind.LOCAL),
        lambda: PathView("direct", relay_id="relay-1"),
        lambda: PathView("none", relay_id="relay-1"),
        lambda: PathView("direct", EP, EndpointKind.LOCAL, transport="udp"),
        lambda: PathView("relay", relay_id="relay-1", transport="tcp"),  # type: ignore[arg-type]
    ],
)
def test_impossible_views_are_refused(make: object) -> None:
    """An endpoint only on direct, a relay only on relay, an endpoint only with its kind."""
    with pytest.raises(DecodeError):
        make()  # type: ignore[operator]


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"path": "sideways"},
        {"path": "direct", "endpoint": "203.0.113.7:41641", "endpoint_kind": "psychic"},
        {"path": "direct", "endpoint": 5, "endpoint_kind": "local"},
        {"path": "relay", "relay": 7},
    ],
)
def test_malformed_json_is_refused_and_the_cli_falls_back_to_the_word(
    doc: dict[str, object],
) -> None:
    with pytest.raises(DecodeError):
        PathView.from_json(doc)
    assert path_text(doc) == str(doc.get("path"))


def test_candidate_kinds_are_endpoint_kinds() -> None:
    """One vocabulary: every candidate kind is an endpoint kind with the same word."""
    assert {k.value for k in CandidateKind} < {k.value for k in EndpointKind}
    assert {k.value for k in EndpointKind} - {k.value for k in CandidateKind} == {
        "ipv6",
        "peer-observed",
    }


def test_endpoint_kind_rules() -> None:
    """A candidate's own kind; `ipv6` for a local or reflexive IPv6 one (configured stays
    configured); `peer-observed` for an endpoint the peer never listed."""
    candidates = (
        _c("203.0.113.7:41641", CandidateKind.REFLEXIVE),
        _c("198.51.100.5:41641", CandidateKind.LOCAL),
        _c("[2001:db8::7]:41641", CandidateKind.LOCAL),
        _c("[2001:db8::9]:41641", CandidateKind.CONFIGURED),
        _c("198.51.100.6:41641", CandidateKind.CONFIGURED),
    )
    kind = {c.endpoint.to_text(): endpoint_kind(c.endpoint, candidates) for c in candidates}
    assert kind == {
        "203.0.113.7:41641": EndpointKind.REFLEXIVE,
        "198.51.100.5:41641": EndpointKind.LOCAL,
        "[2001:db8::7]:41641": EndpointKind.IPV6,
        "[2001:db8::9]:41641": EndpointKind.CONFIGURED,
        "198.51.100.6:41641": EndpointKind.CONFIGURED,
    }
    roamed = UnderlayEndpoint.parse("203.0.113.8:50000")
    assert endpoint_kind(roamed, candidates) is EndpointKind.PEER_OBSERVED


def test_path_view_names_the_endpoint_only_on_direct_and_the_relay_only_on_relay() -> None:
    cands = (_c("203.0.113.7:41641", CandidateKind.REFLEXIVE),)
    assert path_view("direct", EP, cands).text() == "direct 203.0.113.7:41641 (reflexive)"
    assert path_view("direct", None, cands).text() == "direct"
    assert path_view("relay", EP, cands, "relay-1").text() == "relay relay-1"
    assert path_view("relay").text() == "relay"
    assert path_view("trying", EP, cands, "relay-1").text() == "trying"
    assert path_view("none", EP, cands, "relay-1").text() == "none"


def test_status_table_shows_the_text_form() -> None:
    peer: dict[str, object] = {
        "name": "b",
        "overlay_ip": "100.64.0.2",
        "rx_bytes": 1,
        "tx_bytes": 2,
    }
    peer |= PathView("relay", relay_id="relay-1").to_json()
    assert "relay relay-1" in render_peers([peer]).splitlines()[1]
