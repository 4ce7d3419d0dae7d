"""Validation loss on held-out episodes: a fixed subset of frames, deterministic noise."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from vla_ros.data.torch_dataset import EpisodeDataset
from vla_ros.model import make_generator
from vla_ros.model.policy import VLAPolicy


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def validation_indices(n_frames: int, batch_size: int, max_batches: int, seed: int) -> np.ndarray:
    """The frames validated every time: all of them, or a seeded sorted subset of
    ``max_batches * batch_size`` (0: no cap)."""
    cap = max_batches * batch_size if max_batches else n_frames
    if n_frames <= cap:
        return np.arange(n_frames)
    return np.sort(np.random.default_rng(seed).choice(n_frames, cap, replace=False))


@torch.no_grad()
def evaluate_loss(policy: VLAPolicy, dataset: EpisodeDataset, indices: np.ndarray, batch_size: int,
                  seed: int, device: torch.device) -> float:
    """Mean loss over ``indices`` (deterministic: the head's noise comes from ``seed``)."""
    was_training = policy.training
    policy.eval()
    gen = make_generator(seed, device)
    total, count = 0.0, 0
    try:
        for i in range(0, len(indices), batch_size):
            idx = indices[i:i + batch_size]
            loss, _ = policy.loss(to_device(dataset.batch(idx), device), generator=gen)
            total += float(loss) * len(idx)
            count += len(idx)
    finally:
        policy.train(was_training)
    return total / max(count, 1)
