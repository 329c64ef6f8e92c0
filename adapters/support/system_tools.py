"""Running the system tools adapters drive (nft, conntrack): one subprocess, a deadline, stdin
in, stdout back, and a failure as one exception that carries the tool's exit code and message.

The one rule: a tool that cannot start, overruns its deadline (it is killed and reaped) or
exits non-zero raises `ToolError`; callers translate that into their own port's error.
`ip netns exec NS` runs the tool in a named network namespace (nft and conntrack have no
netns flag). `nft_json` adds nft's JSON conventions (batch on stdin, JSON out).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Final

Json = object
TIMEOUT_S: Final = 10.0


class ToolError(Exception):
    """A system tool failed: `returncode` None when it never ran to completion."""

    def __init__(self, message: str, returncode: int | None = None, stderr: str = "") -> None:
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


async def run_tool(
    argv: Sequence[str],
    stdin: bytes | None = None,
    *,
    netns: str | None = None,
    timeout: float = TIMEOUT_S,
) -> bytes:
    """Run `argv` (in namespace `netns` if given) and return its stdout; raises `ToolError`."""
    full = list(argv) if netns is None else ["ip", "netns", "exec", netns, *argv]
    try:
        proc = await asyncio.create_subprocess_exec(
            *full,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    except OSError as exc:
        raise ToolError(f"cannot run {full[0]}: {exc}") from exc
    try:
        out, err = await asyncio.wait_for(proc.communicate(stdin), timeout)
    except TimeoutError as exc:
        proc.kill()
        await proc.wait()
        raise ToolError(f"{argv[0]} did not finish within {timeout} s") from exc
    message = err.decode(errors="replace").strip()
    if proc.returncode != 0:
        raise ToolError(
            f"{argv[0]} failed (exit {proc.returncode}): {message}", proc.returncode, message
        )
    return out


async def nft_json(args: Sequence[str], batch: Json | None, *, netns: str | None = None) -> Json:
    """`nft ARGS` with `batch` as JSON on stdin; its JSON output parsed (None when empty)."""
    stdin = None if batch is None else json.dumps(batch).encode()
    out = await run_tool(["nft", *args], stdin, netns=netns)
    if not out.strip():
        return None
    try:
        parsed: Json = json.loads(out)
    except ValueError as exc:
        raise ToolError("nft printed something that is not JSON") from exc
    return parsed


__all__ = ["TIMEOUT_S", "Json", "ToolError", "nft_json", "run_tool"]
