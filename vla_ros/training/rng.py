"""Every random stream of a training run, seeded from one seed and saved with checkpoints,
so that a resumed run draws exactly what an uninterrupted one would."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from vla_ros.model import make_generator


def seed_globals(seed: int) -> None:
    """Seed python's, numpy's and torch's global RNGs (weight initialization draws from torch's)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class TrainingRNG:
    """The run's own generators: batch sampling and instruction paraphrases (numpy), image
    augmentation and the instruction embedding's noise, the loss's noise (torch)."""

    def __init__(self, seed: int, device: torch.device):
        self.device = device
        self.data = np.random.default_rng(seed)
        self.augment = torch.Generator().manual_seed(seed + 1)
        self.loss = make_generator(seed + 2, device)
        self.text = np.random.default_rng(seed + 3)

    def reseed_for_step(self, seed: int, step: int, rank: int) -> None:
        """Under several processes (distributed.py): the per-sample streams of one process at one
        step, derived from (seed, step, rank), so that no process's state needs saving."""
        from vla_ros.training.distributed import step_seed

        self.augment.manual_seed(step_seed(seed, step, rank, 1))
        self.loss.manual_seed(step_seed(seed, step, rank, 2))
        self.text = np.random.default_rng(step_seed(seed, step, rank, 3))

    def json_state(self) -> dict[str, Any]:
        """The states that go into training_state.json."""
        return {"numpy_rng": self.data.bit_generator.state, "text_rng": self.text.bit_generator.state,
                "python_rng": list(random.getstate())}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The states that go into training_state.safetensors (without the "rng." prefix)."""
        out = {"torch_cpu": torch.get_rng_state(), "augment": self.augment.get_state(), "loss": self.loss.get_state()}
        if self.device.type == "cuda":
            out["torch_cuda"] = torch.cuda.get_rng_state(self.device)
        return out

    def restore(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Every stream, global ones included, as a checkpoint saved them."""
        self.data.bit_generator.state = meta["numpy_rng"]
        if "text_rng" in meta:  # runs saved before instruction augmentation existed lack it
            self.text.bit_generator.state = meta["text_rng"]
        py = meta["python_rng"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        torch.set_rng_state(tensors["rng.torch_cpu"])
        self.augment.set_state(tensors["rng.augment"])
        self.loss.set_state(tensors["rng.loss"])
        if self.device.type == "cuda" and "rng.torch_cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.torch_cuda"], self.device)
