"""Action heads: fused features -> a chunk of H future actions of D dims (normalized units).

All heads share one interface:
  ``loss(fused, actions, is_pad=None, generator=None) -> (loss, metrics)`` for training,
  with ``actions`` (B, H, D) normalized and ``is_pad`` (B, H) marking steps past the end
  of an episode (excluded from the loss, as in ACT / LeRobot);
  ``predict(fused, generator=None) -> (B, H, D)`` normalized actions for inference.

* :class:`DiscreteActionHead`: 256 uniform bins per dimension, cross-entropy, all H x D
  tokens decoded in parallel (RT-2, OpenVLA; parallel decoding from OpenVLA-OFT).
* :class:`ContinuousActionHead`: direct regression with an L1 loss (ACT; OpenVLA-OFT
  found L1 regression as good as diffusion at a fraction of the cost).
* :class:`FlowMatchingHead`: a small transformer "action expert" that learns the velocity
  field of straight (optimal-transport) paths from Gaussian noise to actions, sampled
  with a few Euler steps (Lipman et al. 2023, "Flow Matching"; pi0, Black et al. 2024).
  Multimodal action distributions (go left or right around an obstacle) stay multimodal
  instead of being averaged as with L1/L2 regression.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .discretization import ActionTokenizer
from .fusion import FusionOutput
from .rtc import guided_velocity
from .transformer import Block, MLP, init_weights, key_padding_mask, sinusoidal_embedding


def _masked_mean(per_step: torch.Tensor, is_pad: torch.Tensor | None) -> torch.Tensor:
    """Mean of (B, H, ...) over everything, ignoring padded steps (B, H)."""
    per_step = per_step.reshape(per_step.shape[0], per_step.shape[1], -1).mean(-1)  # (B, H)
    if is_pad is None:
        return per_step.mean()
    keep = (~is_pad).to(per_step.dtype)
    return (per_step * keep).sum() / keep.sum().clamp_min(1.0)


class DiscreteActionHead(nn.Module):
    def __init__(self, cfg, action_dim: int):
        super().__init__()
        self.D, self.num_bins = action_dim, cfg.num_bins
        self.tokenizer = ActionTokenizer(cfg.num_bins)
        self.ln = nn.LayerNorm(cfg.d_model)
        self.out = nn.Linear(cfg.d_model, action_dim * cfg.num_bins)
        self.apply(init_weights)

    def logits(self, fused: FusionOutput) -> torch.Tensor:
        B, H, _ = fused.queries.shape
        return self.out(self.ln(fused.queries)).view(B, H, self.D, self.num_bins)  # (B, H, D, bins)

    def loss(self, fused, actions, is_pad=None, generator=None):
        logits = self.logits(fused).float()
        target = self.tokenizer.encode(actions)  # (B, H, D)
        ce = F.cross_entropy(logits.flatten(0, 2), target.flatten(), reduction="none").view_as(target)
        loss = _masked_mean(ce, is_pad)
        with torch.no_grad():
            pred = logits.argmax(-1)
            metrics = {
                "ce": loss.item(),
                "token_accuracy": _masked_mean((pred == target).float(), is_pad).item(),
                "l1": _masked_mean((self.tokenizer.decode(pred) - actions).abs(), is_pad).item(),
            }
        return loss, metrics

    def predict(self, fused, generator=None):
        return self.tokenizer.decode(self.logits(fused).argmax(-1))  # (B, H, D) bin centres


class ContinuousActionHead(nn.Module):
    def __init__(self, cfg, action_dim: int):
        super().__init__()
        self.ln = nn.LayerNorm(cfg.d_model)
        self.mlp = MLP(cfg.d_model, 1.0, 0.0, out_dim=cfg.d_model)
        self.out = nn.Linear(cfg.d_model, action_dim)
        self.apply(init_weights)

    def predict(self, fused, generator=None):
        q = fused.queries
        return self.out(q + self.mlp(self.ln(q)))  # (B, H, D)

    def loss(self, fused, actions, is_pad=None, generator=None):
        l1 = _masked_mean((self.predict(fused).float() - actions).abs(), is_pad)
        return l1, {"l1": l1.item()}


class FlowMatchingHead(nn.Module):
    """pi0-style action expert: noisy chunk + time -> velocity, attending to the context.

    Convention: x_t = (1 - t) * noise + t * actions, t in [0, 1]; the target velocity is
    actions - noise (constant along the straight path). Sampling integrates dx/dt = v
    from t = 0 (noise) to t = 1 with ``steps`` Euler steps; the conditioning (the costly
    part) is computed once and reused at every step, as pi0 caches the prefix KV.
    """

    def __init__(self, cfg, action_dim: int):
        super().__init__()
        C, D = cfg.d_model, action_dim
        self.D, self.steps, self.time_sampling = D, cfg.flow_steps, cfg.flow_time_sampling
        self.action_in = nn.Linear(D, C)
        # pi0: W3 . swish(W2 . [W1 a, phi(t)]) mixes the action and time embeddings.
        self.action_time = nn.Sequential(nn.Linear(2 * C, C), nn.SiLU(), nn.Linear(C, C))
        self.blocks = nn.ModuleList(
            [Block(C, cfg.num_heads, cfg.mlp_ratio, cfg.dropout, cross_attention=True) for _ in range(cfg.flow_expert_depth)]
        )
        self.ln_f = nn.LayerNorm(C)
        self.out = nn.Linear(C, D)
        self.apply(init_weights)

    def velocity(
        self, x_t: torch.Tensor, t: torch.Tensor, fused: FusionOutput, context_kv: list | None = None
    ) -> torch.Tensor:
        """x_t (B, H, D), t (B,) -> v (B, H, D). ``context_kv``: per-block cached keys/values."""
        B, H, _ = x_t.shape
        C = self.action_in.out_features
        t_emb = sinusoidal_embedding(t, C).to(x_t.dtype)[:, None].expand(B, H, C)  # (B, H, C)
        h = self.action_time(torch.cat([self.action_in(x_t), t_emb], dim=-1))  # (B, H, C)
        h = h + fused.queries  # per-step observation features
        ctx_mask = key_padding_mask(fused.context_mask)
        for i, block in enumerate(self.blocks):
            kv = context_kv[i] if context_kv is not None else None
            h = block(h, context=fused.context, context_mask=ctx_mask, context_kv=kv)
        return self.out(self.ln_f(h))

    def sample_time(self, B: int, device, generator=None) -> torch.Tensor:
        u = torch.rand(B, device=device, generator=generator)
        if self.time_sampling == "uniform":
            return u
        # pi0: (s - t) / s ~ Beta(1.5, 1), s = 0.999: favours small t (noisy inputs), which
        # is where predicting the velocity is hardest. Beta(1.5, 1) has CDF b^1.5, so
        # b = u^(1/1.5) by inverse-CDF sampling (works with a torch.Generator).
        return 0.999 * (1.0 - u.pow(1.0 / 1.5))

    def loss(self, fused, actions, is_pad=None, generator=None):
        B = actions.shape[0]
        noise = torch.randn(actions.shape, device=actions.device, generator=generator)
        t = self.sample_time(B, actions.device, generator)  # (B,)
        tt = t[:, None, None]
        x_t = (1 - tt) * noise + tt * actions  # (B, H, D)
        v = self.velocity(x_t, t, fused).float()
        mse = _masked_mean((v - (actions - noise)) ** 2, is_pad)
        return mse, {"flow_mse": mse.item()}

    def predict(self, fused, generator=None, steps: int | None = None, noise: torch.Tensor | None = None,
                rtc_target: torch.Tensor | None = None, rtc_weights: torch.Tensor | None = None,
                rtc_beta: float = 5.0):
        """Sample a chunk (B, H, D). With ``rtc_target`` (B, H, D) and ``rtc_weights`` (B or 1, H, 1),
        every Euler step is guided toward the committed actions (Real-Time Chunking, model/rtc.py)."""
        B, H = fused.queries.shape[:2]
        steps = steps or self.steps
        x = noise if noise is not None else torch.randn(
            (B, H, self.D), device=fused.queries.device, generator=generator
        )
        x = x.float()  # integrate in float32 even under bf16/fp16 autocast
        # The context does not change between steps: project its keys/values once.
        kv = [block.context_kv(fused.context) for block in self.blocks]
        if rtc_target is not None:
            # Guidance differentiates through the expert: copies of the cached features that are not
            # inference-mode tensors (autograd cannot save those for the backward pass).
            with torch.inference_mode(False):
                fused = FusionOutput(fused.queries.clone(), fused.context.clone(),
                                     None if fused.context_mask is None else fused.context_mask.clone())
                kv = [tuple(z.clone() for z in pair) for pair in kv]
        dt = 1.0 / steps
        for i in range(steps):
            t = torch.full((B,), i * dt, device=x.device)
            if rtc_target is None:
                x = x + dt * self.velocity(x, t, fused, context_kv=kv).float()
            else:
                v = guided_velocity(lambda xx: self.velocity(xx, t.clone(), fused, context_kv=kv), x, i * dt,
                                    rtc_target, rtc_weights, rtc_beta)
                x = x + dt * v
        return x  # (B, H, D)


def build_action_head(cfg, action_dim: int) -> nn.Module:
    """The action head chosen by ``cfg.action_head``, predicting ``action_dim`` values per step."""
    heads = {"discrete": DiscreteActionHead, "continuous": ContinuousActionHead, "flow": FlowMatchingHead}
    return heads[cfg.action_head](cfg, action_dim)
