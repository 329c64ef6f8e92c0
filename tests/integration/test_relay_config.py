"""`[[relays]]` in control.toml: parsed in order into `RelayEntry` values, rendered back by init,
none by default, and every invalid entry refused with a message naming the file and the key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from rustynet.adapters.config import (
    ConfigError,
    ControlConfig,
    DatabaseUrl,
    load_control_config,
    render_control_config,
)

from rustynet.domain.netmap import RelayEntry
from rustynet.domain.tls_pin import SpkiPin

PIN = SpkiPin(bytes(range(32)))
RELAY_TOML = f"""
[[relays]]
id = "relay-1"
url = "wss://relay1.example.org:443/v1/relay"
tls_spki_sha256 = "{PIN.to_text()}"

[[relays]]
id = "relay-2"
url = "wss://[2001:db8::7]:8443/v1/relay"
tls_spki_sha256 = "{PIN.to_text()}"
"""


def _control(tmp_path: Path, relays: tuple[RelayEntry, ...] = ()) -> ControlConfig:
    return ControlConfig(
        url="https://ctl.example.org:8443",
        listen=("0.0.0.0", 8443),
        database=DatabaseUrl("sqlite", sqlite_path=tmp_path / "control.db"),
        certificate=tmp_path / "tls" / "control.crt",
        private_key=tmp_path / "tls" / "control.key",
        relays=relays,
    )


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "control.toml"
    path.write_text(render_control_config(_control(tmp_path), tmp_path) + text)
    return path


def test_relays_are_parsed_in_order(tmp_path: Path) -> None:
    """Two `[[relays]]` tables become two entries, first (the home relay) first."""
    config = load_control_config(_write(tmp_path, RELAY_TOML))
    assert [r.id for r in config.relays] == ["relay-1", "relay-2"]
    assert config.relays[0] == RelayEntry("relay-1", "wss://relay1.example.org:443/v1/relay", PIN)
    assert config.relays[1].url == "wss://[2001:db8::7]:8443/v1/relay"


def test_no_relays_by_default(tmp_path: Path) -> None:
    """A control.toml without `[[relays]]` lists none, and init writes none."""
    text = render_control_config(_control(tmp_path), tmp_path)
    assert "relays" not in text
    assert load_control_config(_write(tmp_path, "")).relays == ()


def test_relays_round_trip_through_render(tmp_path: Path) -> None:
    """What render writes for relays is what load reads back."""
    relays = (
        RelayEntry("relay-1", "wss://relay1.example.org:443/v1/relay", PIN),
        RelayEntry("b", "wss://198.51.100.4/v1/relay", SpkiPin(bytes(32))),
    )
    config = _control(tmp_path, relays)
    (tmp_path / "control.toml").write_text(render_control_config(config, tmp_path))
    assert load_control_config(tmp_path / "control.toml") == config


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace('"relay-1"', '"Relay_1"'), "[[relays]] #1: id: 1-64 characters"),
        (lambda t: t.replace('"relay-2"', '"' + "r" * 65 + '"'), "[[relays]] #2: id: 1-64"),
        (lambda t: t.replace('"relay-2"', '"relay-1"'), "[[relays]] #2: id: relay id 'relay-1'"),
        (lambda t: t.replace("wss://relay1", "https://relay1"), "[[relays]] #1: url: a relay URL"),
        (lambda t: t.replace("wss://relay1", "ws://relay1"), "[[relays]] #1: url: a relay URL"),
        (lambda t: t.replace(":443/", ":0/"), "[[relays]] #1: url: a relay URL's port"),
        (lambda t: t.replace(PIN.to_text(), "sha256//abc", 1), "#1: tls_spki_sha256: the TLS pin"),
        (lambda t: t.replace('id = "relay-1"\n', ""), "[[relays]] #1: id: missing (required)"),
        (lambda t: t.replace('id = "relay-1"\n', 'id = "relay-1"\nweight = 1\n'), "#1: weight:"),
        (lambda t: t.replace('id = "relay-1"', "id = 1"), "[[relays]] #1: id: expected str"),
        (lambda t: t.replace("[[relays]]", "[relays]", 1).split("[[relays]]")[0], "relays"),
    ],
    ids=[
        "bad-id",
        "long-id",
        "duplicate-id",
        "https-url",
        "ws-url",
        "port-0",
        "bad-pin",
        "missing-id",
        "unknown-key",
        "int-id",
        "table-not-array",
    ],
)
def test_invalid_relay_entries_name_file_and_key(
    tmp_path: Path, edit: Callable[[str], str], message: str
) -> None:
    """Each bad relay entry is an error naming control.toml, the entry and the key."""
    path = _write(tmp_path, edit(RELAY_TOML))
    with pytest.raises(ConfigError) as caught:
        load_control_config(path)
    assert str(path) in str(caught.value)
    assert message in str(caught.value)
