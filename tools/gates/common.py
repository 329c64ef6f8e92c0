"""What every gate shares: which files it reads, and how it reports (exit 0 clean, 1 findings,
2 usage error), so the gates cannot drift apart in what they skip or how they fail."""

from __future__ import annotations

import sys
from collections.abc import Callable, Collection, Iterator, Sequence
from pathlib import Path


def source_files(root: Path, suffixes: Collection[str]) -> Iterator[Path]:
    """`root` itself if it is a file, else every file under it with one of `suffixes`, sorted;
    caches and hidden folders are skipped."""
    if root.is_file():
        yield root
        return
    for path in sorted(root.rglob("*")):
        if any(part == "__pycache__" or part.startswith(".") for part in path.parts):
            continue
        if path.is_file() and path.suffix in suffixes:
            yield path


def run_gate(
    gate: str, paths: Sequence[Path], scan: Callable[[Sequence[Path]], Sequence[object]], what: str
) -> int:
    """Scan `paths`, print each finding, and return the exit status (`what` names a finding)."""
    missing = [p for p in paths if not p.exists()]
    if missing:
        print(f"{gate}: no such path: {', '.join(map(str, missing))}", file=sys.stderr)
        return 2
    findings = scan(paths)
    for finding in findings:
        print(finding)
    if findings:
        print(f"{gate}: {len(findings)} {what}", file=sys.stderr)
        return 1
    return 0
