"""Gate: fail on denied crypto APIs (the denylist of docs/threat-model/crypto-policy.md).

The one rule: code uses only allowlisted primitives (Ed25519, X25519, ChaCha20-Poly1305,
AES-256-GCM, SHA-2/3, BLAKE2, HMAC-SHA-256, HKDF, Argon2id) and never a way to skip a check.
The scan reads the AST of every Python file under the given paths and resolves names through
the file's imports (`import hashlib as h; h.md5` is `hashlib.md5`).

Rules (each finding is `file:line: rule: message`):
- `weak-hash`: MD5 or SHA-1 in any form: `hashlib.md5`/`hashlib.sha1` (also with
  `usedforsecurity=False`: there is no use for them here), `hashlib.new("md5")`,
  `hmac.new(key, msg, "sha1")`, `hashlib.pbkdf2_hmac("sha1", ...)`, cryptography's
  `hashes.MD5`/`hashes.SHA1`, pycryptodome's `Crypto.Hash.MD5`/`SHA1`.
- `weak-cipher`: DES, TripleDES, Blowfish, ARC4 (RC4), CAST5, IDEA, SEED, RC2, and anything
  from `cryptography.hazmat.decrepit`.
- `ecb-mode`: `modes.ECB` (or pycryptodome `MODE_ECB`).
- `unauthenticated-mode`: `modes.CBC`, `CTR`, `OFB`, `CFB`, `CFB8`, `XTS` outright: we have no
  use for them, encryption is AEAD only (`aead.ChaCha20Poly1305`, `aead.AESGCM`).
- `pkcs1v15`: `padding.PKCS1v15` (and pycryptodome's PKCS#1 v1.5 modules).
- `rsa-key-size` / `dh-key-size`: `rsa.generate_private_key` / `dh.generate_parameters` with a
  literal key size below 3072 bits.
- `random-module`: `import random` / `from random import ...` anywhere; secrets come from the
  Entropy port (`secrets` in its adapter).
- `secret-eq`: `==` / `!=` where either side is named like a MAC, tag, digest, signature,
  hash, token, secret, password or passphrase (the last part of the name, so `token_id` is
  fine; for a call, the called name, so `h.hexdigest() == x` counts); compare with
  `keys.constant_time_equal`. Comparisons with `None`/`True`/`False` are not reported.
- `jwt-alg-none`: `alg`/`algorithm`/`algorithms` arguments or `{"alg": ...}` entries that say
  `"none"`, and `{"verify_signature": False}`.
- `token-decoding-outside-wrapper`: importing a token library (`pyseto`, `paseto`, `jwt`,
  `jose`, `joserfc`, `jwcrypto`, `python_jwt`, `authlib.jose`) anywhere but
  `rustynet/domain/tokens.py`, the one wrapper that checks every claim.

Only `secret-eq` is a heuristic on names, so only it has an escape hatch: a line ending in
`# crypto-scan: allow secret-eq - <reason>` (the reason is required), for a comparison of
public values that happen to carry such a name. Denied APIs have no escape: the crypto policy
with its expiring exceptions is the place to argue for one.

CLI: `python -m tools.gates.crypto_scan PATH...`: exit 1 listing findings, 0 when clean,
2 when a path does not exist.
"""

from __future__ import annotations

import argparse
import ast
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from tools.gates.common import run_gate, source_files

MIN_ASYMMETRIC_BITS: Final = 3072
TOKEN_WRAPPER: Final = ("rustynet", "domain", "tokens.py")

_WEAK_HASH_NAMES: Final = frozenset({"md5", "sha1", "md4", "md5sha1", "sha"})
_WEAK_CIPHERS: Final = frozenset(
    {"DES", "DES3", "TripleDES", "Blowfish", "ARC4", "RC4", "CAST5", "IDEA", "SEED", "RC2", "ARC2"}
)
_UNAUTHENTICATED_MODES: Final = frozenset({"CBC", "CTR", "OFB", "CFB", "CFB8", "XTS"})
_CRYPTO_ROOTS: Final = frozenset({"cryptography", "Crypto", "Cryptodome"})
_TOKEN_LIBRARIES: Final = frozenset(
    {"pyseto", "paseto", "jwt", "jose", "joserfc", "jwcrypto", "python_jwt"}
)
_DIGEST_CALLS: Final = frozenset(
    {"hashlib.new", "hashlib.pbkdf2_hmac", "hashlib.file_digest", "hmac.new", "hmac.digest"}
)
_SECRET_NAME: Final = re.compile(
    r"(?:^|_)(mac|hmac|tag|digest|hexdigest|signature|sig|hash|token|secret|password|passphrase)$"
)
_ALG_KEYWORDS: Final = frozenset({"alg", "algorithm", "algorithms"})
_ESCAPE: Final = re.compile(r"#\s*crypto-scan:\s*allow\s+secret-eq\b(.*)$")


@dataclass(frozen=True, order=True)
class Finding:
    """One denied use at one line."""

    path: Path
    line: int
    rule: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.rule}: {self.message}"


def _normal_hash_name(text: str) -> str:
    return text.lower().replace("-", "").replace("_", "")


def _denied_name(qualified: str) -> tuple[str, str] | None:
    """(rule, message) when a fully qualified name is a denied API."""
    parts = qualified.split(".")
    root, last = parts[0], parts[-1]
    if root == "random":
        return "random-module", f"{qualified}: secrets come from the Entropy port"
    if qualified in {"hashlib.md5", "hashlib.sha1"}:
        return "weak-hash", f"{qualified}: MD5/SHA-1 are denied; use SHA-256 or BLAKE2"
    if root not in _CRYPTO_ROOTS:
        return None
    mode = last.removeprefix("MODE_")
    checks = (
        ("decrepit" in parts, "weak-cipher", "cryptography's decrepit algorithms are denied"),
        (
            last in {"MD5", "SHA1", "SHA"} and ("hashes" in parts or "Hash" in parts),
            "weak-hash",
            "MD5/SHA-1 are denied; use SHA-256 or BLAKE2",
        ),
        (last in _WEAK_CIPHERS, "weak-cipher", "denied cipher; use ChaCha20-Poly1305/AES-256-GCM"),
        (mode == "ECB", "ecb-mode", "ECB is denied; use an AEAD"),
        (mode in _UNAUTHENTICATED_MODES, "unauthenticated-mode", "no MAC; use an AEAD"),
        (last in {"PKCS1v15", "PKCS1_v1_5", "pkcs1_15"}, "pkcs1v15", "PKCS#1 v1.5 is denied"),
    )
    for hit, rule, why in checks:
        if hit:
            return rule, f"{qualified}: {why}"
    return None


class _Scanner(ast.NodeVisitor):
    """Collects findings for one module; `aliases` maps local names to qualified names."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.aliases: dict[str, str] = {}
        self.findings: list[Finding] = []
        self.secret_eq_allowed: set[int] = set()
        self.is_token_wrapper = path.parts[-3:] == TOKEN_WRAPPER

    def add(self, node: ast.expr | ast.stmt | ast.keyword, rule: str, message: str) -> None:
        self.findings.append(Finding(self.path, node.lineno, rule, message))

    def qualified(self, node: ast.AST) -> str | None:
        """`a.b.c` with `a` resolved through the imports, or None for other expressions."""
        attrs: list[str] = []
        while isinstance(node, ast.Attribute):
            attrs.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        base = self.aliases.get(node.id, node.id)
        return ".".join([base, *reversed(attrs)])

    def _check_module(self, node: ast.Import | ast.ImportFrom, module: str) -> None:
        root = module.split(".", maxsplit=1)[0]
        if (root in _TOKEN_LIBRARIES or module.startswith("authlib.jose")) and not (
            self.is_token_wrapper
        ):
            self.add(
                node,
                "token-decoding-outside-wrapper",
                f"import of {module}: tokens are decoded only in rustynet.domain.tokens",
            )
        denied = _denied_name(module)
        if denied:
            self.add(node, *denied)

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            self.aliases[alias.asname or alias.name.split(".")[0]] = (
                alias.name if alias.asname else alias.name.split(".")[0]
            )
            self._check_module(node, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.level or not node.module:
            return
        self._check_module(node, node.module)
        for alias in node.names:
            qualified = f"{node.module}.{alias.name}"
            self.aliases[alias.asname or alias.name] = qualified
            denied = _denied_name(qualified)
            if denied and not node.module.startswith("random"):
                self.add(node, *denied)

    def visit_Attribute(self, node: ast.Attribute) -> None:
        self._check_reference(node)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        self._check_reference(node)

    def _check_reference(self, node: ast.Attribute | ast.Name) -> None:
        qualified = self.qualified(node)
        # `random.x` is reported once, at the import.
        if qualified and not qualified.startswith("random"):
            denied = _denied_name(qualified)
            if denied:
                self.add(node, *denied)

    def visit_Call(self, node: ast.Call) -> None:
        name = self.qualified(node.func) or ""
        if name in _DIGEST_CALLS:
            texts = [a for a in node.args if isinstance(a, ast.Constant)]
            texts += [k.value for k in node.keywords if isinstance(k.value, ast.Constant)]
            for const in texts:
                text = const.value if isinstance(const.value, str) else ""
                if _normal_hash_name(text) in _WEAK_HASH_NAMES:
                    self.add(node, "weak-hash", f"{name}({text!r}): MD5/SHA-1 are denied")
        if name.endswith(("asymmetric.rsa.generate_private_key", "PublicKey.RSA.generate")):
            position = 0 if name.endswith("RSA.generate") else 1
            self._check_key_size(node, position, ("key_size", "bits"), "rsa-key-size", "RSA")
        if name.endswith("asymmetric.dh.generate_parameters"):
            self._check_key_size(node, 1, ("key_size",), "dh-key-size", "DH")
        for keyword in node.keywords:
            if keyword.arg in _ALG_KEYWORDS and _says_none(keyword.value):
                self.add(keyword, "jwt-alg-none", f"{name}({keyword.arg}='none')")
        self.generic_visit(node)

    def _check_key_size(
        self, node: ast.Call, position: int, names: tuple[str, ...], rule: str, what: str
    ) -> None:
        size: ast.expr | None = node.args[position] if len(node.args) > position else None
        for keyword in node.keywords:
            if keyword.arg in names:
                size = keyword.value
        bits = size.value if isinstance(size, ast.Constant) else None
        if isinstance(bits, int) and bits < MIN_ASYMMETRIC_BITS:
            self.add(node, rule, f"{what} key size {bits} < {MIN_ASYMMETRIC_BITS}")

    def visit_Dict(self, node: ast.Dict) -> None:
        for key, value in zip(node.keys, node.values, strict=True):
            if not (isinstance(key, ast.Constant) and isinstance(key.value, str)):
                continue
            if key.value == "alg" and _says_none(value):
                self.add(node, "jwt-alg-none", "{'alg': 'none'}")
            if key.value == "verify_signature" and _is_constant(value, False):
                self.add(node, "jwt-alg-none", "{'verify_signature': False}")
        self.generic_visit(node)

    def visit_Compare(self, node: ast.Compare) -> None:
        operands = [node.left, *node.comparators]
        for op, left, right in zip(node.ops, operands, operands[1:], strict=False):
            if not isinstance(op, ast.Eq | ast.NotEq):
                continue
            if any(_is_constant(side, None, True, False) for side in (left, right)):
                continue
            named = [n for n in (_last_name(left), _last_name(right)) if n]
            secret = [n for n in named if _SECRET_NAME.search(n.lower())]
            lines = range(node.lineno, (node.end_lineno or node.lineno) + 1)
            if secret and not self.secret_eq_allowed.intersection(lines):
                self.add(
                    node,
                    "secret-eq",
                    f"`==`/`!=` on {secret[0]!r}: use keys.constant_time_equal",
                )
        self.generic_visit(node)


def _last_name(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return node.attr
    if isinstance(node, ast.Subscript):
        return _last_name(node.value)
    if isinstance(node, ast.Call):  # `hmac.new(...).hexdigest() == given`
        return _last_name(node.func)
    return None


def _is_constant(node: ast.expr | None, *values: object) -> bool:
    return isinstance(node, ast.Constant) and any(node.value is v for v in values)


def _says_none(node: ast.expr | None) -> bool:
    if isinstance(node, ast.Constant):
        return isinstance(node.value, str) and node.value.lower() == "none"
    if isinstance(node, ast.List | ast.Tuple | ast.Set):
        return any(_says_none(element) for element in node.elts)
    return False


def _escapes(source: str, path: Path) -> tuple[set[int], list[Finding]]:
    allowed: set[int] = set()
    bad: list[Finding] = []
    for number, line in enumerate(source.splitlines(), start=1):
        match = _ESCAPE.search(line)
        if match is None:
            continue
        if len(match.group(1).strip().lstrip("-:").strip()) < 3:
            bad.append(Finding(path, number, "secret-eq", "allow comment without a reason"))
        else:
            allowed.add(number)
    return allowed, bad


def scan_source(source: str, path: Path) -> list[Finding]:
    """Findings in one Python source text; `path` decides the token-wrapper exemption."""
    try:
        tree = ast.parse(source, filename=str(path))
    except SyntaxError as exc:
        return [Finding(path, exc.lineno or 1, "parse-error", str(exc))]
    scanner = _Scanner(path)
    scanner.secret_eq_allowed, bad = _escapes(source, path)
    scanner.visit(tree)
    return sorted(set(scanner.findings + bad))


def scan_paths(paths: Iterable[Path]) -> list[Finding]:
    """Findings in every Python file under `paths` (files or directories)."""
    found: list[Finding] = []
    for root in paths:
        for path in source_files(root, {".py"}):
            found += scan_source(path.read_text(encoding="utf-8"), path)
    return found


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.gates.crypto_scan",
        description="Fail on denied crypto APIs (md5/sha1, ECB, DES, RC4, random, == on MACs...).",
    )
    parser.add_argument("paths", nargs="+", type=Path, help="files or directories to scan")
    args = parser.parse_args(argv)
    return run_gate("crypto_scan", args.paths, scan_paths, "denied crypto use(s)")


if __name__ == "__main__":
    sys.exit(main())
