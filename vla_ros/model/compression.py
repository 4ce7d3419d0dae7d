"""Model compression for onboard deployment: int8 quantization and knowledge distillation.

* :func:`quantize_dynamic_int8`: dynamic int8 quantization of every ``nn.Linear`` for CPU
  inference (weights stored int8 per tensor, activations quantized on the fly per batch;
  fbgemm / onednn int8 GEMMs). Uses ``torch.ao.quantization.quantize_dynamic``: present
  and working in torch 2.13 although deprecated in favour of torchao's ``quantize_``
  (not a dependency here). If it is missing or fails, a pure-PyTorch weight-only int8
  Linear (per-output-channel scales, dequantized at matmul time) is used instead: it
  saves memory but not time. The transformer blocks use plain ``nn.Linear`` so both
  reach every projection.
* :func:`distill`: trains a small student to imitate a large teacher (Hinton et al. 2015):
  temperature-softened KL between the discrete heads' token distributions, or L1 (chunk
  regression) / flow matching towards the teacher's sampled chunks (an L2 on velocities)
  for continuous and flow students. Returns the accuracy cost, measured on the batches.
"""

from __future__ import annotations

import copy
import logging
import time
import warnings
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
import torch.nn.functional as F

from .decoders import DiscreteActionHead, FlowMatchingHead
from .language import PretrainedTextEncoder
from .policy import VLAPolicy, make_generator

log = logging.getLogger("vla_ros.model")


# ------------------------------------------------------------------------------ int8
class Int8WeightOnlyLinear(nn.Module):
    """Fallback int8 Linear: symmetric per-output-channel int8 weights, float activations."""

    def __init__(self, linear: nn.Linear):
        super().__init__()
        w = linear.weight.detach().float()
        scale = w.abs().amax(dim=1).clamp_min(1e-8) / 127.0  # (out,)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.register_buffer("weight_int8", torch.round(w / scale[:, None]).clamp(-127, 127).to(torch.int8))
        self.register_buffer("scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().float().clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight_int8.to(x.dtype) * self.scale.to(x.dtype)[:, None]  # (out, in)
        return F.linear(x, w, None if self.bias is None else self.bias.to(x.dtype))


def quantize_dynamic_int8(
    policy: VLAPolicy, backend: str = "auto", inplace: bool = False, quantize_text_encoder: bool = False
) -> VLAPolicy:
    """A CPU copy of ``policy`` whose Linear layers run in int8.

    backend: "auto" (torch.ao dynamic quantization, else the fallback), "torch" (torch.ao
    only, errors if unavailable) or "weight_only" (the pure-PyTorch fallback).
    quantize_text_encoder: also quantize a frozen pretrained text backbone. Off by
    default: its output is cached per instruction, so int8 saves no time there, while
    BERT-style activations have outliers that per-tensor int8 handles badly (measured:
    ~37% relative error on all-MiniLM-L6-v2 token features vs ~2% for the vision path).
    The result records the backend used in ``policy.quantization``. It cannot be saved
    (quantize after ``load_policy`` instead).
    """
    if backend not in ("auto", "torch", "weight_only"):
        raise ValueError(f"backend must be 'auto', 'torch' or 'weight_only', got {backend!r}")
    model = policy if inplace else copy.deepcopy(policy)
    model = model.to("cpu").eval()
    # Frozen text backbones stay in float (see above): quantize Linear layers by name.
    skip = [] if quantize_text_encoder else [
        f"{name}.backbone." for name, m in model.named_modules() if isinstance(m, PretrainedTextEncoder)
    ]
    targets = [
        name for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and not any((name + ".").startswith(s) for s in skip)
    ]
    used = _quantize_linears(model, targets, backend)
    if quantize_text_encoder:
        for m in model.modules():
            if isinstance(m, PretrainedTextEncoder):
                m.clear_cache()  # cached embeddings came from the float backbone
    model.quantization = used
    return model


def _quantize_linears(model: nn.Module, targets: list[str], backend: str) -> str:
    """Swap the named Linear layers for int8 ones; returns the backend used."""
    if backend in ("auto", "torch"):
        try:
            from torch.ao.quantization import default_dynamic_qconfig, quantize_dynamic

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # deprecation notices of torch.ao.quantization
                spec = {name: default_dynamic_qconfig for name in targets}
                quantize_dynamic(model, spec, dtype=torch.qint8, inplace=True)
            return "torch.ao.quantization.quantize_dynamic"
        except (ImportError, AttributeError, RuntimeError, NotImplementedError) as e:
            if backend == "torch":
                raise RuntimeError(f"torch dynamic quantization is unavailable: {e}") from e
    for name in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8WeightOnlyLinear(getattr(parent, child)))
    return "int8_weight_only"


# ------------------------------------------------------------------------------ evaluation
def _resize_for(policy: VLAPolicy, images: torch.Tensor) -> torch.Tensor:
    """Teacher and student may use different image sizes: resample (B, V, 3, S, S)."""
    S = policy.config.image_size
    if images.shape[-1] == S and images.shape[-2] == S:
        return images
    B, V = images.shape[:2]
    x = F.interpolate(images.flatten(0, 1), size=(S, S), mode="bilinear", align_corners=False, antialias=True)
    return x.view(B, V, 3, S, S)


def _inputs(policy: VLAPolicy, batch: dict[str, Any]):
    dev = policy.device
    images = _resize_for(policy, torch.as_tensor(batch["images"]).to(dev, torch.float32))
    B = images.shape[0]
    instructions = batch["instructions"]
    instructions = [instructions] * B if isinstance(instructions, str) else list(instructions)
    state_n = policy.normalize_state(policy.state_tensor(batch.get("state"), B))
    return images, instructions, state_n


@torch.no_grad()
def predict_batch(policy: VLAPolicy, batch: dict[str, Any], seed: int = 0) -> torch.Tensor:
    """Robot-unit action chunks (B, H, D) for a training-style batch (flow noise seeded)."""
    was_training = policy.training
    policy.eval()
    images, instructions, state_n = _inputs(policy, batch)
    actions = policy.postprocess(policy.decode(policy.encode(images, instructions, state_n), make_generator(seed, policy.device)))
    policy.train(was_training)
    return actions


def compare_outputs(a: VLAPolicy, b: VLAPolicy, batches: Iterable[dict[str, Any]], seed: int = 0) -> dict[str, float]:
    """Max / mean absolute difference between two policies' chunks (robot units)."""
    diffs = [(predict_batch(a, batch, seed).cpu() - predict_batch(b, batch, seed).cpu()).abs() for batch in batches]
    d = torch.cat([x.flatten() for x in diffs])
    return {"max_abs_diff": d.max().item(), "mean_abs_diff": d.mean().item()}


# ------------------------------------------------------------------------------ distillation
def own_parameters(policy: VLAPolicy) -> int:
    """Parameters of the policy less its frozen pretrained towers (text backbone, frozen vision
    tower): those are the same for every policy built with them."""
    frozen = sum(p.numel() for m in policy.pretrained_modules().values() for p in m.parameters()
                 if not p.requires_grad)
    return policy.num_parameters() - frozen


def _instruction_list(batch: dict[str, Any]) -> list[str]:
    instructions = batch["instructions"]
    return [instructions] if isinstance(instructions, str) else list(instructions)


def _same_stats(a, b) -> bool:
    return a is None or b is None or a.to_dict() == b.to_dict()


def distill(
    teacher: VLAPolicy,
    student: VLAPolicy,
    batches: list[dict[str, Any]],
    steps: int = 100,
    temperature: float = 2.0,
    lr: float = 1e-3,
    alpha: float = 0.0,
    seed: int = 0,
    augment: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    log_every: int = 0,
    min_lr_ratio: float = 1.0,
) -> dict[str, Any]:
    """Distill ``teacher`` into ``student`` (in place) on ``batches`` (cycled), return metrics.

    Both must share the robot interface (action/state/camera names, chunk size); image
    sizes may differ. The student adopts the teacher's normalization statistics when it
    has none. ``alpha`` > 0 adds that weight of the student's ordinary loss on the
    ground-truth actions; ``log_every`` > 0 logs the loss every that many steps. The learning
    rate decays from ``lr`` to ``lr * min_lr_ratio`` along a cosine (1: constant).
    ``augment(images, generator)`` (e.g. DrQ random shift) is applied to the student's
    images only: the teacher labels the clean frames, as recorded actions
    label them in training. A continuous or discrete teacher's labels of a batch never
    change, so it runs once per batch (its targets are kept); a flow teacher samples a new
    chunk at every pass, as it does on the robot. Metrics: distillation loss at the first
    and last step, the parameter counts (the policy's own: frozen pretrained towers are
    counted apart, since every policy built with them carries the same), the teacher's
    forward passes, and the accuracy cost on the batches: L1 to the ground truth of the
    teacher and of the student (robot units) and student-vs-teacher L1.
    """
    tc, sc = teacher.config, student.config
    if teacher.interface != student.interface:
        raise ValueError(f"teacher and student differ in their robot interface: {teacher.interface} vs "
                         f"{student.interface}")
    if tc.chunk_size != sc.chunk_size:
        raise ValueError(f"teacher and student differ in chunk_size: {tc.chunk_size!r} vs {sc.chunk_size!r}")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not batches:
        raise ValueError("distill needs at least one batch")
    if not 0 < min_lr_ratio <= 1:
        raise ValueError(f"min_lr_ratio must be in (0, 1], got {min_lr_ratio!r}")
    t_stats, s_stats = teacher.normalization_stats, student.normalization_stats
    for k in ("action", "state"):
        if not _same_stats(t_stats[k], s_stats[k]):
            raise ValueError(f"teacher and student have different {k} normalization statistics")
    student.set_normalization_stats({k: v for k, v in t_stats.items() if v is not None and s_stats[k] is None})

    # Every instruction through each frozen text encoder once, in fixed chunks, before the loop.
    strings = [s for batch in batches for s in _instruction_list(batch)]
    for policy in (teacher, student):
        if isinstance(policy.language, PretrainedTextEncoder):
            policy.language.preencode(strings)
    gen = make_generator(seed, student.device)
    t_gen = make_generator(seed + 1, teacher.device)
    aug_gen = make_generator(seed + 2, "cpu")
    teacher.eval()
    student.train()
    params = [p for p in student.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(steps - 1, 1), eta_min=lr * min_lr_ratio)
    kl_mode = isinstance(teacher.head, DiscreteActionHead) and isinstance(student.head, DiscreteActionHead) and (
        tc.num_bins == sc.num_bins
    )
    keep_targets = not isinstance(teacher.head, FlowMatchingHead)
    targets: dict[int, tuple[torch.Tensor | None, torch.Tensor]] = {}
    teacher_passes = 0
    history = []
    lr_used = lr
    t_last = time.perf_counter()
    for step in range(steps):
        i = step % len(batches)
        batch = batches[i]
        if i in targets:
            t_logits, t_chunk = targets[i]
        else:
            with torch.no_grad():
                t_img, instr, t_state = _inputs(teacher, batch)
                t_fused = teacher.encode(t_img, instr, t_state)
                t_logits = teacher.head.logits(t_fused).float().to(student.device) if kl_mode else None
                t_chunk = teacher.decode(t_fused, t_gen).float().to(student.device)  # (B, H, D) normalized
            teacher_passes += 1
            if keep_targets:
                targets[i] = (t_logits, t_chunk)
        s_img, instr, s_state = _inputs(student, batch)
        if augment is not None:
            s_img = augment(s_img, aug_gen)
        s_fused = student.encode(s_img, instr, s_state)
        if kl_mode:
            # Hinton et al.: KL(softmax(t/T) || softmax(s/T)) * T^2 keeps gradient scale ~T-free.
            s_logits = student.head.logits(s_fused).float()
            T = temperature
            loss = F.kl_div(
                F.log_softmax(s_logits / T, -1), F.log_softmax(t_logits / T, -1),
                reduction="none", log_target=True,
            ).sum(-1).mean() * T * T
        else:
            # Discrete student from a continuous teacher: CE on the teacher's tokens;
            # continuous: L1 to the teacher's chunk; flow: flow matching towards it.
            loss, _ = student.head.loss(s_fused, t_chunk, generator=gen)
        if alpha > 0:
            gt = torch.as_tensor(batch["actions"]).to(student.device, torch.float32)
            _, gt_n = student.preprocessor(None, gt)
            gt_loss, _ = student.head.loss(s_fused, gt_n, generator=gen)
            loss = loss + alpha * gt_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        lr_used = opt.param_groups[0]["lr"]
        opt.step()
        schedule.step()
        history.append(loss.item())
        if log_every and (step + 1) % log_every == 0:
            recent = history[-log_every:]
            log.info("distill step %d/%d: loss %.4f (mean of the last %d), lr %.2e, %.2f s per step", step + 1,
                     steps, sum(recent) / len(recent), len(recent), opt.param_groups[0]["lr"],
                     (time.perf_counter() - t_last) / log_every)
            t_last = time.perf_counter()
    student.eval()
    # One prediction of each per batch serves both the L1 to the recorded actions and the agreement.
    t_err, s_err, diff = [], [], []
    for batch in batches:
        gt = torch.as_tensor(batch["actions"]).float()
        t_pred, s_pred = predict_batch(teacher, batch, seed).cpu(), predict_batch(student, batch, seed).cpu()
        t_err.append((t_pred - gt).abs().flatten())
        s_err.append((s_pred - gt).abs().flatten())
        diff.append((t_pred - s_pred).abs().flatten())
    t_l1, s_l1 = torch.cat(t_err).mean().item(), torch.cat(s_err).mean().item()
    diff = torch.cat(diff)
    agreement = {"mean_abs_diff": diff.mean().item(), "max_abs_diff": diff.max().item()}
    t_own, s_own = own_parameters(teacher), own_parameters(student)
    return {
        "steps": len(history),
        "mode": "kl" if kl_mode else type(student.head).__name__,
        "temperature": temperature,
        "lr": lr,
        "min_lr_ratio": min_lr_ratio,
        "lr_last": lr_used,
        "distill_loss_first": history[0] if history else float("nan"),
        "distill_loss_last": history[-1] if history else float("nan"),
        "teacher_params": t_own,
        "student_params": s_own,
        "compression_ratio": t_own / max(1, s_own),
        "teacher_frozen_params": teacher.num_parameters() - t_own,
        "student_frozen_params": student.num_parameters() - s_own,
        "teacher_passes": teacher_passes,
        "teacher_l1": t_l1,
        "student_l1": s_l1,
        "accuracy_cost_l1": s_l1 - t_l1,
        "student_teacher_mean_abs_diff": agreement["mean_abs_diff"],
        "student_teacher_max_abs_diff": agreement["max_abs_diff"],
    }
