"""A purge run in the background every so often: expired transient entities, expired
entity maps. One place for the loop, its log lines and its cancellation."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger("renkei")


class Purger:
    """Runs ``purge`` (which answers how many it removed) every ``interval`` seconds
    once started, logging what it removed and any failure (then retrying at the next
    run), until :meth:`aclose`. ``what`` names what is purged in the log."""

    def __init__(
        self, purge: Callable[[], Awaitable[int]], *, what: str, task_name: str, wait_first: bool
    ) -> None:
        self._purge = purge
        self._what = what
        self._task_name = task_name
        self._wait_first = wait_first
        self._task: asyncio.Task[None] | None = None

    def start(self, interval: float) -> None:
        """Run every ``interval`` seconds (0: never); a second start changes nothing."""
        if interval > 0 and self._task is None:
            self._task = asyncio.create_task(self._loop(interval), name=self._task_name)

    async def _loop(self, interval: float) -> None:
        if self._wait_first:
            await asyncio.sleep(interval)
        while True:
            try:
                gone = await self._purge()
                if gone:
                    log.info("%s: %d expired and purged", self._what, gone)
            except Exception:
                log.exception("purging expired %s failed; retrying at the next run", self._what)
            await asyncio.sleep(interval)

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
