"""Fusion trunks: image tokens + instruction + (optional) proprioception -> action features.

Every trunk returns a :class:`FusionOutput`: ``queries`` (B, H, C), one feature per
future action step for the action head, and ``context`` (B, T, C), the conditioning
tokens a flow-matching action expert may cross-attend to.

* :class:`FiLMFusion`: the instruction's pooled embedding modulates the visual tokens
  with feature-wise affine transforms (Perez et al. 2018, "FiLM"), as RT-1 conditions its
  EfficientNet on the instruction. Cheapest; good with spatial-softmax keypoints.
* :class:`CrossAttentionFusion`: instruction tokens, a state token and H learned action
  queries form the query set, which self-attends and cross-attends to the image tokens
  (DETR-style queries as in ACT, Zhao et al. 2023).
* :class:`PrefixFusion`: one transformer over [image tokens; instruction tokens; state]
  (the prefix, full attention, PaliGemma / pi0) followed by the action queries (the
  suffix, which sees everything; the prefix does not see the suffix, pi0's blockwise
  mask, so the prefix representation does not depend on the queries).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn

from .transformer import Block, MLP, init_weights, key_padding_mask


@dataclass
class FusionOutput:
    queries: torch.Tensor  # (B, H, C) per-step features for the action head
    context: torch.Tensor  # (B, T, C) conditioning tokens (for the flow action expert)
    context_mask: torch.Tensor | None  # (B, T) bool, True = real token; None = all real


@dataclass
class LanguageFeatures:
    tokens: torch.Tensor  # (B, L, C)
    valid: torch.Tensor  # (B, L) bool
    pooled: torch.Tensor  # (B, C)


class StateEncoder(nn.Module):
    """Normalized proprioception (B, S) -> one token (B, C)."""

    def __init__(self, state_dim: int, dim: int):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(state_dim, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, state: torch.Tensor) -> torch.Tensor:
        return self.net(state)


class FiLMBlock(nn.Module):
    """Self-attention over visual tokens, then an MLP whose input is FiLM-modulated."""

    def __init__(self, dim: int, cond_dim: int, num_heads: int, mlp_ratio: float, dropout: float):
        super().__init__()
        self.block = Block(dim, num_heads, mlp_ratio, dropout)
        self.ln = nn.LayerNorm(dim)
        self.film = nn.Linear(cond_dim, 2 * dim)
        self.mlp = MLP(dim, mlp_ratio, dropout)

    def init_identity(self) -> None:
        # Start as the identity modulation (gamma = 1, beta = 0), as RT-1 does, so the
        # pretrained-like visual pathway is not scrambled at initialization.
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)

    def forward(self, x: torch.Tensor, cond: torch.Tensor) -> torch.Tensor:
        x = self.block(x)  # (B, N, C)
        gamma, beta = self.film(cond).chunk(2, dim=-1)  # 2 x (B, C)
        h = self.ln(x) * (1 + gamma[:, None]) + beta[:, None]
        return x + self.mlp(h)


class FiLMFusion(nn.Module):
    def __init__(self, cfg, state_dim: int):
        super().__init__()
        C, H = cfg.d_model, cfg.chunk_size
        self.state_encoder = StateEncoder(state_dim, C) if cfg.use_state else None
        self.blocks = nn.ModuleList(
            [FiLMBlock(C, C, cfg.num_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.fusion_depth)]
        )
        self.ln_f = nn.LayerNorm(C)
        self.summary = MLP(3 * C, 1.0, cfg.dropout, out_dim=C)  # [pooled visual; image summary; state]
        self.queries = nn.Parameter(torch.zeros(1, H, C))
        self.query_block = Block(C, cfg.num_heads, cfg.mlp_ratio, cfg.dropout)
        self.apply(init_weights)
        nn.init.normal_(self.queries, std=0.02)
        for b in self.blocks:
            b.init_identity()

    def forward(self, vis_tokens, vis_pooled, lang: LanguageFeatures, state=None) -> FusionOutput:
        cond = lang.pooled  # (B, C)
        s = self.state_encoder(state) if self.state_encoder is not None else torch.zeros_like(cond)
        cond = cond + s
        x = vis_tokens
        for block in self.blocks:
            x = block(x, cond)
        x = self.ln_f(x)  # (B, N, C)
        summary = self.summary(torch.cat([x.mean(dim=1), vis_pooled, s], dim=-1))  # (B, C)
        q = self.query_block(self.queries + summary[:, None])  # (B, H, C)
        return FusionOutput(queries=q, context=x, context_mask=None)


class CrossAttentionFusion(nn.Module):
    def __init__(self, cfg, state_dim: int):
        super().__init__()
        C, H = cfg.d_model, cfg.chunk_size
        self.state_encoder = StateEncoder(state_dim, C) if cfg.use_state else None
        self.type_embed = nn.Parameter(torch.zeros(3, C))  # language, state, action query
        self.queries = nn.Parameter(torch.zeros(1, H, C))
        self.blocks = nn.ModuleList(
            [Block(C, cfg.num_heads, cfg.mlp_ratio, cfg.dropout, cross_attention=True) for _ in range(cfg.fusion_depth)]
        )
        self.ln_f = nn.LayerNorm(C)
        self.apply(init_weights)
        nn.init.normal_(self.queries, std=0.02)
        nn.init.normal_(self.type_embed, std=0.02)

    def forward(self, vis_tokens, vis_pooled, lang: LanguageFeatures, state=None) -> FusionOutput:
        B, H = vis_tokens.shape[0], self.queries.shape[1]
        parts = [lang.tokens + self.type_embed[0]]  # (B, L, C)
        valid = [lang.valid]
        if self.state_encoder is not None:
            parts.append((self.state_encoder(state) + self.type_embed[1])[:, None])  # (B, 1, C)
            valid.append(torch.ones(B, 1, dtype=torch.bool, device=vis_tokens.device))
        parts.append((self.queries + self.type_embed[2]).expand(B, -1, -1))  # (B, H, C)
        valid.append(torch.ones(B, H, dtype=torch.bool, device=vis_tokens.device))
        x = torch.cat(parts, dim=1)  # (B, L+1+H, C)
        valid_t = torch.cat(valid, dim=1)
        mask = key_padding_mask(valid_t)
        for block in self.blocks:
            x = block(x, mask=mask, context=vis_tokens)
        x = self.ln_f(x)
        vis_valid = torch.ones(vis_tokens.shape[:2], dtype=torch.bool, device=vis_tokens.device)
        return FusionOutput(
            queries=x[:, -H:],
            context=torch.cat([vis_tokens, x[:, :-H]], dim=1),  # (B, N+L+1, C)
            context_mask=torch.cat([vis_valid, valid_t[:, :-H]], dim=1),
        )


class PrefixFusion(nn.Module):
    def __init__(self, cfg, state_dim: int):
        super().__init__()
        C, H = cfg.d_model, cfg.chunk_size
        self.state_encoder = StateEncoder(state_dim, C) if cfg.use_state else None
        self.type_embed = nn.Parameter(torch.zeros(4, C))  # image, language, state, action query
        self.queries = nn.Parameter(torch.zeros(1, H, C))
        self.blocks = nn.ModuleList(
            [Block(C, cfg.num_heads, cfg.mlp_ratio, cfg.dropout) for _ in range(cfg.fusion_depth)]
        )
        self.ln_f = nn.LayerNorm(C)
        self.apply(init_weights)
        nn.init.normal_(self.queries, std=0.02)
        nn.init.normal_(self.type_embed, std=0.02)

    def forward(self, vis_tokens, vis_pooled, lang: LanguageFeatures, state=None) -> FusionOutput:
        B, H = vis_tokens.shape[0], self.queries.shape[1]
        dev = vis_tokens.device
        parts = [vis_tokens + self.type_embed[0], lang.tokens + self.type_embed[1]]
        valid = [torch.ones(vis_tokens.shape[:2], dtype=torch.bool, device=dev), lang.valid]
        if self.state_encoder is not None:
            parts.append((self.state_encoder(state) + self.type_embed[2])[:, None])  # (B, 1, C)
            valid.append(torch.ones(B, 1, dtype=torch.bool, device=dev))
        prefix_valid = torch.cat(valid, dim=1)  # (B, P)
        P = prefix_valid.shape[1]
        x = torch.cat(parts + [(self.queries + self.type_embed[3]).expand(B, -1, -1)], dim=1)  # (B, P+H, C)
        T = P + H
        # Blockwise mask: key must be real, and prefix rows may not look at suffix columns.
        key_ok = torch.cat([prefix_valid, torch.ones(B, H, dtype=torch.bool, device=dev)], dim=1)  # (B, T)
        rows_prefix = torch.arange(T, device=dev)[:, None] < P  # (T, 1)
        cols_suffix = torch.arange(T, device=dev)[None, :] >= P  # (1, T)
        block = ~(rows_prefix & cols_suffix)  # (T, T)
        mask = key_ok[:, None, None, :] & block[None, None]  # (B, 1, T, T)
        for blk in self.blocks:
            x = blk(x, mask=mask)
        x = self.ln_f(x)
        return FusionOutput(queries=x[:, P:], context=x[:, :P], context_mask=prefix_valid)


def build_fusion(cfg, state_dim: int) -> nn.Module:
    """The fusion trunk chosen by ``cfg.fusion``; ``state_dim``: the robot's proprioception size."""
    return {"film": FiLMFusion, "cross_attention": CrossAttentionFusion, "prefix": PrefixFusion}[cfg.fusion](
        cfg, state_dim)
