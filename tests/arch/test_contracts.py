"""The real tree passes the arch gates: import contracts, WireGuard vocabulary, crypto denylist."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import grimp
from tools.gates import crypto_scan, vocabulary

ROOT = Path(__file__).resolve().parents[2]


def _source_modules() -> set[str]:
    """Every module file of the two source folders, as its `rustynet...` import name."""
    found: set[str] = set()
    folders = [
        (ROOT / "src" / "rustynet", ("rustynet",)),
        (ROOT / "adapters", ("rustynet", "adapters")),
    ]
    for folder, prefix in folders:
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found.add(".".join((*prefix, *parts)))
    return found


def test_import_graph_covers_every_source_module() -> None:
    """lint-imports reads the installed package; a module missing from it would go unchecked."""
    graph = grimp.build_graph("rustynet", exclude_type_checking_imports=True)
    missing = _source_modules() - set(graph.modules)
    assert not missing, (
        f"not in the installed package, so not checked by the contracts: {sorted(missing)}; "
        "run `.venv/bin/pip install --no-deps -e . --config-settings editable_mode=strict`"
    )


def test_real_tree_keeps_every_import_contract() -> None:
    """`lint-imports` with the project's contracts passes on the installed package."""
    done = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports"), "--no-cache"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "COLUMNS": "250"},
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert " 0 broken" in done.stdout


def test_real_core_has_no_wireguard_vocabulary() -> None:
    """Domain, ports and application are free of WireGuard words and x25519 types."""
    assert vocabulary.scan_paths(vocabulary.DEFAULT_PATHS) == []


def test_real_tree_uses_no_denied_crypto_api() -> None:
    """src and adapters pass the crypto denylist scan."""
    assert crypto_scan.scan_paths([ROOT / "src", ROOT / "adapters"]) == []
