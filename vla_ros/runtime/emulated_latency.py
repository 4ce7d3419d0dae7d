"""Emulated inference latency: "how would my robot behave with pi0's latency?" before buying a GPU.

A what-if tool, off by default. The delay is added to each inference where a slow model would spend its time: in
the policy server process (the node's local policy server, or `vla-ros serve`), after the model's
forward pass and before the answer is sent, so the control loop's interpreter never waits on it and
the node sees exactly what a slow model looks like from outside: late chunks.

Two shapes: a fixed delay, or a lognormal one (GPU and network latency have long tails) whose
median is the given latency and whose 99th percentile is the given p99:
``latency * exp(sigma * z)``, ``z ~ N(0, 1)``, ``sigma = ln(p99 / latency) / 2.3263``. The random
source is seeded, so a benchmark row is reproducible.
"""
from __future__ import annotations

import math
import time

import numpy as np

__all__ = ["EmulatedLatency"]

_Z99 = 2.326347874040841  # the standard normal's 99th percentile


class EmulatedLatency:
    """Seconds to add to each inference: fixed (p99 = 0 or = latency) or lognormal."""

    def __init__(self, latency: float = 0.0, p99: float = 0.0, seed: int = 0):
        if not (math.isfinite(latency) and latency >= 0.0):
            raise ValueError(f"emulated latency must be a finite number of seconds >= 0, got {latency!r}")
        if not (math.isfinite(p99) and p99 >= 0.0):
            raise ValueError(f"emulated latency p99 must be a finite number of seconds >= 0, got {p99!r}")
        if p99 and p99 < latency:
            raise ValueError(f"emulated latency p99 ({p99} s) must be at least the latency ({latency} s): the "
                             "latency is the median")
        if p99 and latency == 0.0:
            raise ValueError("emulated latency p99 needs a latency (the median) above 0")
        self.latency, self.p99 = float(latency), float(p99)
        self.sigma = math.log(p99 / latency) / _Z99 if p99 > latency > 0 else 0.0
        self._rng = np.random.default_rng(seed)

    @classmethod
    def from_config(cls, cfg: dict) -> "EmulatedLatency | None":
        """The request's "emulated_latency" section {"latency", "p99", "seed"}, or None when off."""
        section = cfg.get("emulated_latency") or {}
        if not section or not section.get("latency"):
            return None
        return cls(float(section["latency"]), float(section.get("p99", 0.0)), int(section.get("seed", 0)))

    @property
    def enabled(self) -> bool:
        return self.latency > 0.0

    def describe(self) -> str:
        if self.sigma:
            return f"lognormal, median {self.latency:g} s, p99 {self.p99:g} s"
        return f"fixed {self.latency:g} s"

    def sample(self) -> float:
        """One delay in seconds."""
        if self.sigma == 0.0:
            return self.latency
        return float(self.latency * math.exp(self.sigma * self._rng.standard_normal()))

    def wait(self) -> float:
        """Sleep one sampled delay (added to the model's own time); returns the seconds slept."""
        s = self.sample()
        if s > 0.0:
            time.sleep(s)
        return s
