"""The token wrapper: every claim is checked here, and every failure is one opaque InvalidToken.

Attack tokens are forged with pyseto directly (as an attacker would); only the code under
test is confined to the wrapper.
"""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pyseto
import pytest
from rustynet.adapters.entropy import OsEntropy

from rustynet.domain.errors import LocalProtocolError, RemoteProtocolError
from rustynet.domain.keys import KeyFingerprint, SigningKey, VerifyKey
from rustynet.domain.tokens import (
    InvalidToken,
    TokenClaims,
    TokenKind,
    _implicit_assertion,
    issue_token,
    key_allowlist,
    verify_token,
)

NOW = datetime(2026, 5, 1, 12, 0, 0, tzinfo=UTC)
ENTROPY = OsEntropy()
SIGNER = SigningKey.from_seed(bytes(range(32)))
OTHER_SIGNER = SigningKey.from_seed(bytes(range(1, 33)))
NODE = SigningKey.from_seed(bytes(range(2, 34))).public_key
OTHER_NODE = SigningKey.from_seed(bytes(range(3, 35))).public_key
ALLOW = key_allowlist([SIGNER.public_key])
ISSUER = "control.example"
AUDIENCE = {TokenKind.ACCESS: "control.example", TokenKind.RELAY: "relay-1"}
TIME_FMT = "%Y-%m-%dT%H:%M:%S+00:00"


def _issue(kind: TokenKind = TokenKind.ACCESS, **over: Any) -> str:
    args: dict[str, Any] = {
        "kind": kind,
        "issuer": ISSUER,
        "subject": "node-1",
        "audience": AUDIENCE.get(kind, "a"),
        "bound_identity": NODE,
        "now": NOW,
        "lifetime": timedelta(seconds=300 if kind is TokenKind.ACCESS else 120),
        "entropy": ENTROPY,
    }
    args.update(over)
    return issue_token(SIGNER, **args)


def _verify(token: object, kind: TokenKind = TokenKind.ACCESS, **over: Any) -> TokenClaims:
    args: dict[str, Any] = {
        "keys": ALLOW,
        "audience": AUDIENCE[kind],
        "issuer": ISSUER,
        "bound_identity": NODE,
        "now": NOW,
        "kind": kind,
    }
    args.update(over)
    return verify_token(token, **args)  # type: ignore[arg-type]  # garbage on purpose


def _claims(token_kind: TokenKind = TokenKind.ACCESS, **over: Any) -> dict[str, Any]:
    claims: dict[str, Any] = {
        "iss": ISSUER,
        "sub": "node-1",
        "aud": AUDIENCE[token_kind],
        "iat": NOW.strftime(TIME_FMT),
        "exp": (NOW + timedelta(seconds=60)).strftime(TIME_FMT),
        "jti": base64.urlsafe_b64encode(bytes(16)).rstrip(b"=").decode(),
        "kind": token_kind.value,
        "scope": token_kind.scope,
    }
    claims.update(over)
    return claims


def _forge(
    payload: dict[str, Any] | bytes,
    *,
    signer: SigningKey = SIGNER,
    footer: dict[str, Any] | bytes | None = None,
    implicit: bytes | None = None,
) -> str:
    """Sign arbitrary content with pyseto, the way an attacker holding a key would."""
    key = pyseto.Key.from_asymmetric_key_params(4, d=bytes(signer.export_seed()))
    if footer is None:
        footer = {"kid": signer.public_key.fingerprint().to_text()}
    if implicit is None:
        implicit = _implicit_assertion(TokenKind.ACCESS, NODE)
    body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
    foot = footer if isinstance(footer, bytes) else json.dumps(footer).encode()
    return bytes(pyseto.encode(key, body, foot, implicit)).decode()


def _rejected(token: object, kind: TokenKind = TokenKind.ACCESS, **over: Any) -> InvalidToken:
    with pytest.raises(InvalidToken) as info:
        _verify(token, kind, **over)
    assert str(info.value) == "invalid token"
    return info.value


# --- the accepted path ---------------------------------------------------------------------


@pytest.mark.parametrize("kind", list(TokenKind))
def test_issued_token_verifies_and_returns_its_claims(kind: TokenKind) -> None:
    """A token we issued verifies, and the claims say who, for whom, until when and by which key."""
    token = _issue(kind)
    claims = _verify(token, kind)
    assert claims.kind is kind
    assert (claims.issuer, claims.subject, claims.audience) == (ISSUER, "node-1", AUDIENCE[kind])
    assert claims.issued_at == NOW
    assert claims.expires_at == NOW + kind.max_lifetime
    assert claims.key_id == SIGNER.public_key.fingerprint()
    assert claims.scope == {TokenKind.ACCESS: "node", TokenKind.RELAY: "forward"}[kind]


def test_forged_helper_token_with_valid_claims_is_accepted() -> None:
    """Control for the forgeries: a correctly built token passes, so rejections mean something."""
    assert _verify(_forge(_claims())).subject == "node-1"


def test_token_ids_are_random_and_at_least_128_bits() -> None:
    """Each token gets a fresh jti of at least 16 random bytes."""
    ids = {_verify(_issue()).token_id for _ in range(20)}
    assert len(ids) == 20
    assert all(len(base64.urlsafe_b64decode(i + "==")) >= 16 for i in ids)


def test_footer_carries_the_signing_key_id() -> None:
    """The footer names the signing key's fingerprint, nothing else."""
    footer = _issue().split(".")[3]
    decoded = json.loads(base64.urlsafe_b64decode(footer + "=" * (-len(footer) % 4)))
    assert decoded == {"kid": SIGNER.public_key.fingerprint().to_text()}


def test_token_verifies_with_any_allowlisted_key() -> None:
    """A keyring allowlist with several keys accepts a token from any of them."""
    keys = key_allowlist([OTHER_SIGNER.public_key, SIGNER.public_key])
    assert _verify(_issue(), keys=keys).subject == "node-1"


def test_token_valid_until_one_second_before_exp() -> None:
    """The last accepted instant is one second before exp."""
    assert _verify(_issue(), now=NOW + timedelta(seconds=299)).subject == "node-1"


def test_iat_exactly_90_seconds_ahead_is_accepted() -> None:
    """Clock skew up to 90 s is tolerated."""
    future = NOW + timedelta(seconds=90)
    token = _forge(
        _claims(
            iat=future.strftime(TIME_FMT),
            exp=(future + timedelta(seconds=60)).strftime(TIME_FMT),
        )
    )
    assert _verify(token).issued_at == future


@pytest.mark.parametrize(("kind", "seconds"), [(TokenKind.ACCESS, 300), (TokenKind.RELAY, 120)])
def test_lifetime_at_the_cap_is_accepted(kind: TokenKind, seconds: int) -> None:
    """Exactly the cap (300 s access, 120 s relay) is allowed."""
    token = _forge(
        _claims(kind, exp=(NOW + timedelta(seconds=seconds)).strftime(TIME_FMT)),
        implicit=_implicit_assertion(kind, NODE),
    )
    assert _verify(token, kind).expires_at - NOW == timedelta(seconds=seconds)


# --- every failure mode: one opaque error --------------------------------------------------


@pytest.mark.parametrize("claim", ["iss", "sub", "aud", "exp", "iat", "jti", "kind", "scope"])
def test_token_missing_a_required_claim_is_rejected(claim: str) -> None:
    """Each required claim is required: pyseto would accept a token without exp."""
    claims = _claims()
    del claims[claim]
    assert "missing" in _rejected(_forge(claims)).reason


@pytest.mark.parametrize("claim", ["iss", "sub", "aud", "exp", "iat", "jti", "kind", "scope"])
@pytest.mark.parametrize("value", [1, None, ["x"], {"a": "b"}, "", True, 1.5])
def test_claim_of_the_wrong_type_is_rejected(claim: str, value: object) -> None:
    """Numbers, nulls, lists, objects, empty strings and booleans are not valid claim values."""
    over: dict[str, Any] = {claim: value}
    _rejected(_forge(_claims(**over)))


def test_epoch_number_exp_is_rejected() -> None:
    """exp must be the PASETO ISO 8601 form, not a number."""
    _rejected(_forge(_claims(exp=int((NOW + timedelta(seconds=60)).timestamp()))))


@pytest.mark.parametrize(
    "stamp",
    [
        "2026-05-01T12:01:00Z",
        "2026-05-01T12:01:00.5+00:00",
        "2026-05-01T14:01:00+02:00",
        "2026-05-01 12:01:00+00:00",
        "2026-02-30T12:01:00+00:00",
        "2026-05-01T12:01:00",
    ],
)
def test_nonstandard_or_invalid_exp_timestamp_is_rejected(stamp: str) -> None:
    """Only the UTC form the issuer writes is accepted, and the date must exist."""
    _rejected(_forge(_claims(exp=stamp)))


def test_unknown_extra_claim_is_rejected() -> None:
    """Claims outside the fixed set (e.g. nbf) are not silently ignored."""
    assert "unexpected" in _rejected(_forge(_claims(nbf=NOW.strftime(TIME_FMT)))).reason


def test_expired_token_is_rejected() -> None:
    """At exp and after, the token is dead (pyseto would accept it without a deserializer)."""
    token = _issue()
    _rejected(token, now=NOW + timedelta(seconds=300))
    _rejected(token, now=NOW + timedelta(days=1))


@pytest.mark.parametrize(("kind", "seconds"), [(TokenKind.ACCESS, 301), (TokenKind.RELAY, 121)])
def test_lifetime_above_the_cap_is_rejected(kind: TokenKind, seconds: int) -> None:
    """A signed token with exp - iat of 301 s (access) or 121 s (relay) is refused."""
    token = _forge(
        _claims(kind, exp=(NOW + timedelta(seconds=seconds)).strftime(TIME_FMT)),
        implicit=_implicit_assertion(kind, NODE),
    )
    assert "lifetime" in _rejected(token, kind).reason


def test_exp_before_iat_is_rejected() -> None:
    """A token whose exp precedes its iat is malformed."""
    token = _forge(_claims(exp=(NOW - timedelta(seconds=1)).strftime(TIME_FMT)))
    _rejected(token, now=NOW - timedelta(seconds=10))


def test_iat_91_seconds_in_the_future_is_rejected() -> None:
    """A token issued more than 90 s ahead of our clock is refused."""
    future = NOW + timedelta(seconds=91)
    token = _forge(
        _claims(
            iat=future.strftime(TIME_FMT),
            exp=(future + timedelta(seconds=60)).strftime(TIME_FMT),
        )
    )
    assert "future" in _rejected(token).reason


def test_wrong_audience_is_rejected() -> None:
    """A token for another audience is refused (pyseto checks aud only when asked)."""
    _rejected(_issue(), audience="other-control")


def test_relay_token_for_another_relay_is_rejected() -> None:
    """A relay token names one relay; another relay refuses it."""
    _rejected(_issue(TokenKind.RELAY), TokenKind.RELAY, audience="relay-2")


def test_wrong_issuer_is_rejected() -> None:
    """A token from another issuer is refused."""
    _rejected(_issue(), issuer="evil.example")


def test_unknown_key_id_is_rejected() -> None:
    """A kid outside the allowlist is refused before any signature work."""
    token = _forge(_claims(), signer=OTHER_SIGNER)
    assert "allowlist" in _rejected(token).reason


def test_allowlisted_kid_but_signed_by_another_key_is_rejected() -> None:
    """Claiming an allowlisted kid does not help a token signed by a different key."""
    footer = {"kid": SIGNER.public_key.fingerprint().to_text()}
    _rejected(_forge(_claims(), signer=OTHER_SIGNER, footer=footer))


def test_allowlist_entry_under_the_wrong_kid_is_rejected() -> None:
    """A miswired allowlist (kid of one key mapped to another key) fails closed."""
    keys: dict[KeyFingerprint, VerifyKey] = {
        SIGNER.public_key.fingerprint(): OTHER_SIGNER.public_key
    }
    _rejected(
        _forge(
            _claims(), signer=OTHER_SIGNER, footer={"kid": str(SIGNER.public_key.fingerprint())}
        ),
        keys=keys,
    )


def test_token_bound_to_another_node_is_rejected() -> None:
    """A token lifted from one node is useless when another identity presents it."""
    _rejected(_issue(), bound_identity=OTHER_NODE)


def test_relay_token_is_not_an_access_token() -> None:
    """A relay token never passes as an access token."""
    relay = _issue(TokenKind.RELAY, audience=AUDIENCE[TokenKind.ACCESS])
    _rejected(relay, TokenKind.ACCESS)


def test_access_token_is_not_a_relay_token() -> None:
    """An access token never passes as a relay token, even with the relay's audience."""
    access = _issue(TokenKind.ACCESS, audience=AUDIENCE[TokenKind.RELAY])
    _rejected(access, TokenKind.RELAY)


def test_kind_claim_must_match_the_binding() -> None:
    """A token signed for the access binding but claiming kind relay is refused either way."""
    token = _forge(_claims(kind="relay", scope="forward"))
    _rejected(token, TokenKind.ACCESS)
    _rejected(token, TokenKind.RELAY)


def test_relay_token_with_another_scope_is_rejected() -> None:
    """A relay token's scope is forward and nothing else."""
    token = _forge(
        _claims(TokenKind.RELAY, scope="admin"), implicit=_implicit_assertion(TokenKind.RELAY, NODE)
    )
    _rejected(token, TokenKind.RELAY)


def test_short_jti_is_rejected() -> None:
    """A jti under 128 bits is refused."""
    _rejected(_forge(_claims(jti="AAAAAAAAAAAAAAAAAAAA")))  # 15 bytes
    _rejected(_forge(_claims(jti="not base64!")))


def test_v4_local_token_is_rejected() -> None:
    """A symmetric v4.local token is not accepted as a public token."""
    key = pyseto.Key.new(4, "local", b"k" * 32)
    token = bytes(pyseto.encode(key, json.dumps(_claims()).encode())).decode()
    assert "v4.public" in _rejected(token).reason  # refused by the header, before any parsing


def test_v3_and_v2_public_tokens_are_rejected() -> None:
    """Other PASETO versions are refused outright."""
    v2 = pyseto.Key.from_asymmetric_key_params(2, d=bytes(SIGNER.export_seed()))
    footer = json.dumps({"kid": str(SIGNER.public_key.fingerprint())}).encode()
    v2_token = bytes(pyseto.encode(v2, json.dumps(_claims()).encode(), footer)).decode()
    forged_v3 = _forge(_claims()).replace("v4.public.", "v3.public.", 1)
    for token in (v2_token, forged_v3):
        assert "v4.public" in _rejected(token).reason  # refused by the header, before parsing


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        "v4.public.",
        "v4.public..",
        "v4.public.AAAA",
        "v4.public.AAAA.AAAA",
        "v4.public.x.y.z",
        "not a token",
        "v4.public.é.é",
        "v4.public." + "A" * 5000,
        b"v4.public.AAAA.AAAA",
        None,
        12,
    ],
)
def test_garbage_is_rejected(garbage: object) -> None:
    """Malformed input of any shape or type raises InvalidToken, never something else."""
    _rejected(garbage)


def test_token_without_footer_is_rejected() -> None:
    """The key id is required, so a footerless token is refused."""
    token = _forge(_claims(), footer=b"")
    assert token.count(".") == 2
    _rejected(token)


@pytest.mark.parametrize(
    "footer",
    [
        b"not json",
        b"[]",
        b'{"kid": 1}',
        b'{"kid": "rnfp_short"}',
        {"kid": str(SIGNER.public_key.fingerprint()), "x": 1},
        b'{"kid": "a", "kid": "b"}',
    ],
)
def test_malformed_footer_is_rejected(footer: dict[str, Any] | bytes) -> None:
    """The footer is exactly {"kid": fingerprint}."""
    _rejected(_forge(_claims(), footer=footer))


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[]",
        b'"string"',
        b'{"exp": NaN}',
        b"\xff\xfe",
    ],
)
def test_malformed_payload_is_rejected(payload: bytes) -> None:
    """A signed payload that is not a strict JSON object is refused."""
    _rejected(_forge(payload))


def test_duplicate_claim_keys_are_rejected() -> None:
    """A payload naming a claim twice cannot smuggle a second value past the check."""
    good = json.dumps(_claims())
    doubled = good[:-1] + ', "aud": "other"}'
    _rejected(_forge(doubled.encode()))


def test_non_canonical_base64_in_token_is_rejected() -> None:
    """Padding or trailing-bit variants of a valid token are refused (pyseto would decode them)."""
    token = _issue()
    head, payload, footer = token.rsplit(".", 2)
    _rejected(f"{head}.{payload}==.{footer}")
    _rejected(f"{head}.{payload}.{footer}=")


def test_every_failure_has_the_same_message() -> None:
    """Attackers learn nothing from the error: str() and repr() are identical across causes."""
    errors = [
        _rejected(_issue(), now=NOW + timedelta(hours=1)),
        _rejected(_issue(), audience="x"),
        _rejected(_issue(), bound_identity=OTHER_NODE),
        _rejected("garbage"),
        _rejected(_forge(_claims(), signer=OTHER_SIGNER)),
    ]
    assert {str(e) for e in errors} == {"invalid token"}
    assert {repr(e) for e in errors} == {"InvalidToken('invalid token')"}
    assert len({e.reason for e in errors}) == len(errors)
    assert all(isinstance(e, RemoteProtocolError) for e in errors)


def test_every_flipped_character_is_rejected() -> None:
    """Byte-flip: changing any one character of a valid token makes it invalid."""
    token = _issue()
    for i, char in enumerate(token):
        for flipped in {chr(ord(char) ^ 1), chr(ord(char) ^ 0x20), "A" if char != "A" else "B"}:
            mutated = token[:i] + flipped + token[i + 1 :]
            with pytest.raises(InvalidToken):
                _verify(mutated)


def test_truncated_and_extended_tokens_are_rejected() -> None:
    """Any prefix of a token, or the token with appended data, is invalid."""
    token = _issue()
    for cut in range(len(token)):
        with pytest.raises(InvalidToken):
            _verify(token[:cut])
    _rejected(token + "A")
    _rejected(token + ".AAAA")


# --- issuing rules (our misuse is a local error) -------------------------------------------


@pytest.mark.parametrize(
    ("kind", "seconds"), [(TokenKind.ACCESS, 301), (TokenKind.RELAY, 121), (TokenKind.ACCESS, 0)]
)
def test_issuing_a_lifetime_outside_the_cap_is_refused(kind: TokenKind, seconds: int) -> None:
    """We never mint a token the verifier would refuse for its lifetime."""
    with pytest.raises(LocalProtocolError):
        issue_token(
            SIGNER,
            kind=kind,
            issuer=ISSUER,
            subject="n",
            audience="a",
            bound_identity=NODE,
            now=NOW,
            lifetime=timedelta(seconds=seconds),
            entropy=ENTROPY,
        )


@pytest.mark.parametrize(
    "over",
    [
        {"now": datetime(2026, 5, 1, 12, 0)},  # noqa: DTZ001 - naive on purpose
        {"issuer": ""},
        {"subject": "x" * 257},
        {"lifetime": timedelta(seconds=10.5)},
        {"kind": "access", "audience": "a"},
    ],
)
def test_issuing_with_bad_arguments_is_refused(over: dict[str, Any]) -> None:
    """Naive times, empty or oversized claims, fractional lifetimes and untyped kinds are bugs."""
    with pytest.raises(LocalProtocolError):
        _issue(**over)


def test_verifying_with_a_naive_clock_is_a_local_error() -> None:
    """A naive `now` is our bug, not the token's fault."""
    with pytest.raises(LocalProtocolError):
        _verify(_issue(), now=datetime(2026, 5, 1, 12, 0))  # noqa: DTZ001 - naive on purpose


def test_issued_token_does_not_reveal_the_bound_identity() -> None:
    """The identity binding is an implicit assertion: signed but never transmitted."""
    token = _issue()
    assert NODE.to_text() not in token
    for part in token.split(".")[2:]:  # payload (with signature) and footer
        decoded = base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))
        assert NODE.to_text().encode() not in decoded
        assert NODE.raw not in decoded


@pytest.mark.parametrize("kind", list(TokenKind))
def test_a_kind_claim_other_than_the_bound_kind_is_rejected(kind: TokenKind) -> None:
    """The `kind` claim is checked on its own, not only through the binding: a token signed
    and bound for `kind` whose claims name the other kind is refused for its kind claim."""
    other = next(k for k in TokenKind if k is not kind)
    claims = _claims(kind, kind=other.value, scope=other.scope)
    token = _forge(claims, implicit=_implicit_assertion(kind, NODE))
    assert "kind" in _rejected(token, kind).reason


def test_forged_relay_token_with_valid_claims_is_accepted() -> None:
    """Control for the relay forgeries: a correctly built relay token passes."""
    token = _forge(_claims(TokenKind.RELAY), implicit=_implicit_assertion(TokenKind.RELAY, NODE))
    assert _verify(token, TokenKind.RELAY).kind is TokenKind.RELAY
