"""The policy's inference latency, measured online: how long the robot waits for a chunk.

A request's latency is the time from the observation leaving the node to its chunk being back
(the model, the server round trip, a network, a slow GPU), on the node's clock. The controller
needs a high estimate, not a mean: it decides how many of the actions already queued will have
executed before the new chunk can take over (the chunk's frozen prefix, Real-Time Chunking's
inference delay d), and a chunk that arrives after the ticks it was planned for loses them.
The estimate is a high quantile of the last few requests, so it follows a model that slows down
(a thermal throttle, a loaded network) within a few chunks and forgets an outlier as quickly.
"""
from __future__ import annotations

import math
from collections import deque

import numpy as np

__all__ = ["LatencyEstimator"]


class LatencyEstimator:
    """A high quantile of the last ``window`` request latencies (seconds)."""

    def __init__(self, window: int = 20, quantile: float = 0.9):
        if int(window) != window or window < 1:
            raise ValueError(f"window must be a positive integer, got {window!r}")
        if not 0.0 <= quantile <= 1.0:
            raise ValueError(f"quantile must be in [0, 1], got {quantile!r}")
        self.quantile = float(quantile)
        self._samples: deque[float] = deque(maxlen=int(window))

    def add(self, seconds: float) -> None:
        """One answered request's latency; negative or non-finite values (a clock jump) are ignored."""
        if math.isfinite(seconds) and seconds >= 0.0:
            self._samples.append(float(seconds))

    def reset(self) -> None:
        self._samples.clear()

    @property
    def count(self) -> int:
        return len(self._samples)

    def estimate(self) -> float | None:
        """The latency to plan with (s), or None before the first answer."""
        if not self._samples:
            return None
        return float(np.quantile(np.fromiter(self._samples, float), self.quantile))

    def last(self) -> float | None:
        return self._samples[-1] if self._samples else None
