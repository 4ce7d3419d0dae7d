"""Action-prefix conditioning: the chunk's first d actions are given, the model predicts the rest.

A slow policy (pi0 at 0.1-1 s per chunk) is asked for its next chunk while the robot still
executes the current one. The actions the robot will execute before the new chunk can take
over are already committed; if the new chunk is predicted without knowing them, it starts from
a different plan and the arm jumps or stutters at the switch. Training-time Real-Time Chunking
(Black, Galliker, Levine 2025, "Training-Time Action Conditioning for Efficient Real-Time
Chunking"; Legato, RSS 2026) gives the committed actions to the model as input:

* training: per sample, d = 0 with probability ``action_prefix_dropout`` (0.5), else
  d ~ Uniform{1, ..., action_prefix}; the chunk's own first d (normalized) actions are the
  prefix, and those steps are left out of the loss. The samples without a prefix keep the policy
  good at acting from the observation alone (a request often carries none) and guard against
  extrapolating the given actions instead of looking (the "copycat" problem of behaviour cloning
  with action history): with d uniform in 0..16 the sim demo policy's chunks without a prefix were
  2-40x further from the expert's than those of a policy trained without prefixes;
* inference: the node passes the actions it has committed for the chunk's first ticks
  (``inference_delay`` of them: the ticks that pass while the model runs); the model gets
  the first ``min(delay, action_prefix)`` of them (none: the d = 0 path, every step "not
  given"), and the returned chunk starts with the committed actions exactly (they execute
  whatever the model says).

The layout is the same in training and inference (:func:`prefix_inputs`): a (B, H, D) tensor
of normalized actions, zero past the prefix, and a (B, H) mask. The conditioning adds a
learnt embedding of each given action (or a learnt "not given" token) to the action queries
and mixes them with one self-attention block, so every predicted step sees the whole prefix.
It sits between the fusion trunk and the action head, so it serves the discrete, continuous
and flow heads alike.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from .transformer import Block, init_weights

__all__ = ["ActionPrefixConditioning", "prefix_inputs", "sample_prefix_lengths"]


class ActionPrefixConditioning(nn.Module):
    """Action queries (B, H, C) + given actions (B, H, D) and mask (B, H) -> queries (B, H, C)."""

    def __init__(self, cfg, action_dim: int):
        super().__init__()
        C = cfg.d_model
        self.embed = nn.Linear(action_dim, C)
        self.given = nn.Parameter(torch.zeros(2, C))  # [not given, given]
        self.block = Block(C, cfg.num_heads, cfg.mlp_ratio, cfg.dropout)
        self.apply(init_weights)
        nn.init.normal_(self.given, std=0.02)

    def forward(self, queries: torch.Tensor, prefix: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask[..., None].to(queries.dtype)  # (B, H, 1)
        tokens = m * (self.embed(prefix.to(queries.dtype)) + self.given[1]) + (1 - m) * self.given[0]  # (B, H, C)
        return self.block(queries + tokens)  # (B, H, C): every step attends to the prefix


def prefix_inputs(actions: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized actions (B, H, D) and prefix lengths (B,) -> (prefix (B, H, D), mask (B, H)).

    The prefix holds each row's first ``lengths[b]`` actions and zeros after them; the mask
    is true on the given steps. Training passes the chunk's own actions, inference the
    committed ones padded to H.
    """
    B, H, _ = actions.shape
    mask = torch.arange(H, device=actions.device)[None, :] < lengths.to(actions.device)[:, None]  # (B, H)
    return actions * mask[..., None].to(actions.dtype), mask


def sample_prefix_lengths(batch: int, max_prefix: int, device, generator: torch.Generator | None = None,
                          dropout: float = 0.0) -> torch.Tensor:
    """The training-time delay per sample (B,) int64: 0 with probability ``dropout`` (the model must
    also act from the observation alone), else d ~ Uniform{1, ..., max_prefix}."""
    gen_device = generator.device if generator is not None else device
    d = torch.randint(1, max_prefix + 1, (batch,), generator=generator, device=gen_device)
    drop = torch.rand(batch, generator=generator, device=gen_device) < dropout
    return torch.where(drop, torch.zeros_like(d), d).to(device)
