"""The arch and audit gates can fail: each check is run on a planted violation and must reject it.

Import contracts run `lint-imports` with the project's own contract section on a small fake
`rustynet` tree in tmp_path (same layout), so a clean fake tree passing and the planted tree
failing shows the plant is what breaks the contract.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from tools import audit, audit_safety
from tools.gates import crypto_scan, vocabulary

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

_CONTROL_USE_CASES = (
    "admin_api_keys",
    "admin_audit",
    "admin_join_keys",
    "admin_nodes",
    "admin_policy",
    "enrollment",
    "node_session",
    "peer_maps",
)

# A minimal copy of the hexagon: every module the contracts name, importing what it may.
CLEAN_TREE = {
    "rustynet/__init__.py": "",
    "rustynet/domain/__init__.py": "",
    "rustynet/domain/errors.py": "import enum\n",
    "rustynet/domain/keys.py": (
        "import hashlib\nfrom cryptography.hazmat.primitives.asymmetric import ed25519\n"
        "from rustynet.domain import errors\n"
    ),
    "rustynet/domain/tokens.py": (
        "import cryptography\nimport pyseto\nfrom rustynet.domain import keys\n"
    ),
    "rustynet/ports/__init__.py": "",
    "rustynet/ports/clock.py": "from datetime import datetime\nfrom typing import Protocol\n",
    "rustynet/ports/keystore.py": "from rustynet.domain import keys\n",
    "rustynet/application/__init__.py": "",
    "rustynet/application/doctor.py": (
        "import asyncio\nfrom rustynet.ports import keystore\nfrom rustynet.domain import tokens\n"
    ),
    "rustynet/application/node/__init__.py": "import asyncio\nfrom rustynet.ports import clock\n",
    "rustynet/application/control.py": "from rustynet.ports import keystore\n",
    "rustynet/application/relay.py": "from rustynet.ports import clock\n",
    "rustynet/bootstrap/__init__.py": "",
    "rustynet/bootstrap/entrypoints.py": (
        "from rustynet.adapters import clock\nfrom rustynet.adapters.keystore import files\n"
        "from rustynet.application import doctor\n"
    ),
    "rustynet/adapters/__init__.py": "",
    "rustynet/adapters/clock.py": "from datetime import UTC\nfrom rustynet.ports import clock\n",
    "rustynet/adapters/keystore/__init__.py": "",
    "rustynet/adapters/keystore/files.py": (
        "import os\nfrom cryptography.hazmat.primitives.ciphers import aead\n"
        "from rustynet.ports import keystore\n"
    ),
    "rustynet/adapters/cli/__init__.py": "",
    "rustynet/adapters/cli/main.py": "import argparse\nfrom rustynet.application import doctor\n",
    # The shared support package (a leaf) and adapters importing it, module and package alike.
    "rustynet/adapters/support/__init__.py": "",
    "rustynet/adapters/support/tls_policy.py": "import ssl\nfrom rustynet.domain import errors\n",
    "rustynet/adapters/support/writer.py": "from rustynet.adapters.support import tls_policy",
    "rustynet/adapters/control_client.py": "from rustynet.adapters.support import tls_policy\n",
    "rustynet/adapters/http_api/__init__.py": "",
    "rustynet/adapters/http_api/tls.py": "from rustynet.adapters.support.tls_policy import ssl\n",
    "rustynet/adapters/http_api/app.py": "from rustynet.adapters import support\n",
    # The stores: two SQL stores over the driver-free storage.sql, and two that share nothing.
    "rustynet/adapters/storage/__init__.py": "",
    "rustynet/adapters/storage/sql/__init__.py": "",
    "rustynet/adapters/storage/sql/dialect.py": "import re\nfrom rustynet.domain import errors\n",
    "rustynet/adapters/storage/sqlite.py": (
        "import sqlite3\nfrom rustynet.adapters.storage.sql import dialect\n"
    ),
    "rustynet/adapters/storage/postgres.py": (
        "import psycopg\nimport psycopg_pool\nfrom rustynet.adapters.storage.sql import dialect\n"
    ),
    "rustynet/adapters/storage/memory.py": "import asyncio\nfrom rustynet.domain import errors\n",
    "rustynet/adapters/storage/local_feed.py": "import asyncio\n",
    # The control use-case package: each layer imports the one below it.
    "rustynet/application/control/__init__.py": "",
    **{
        f"rustynet/application/control/{name}.py": (
            f"from rustynet.application.control import {below}\n" if below else ""
        )
        for name, below in (
            ("service", "enrollment"),
            *((m, "guards") for m in _CONTROL_USE_CASES),
            ("guards", "context"),
            ("relays", "context"),
            ("upkeep", "context"),
            ("context", "auth_guard"),
            ("auth_guard", "projections"),
            ("map_batch", "projections"),
            ("inputs", None),
            ("pending", None),
            ("projections", None),
        )
    },
}

# (module file, planted line, contract that must break)
IMPORT_PLANTS = [
    ("rustynet/domain/planted.py", "from rustynet.adapters import clock", "layers"),
    ("rustynet/domain/planted.py", "import socket", "Core does no I/O"),
    ("rustynet/ports/planted.py", "import logging", "Core does no I/O"),
    ("rustynet/application/planted.py", "import sqlite3", "Use cases know ports"),
    (
        "rustynet/application/node/planted.py",
        "from rustynet.application import control",
        "use cases do not import each other",
    ),
    (
        "rustynet/application/control.py",
        "from rustynet.application import relay",
        "use cases do not import each other",
    ),
    (
        "rustynet/application/planted.py",
        "from cryptography.hazmat.primitives import hashes",
        "only domain.keys and domain.tokens import cryptography",
    ),
    ("rustynet/domain/planted.py", "import cryptography", "only domain.keys and domain.tokens"),
    ("rustynet/adapters/cli/planted.py", "import pyseto", "Only domain.tokens imports pyseto"),
    (
        "rustynet/adapters/cli/planted.py",
        "from rustynet.adapters.keystore import files",
        "Adapters do not import each other",
    ),
    # Control use cases: the context never reaches up, one use case never imports another.
    (
        "rustynet/application/control/context.py",
        "from rustynet.application.control import guards",
        "Control use cases",
    ),
    (
        "rustynet/application/control/enrollment.py",
        "from rustynet.application.control import node_session",
        "Control use cases",
    ),
    # The support exception lets adapters import support, not support import an adapter.
    (
        "rustynet/adapters/support/planted.py",
        "from rustynet.adapters.keystore import files",
        "Adapter support is a leaf",
    ),
    (
        "rustynet/adapters/support/planted.py",
        "from rustynet.adapters import clock",
        "Adapter support is a leaf",
    ),
    (
        "rustynet/adapters/support/planted.py",
        "from rustynet.ports import keystore",
        "Adapter support is a leaf",
    ),
    # ... nor lets an adapter through support to another adapter (a nested one, too).
    (
        "rustynet/adapters/http_api/planted.py",
        "from rustynet.adapters.cli import main",
        "Adapters do not import each other",
    ),
    ("rustynet/adapters/storage/sql/planted.py", "import sqlite3", "SQL repositories import no"),
    ("rustynet/adapters/storage/sql/planted.py", "import psycopg", "SQL repositories import no"),
    (
        "rustynet/adapters/storage/sql/planted.py",
        "from rustynet.adapters.storage import memory",
        "SQL repositories import no",
    ),
    (
        "rustynet/adapters/storage/memory.py",
        "from rustynet.adapters.storage import sqlite",
        "Stores do not import each other",
    ),
    (
        "rustynet/adapters/storage/postgres.py",
        "from rustynet.adapters.storage import sqlite",
        "Stores do not import each other",
    ),
]


def _contract_config() -> str:
    """The `[tool.importlinter]` tables of pyproject.toml, verbatim."""
    kept: list[str] = []
    keep = False
    for line in (ROOT / "pyproject.toml").read_text().splitlines():
        if line.startswith("["):
            keep = line.lstrip("[").startswith("tool.importlinter")
        if keep:
            kept.append(line)
    assert kept, "pyproject.toml has no [tool.importlinter] section"
    return "\n".join(kept) + "\n"


def _lint_imports(
    tmp_path: Path, plant: tuple[str, str] | None
) -> subprocess.CompletedProcess[str]:
    tree = dict(CLEAN_TREE)
    if plant:
        tree[plant[0]] = plant[1] + "\n"
    for name, text in tree.items():
        (tmp_path / "pkg" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "pkg" / name).write_text(text)
    config = tmp_path / "contracts.toml"
    config.write_text(_contract_config())
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "pkg"), "COLUMNS": "250"}
    return subprocess.run(
        [str(BIN / "lint-imports"), "--config", str(config), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        check=False,
    )


def test_clean_fake_tree_keeps_every_import_contract(tmp_path: Path) -> None:
    """The fake layout without a plant passes, so a failure below comes from the plant."""
    done = _lint_imports(tmp_path, None)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize(("module", "line", "contract"), IMPORT_PLANTS)
def test_planted_forbidden_import_breaks_its_contract(
    tmp_path: Path, module: str, line: str, contract: str
) -> None:
    """A forbidden import planted in the fake tree makes lint-imports fail on that contract."""
    done = _lint_imports(tmp_path, (module, line))
    assert done.returncode != 0
    planted = module.removesuffix(".py").replace("/", ".")
    broken = [ln for ln in done.stdout.splitlines() if " BROKEN" in ln]
    assert any(contract in ln for ln in broken), done.stdout
    assert planted in done.stdout


# vocabulary


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _run_tool(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )


def test_vocabulary_cli_fails_on_a_planted_wireguard_word_naming_the_line(tmp_path: Path) -> None:
    """`wg0` planted in a domain module: exit 1 and the report names file, line and word."""
    domain = tmp_path / "domain"
    _write(domain / "clean.py", '"""Tunnel keys."""\n\nOVERLAY = "overlay_prefixes"\n')
    assert _run_tool("tools.gates.vocabulary", str(domain)).returncode == 0
    planted = _write(domain / "peer.py", '"""Peers."""\n\ninterface = "wg0"\n')
    done = _run_tool("tools.gates.vocabulary", str(domain))
    assert done.returncode == 1
    assert f"{planted}:3: wg" in done.stdout


@pytest.mark.parametrize(
    ("source", "word"),
    [
        ("class Peer:\n    allowed_ips: list[str]\n", "allowed_ips"),
        ("def f():\n    return 1  # set the WireGuard fwmark\n", "wireguard"),
        ("def f():\n    return 1  # set the WireGuard fwmark\n", "fwmark"),
        ("PRESHARED = b''\n", "preshared"),
        ("def f(listen_port: int) -> None: ...\n", "listen_port"),
        ("class WgPeer: ...\n", "wg"),
        ('"""Docstring naming the wg interface."""\n', "wg"),
        ("def f(k: X25519PublicKey) -> None: ...\n", "X25519PublicKey"),
        ("class X25519Key: ...\n", "X25519Key"),
        ("def f(k):\n    return isinstance(k, x25519.X25519PrivateKey)\n", "X25519PrivateKey"),
        ("from cryptography.x25519 import X25519PrivateKey\n", "X25519PrivateKey"),
        ("x = 1  # vocab: allow\n", "vocab: allow"),
    ],
)
def test_vocabulary_reports_each_kind_of_wireguard_word(source: str, word: str) -> None:
    """Identifiers, comments, docstrings, annotations and x25519 types are all seen."""
    found = vocabulary.scan_python(source, Path("src/rustynet/domain/peer.py"))
    assert word in {f.word for f in found}


@pytest.mark.parametrize(
    "source",
    [
        'class TunnelKeyScheme(enum.Enum):\n    X25519 = "x25519"\n',
        "def f(s: Literal[TunnelKeyScheme.X25519]) -> None: ...\n",
        "from cryptography.hazmat.primitives.asymmetric import x25519\n",
        "def f(b):\n    return x25519.X25519PrivateKey.from_private_bytes(b)\n",
        "awg = 'tagged'  # contains the letters, not the word\n",
        'PEER = "wg0"  # vocab: allow - quoting the kernel error text verbatim\n',
    ],
)
def test_vocabulary_allows_the_scheme_tag_and_the_keys_py_mapping(source: str) -> None:
    """The scheme tag, enum member and keys.py's call into the primitive are not type uses."""
    assert vocabulary.scan_python(source, Path("src/rustynet/domain/keys.py")) == []


def test_vocabulary_x25519_call_is_exempt_only_in_domain_keys() -> None:
    """The same primitive call in another domain module is reported."""
    source = "def f(b):\n    return x25519.X25519PrivateKey.from_private_bytes(b)\n"
    found = vocabulary.scan_python(source, Path("src/rustynet/domain/enrollment.py"))
    assert [f.word for f in found] == ["X25519PrivateKey"]


def test_vocabulary_scans_json_and_yaml_schemas(tmp_path: Path) -> None:
    """A schema file naming `allowedIPs` or `listen_port` fails the gate."""
    schema = {"properties": {"overlay_prefixes": {}, "allowedIPs": {"type": "array"}}}
    _write(tmp_path / "api" / "openapi.json", json.dumps(schema, indent=2))
    _write(tmp_path / "policy" / "schema.yaml", "properties:\n  listen_port:\n    type: int\n")
    found = vocabulary.scan_paths([tmp_path])
    assert {(f.path.name, f.line, f.word) for f in found} == {
        ("openapi.json", 4, "allowed_ips"),
        ("schema.yaml", 2, "listen_port"),
    }


# crypto scan

CRYPTO_PLANTS = [
    ("import hashlib\nd = hashlib.md5(b'x').digest()\n", "weak-hash"),
    ("import hashlib\nd = hashlib.sha1(b'x', usedforsecurity=False)\n", "weak-hash"),
    ("import hashlib\nd = hashlib.new('MD5')\n", "weak-hash"),
    ("import hmac\nd = hmac.new(b'k', b'm', 'sha1')\n", "weak-hash"),
    ("import hashlib, hmac\nd = hmac.new(b'k', b'm', digestmod=hashlib.md5)\n", "weak-hash"),
    ("from cryptography.hazmat.primitives import hashes\nh = hashes.SHA1()\n", "weak-hash"),
    (
        "from cryptography.hazmat.primitives.ciphers import modes\nm = modes.ECB()\n",
        "ecb-mode",
    ),
    (
        "from cryptography.hazmat.primitives.ciphers import modes\nm = modes.CBC(b'i' * 16)\n",
        "unauthenticated-mode",
    ),
    (
        "from cryptography.hazmat.primitives.ciphers import modes\nm = modes.CTR(b'n' * 16)\n",
        "unauthenticated-mode",
    ),
    (
        "from cryptography.hazmat.primitives.ciphers import algorithms\n"
        "c = algorithms.ARC4(b'k' * 16)\n",
        "weak-cipher",
    ),
    (
        "from cryptography.hazmat.decrepit.ciphers.algorithms import TripleDES\n",
        "weak-cipher",
    ),
    (
        "from cryptography.hazmat.primitives.ciphers import algorithms\n"
        "c = algorithms.Blowfish(b'k' * 16)\n",
        "weak-cipher",
    ),
    (
        "from cryptography.hazmat.primitives.asymmetric import rsa\n"
        "k = rsa.generate_private_key(public_exponent=65537, key_size=2048)\n",
        "rsa-key-size",
    ),
    (
        "from cryptography.hazmat.primitives.asymmetric import dh\n"
        "p = dh.generate_parameters(generator=2, key_size=2048)\n",
        "dh-key-size",
    ),
    (
        "from cryptography.hazmat.primitives.asymmetric import padding\np = padding.PKCS1v15()\n",
        "pkcs1v15",
    ),
    ("import random\nn = random.getrandbits(128)\n", "random-module"),
    ("from random import SystemRandom\n", "random-module"),
    ("def check(mac, expected_mac):\n    return mac == expected_mac\n", "secret-eq"),
    ("def check(self, other):\n    return self.signature != other.signature\n", "secret-eq"),
    ("def check(h, given):\n    return h.hexdigest() == given\n", "secret-eq"),
    ("x = 1\nif x: pass  # crypto-scan: allow secret-eq\n", "secret-eq"),
    ("import jwt\nc = jwt.decode(t, k, algorithms=['none'])\n", "jwt-alg-none"),
    ("HEADER = {'alg': 'none', 'typ': 'JWT'}\n", "jwt-alg-none"),
    ("OPTIONS = {'verify_signature': False}\n", "jwt-alg-none"),
    ("import pyseto\n", "token-decoding-outside-wrapper"),
    ("from joserfc import jwt\n", "token-decoding-outside-wrapper"),
]


def test_crypto_scan_cli_fails_on_a_planted_md5_call(tmp_path: Path) -> None:
    """`hashlib.md5(...)` planted in a module: exit 1 naming the file, line and rule."""
    _write(tmp_path / "src" / "ok.py", "import hashlib\nd = hashlib.sha256(b'x').digest()\n")
    assert _run_tool("tools.gates.crypto_scan", str(tmp_path)).returncode == 0
    planted = _write(tmp_path / "src" / "bad.py", "import hashlib\n\nd = hashlib.md5(b'x')\n")
    done = _run_tool("tools.gates.crypto_scan", str(tmp_path))
    assert done.returncode == 1
    assert f"{planted}:3: weak-hash" in done.stdout


@pytest.mark.parametrize(("source", "rule"), CRYPTO_PLANTS)
def test_crypto_scan_rejects_each_denied_api(source: str, rule: str) -> None:
    """Every denylist rule fires on its planted use."""
    found = crypto_scan.scan_source(source, Path("adapters/keystore/planted.py"))
    assert rule in {f.rule for f in found}


@pytest.mark.parametrize(
    "source",
    [
        "import hashlib\nd = hashlib.sha256(b'x').digest()\n",
        "import hashlib\nd = hashlib.blake2b(b'x', digest_size=32)\n",
        "import hmac, hashlib\nm = hmac.new(b'k', b'm', hashlib.sha256)\n",
        "from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305, AESGCM\n",
        "def f(token_id, other):\n    return token_id == other\n",
        "def f(token):\n    return token is None or len(token) == 32\n",
        "def f(token, other):\n    return token == other  # crypto-scan: allow secret-eq - ids\n",
        "import secrets\nn = secrets.token_bytes(16)\n",
    ],
)
def test_crypto_scan_accepts_allowlisted_use(source: str) -> None:
    """Allowlisted primitives and non-secret comparisons pass."""
    assert crypto_scan.scan_source(source, Path("adapters/x.py")) == []


def test_crypto_scan_allows_pyseto_only_in_the_token_wrapper() -> None:
    """The one wrapper may import pyseto; the same import elsewhere is denied."""
    source = "import pyseto\n"
    assert crypto_scan.scan_source(source, Path("src/rustynet/domain/tokens.py")) == []
    elsewhere = crypto_scan.scan_source(source, Path("src/rustynet/domain/enrollment.py"))
    assert [f.rule for f in elsewhere] == ["token-decoding-outside-wrapper"]


# ruff bans in the core


def test_core_ruff_config_applies_to_core_files() -> None:
    """Ruff resolves files under src/rustynet to the core config that carries the bans."""
    done = subprocess.run(
        [str(BIN / "ruff"), "check", "--show-settings", "src/rustynet/domain/keys.py"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
    )
    assert f'Settings path: "{ROOT / "src" / "rustynet" / "ruff.toml"}"' in done.stdout


def test_core_ruff_config_bans_clock_reads_and_randomness(tmp_path: Path) -> None:
    """A planted clock read, `secrets` import and library key generation are TID251 errors."""
    planted = _write(
        tmp_path / "planted.py",
        "import secrets\nimport time\nfrom datetime import UTC, datetime\n\n"
        "from cryptography.hazmat.primitives.asymmetric import ed25519\n\n"
        "A = time.time()\nB = datetime.now(UTC)\nC = secrets.token_bytes(16)\n"
        "D = ed25519.Ed25519PrivateKey.generate()\n",
    )
    done = subprocess.run(
        [
            str(BIN / "ruff"),
            "check",
            "--no-cache",
            "--config",
            str(ROOT / "src" / "rustynet" / "ruff.toml"),
            "--select",
            "TID251",
            "--output-format",
            "concise",
            str(planted),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=False,
    )
    assert done.returncode == 1
    lines = {ln.split(":")[1] for ln in done.stdout.splitlines() if "TID251" in ln}
    assert lines == {"1", "7", "8", "10"}


# audit


def _audit_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return {**env, **extra}


def _run_audit(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.audit", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        check=False,
        timeout=300,
    )


def test_audit_says_plainly_when_the_advisory_service_is_unreachable(tmp_path: Path) -> None:
    """Through a dead proxy: the plain message, exit 0, and the offline SBOM is still written."""
    dead = "http://127.0.0.1:9"  # discard port: connection refused
    env = _audit_env(HTTPS_PROXY=dead, HTTP_PROXY=dead, https_proxy=dead, http_proxy=dead)
    sbom = tmp_path / "sbom.cdx.json"
    report = str(tmp_path / "pip-audit.json")
    done = _run_audit(env, "--sbom", str(sbom), "--report", report, "--timeout", "3")
    assert done.returncode == 0, done.stdout + done.stderr
    assert audit.UNREACHABLE in done.stdout
    assert audit_safety.SAFETY_UNREACHABLE in done.stdout  # safety ran, and says it could not
    bom = json.loads(sbom.read_text())
    assert bom["bomFormat"] == "CycloneDX"
    assert bom["metadata"]["component"]["name"] == "rustynet"
    assert {"cryptography", "pyseto", "attrs"} <= {c["name"] for c in bom["components"]}

    strict = _run_audit(env, "--strict", "--no-sbom", "--report", report, "--timeout", "3")
    assert strict.returncode == audit.EXIT_NOT_PERFORMED
    assert audit.UNREACHABLE in strict.stdout
    assert audit_safety.SAFETY_UNREACHABLE in strict.stdout
    assert "Traceback" not in strict.stdout + strict.stderr


def test_safety_report_classification() -> None:
    """Safety's JSON report: advisories are listed; a report that scanned nothing is no audit."""
    report = {
        "scanned_packages": {"attrs": {}, "jinja2": {}},
        "vulnerabilities": [
            {
                "package_name": "jinja2",
                "analyzed_version": "3.1.6",
                "vulnerability_id": "99999",
                "fixed_versions": ["3.1.7"],
            }
        ],
    }
    result = audit_safety.classify_safety_report(report)
    assert result.reachable
    assert result.scanned == 2
    assert result.vulnerabilities == ["jinja2==3.1.6: safety 99999 (fixed in: 3.1.7)"]
    empty = audit_safety.classify_safety_report({"scanned_packages": {}, "vulnerabilities": []})
    assert not empty.reachable


class _OsvStub(BaseHTTPRequestHandler):
    """A local OSV query endpoint that knows one advisory, against the locked `attrs`."""

    def do_POST(self) -> None:
        query = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body: dict[str, object] = {}
        if query["package"]["name"] == "attrs":
            body = {
                "vulns": [
                    {
                        "id": "PYSEC-0000-TEST",
                        "summary": "planted advisory",
                        "affected": [{"package": {"name": "attrs", "ecosystem": "PyPI"}}],
                    }
                ]
            }
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:
        """Keep the test output clean."""


@pytest.fixture
def osv_stub() -> Iterator[str]:
    """URL of a local OSV stub server."""
    server = HTTPServer(("127.0.0.1", 0), _OsvStub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/v1/query"
    finally:
        server.shutdown()
        server.server_close()


def test_audit_fails_on_a_known_vulnerability_even_without_strict(
    tmp_path: Path, osv_stub: str
) -> None:
    """An advisory against a locked dependency exits 1 and names it."""
    report = str(tmp_path / "pip-audit.json")
    done = _run_audit(
        _audit_env(NO_PROXY="127.0.0.1"),
        "--service",
        "osv",
        "--osv-url",
        osv_stub,
        "--no-safety",  # pip-audit's verdict alone; Safety is covered by the test above
        "--no-sbom",
        "--report",
        report,
    )
    assert done.returncode == audit.EXIT_VULNERABLE, done.stdout + done.stderr
    assert "PYSEC-0000-TEST" in done.stdout
    assert "attrs==" in done.stdout


def test_audit_counts_an_all_not_found_answer_as_no_audit() -> None:
    """A report where every package was skipped (a mirror without the JSON API) is no audit."""
    skipped = {"name": "attrs", "skip_reason": "Dependency not found on PyPI"}
    result = audit.classify_report(
        "pypi", {"dependencies": [skipped, {**skipped, "name": "cattrs"}]}
    )
    assert not result.reachable
    partial = audit.classify_report(
        "pypi", {"dependencies": [skipped, {"name": "cattrs", "version": "25.1", "vulns": []}]}
    )
    assert partial.reachable
    assert partial.skipped
    assert partial.audited == ["cattrs==25.1"]
