"""SIGHUP for `rustynet-control serve`: re-read control.toml and make its relays live.

The one rule: a reload never stops the server and never half-applies. control.toml is read and
checked in full; a file that does not parse is logged (`config.reload_failed`) and the running
settings stay as they were. From a good file the `[[relays]]` list is applied at once through
`replace_relays` (every active node gets a new signed peer map, one `relays.replaced` audit
entry); any other setting that differs from the running one is named in
`config.reload_needs_restart` and NOT applied (listen address, certificate, database and key
store are bound at start). SIGHUPs that arrive while a reload runs are folded into one more.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Final

import attrs
import structlog

from rustynet.adapters.config import ConfigError, ControlConfig, load_control_config
from rustynet.application.control import ControlService
from rustynet.domain.errors import RustynetError

RELOAD_ACTOR: Final = "config:control.toml"
_log = structlog.get_logger("rustynet.control.reload")


def restart_only_changes(running: ControlConfig, fresh: ControlConfig) -> tuple[str, ...]:
    """The settings (other than relays) that differ and need a restart to take effect."""
    names = [f.name for f in attrs.fields(ControlConfig) if f.name != "relays"]
    return tuple(n for n in names if getattr(running, n) != getattr(fresh, n))


class RelayReloader:
    """Runs one reload per SIGHUP burst on the server's loop (`request` is the handler)."""

    def __init__(self, service: ControlService, path: Path, running: ControlConfig) -> None:
        self._service, self._path, self._running = service, path, running
        self._task: asyncio.Task[None] | None = None
        self._again = False
        self.completed = 0

    def request(self) -> None:
        """The SIGHUP handler: start a reload, or ask the running one to go once more."""
        if self._task is not None and not self._task.done():
            self._again = True
            return
        self._task = asyncio.get_running_loop().create_task(self._run(), name="config-reload")

    async def _run(self) -> None:
        again = True
        while again:
            self._again = False
            await self.reload()
            again = self._again

    async def reload(self) -> None:
        """Read, check and apply once; every failure is logged, none escapes."""
        try:
            fresh = await asyncio.to_thread(load_control_config, self._path)
        except ConfigError as exc:
            _log.error("config.reload_failed", path=str(self._path), error=str(exc))
            return
        stale = restart_only_changes(self._running, fresh)
        if stale:
            _log.warning("config.reload_needs_restart", settings=list(stale))
        try:
            outcome = await self._service.replace_relays(fresh.relays, actor=RELOAD_ACTOR)
        except RustynetError as exc:
            _log.error("config.reload_failed", path=str(self._path), error=str(exc))
            return
        self._running = attrs.evolve(self._running, relays=fresh.relays)
        self.completed += 1
        _log.info(
            "config.reloaded",
            relays=[r.id for r in outcome.relays],
            changed=outcome.changed,
            woken=outcome.woken,
        )

    async def close(self) -> None:
        """Cancel a reload in flight (server shutdown)."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


__all__ = ["RELOAD_ACTOR", "RelayReloader", "restart_only_changes"]
