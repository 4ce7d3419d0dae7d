"""Real-Time Chunking: inference-time inpainting of the committed actions for a flow head.

Black, Galliker, Levine, "Real-Time Execution of Action Chunking Flow Policies" (NeurIPS 2025,
arXiv 2506.07339), Algorithm 1, as LeRobot implements it for pi0/pi0.5/SmolVLA
(``lerobot/policies/rtc/modeling_rtc.py``). While chunk k executes, chunk k+1 is sampled with
the leftover of chunk k as a soft target: at every Euler step the predicted clean chunk
``A1_hat = x_t + (1 - t) v`` is pulled toward the target by a vector-Jacobian product, with
per-step weights W that are 1 on the frozen actions (those that execute while the model runs,
the inference delay d), decay over the rest of the leftover, and are 0 beyond it:

    v_guided = v + min(beta, (1 - t) / (t * r2)) * vjp(A1_hat, x_t, W * (Y - A1_hat)),
    r2 = (1 - t)^2 / (t^2 + (1 - t)^2)

Our time convention is the paper's (t = 0 noise, t = 1 data; x_t = (1 - t) noise + t A), so
the formula is used as written; the weight simplifies to min(beta, (t^2 + (1 - t)^2) / (t (1 - t))),
beta at t = 0. LeRobot's pi0 integrates from t = 1 (noise) to 0 and flips signs accordingly (same
weight, same schedules: its LINEAR is our "linear", EXP our "exp"). Two choices differ from LeRobot
(read at commit 7427f318): beta defaults to the paper's 5 (LeRobot: 10), and the vector-Jacobian
product goes through the action expert as in the paper and Physical Intelligence's Kinetix code
(LeRobot computes v before marking x_t as requiring grad, so its correction is the weighted error
itself). Everything here is in normalized action units. The frozen actions are then
returned exactly by the policy (model/policy.py): guidance makes the *rest* continue them.

Training-time RTC (model/prefix.py) is the other route, for every head; the two combine.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = ["PREFIX_SCHEDULES", "RTCSettings", "guided_velocity", "prefix_weights"]

# How the weight falls from 1 (frozen) to 0 across the leftover (LeRobot's
# RTCAttentionSchedule: LINEAR, EXP, ONES, ZEROS).
PREFIX_SCHEDULES = ("exp", "linear", "ones", "zeros")


def prefix_weights(delay: int, end: int, horizon: int, schedule: str = "exp") -> torch.Tensor:
    """Per-step guidance weights (horizon,): 1 for i < delay, decaying for delay <= i < end, 0 after.

    ``end`` is where the previous chunk's leftover ends (the number of committed actions
    given). "exp" is the paper's eq. 5: c_i (e^c_i - 1) / (e - 1), c_i = (end - i) / (end - delay + 1);
    "linear" is c_i; "ones" guides the whole leftover fully; "zeros" only the frozen steps.
    """
    if schedule not in PREFIX_SCHEDULES:
        raise ValueError(f"schedule must be one of {PREFIX_SCHEDULES}, got {schedule!r}")
    end = max(0, min(int(end), horizon))
    delay = max(0, min(int(delay), end))
    w = torch.zeros(horizon)
    w[:delay] = 1.0
    i = torch.arange(delay, end, dtype=torch.float32)
    if schedule == "ones":
        w[delay:end] = 1.0
    elif schedule in ("exp", "linear") and end > delay:
        c = (end - i) / (end - delay + 1)
        w[delay:end] = c if schedule == "linear" else c * torch.expm1(c) / math.expm1(1.0)
    return w


@dataclass(frozen=True)
class RTCSettings:
    """Inference-time RTC for flow heads (LeRobot's RTCConfig, same meanings)."""

    # beta: the largest guidance weight (the paper uses 5; large values overshoot at small t).
    max_guidance_weight: float = 5.0
    # How the weights fall across the leftover after the frozen steps (PREFIX_SCHEDULES).
    schedule: str = "exp"

    def __post_init__(self):
        if not (self.max_guidance_weight >= 0 and math.isfinite(self.max_guidance_weight)):
            raise ValueError(f"max_guidance_weight must be a finite number >= 0, got {self.max_guidance_weight!r}")
        if self.schedule not in PREFIX_SCHEDULES:
            raise ValueError(f"schedule must be one of {PREFIX_SCHEDULES}, got {self.schedule!r}")

    @staticmethod
    def applies(head) -> bool:
        """Guidance needs a velocity field: the flow-matching head."""
        return hasattr(head, "velocity")

    def guidance(self, committed: torch.Tensor, delay: int, given: int) -> dict:
        """Keyword arguments for ``FlowMatchingHead.predict``: the target (1, H, D), weights (1, H, 1), beta."""
        H = committed.shape[1]
        w = prefix_weights(delay, given, H, self.schedule).to(committed.device)
        return {"rtc_target": committed, "rtc_weights": w[None, :, None], "rtc_beta": self.max_guidance_weight}


def guided_velocity(velocity_fn, x: torch.Tensor, t: float, target: torch.Tensor, weights: torch.Tensor,
                    beta: float) -> torch.Tensor:
    """One RTC step: the velocity at x_t (B, H, D) plus the guidance toward ``target`` (see the module doc).

    Runs with autograd enabled even inside ``torch.inference_mode`` (the caller's tensors are
    cloned out of inference mode by ``velocity_fn``'s closure where needed).
    """
    with torch.inference_mode(False), torch.enable_grad():
        x_in = x.detach().clone().requires_grad_(True)
        v = velocity_fn(x_in).float()
        a1_hat = x_in + (1.0 - t) * v                       # predicted clean chunk (B, H, D)
        err = (target.clone() - a1_hat) * weights.clone()   # weighted error on the leftover
        (grad,) = torch.autograd.grad(a1_hat, x_in, grad_outputs=err.detach())
    if t <= 0.0:
        scale = beta  # the limit of (1 - t) / (t r2) is +inf at t = 0: clipped to beta
    else:
        r2 = (1.0 - t) ** 2 / (t ** 2 + (1.0 - t) ** 2)
        scale = beta if r2 == 0 else min(beta, (1.0 - t) / (t * r2))
    return (v + scale * grad).detach()
