"""DrQ-style random-shift image augmentation."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """DrQ augmentation: replicate-pad every (B, V) image by ``pad`` pixels and crop it back
    at a random integer offset (independent per image)."""
    if pad <= 0:
        return images
    B, V, C, H, W = images.shape
    x = F.pad(images.reshape(B * V, C, H, W), (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (B * V, 2), generator=generator, device="cpu").tolist()
    out = torch.stack([x[i, :, dy:dy + H, dx:dx + W] for i, (dy, dx) in enumerate(offsets)])
    return out.reshape(B, V, C, H, W)
