"""Plain data types exchanged between the policy, the inference engine and the ROS node."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class Observation:
    """One observation of the robot.

    images: one uint8 H x W x 3 RGB array per camera, in ``interface.camera_names`` order
        (grayscale H x W is accepted too), or an already preprocessed float tensor
        (V, 3, S, S) or (1, V, 3, S, S) with values in [0, 1].
    instruction: the natural-language task, e.g. "put the red cube in the bowl".
    state: optional 1-D float array of proprioception in robot units, ordered as
        ``interface.state_names``.
    committed: optional (n, D) actions in robot units that the robot has already queued for
        the chunk's first n steps (the rest of the chunk it is executing), n <= chunk size.
    inference_delay: how many of ``committed`` execute before the new chunk can take over
        (the inference latency in control steps); those are frozen: the returned chunk
        starts with them exactly, and the model continues them (model/prefix.py, model/rtc.py).
    """

    images: list[np.ndarray] | np.ndarray | torch.Tensor
    instruction: str
    state: np.ndarray | None = None
    committed: np.ndarray | None = None
    inference_delay: int = 0


@dataclass
class PredictedChunk:
    """The policy's answer to one observation: ``chunk_size`` future actions in robot units,
    ``actions[i]`` for the i-th control step ahead.

    timings: milliseconds per stage ("preprocess", "encode", "decode", "postprocess",
    "total").
    """

    actions: np.ndarray  # (H, D) float32, robot units
    action_names: list[str]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def chunk_size(self) -> int:
        return int(self.actions.shape[0])
