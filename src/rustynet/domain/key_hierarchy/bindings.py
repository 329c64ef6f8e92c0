"""Tunnel-key bindings: a node identity key signs "this tunnel key is mine from not_before to
not_after" (`issue_tunnel_key_binding`, `verify_tunnel_key_binding`; 1-180 d).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

import attrs

from rustynet.domain.errors import DecodeError, LocalProtocolError
from rustynet.domain.key_hierarchy.roles import (
    FORMAT_VERSION,
    BindingRejectedError,
    IssuePolicyError,
)
from rustynet.domain.key_hierarchy.validity import (
    Validity,
    exact_fields,
    str_field,
)
from rustynet.domain.keys import KeyFingerprint, Purpose, SigningKey, TunnelKey, VerifyKey
from rustynet.domain.signed import (
    JsonValue,
    SignedEnvelope,
)

TUNNEL_KEY_DEFAULT_LIFETIME: Final = timedelta(days=180)
TUNNEL_KEY_MIN_LIFETIME: Final = timedelta(days=1)
TUNNEL_KEY_MAX_LIFETIME: Final = timedelta(days=180)
# A binding is checked by the control plane and by peers whose clocks may run behind the node
# that made it: ±90 s of clock leeway.
BINDING_CLOCK_LEEWAY: Final = timedelta(seconds=90)


# --- tunnel-key bindings ----------------------------------------------------------------------

_BINDING_FIELDS: Final = frozenset({"v", "tunnel_key", "identity", "not_before", "not_after"})


@attrs.frozen
class TunnelKeyBinding:
    """Signed by a node identity key: this tunnel key is mine during `validity`.

    Construct from the envelope; claims are parsed, not verified (see
    `verify_tunnel_key_binding`).
    """

    envelope: SignedEnvelope = attrs.field(validator=attrs.validators.instance_of(SignedEnvelope))
    tunnel_key: TunnelKey = attrs.field(init=False)
    identity: KeyFingerprint = attrs.field(init=False)
    validity: Validity = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        if self.envelope.purpose is not Purpose.TUNNEL_KEY_BINDING:
            raise DecodeError("not a tunnel-key binding envelope")
        payload = self.envelope.unverified_payload()
        exact_fields(payload, _BINDING_FIELDS, "tunnel-key binding")
        identity = KeyFingerprint.from_text(str_field(payload, "identity"))
        if identity != self.envelope.key_id:
            raise DecodeError("binding identity differs from its signer")
        object.__setattr__(
            self, "tunnel_key", TunnelKey.from_text(str_field(payload, "tunnel_key"))
        )
        object.__setattr__(self, "identity", identity)
        object.__setattr__(self, "validity", Validity.from_json(payload))

    @classmethod
    def from_text(cls, text: str) -> TunnelKeyBinding:
        """Parse the envelope text form; malformed input raises `DecodeError`."""
        return cls(SignedEnvelope.from_text(text))

    def to_text(self) -> str:
        """The envelope text form."""
        return self.envelope.to_text()


def _binding_lifetime_ok(lifetime: timedelta) -> bool:
    return TUNNEL_KEY_MIN_LIFETIME <= lifetime <= TUNNEL_KEY_MAX_LIFETIME


def issue_tunnel_key_binding(
    identity_key: SigningKey,
    tunnel_key: TunnelKey,
    now: datetime,
    lifetime: timedelta = TUNNEL_KEY_DEFAULT_LIFETIME,
) -> TunnelKeyBinding:
    """Bind `tunnel_key` to the node identity for `lifetime` from `now` (1-180 d)."""
    if not isinstance(tunnel_key, TunnelKey) or not isinstance(lifetime, timedelta):
        raise LocalProtocolError("bind a TunnelKey for a timedelta")
    if not _binding_lifetime_ok(lifetime):
        raise IssuePolicyError("a tunnel key lives between 1 and 180 days")
    validity = Validity.starting(now, lifetime)
    payload: dict[str, JsonValue] = {
        "v": FORMAT_VERSION,
        "tunnel_key": tunnel_key.to_text(),
        "identity": identity_key.public_key.fingerprint().to_text(),
        **validity.to_json(),
    }
    envelope = SignedEnvelope.seal(identity_key, Purpose.TUNNEL_KEY_BINDING, payload)
    return TunnelKeyBinding(envelope)


def verify_tunnel_key_binding(
    binding: TunnelKeyBinding, identity: VerifyKey, now: datetime
) -> TunnelKey:
    """Return the bound tunnel key if `identity` signed it and it is valid now; else raise."""
    binding.envelope.open(identity, Purpose.TUNNEL_KEY_BINDING)
    if not _binding_lifetime_ok(binding.validity.lifetime):
        raise BindingRejectedError("a tunnel key lives between 1 and 180 days")
    binding.validity.check(now, "tunnel-key binding", leeway=BINDING_CLOCK_LEEWAY)
    return binding.tunnel_key
