"""Config values parsed once (`rustynet.adapters.support.config_values`) for every config file:
the relay's relay.toml refuses exactly what the control plane's control.toml refuses."""

from __future__ import annotations

from pathlib import Path

import pytest
from rustynet.adapters.relay.config import (
    RelayConfig,
    RelayConfigError,
    load_relay_config,
    render_relay_config,
)
from rustynet.adapters.support.config_values import (
    parse_control_url,
    parse_listen,
    relative_path,
    render_listen,
    toml_string,
)

from rustynet.domain.keys import KeyFingerprint

RELAY = RelayConfig(
    relay_id="relay-1",
    url="wss://relay.example.org:443/v1/relay",
    listen=("0.0.0.0", 443),
    control_url="https://ctl.example.org:8443",
    root_fingerprint=KeyFingerprint(bytes(32)),
    certificate=Path("/etc/rustynet/tls/relay.crt"),
    private_key=Path("/etc/rustynet/tls/relay.key"),
)


def _relay_toml(tmp_path: Path, old: str, new: str) -> Path:
    text = render_relay_config(RELAY, tmp_path)
    assert old in text
    path = tmp_path / "relay.toml"
    path.write_text(text.replace(old, new))
    path.chmod(0o600)
    return path


def test_listen_parses_v4_and_v6_and_renders_back() -> None:
    """`ADDR:PORT` and `[V6]:PORT` parse and render to the same text."""
    assert parse_listen("127.0.0.1:8443") == ("127.0.0.1", 8443)
    assert parse_listen("[::1]:443") == ("::1", 443)
    assert render_listen("::1", 443) == "[::1]:443"
    assert render_listen("127.0.0.1", 8443) == "127.0.0.1:8443"


@pytest.mark.parametrize("text", ["0.0.0.0:0", "0.0.0.0:65536", "0.0.0.0:-1", "host:443", "443"])
def test_listen_refuses_bad_ports_and_names(text: str) -> None:
    """A port outside 1-65535, a host name or a missing port is refused."""
    with pytest.raises(ValueError, match=r"port|ADDR:PORT|address"):
        parse_listen(text)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("https://ctl.example.org:99999", "bad port"),
        ("https://ctl.example.org:x", "bad port"),
        ("http://ctl.example.org", "expected https"),
        ("https://ctl.example.org/api", "no path"),
        ("https://user@ctl.example.org", "no path, query or user"),
    ],
)
def test_control_url_refusals(text: str, message: str) -> None:
    """The control URL: https, a valid port, nothing else."""
    with pytest.raises(ValueError, match=message):
        parse_control_url(text)


def test_control_url_keeps_host_and_port() -> None:
    """The issuer string is `https://HOST[:PORT]`, a trailing slash dropped."""
    assert parse_control_url("https://ctl.example.org:8443/") == "https://ctl.example.org:8443"


def test_relay_config_round_trips(tmp_path: Path) -> None:
    """What render writes is what load reads (the unchanged file passes)."""
    loaded = load_relay_config(_relay_toml(tmp_path, "", ""))
    assert (loaded.listen, loaded.control_url) == (RELAY.listen, RELAY.control_url)


def test_relay_config_refuses_a_control_url_with_a_bad_port(tmp_path: Path) -> None:
    """The relay's parser once dropped the control plane's port check; now it is the same one."""
    path = _relay_toml(tmp_path, "ctl.example.org:8443", "ctl.example.org:99999")
    with pytest.raises(RelayConfigError, match="bad port"):
        load_relay_config(path)


@pytest.mark.parametrize("listen", ["0.0.0.0:0", "0.0.0.0:70000"])
def test_relay_config_refuses_a_listen_port_out_of_range(tmp_path: Path, listen: str) -> None:
    """relay.toml's listen port is 1-65535, like control.toml's."""
    path = _relay_toml(tmp_path, '"0.0.0.0:443"', toml_string(listen))
    with pytest.raises(RelayConfigError, match="port must be 1-65535"):
        load_relay_config(path)


def test_toml_string_and_relative_path() -> None:
    """Strings are escaped for TOML; paths under the base are written relative."""
    assert toml_string('a"b\n') == '"a\\"b\\n"'
    assert relative_path(Path("/etc/r/tls/k"), Path("/etc/r")) == "tls/k"
    assert relative_path(Path("/var/k"), Path("/etc/r")) == "/var/k"
