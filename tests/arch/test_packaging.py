"""The two source folders install as one `rustynet` package with nothing left out."""

from __future__ import annotations

import tomllib
from pathlib import Path

import rustynet.adapters.entropy as entropy_adapter

ROOT = Path(__file__).resolve().parents[2]


def _declared_packages() -> set[str]:
    data = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return set(data["tool"]["setuptools"]["packages"])


def _package_folders() -> set[str]:
    found = set()
    for init in (ROOT / "src").rglob("__init__.py"):
        found.add(".".join(init.parent.relative_to(ROOT / "src").parts))
    for init in (ROOT / "adapters").rglob("__init__.py"):
        found.add(
            ".".join(("rustynet", "adapters", *init.parent.relative_to(ROOT / "adapters").parts))
        )
    return found


def test_every_package_folder_is_listed_in_pyproject() -> None:
    """A folder with __init__.py that pyproject does not list would silently not install."""
    assert _package_folders() == _declared_packages()


def test_adapters_import_as_rustynet_adapters() -> None:
    """`adapters/` is importable as `rustynet.adapters` from the installed package."""
    assert Path(entropy_adapter.__file__).resolve() == (ROOT / "adapters" / "entropy.py").resolve()
