"""`[stun]` in control.toml and relay.toml: defaults, strict parsing naming the key, the
advertised list the peer map carries, and a served relay answering STUN on both its ports with
the counters on /metrics."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import time
import tomllib
import urllib.request
from pathlib import Path

import attrs
import pytest
from rustynet.adapters.config import ConfigError, load_control_config, render_control_config
from rustynet.adapters.relay.config import RelayConfigError, load_relay_config
from rustynet.adapters.support.stun_config import (
    DEFAULT_LISTEN,
    StunConfig,
    StunConfigError,
    render_stun_config,
    stun_config_from,
)

from rustynet.domain.stun import accept_binding_response, encode_request
from tests.integration.test_connection_settings import _control
from tests.integration.test_relay import Hierarchy
from tests.integration.test_relay_cli import RELAY, _free_port, _init


def test_defaults_are_on_with_two_ports() -> None:
    config = stun_config_from({}, advertise_allowed=True)
    assert config == StunConfig(enabled=True, listen=DEFAULT_LISTEN, advertise=None)
    assert [port for _, port in config.listen] == [3478, 3479]


@pytest.mark.parametrize(
    ("table", "key"),
    [
        ({"port": 1}, "port"),
        ({"enabled": "yes"}, "enabled"),
        ({"listen": ["127.0.0.1:3478"]}, "listen"),
        ({"listen": ["127.0.0.1:3478", "127.0.0.1:3478"]}, "listen"),
        ({"listen": ["localhost:3478", "127.0.0.1:3479"]}, "listen"),
        ({"listen": "127.0.0.1:3478"}, "listen"),
        ({"advertise": ["stun.example.org:3478"]}, "advertise"),
        ({"advertise": ["203.0.113.1:3478", "203.0.113.1:3478"]}, "advertise"),
    ],
)
def test_bad_tables_name_the_key(table: dict[str, object], key: str) -> None:
    with pytest.raises(StunConfigError) as caught:
        stun_config_from(table, advertise_allowed=True)
    assert caught.value.key == key


def test_the_relay_has_no_advertise_key() -> None:
    with pytest.raises(StunConfigError, match="advertise"):
        stun_config_from({"advertise": []}, advertise_allowed=False)


def test_advertised_list_derivation() -> None:
    default = StunConfig()
    assert default.advertised("https://203.0.113.1:8443") == (
        "203.0.113.1:3478",
        "203.0.113.1:3479",
    )
    assert default.advertised("https://[2001:db8::1]:8443") == (
        "[2001:db8::1]:3478",
        "[2001:db8::1]:3479",
    )
    assert default.advertised("https://ctl.example.org") == ()
    assert StunConfig(enabled=False).advertised("https://203.0.113.1") == ()
    explicit = StunConfig(advertise=("198.51.100.9:3478",))
    assert explicit.advertised("https://203.0.113.1") == ("198.51.100.9:3478",)


def test_render_round_trips() -> None:
    config = StunConfig(
        enabled=False,
        listen=(("127.0.0.1", 4000), ("::1", 4001)),
        advertise=("203.0.113.1:4000",),
    )
    text = "\n".join(render_stun_config(config, advertise_allowed=True))
    assert stun_config_from(tomllib.loads(text)["stun"], advertise_allowed=True) == config


def test_relay_toml_stun_errors_name_file_and_key(tmp_path: Path) -> None:
    config, _ = _init(tmp_path, Hierarchy.make(), 8444)
    text = config.read_text()
    assert "[stun]\nenabled = true\n" in text
    assert load_relay_config(config).stun == StunConfig()
    config.write_text(text.replace("[stun]\n", '[stun]\nadvertise = ["203.0.113.1:3478"]\n'))
    with pytest.raises(RelayConfigError, match=r"\[stun\]\.advertise"):
        load_relay_config(config)


def test_a_served_relay_answers_stun_on_both_ports(tmp_path: Path) -> None:
    port, stun_a, stun_b = _free_port(), _free_port(), _free_port()
    config, _ = _init(tmp_path, Hierarchy.make(), port)
    config.write_text(
        config.read_text().replace(
            'listen = ["0.0.0.0:3478", "0.0.0.0:3479"]',
            f'listen = ["127.0.0.1:{stun_a}", "127.0.0.1:{stun_b}"]',
        )
    )
    proc = subprocess.Popen(
        [*RELAY, "serve", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        deadline = time.monotonic() + 30
        while " listening on " not in (line := proc.stderr.readline()):
            assert line or proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(5)
            for stun_port, other in ((stun_a, stun_b), (stun_b, stun_a)):
                tid = stun_port.to_bytes(12, "big")
                sock.sendto(encode_request(tid), ("127.0.0.1", stun_port))
                reply, source = sock.recvfrom(2048)
                assert source == ("127.0.0.1", stun_port)
                result = accept_binding_response(reply, tid)
                assert (str(result.mapped[0]), result.mapped[1]) == sock.getsockname()
                assert result.other is not None
                assert result.other[1] == other
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with urllib.request.urlopen(
            f"https://127.0.0.1:{port}/metrics", context=context, timeout=10
        ) as response:
            metrics = response.read().decode()
        assert "rustynet_stun_answered_total 2.0" in metrics
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()


def test_control_toml_stun_round_trips_and_errors_name_the_key(tmp_path: Path) -> None:
    config = attrs.evolve(
        _control(tmp_path),
        stun=StunConfig(listen=(("127.0.0.1", 4000), ("127.0.0.1", 4001)), advertise=()),
    )
    text = render_control_config(config, tmp_path)
    (tmp_path / "control.toml").write_text(text)
    assert load_control_config(tmp_path / "control.toml").stun == config.stun
    (tmp_path / "control.toml").write_text(text.replace("advertise = []", "advertise = [1]"))
    with pytest.raises(ConfigError, match=r"control\.toml: \[stun\]\.advertise"):
        load_control_config(tmp_path / "control.toml")
