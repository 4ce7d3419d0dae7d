"""Transformer building blocks shared by every part of the VLA model.

Written in the spirit of nanoGPT (Karpathy): one attention class that does both self- and
cross-attention through ``F.scaled_dot_product_attention`` (flash / memory-efficient
kernels on GPU), a pre-norm block (LayerNorm before each sub-layer, as in GPT-2 and ViT,
which trains stably without warm-up tricks), and the small helpers (MLP, sinusoidal
embedding, weight init) that the encoders, fusion trunks and action heads reuse.

Masks follow the ``scaled_dot_product_attention`` convention: a boolean tensor where
``True`` means "may attend". Every query row must be able to see at least one key,
otherwise softmax returns NaN; the callers guarantee that (each instruction has a BOS
token, image tokens are never masked).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def init_weights(module: nn.Module) -> None:
    """GPT-2 / ViT style init: N(0, 0.02) weights, zero biases, unit LayerNorm.

    Applied with ``module.apply(init_weights)`` by every from-scratch component. Pretrained
    towers (SigLIP, CLIP, MiniLM) never go through it, so their weights stay intact.
    """
    if isinstance(module, (nn.Linear, nn.Conv2d)):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Embedding):
        nn.init.normal_(module.weight, mean=0.0, std=0.02)
    elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        if module.weight is not None:
            nn.init.ones_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


class MLP(nn.Module):
    """Position-wise feed-forward network: Linear -> GELU -> Linear."""

    def __init__(self, dim: int, mlp_ratio: float = 4.0, dropout: float = 0.0, out_dim: int | None = None):
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim or dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.drop(self.fc2(F.gelu(self.fc1(x))))


class Attention(nn.Module):
    """Multi-head attention; self-attention when ``context`` is None, else cross-attention.

    Plain ``nn.Linear`` projections (not ``nn.MultiheadAttention``) so that int8 dynamic
    quantization (compression.py) reaches every matrix multiply.
    """

    def __init__(self, dim: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if dim % num_heads != 0:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout
        self.resid_drop = nn.Dropout(dropout)

    def project_kv(self, ctx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values of a context, 2 x (B, h, S, hd): computed once, reusable."""
        B, S, C = ctx.shape
        h = self.num_heads
        k, v = self.kv(ctx).view(B, S, 2, h, C // h).permute(2, 0, 3, 1, 4)  # 2 x (B, h, S, hd)
        return k, v

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        B, T, C = x.shape
        h = self.num_heads
        q = self.q(x).view(B, T, h, C // h).transpose(1, 2)  # (B, h, T, hd)
        k, v = kv if kv is not None else self.project_kv(x if context is None else context)
        y = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask, dropout_p=self.dropout if self.training else 0.0
        )  # (B, h, T, hd)
        y = y.transpose(1, 2).reshape(B, T, C)  # (B, T, C)
        return self.resid_drop(self.proj(y))


class Block(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, MLP.

    With ``cross_attention=True`` this is the decoder block of the original Transformer
    (Vaswani et al., 2017) as used by ACT's action queries and by the pi0 action expert
    attending to the VLM prefix.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        cross_attention: bool = False,
    ):
        super().__init__()
        self.ln_1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads, dropout)
        self.cross = cross_attention
        if cross_attention:
            self.ln_x = nn.LayerNorm(dim)
            self.xattn = Attention(dim, num_heads, dropout)
        self.ln_2 = nn.LayerNorm(dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)

    def forward(
        self,
        x: torch.Tensor,
        mask: torch.Tensor | None = None,
        context: torch.Tensor | None = None,
        context_mask: torch.Tensor | None = None,
        context_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """``context_kv`` (from :meth:`context_kv`) replaces ``context`` when the same
        context is attended to repeatedly, e.g. at every Euler step of the flow head."""
        x = x + self.attn(self.ln_1(x), mask=mask)
        if self.cross:
            x = x + self.xattn(self.ln_x(x), context=context, mask=context_mask, kv=context_kv)
        x = x + self.mlp(self.ln_2(x))
        return x


    def context_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.xattn.project_kv(context)


def key_padding_mask(valid: torch.Tensor | None) -> torch.Tensor | None:
    """(B, S) bool "token is real" -> (B, 1, 1, S) attention mask broadcast over heads/queries."""
    if valid is None:
        return None
    return valid[:, None, None, :]


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer / DDPM sinusoidal embedding of a continuous scalar, (B,) -> (B, dim).

    Used for the flow-matching time step (pi0 embeds tau the same way). ``t`` in [0, 1] is
    scaled by 1000 so that the low frequencies still vary across the unit interval.
    """
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = (t.float() * 1000.0)[:, None] * freqs[None, :]  # (B, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)  # (B, 2*half)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb
