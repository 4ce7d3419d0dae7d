"""Episode: one recorded episode as aligned arrays, and its .npz form (the episode cache)."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class Episode:
    """One recorded episode, aligned per frame (T frames, V cameras, N control ticks)."""

    path: str
    instruction: str
    success: bool
    images: np.ndarray          # (T, V, S, S, 3) uint8 RGB
    state: np.ndarray           # (T, S) float32, robot units
    actions: np.ndarray         # (T, H, D) float32, robot units
    action_is_pad: np.ndarray   # (T, H) bool
    frame_stamps: np.ndarray    # (T,) int64 ns
    action_start: np.ndarray    # (T,) int64: index of each frame's first tick
    tick_stamps: np.ndarray     # (N,) int64 ns
    tick_actions: np.ndarray    # (N, D) float32: the recorded action of every tick
    camera_names: list[str] = field(default_factory=list)
    state_names: list[str] = field(default_factory=list)
    action_names: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def name(self) -> str:
        return Path(self.path).name

    _ARRAYS = ("images", "state", "actions", "action_is_pad", "frame_stamps", "action_start", "tick_stamps",
               "tick_actions")
    _META = ("path", "instruction", "success", "camera_names", "state_names", "action_names")

    def save_npz(self, path: Path) -> None:
        """Write as .npz (arrays + a JSON string; no pickle), atomically."""
        meta = {k: getattr(self, k) for k in self._META}
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **{k: getattr(self, k) for k in self._ARRAYS})
        os.replace(tmp, path)

    @classmethod
    def load_npz(cls, path: Path) -> "Episode":
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in cls._ARRAYS}
        return cls(**meta, **arrays)
