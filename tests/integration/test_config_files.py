"""control.toml and admin.toml: round trip, and strict parsing that names the bad key."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from rustynet.adapters.config import (
    AdminConfig,
    ConfigError,
    ControlConfig,
    DatabaseUrl,
    load_admin_config,
    load_control_config,
    render_admin_config,
    render_control_config,
)

from rustynet.domain.tls_pin import SpkiPin

PIN = SpkiPin(bytes(range(32)))


def sample_control_config(tmp_path: Path) -> ControlConfig:
    """A complete control.toml value whose files live under `tmp_path`."""
    return ControlConfig(
        url="https://ctl.example.org:8443",
        listen=("::", 8443),
        database=DatabaseUrl("sqlite", sqlite_path=tmp_path / "control.db"),
        certificate=tmp_path / "tls" / "control.crt",
        private_key=tmp_path / "tls" / "control.key",
        keystore="file",
        passphrase_file=tmp_path / "keystore.pass",
    )


def test_control_config_round_trips_with_relative_paths(tmp_path: Path) -> None:
    """What init renders is what serve loads; paths are stored relative to the directory."""
    config = sample_control_config(tmp_path)
    text = render_control_config(config, tmp_path)
    assert str(tmp_path) not in text
    (tmp_path / "control.toml").write_text(text)
    assert load_control_config(tmp_path / "control.toml") == config


def test_admin_config_round_trips(tmp_path: Path) -> None:
    """admin.toml keeps URL, pin and key file."""
    config = AdminConfig("https://10.0.0.1:8443", PIN, tmp_path / "admin.key")
    (tmp_path / "admin.toml").write_text(render_admin_config(config))
    assert load_admin_config(tmp_path / "admin.toml") == config


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t + "\n[extra]\nx = 1\n", "extra: unknown setting"),
        (lambda t: t.replace("[tls]\n", "[tls]\ncertfile = 'x'\n"), "[tls].certfile: unknown"),
        (lambda t: t.replace("backlog = 4096", 'backlog = "4096"'), "[control].backlog: expected"),
        (lambda t: t.replace("backlog = 4096", "backlog = true"), "got a boolean"),
        (lambda t: t.replace("https://ctl", "http://ctl"), "[control].url: expected https"),
        (lambda t: t.replace('"[::]:8443"', '"host:8443"'), "[control].listen"),
        (lambda t: t.replace('kind = "file"', 'kind = "vault"'), "[keystore].kind"),
        (lambda t: t.replace('url = "sqlite:control.db"', 'url = "mysql://x"'), "[database].url"),
        (lambda t: t.replace('[database]\nurl = "sqlite:control.db"\n', ""), "database: missing"),
        (lambda t: t.replace("url = ", "url = = ", 1), "not valid TOML"),
    ],
)
def test_invalid_control_config_names_file_and_key(
    tmp_path: Path, edit: Callable[[str], str], message: str
) -> None:
    """Every kind of mistake is an error naming where it is, never silently ignored."""
    text = edit(render_control_config(sample_control_config(tmp_path), tmp_path))
    path = tmp_path / "control.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=r"control\.toml") as caught:
        load_control_config(path)
    assert message in str(caught.value)


def test_admin_config_with_bad_pin_is_refused(tmp_path: Path) -> None:
    """A malformed pin is a configuration error naming `spki_pin`."""
    path = tmp_path / "admin.toml"
    path.write_text('url = "https://h:1"\nspki_pin = "sha256//nope"\nkey_file = "k"\n')
    with pytest.raises(ConfigError, match="spki_pin"):
        load_admin_config(path)


def test_missing_config_file_says_so(tmp_path: Path) -> None:
    """A missing file is a clear error, not a traceback."""
    with pytest.raises(ConfigError, match="no such file"):
        load_admin_config(tmp_path / "absent.toml")


def test_postgres_url_is_never_shown_with_its_password() -> None:
    """describe() and repr() of a PostgreSQL URL omit the password."""
    url = DatabaseUrl.parse("postgresql://rn:hunter2@db.example:5433/rustynet", Path("/"))
    assert "hunter2" not in url.describe()
    assert "hunter2" not in repr(url)
    assert url.describe() == "PostgreSQL db.example:5433/rustynet"
