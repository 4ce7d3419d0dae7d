"""Uniform action binning: continuous normalized actions <-> discrete tokens.

RT-2 (Brohan et al. 2023) and OpenVLA (Kim et al. 2024) turn each action dimension into
one of 256 tokens by uniform binning over the normalized range [-1, 1] (after the
q01/q99 quantile normalization of normalization.py), so a language-model head can emit
actions as classes. We decode all H x D tokens in parallel (as OpenVLA-OFT does) rather
than autoregressively, which makes the cost of a chunk one forward pass.

Decoding returns bin *centres*, so any value inside [-1, 1] round-trips to within half a
bin width, (high - low) / (2 * num_bins).
"""

from __future__ import annotations

import torch


class ActionTokenizer:
    def __init__(self, num_bins: int = 256, low: float = -1.0, high: float = 1.0):
        if num_bins < 2 or not high > low:
            raise ValueError(f"need num_bins >= 2 and high > low, got num_bins={num_bins}, low={low}, high={high}")
        self.num_bins, self.low, self.high = num_bins, float(low), float(high)
        self.bin_width = (self.high - self.low) / num_bins

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Float tensor (any shape) -> long bin indices in [0, num_bins). Out-of-range clips."""
        idx = torch.floor((x.float().clamp(self.low, self.high) - self.low) / self.bin_width)
        return idx.long().clamp(0, self.num_bins - 1)

    def decode(self, idx: torch.Tensor) -> torch.Tensor:
        """Bin indices -> bin centres (float32)."""
        return self.low + (idx.float() + 0.5) * self.bin_width
