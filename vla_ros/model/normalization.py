"""Per-dimension normalization of states and actions, stored with the checkpoint.

Networks (and the 256-bin tokenizer) want inputs and targets of unit scale, robots speak
metres, radians and gripper widths. :func:`compute_stats` measures each dimension once
over the training data; the statistics go into ``normalization.json`` next to the
weights, and :func:`build_processors` turns them into a pre-processor (robot units ->
normalized, applied to state and action targets) and a post-processor (normalized ->
robot units, applied to predicted actions) that are exact mirror images because they
share the same :class:`FeatureNormalizer` objects.

Modes:
  * ``quantile``: map [q01, q99] to [-1, 1] and clip (OpenVLA, pi0): robust to the
    outliers that teleoperation data is full of, and matches the tokenizer's range.
  * ``mean_std``: zero mean, unit variance (ACT, Diffusion Policy).
  * ``min_max``: map [min, max] to [-1, 1].

A mask lists dimensions left untouched, e.g. a binary gripper command already in
{-1, 1} or {0, 1}, which quantile scaling would distort.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn as nn

EPS = 1e-6  # smallest scale, so constant dimensions do not divide by zero


@dataclass
class FeatureStats:
    """Statistics of one feature (e.g. "action"), one entry per dimension."""

    mean: list[float]
    std: list[float]
    min: list[float]
    max: list[float]
    q01: list[float]
    q99: list[float]
    count: int = 0

    @property
    def dim(self) -> int:
        return len(self.mean)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def widened(self, other: "FeatureStats") -> "FeatureStats":
        """These statistics with each range (min, max, q01, q99) widened, per dimension, to cover
        ``other``'s; mean and std stay (mean_std normalization does not clip, so it needs no
        widening). Where ``other`` lies inside this range, nothing changes."""
        if other.dim != self.dim:
            raise ValueError(f"cannot widen statistics of {self.dim} dimensions by {other.dim}")
        return dataclasses.replace(
            self, min=np.minimum(self.min, other.min).tolist(), max=np.maximum(self.max, other.max).tolist(),
            q01=np.minimum(self.q01, other.q01).tolist(), q99=np.maximum(self.q99, other.q99).tolist())

    @classmethod
    def from_dict(cls, data: dict) -> "FeatureStats":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ValueError(f"unknown FeatureStats key(s) {unknown}")
        missing = sorted(names - set(data) - {"count"})
        if missing:
            raise ValueError(f"FeatureStats is missing key(s) {missing}")
        stats = cls(**data)
        dims = {k: len(getattr(stats, k)) for k in ("mean", "std", "min", "max", "q01", "q99")}
        if len(set(dims.values())) != 1:
            raise ValueError(f"FeatureStats fields have different lengths: {dims}")
        return stats


def compute_stats(array: np.ndarray | torch.Tensor) -> FeatureStats:
    """Statistics over all leading axes of ``array`` (..., D), e.g. (N, D) or (N, H, D)."""
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    a = np.asarray(array, dtype=np.float64)
    if a.ndim < 1 or a.shape[-1] == 0:
        raise ValueError(f"compute_stats needs an array of shape (..., D) with D >= 1, got shape {a.shape}")
    a = a.reshape(-1, a.shape[-1])  # (N, D)
    if a.shape[0] == 0:
        raise ValueError("compute_stats got no samples")
    if not np.isfinite(a).all():
        raise ValueError("compute_stats got non-finite values (NaN or inf)")
    q01, q99 = np.quantile(a, [0.01, 0.99], axis=0)
    return FeatureStats(
        mean=a.mean(0).tolist(), std=a.std(0).tolist(), min=a.min(0).tolist(), max=a.max(0).tolist(),
        q01=q01.tolist(), q99=q99.tolist(), count=int(a.shape[0]),
    )


class FeatureNormalizer(nn.Module):
    """x_norm = clip((x - offset) / scale) on normalized dims; identity on masked dims.

    Holds no statistics when built without them (a fresh, untrained policy): then both
    directions are the identity. Buffers are non-persistent: the statistics live in
    normalization.json, not in model.safetensors.
    """

    def __init__(self, dim: int, mode: str, skip: list[bool] | None = None, stats: FeatureStats | None = None):
        super().__init__()
        self.dim, self.mode = dim, mode
        skip_t = torch.tensor(skip if skip is not None else [False] * dim, dtype=torch.bool)
        if skip_t.shape != (dim,):
            raise ValueError(f"skip mask has {skip_t.numel()} entries, expected {dim}")
        self.register_buffer("skip", skip_t, persistent=False)
        self.register_buffer("offset", torch.zeros(dim), persistent=False)
        self.register_buffer("scale", torch.ones(dim), persistent=False)
        self.clip = mode in ("quantile", "min_max")
        self.stats: FeatureStats | None = None
        if stats is not None:
            self.set_stats(stats)

    def set_stats(self, stats: FeatureStats) -> None:
        if stats.dim != self.dim:
            raise ValueError(f"statistics have {stats.dim} dimensions, expected {self.dim}")
        if self.mode == "mean_std":
            offset, scale = np.array(stats.mean), np.array(stats.std)
        else:
            lo, hi = (stats.q01, stats.q99) if self.mode == "quantile" else (stats.min, stats.max)
            lo, hi = np.array(lo), np.array(hi)
            offset, scale = (lo + hi) / 2, (hi - lo) / 2
        scale = np.maximum(scale, EPS)
        self.offset.copy_(torch.as_tensor(offset, dtype=torch.float32))
        self.scale.copy_(torch.as_tensor(scale, dtype=torch.float32))
        self.stats = stats

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        if self.stats is None:
            return x
        y = (x - self.offset) / self.scale
        if self.clip:
            y = y.clamp(-1.0, 1.0)
        return torch.where(self.skip, x, y)

    def unnormalize(self, y: torch.Tensor) -> torch.Tensor:
        if self.stats is None:
            return y
        x = y * self.scale + self.offset
        return torch.where(self.skip, y, x)


class PreProcessor(nn.Module):
    """Robot units -> normalized: state (B, S) and action targets (B, H, D)."""

    def __init__(self, state: FeatureNormalizer | None, action: FeatureNormalizer):
        super().__init__()
        self.state, self.action = state, action

    def forward(self, state: torch.Tensor | None = None, actions: torch.Tensor | None = None):
        s = None if state is None or self.state is None else self.state.normalize(state)
        a = None if actions is None else self.action.normalize(actions)
        return s, a


class PostProcessor(nn.Module):
    """Normalized predicted actions (..., D) -> robot units; the inverse of PreProcessor."""

    def __init__(self, action: FeatureNormalizer):
        super().__init__()
        self.action = action

    def forward(self, actions: torch.Tensor) -> torch.Tensor:
        return self.action.unnormalize(actions)


def build_processors(
    mode: str,
    action_names: list[str],
    state_names: list[str],
    unnormalized_names: list[str],
    stats: dict[str, FeatureStats] | None = None,
) -> tuple[PreProcessor, PostProcessor]:
    """Pre- and post-processor sharing one action normalizer (mirror images by construction)."""
    stats = stats or {}
    skip = set(unnormalized_names)
    action = FeatureNormalizer(len(action_names), mode, [n in skip for n in action_names], stats.get("action"))
    state = (
        FeatureNormalizer(len(state_names), mode, [n in skip for n in state_names], stats.get("state"))
        if state_names
        else None
    )
    return PreProcessor(state, action), PostProcessor(action)
