"""Stopping a node on SIGINT/SIGTERM: an event set by the signal, and an executor spun until it is set
(sim robot, recorder, player)."""
from __future__ import annotations

import signal
import threading


class StopSignal:
    """SIGINT/SIGTERM set an event instead of tearing the context down under us."""

    def __init__(self):
        self.event = threading.Event()
        self.signum = None
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._handle)

    def _handle(self, signum, frame):
        self.signum = signum
        self.event.set()

    def __bool__(self):
        return self.event.is_set()


def spin_until_stopped(executor, stop: threading.Event) -> None:
    """Spin `executor` (in a thread) until `stop` is set; errors after the stop are the
    context being shut down under it at exit and are ignored."""
    while not stop.is_set():
        try:
            executor.spin_once(timeout_sec=0.05)
        except Exception:  # noqa: BLE001 - context shut down under us at exit
            if not stop.is_set():
                raise
