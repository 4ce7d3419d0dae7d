"""Staleness watchdog for the inputs the control loop depends on.

The node feeds it whenever an input arrives (camera image, joint state, inference
result) and asks, every control tick, which inputs are stale; if any is, it holds the
arm instead of acting on old data. The clock is passed in (``now``, ``stamp`` in
seconds, any common time base) so the watchdog works with ROS sim time and is trivial
to test.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Mapping

__all__ = ["Watchdog"]


class Watchdog:
    """Track the last arrival time of named inputs against per-input timeouts.

    An input is stale when it was never fed, when ``now - last > timeout``, or when
    ``last - now > timeout``: a stamp that far in the *future* means the clock jumped
    backwards (e.g. a simulator or bag restart) and the data cannot be trusted as fresh.

    Thread-safe: subscription callbacks in a multi-threaded executor may feed
    concurrently with the control timer reading it.
    """

    def __init__(self, timeouts: Mapping[str, float]) -> None:
        self._timeouts: dict[str, float] = {}
        for name, timeout in timeouts.items():
            t = float(timeout)
            if not math.isfinite(t) or t <= 0:
                raise ValueError(f"timeout for {name!r} must be a positive finite number, got {timeout!r}")
            self._timeouts[str(name)] = t
        self._last: dict[str, float] = {}
        self._lock = threading.Lock()

    @property
    def names(self) -> list[str]:
        return list(self._timeouts)

    def feed(self, name: str, stamp: float) -> None:
        """Record that ``name`` arrived with time ``stamp``.

        Out-of-order stamps never move the record backwards. Non-finite stamps are
        ignored (they cannot make an input fresh).

        Raises:
            KeyError: ``name`` has no timeout configured (catches typos early).
        """
        if name not in self._timeouts:
            raise KeyError(f"watchdog has no input named {name!r}; known: {list(self._timeouts)}")
        s = float(stamp)
        if not math.isfinite(s):
            return
        with self._lock:
            last = self._last.get(name)
            if last is None or s > last:
                self._last[name] = s

    def age(self, name: str, now: float) -> float | None:
        """Seconds since ``name`` was last fed, or ``None`` if never fed."""
        with self._lock:
            last = self._last.get(name)
        return None if last is None else float(now) - last

    def stale(self, now: float) -> list[str]:
        """Names of stale inputs at time ``now``, in configuration order."""
        now = float(now)
        with self._lock:
            last = dict(self._last)
        out = []
        for name, timeout in self._timeouts.items():
            t = last.get(name)
            # NaN now makes every comparison false; "not (age <= timeout)" counts it stale.
            if t is None or not (abs(now - t) <= timeout):
                out.append(name)
        return out

    def reset(self) -> None:
        """Forget every arrival: each input counts as never fed again."""
        with self._lock:
            self._last.clear()
