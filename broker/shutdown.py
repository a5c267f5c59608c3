"""Graceful shutdown of ``renkei serve`` within a bound (``RENKEI_SHUTDOWN_TIMEOUT``).

On SIGTERM (or SIGINT) uvicorn stops accepting connections, closes idle keep-alive
connections, lets the requests in flight finish and answer, then runs the lifespan's
shutdown: the store finishes the writes it was sent (``SqliteStore.close`` waits for
its queue), the notifications not yet delivered are handed to the store for the next
process to send and the subscriptions' delivery status is written (``SubscriptionService
.aclose``). A write answered 201/204 was committed, and matched against the
subscriptions, before it was answered, so none is lost, however the process ends
afterwards.

The bound: in-flight requests get ``drain_seconds(timeout)``; the lifespan's shutdown
gets the rest; should anything still hang at ``timeout`` after the signal, a watchdog
ends the process (exit status 1), so it always ends before Kubernetes' SIGKILL at
``terminationGracePeriodSeconds`` (30 by default; the default timeout is 25). A
shutdown done in order exits with status 0.
"""

from __future__ import annotations

import logging
import os
import threading
from types import FrameType

import uvicorn

log = logging.getLogger("renkei")


def drain_seconds(timeout: float) -> int:
    """Of ``timeout``, the whole seconds requests in flight may take to finish: the
    rest (a fifth, at most 5 s) is left to closing the store."""
    return max(1, int(timeout - min(5.0, timeout / 5)))


class BoundedServer(uvicorn.Server):
    """uvicorn's server, ended by a watchdog when shutting down outlasts ``timeout``."""

    def __init__(self, config: uvicorn.Config, timeout: float) -> None:
        super().__init__(config)
        self.timeout = timeout
        self._watchdog: threading.Timer | None = None

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._watchdog is None:
            log.info("signal %d: shutting down within %g s", sig, self.timeout)
            self._watchdog = threading.Timer(self.timeout, _overdue, (self.timeout,))
            self._watchdog.daemon = True
            self._watchdog.start()
        super().handle_exit(sig, frame)
        # uvicorn raises the signal again once shut down, which kills the process before
        # the caller's own clean-up (``renkei demo`` stopping its Mosquitto and agent)
        # runs: here a signal handled in order ends the process normally instead.
        captured = getattr(self, "_captured_signals", None)
        if isinstance(captured, list):
            captured.clear()


def _overdue(timeout: float) -> None:
    log.error("shutdown took longer than %g s: exiting now", timeout)
    logging.shutdown()
    os._exit(1)
