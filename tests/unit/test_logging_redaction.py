"""Log canary: fake secrets logged in every form (structlog and stdlib) never reach the output."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest
import structlog
from rustynet.adapters.logging import REDACTED, configure_logging, redact_text, redact_value

from rustynet.domain.keys import SigningKey, TunnelKeyScheme, TunnelPrivateKey

SIGNING_SECRET = SigningKey.from_seed(bytes(range(7, 39))).secret_text()
TUNNEL_SECRET = TunnelPrivateKey.from_secret(TunnelKeyScheme.X25519, bytes(range(32))).secret_text()
JOIN_TOKEN = "rnjoin1_CanaryJoinSecret0123456789abcdef.https%3A%2F%2Fctl.example"
JOIN_TOKEN_2 = "rnjoin1_SecondJoinCanary987654321"
PASETO_PUBLIC = "v4.public.eyJjYW5hcnkiOiJwYXNldG8ifQ.Q2FuYXJ5U2lnbmF0dXJl"
PASETO_LOCAL = "v4.local.Q2FuYXJ5TG9jYWxQYXNldG8"
API_KEY = "rnk_CanaryApiKey0123456789abcdef"
API_KEY_2 = "rnk_SecondApiKeyCanary"
PASSWORD = "hunter2-canary-password"
PASSWORD_2 = "correct-horse-canary"
PASSWORD_3 = "s3cr3t-in-free-text"
BEARER = "opaque-bearer-canary-1"
BEARER_2 = "opaque-bearer-canary-2"
PASSPHRASE = "canary passphrase words"
BUFFER = b"canary-bytearray-key-material"
SESSION = "canary-session-cookie"

MARKED = [SIGNING_SECRET, TUNNEL_SECRET, JOIN_TOKEN, JOIN_TOKEN_2, PASETO_PUBLIC, PASETO_LOCAL]
MARKED += [API_KEY, API_KEY_2]
UNMARKED = [PASSWORD, PASSWORD_2, PASSWORD_3, BEARER, BEARER_2, PASSPHRASE, SESSION]


class Leaky:
    """An object whose repr carries a secret (only the renderer turns it into text)."""

    def __repr__(self) -> str:
        return f"Leaky(key={API_KEY_2!s})"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """Put the global logging configuration back after each test."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    config = structlog.get_config()
    yield
    structlog.contextvars.clear_contextvars()
    structlog.configure(**config)  # the suite's configuration (tests/conftest.py)
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)


def _fail(exc: Exception) -> None:
    raise exc


def _emit_everything() -> None:
    log = structlog.get_logger("rustynet.test")
    log.info("join.attempted", token=JOIN_TOKEN, node="node-1")
    log.info("config.loaded", password=PASSWORD, api_key=API_KEY, privateKey=SIGNING_SECRET)
    log.info("request.seen", headers={"Authorization": f"Bearer {BEARER}", "X-Other": "fine"})
    log.info(
        "nested.logged",
        data={"list": [{"note": f"see {TUNNEL_SECRET} here"}], "pair": ("ok", PASETO_PUBLIC)},
    )
    log.info(f"got token {PASETO_PUBLIC} from node-2")
    log.info("token was %s", PASETO_LOCAL)
    log.info("buffer.logged", data=bytearray(BUFFER))
    log.info("object.logged", thing=Leaky())
    log.bind(passphrase=PASSPHRASE).info("bound.logged")
    structlog.contextvars.bind_contextvars(session_cookie=SESSION)
    log.info("context.logged")
    structlog.contextvars.clear_contextvars()
    try:
        _fail(ValueError(f"bad key {SIGNING_SECRET} and {JOIN_TOKEN_2}"))
    except ValueError:
        log.exception("key.rejected")

    access = logging.getLogger("aiohttp.access")
    access.info('%s "GET /v1/join?token=%s HTTP/1.1" 200', "10.0.0.1", JOIN_TOKEN_2)
    access.info('10.0.0.2 "GET /v1/x?join_token=%s&b=1 HTTP/1.1" 400', PASSWORD_3)
    lib = logging.getLogger("some.library")
    lib.warning("sending Authorization: Bearer %s", BEARER_2)
    lib.warning("login failed", extra={"password": PASSWORD_2, "user": "alice"})
    lib.info("loaded %r", {"api_key": API_KEY_2, "region": "eu"})
    try:
        _fail(RuntimeError(f"could not parse {TUNNEL_SECRET}"))
    except RuntimeError:
        lib.exception("stdlib.failed")


@pytest.mark.usefixtures("restore_logging")
@pytest.mark.parametrize("as_json", [True, False], ids=["json", "console"])
def test_no_canary_secret_reaches_the_log_output(as_json: bool) -> None:
    """Every fake secret, in every form, is absent from the captured output."""
    out = io.StringIO()
    configure_logging("debug", json=as_json, stream=out)
    _emit_everything()
    text = out.getvalue()

    for secret in MARKED:
        marker_end = secret.index("_") + 1 if secret.startswith("rn") else secret.index(".", 3) + 1
        assert secret not in text, secret
        assert secret[marker_end:][:12] not in text, secret
    for secret in UNMARKED:
        assert secret not in text, secret
    assert BUFFER.decode() not in text
    assert REDACTED in text
    assert REDACTED + "]" not in text  # redacting twice leaves the marker intact
    assert "Leaky(key=[redacted])" in text
    for benign in ("join.attempted", "node-1", "fine", "alice", "eu", "10.0.0.1", "key.rejected"):
        assert benign in text, benign
    assert "Traceback" in text
    if as_json:
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        assert len(lines) == 17
        assert lines[0]["token"] == REDACTED


@pytest.mark.usefixtures("restore_logging")
def test_log_level_filters_and_unknown_level_is_refused() -> None:
    """Debug lines are dropped at info level; a misspelled level is an error."""
    out = io.StringIO()
    configure_logging("info", json=True, stream=out)
    structlog.get_logger().debug("hidden.event")
    logging.getLogger("x").debug("hidden too")
    structlog.get_logger().info("shown.event")
    assert "hidden" not in out.getvalue()
    assert "shown.event" in out.getvalue()
    with pytest.raises(ValueError, match="unknown log level"):
        configure_logging("verbose")


@pytest.mark.usefixtures("restore_logging")
def test_configure_replaces_root_handlers_so_nothing_writes_around_redaction() -> None:
    """A handler installed before configure_logging is removed."""
    stray = io.StringIO()
    logging.getLogger().addHandler(logging.StreamHandler(stray))
    out = io.StringIO()
    configure_logging("info", json=True, stream=out)
    logging.getLogger("lib").info("token=%s", API_KEY)
    assert stray.getvalue() == ""
    assert API_KEY not in out.getvalue()
    assert len(logging.getLogger().handlers) == 1


def test_redaction_helpers_cut_only_the_secret() -> None:
    """Free text keeps its shape; nested names and contents are redacted."""
    assert redact_text(f"key {API_KEY} used") == f"key {REDACTED} used"
    assert redact_text("GET /a?token=abc&x=1") == f"GET /a?token={REDACTED}&x=1"
    assert redact_text("Authorization: Basic dXNlcjpwYXNz") == f"Authorization: {REDACTED}"
    assert redact_text("node_id=abc count=3") == "node_id=abc count=3"
    assert redact_value({"Private-Key": "x", "ok": [1, {"API_KEY": 2}]}) == {
        "Private-Key": REDACTED,
        "ok": [1, {"API_KEY": REDACTED}],
    }
    assert redact_text("stored rnks1:q83v+/Zm9v== ok") == f"stored {REDACTED} ok"
    assert redact_value(API_KEY.encode()) == REDACTED
    assert redact_value(b"plain") == b"plain"
