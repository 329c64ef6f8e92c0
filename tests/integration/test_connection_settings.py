"""`[connections]` in control.toml: defaults, strict parsing naming the key, and the
descriptor limit (the caps always fit RLIMIT_NOFILE, so clients cannot exhaust it)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import attrs
import pytest
from rustynet.adapters.config import (
    ConfigError,
    ControlConfig,
    DatabaseUrl,
    load_control_config,
    render_control_config,
)

from rustynet.domain.connection_limits import (
    ConnectionLimits,
    ConnectionLimitsError,
    connection_limits_from,
)


def _control(tmp_path: Path, **changes: object) -> ControlConfig:
    config = ControlConfig(
        url="https://ctl.example.org:8443",
        listen=("127.0.0.1", 8443),
        database=DatabaseUrl("sqlite", sqlite_path=tmp_path / "control.db"),
        certificate=tmp_path / "control.crt",
        private_key=tmp_path / "control.key",
    )
    return attrs.evolve(config, **changes)  # type: ignore[arg-type]


def test_defaults_are_written_and_read_back(tmp_path: Path) -> None:
    """init writes [connections] with every default; a file without the table gets them too."""
    config = _control(tmp_path)
    text = render_control_config(config, tmp_path)
    assert "[connections]\ntls_handshake_timeout = 10.0\nheader_timeout = 10.0\n" in text
    (tmp_path / "control.toml").write_text(text)
    assert load_control_config(tmp_path / "control.toml").connections == ConnectionLimits()
    without = text[: text.index("# Deadlines")]
    (tmp_path / "control.toml").write_text(without)
    assert load_control_config(tmp_path / "control.toml").connections == ConnectionLimits()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("header_timeout = 0", r"\[connections\]\.header_timeout: must be a number of seconds"),
        ("body_timeout = 1e400", r"\[connections\]\.body_timeout: must be a number"),
        ("body_timeout = 10000000000000000000000000000000000000000", r"body_timeout: must"),
        ("keepalive_timeout = true", r"\[connections\]\.keepalive_timeout: expected a number"),
        ("max_connections = 2.5", r"\[connections\]\.max_connections: expected an integer"),
        ("max_connections_per_ip = 0", r"\[connections\]\.max_connections_per_ip: must be"),
        ("max_connections = 10", r"max_connections_per_ip: must not exceed max_connections"),
        ("idle_timeout = 5", r"\[connections\]\.idle_timeout: unknown setting"),
    ],
)
def test_bad_setting_is_an_error_naming_it(tmp_path: Path, line: str, message: str) -> None:
    """Every bad value stops the load with the table and key named."""
    text = render_control_config(_control(tmp_path), tmp_path)
    text = text.replace("[connections]\n", f"[connections]\n{line}\n")
    key = line.split(" ", 1)[0]
    text = "\n".join(
        row
        for row in text.splitlines()
        if not row.startswith(f"{key} =") or row == line  # the injected line wins
    )
    (tmp_path / "control.toml").write_text(text + "\n")
    with pytest.raises(ConfigError, match=message):
        load_control_config(tmp_path / "control.toml")


def test_limits_from_a_table() -> None:
    """Integers are seconds too; counts must be integers; omitted keys keep their default."""
    limits = connection_limits_from({"header_timeout": 3, "max_connections": 500})
    assert limits == ConnectionLimits(header_timeout=3.0, max_connections=500)
    assert limits.shortest_timeout == 3.0
    with pytest.raises(ConnectionLimitsError, match="max_connections: expected an integer"):
        connection_limits_from({"max_connections": "many"})
    assert ConnectionLimits().capped(100) == ConnectionLimits(
        max_connections=100, max_connections_per_ip=100
    )


_FIT = textwrap.dedent(
    """
    import resource
    from rustynet.bootstrap.process import FD_RESERVE, fit_connections_to_fd_limit
    from rustynet.domain.connection_limits import ConnectionLimits

    resource.setrlimit(resource.RLIMIT_NOFILE, ({soft}, {hard}))
    fitted, warning = fit_connections_to_fd_limit(ConnectionLimits(max_connections={want}))
    print(fitted.max_connections, resource.getrlimit(resource.RLIMIT_NOFILE)[0], warning)
    """
)


def _fit(soft: int, hard: int, want: int) -> list[str]:
    code = _FIT.format(soft=soft, hard=hard, want=want)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return done.stdout.split(maxsplit=2)


def test_soft_descriptor_limit_is_raised_to_fit_the_cap() -> None:
    """Soft 1024, hard 8192, cap 4000: the soft limit goes up to cap + reserve; cap kept."""
    total, soft, warning = _fit(1024, 8192, 4000)
    assert (total, soft, warning.strip()) == ("4000", str(4000 + 256), "None")


def test_cap_is_lowered_when_the_hard_limit_is_too_low() -> None:
    """Hard 1024, cap 4000: serve with 1024 - reserve connections and say so."""
    total, soft, warning = _fit(1024, 1024, 4000)
    assert (total, soft) == (str(1024 - 256), "1024")
    assert "LimitNOFILE" in warning
    assert "max_connections = 4000" in warning
