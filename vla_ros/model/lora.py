"""LoRA adapters on a policy (Hu et al. 2021, through the ``peft`` library): which layers get
adapters, adapted checkpoints that reference their base by digest, and merging them away.

LoRA replaces each targeted ``nn.Linear`` W with ``W x + (alpha / r) * B A x``, where A (r x in)
and B (out x r) are the only weights that train; B starts at zero, so an adapted policy starts
exactly where its base was. The adapters are injected with peft's ``LoraModel`` (the policy
object stays a :class:`VLAPolicy`, its targeted Linear layers become ``peft.tuners.lora.Linear``)
and merged back with its ``merge_and_unload``.

Targets: every ``nn.Linear`` whose last name is in ``target_modules`` (default: the attention
projections ``q``, ``kv``, ``proj`` and MLP layers ``fc1``, ``fc2`` of this package's transformer
blocks, and ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``, ``fc1``, ``fc2`` of a SigLIP / CLIP
tower) inside the parts named by ``parts`` ("vision", "language", "fusion") and inside an
attention or MLP block there. The frozen pretrained text backbone (MiniLM) gets none: its
embeddings are computed without gradients and cached per instruction, so it is never adapted.
The action head is trained fully (``train_head``) or frozen; every other weight is frozen.

Layout of an adapted checkpoint (:func:`save_adapted`)::

    path/
      adapter_model.safetensors  the LoRA weights (``...lora_A.default.weight`` /
                                 ``...lora_B.default.weight``, named as in the adapted policy's
                                 state_dict) and, with train_head, every ``head.`` tensor
      adapter_config.json        {"format_version": 1, "peft_version", "lora": the LoraSettings,
                                 "target_modules": the resolved Linear names, "trained_fully":
                                 ["head"] or [], "base": {"path", "sha256", "num_tensors",
                                 "num_parameters"}}
      config.json                the base's architecture and robot interface (checkpoint.py)
      normalization.json         the statistics the adapted policy uses

``base.sha256`` is :func:`checkpoint.tensor_digest` over the base policy's whole state_dict as
``load_policy`` returns it (frozen towers included), in the style of external_weights.json.
:func:`load_adapted` loads the base, recomputes that digest and refuses a base whose weights
differ, with both digests in the message: adapters only reproduce their outputs on top of the
very weights they were trained on.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from vla_ros.cli_fields import refuse_unknown_keys

from .checkpoint import (ADAPTER_CONFIG_FILE, CONFIG_FILE, NORMALIZATION_FILE, CheckpointError,
                         _check_safetensors_header, _read_json, load_policy, read_config, read_normalization,
                         save_policy, tensor_digest, write_config_and_normalization, write_safetensors)
from .policy import VLAPolicy
from .transformer import MLP, Attention

ADAPTER_FILE = "adapter_model.safetensors"
ADAPTER_FORMAT = 1
ADAPTER_NAME = "default"
LORA_PARTS = ("vision", "language", "fusion")
DEFAULT_TARGETS = ("q", "kv", "proj", "fc1", "fc2", "q_proj", "k_proj", "v_proj", "out_proj")
# state_dict prefix of a pretrained SigLIP / CLIP vision tower (transformers modules).
HF_VISION_PREFIX = "vision.encoder.tower."


@dataclass
class LoraSettings:
    """What gets adapters and how large they are."""

    rank: int = 8                     # r: rank of each adapter (A is r x in, B is out x r)
    alpha: float = 32.0               # scaling: the update is (alpha / rank) * B A x
    dropout: float = 0.05             # dropout on the adapter's input during training
    # Parts of the policy whose attention and MLP projections get adapters.
    parts: list[str] = field(default_factory=lambda: list(LORA_PARTS))
    # Names of the Linear layers (last name component) that get adapters inside those parts.
    target_modules: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))
    train_head: bool = True           # train the action head fully (else it stays frozen)

    def __post_init__(self) -> None:
        if isinstance(self.rank, bool) or not isinstance(self.rank, int) or self.rank < 1:
            raise ValueError(f"LoRA rank must be a positive integer, got {self.rank!r}")
        if isinstance(self.alpha, bool) or not isinstance(self.alpha, (int, float)) or not self.alpha > 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha!r}")
        if isinstance(self.dropout, bool) or not isinstance(self.dropout, (int, float)) or not 0 <= self.dropout < 1:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout!r}")
        self.alpha, self.dropout = float(self.alpha), float(self.dropout)
        self.parts, self.target_modules = list(self.parts), list(self.target_modules)
        bad = sorted(set(self.parts) - set(LORA_PARTS))
        if bad or not self.parts:
            raise ValueError(f"LoRA parts must be among {list(LORA_PARTS)}, got {self.parts!r}")
        if not self.target_modules or not all(isinstance(t, str) and t for t in self.target_modules):
            raise ValueError(f"LoRA target_modules must be non-empty names, got {self.target_modules!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "LoraSettings":
        refuse_unknown_keys(cls, data, "LoraSettings")
        return cls(**data)


def lora_target_names(policy: nn.Module, settings: LoraSettings) -> list[str]:
    """Full module names of the Linear layers that get adapters (see the module docstring)."""
    wanted = set(settings.target_modules)
    names = []
    for name, module in policy.named_modules():
        if not isinstance(module, nn.Linear) or name.split(".", 1)[0] not in settings.parts:
            continue
        parent_name, _, leaf = name.rpartition(".")
        if leaf not in wanted:
            continue
        parent = policy.get_submodule(parent_name)
        if isinstance(parent, (Attention, MLP)) or name.startswith(HF_VISION_PREFIX):
            names.append(name)
    if not names:
        raise ValueError(f"no Linear layer named {settings.target_modules} inside an attention or MLP block of "
                         f"{settings.parts}: nothing to adapt")
    return names


def apply_lora(policy: VLAPolicy, settings: LoraSettings, targets: list[str] | None = None):
    """Inject LoRA adapters into ``policy`` in place (peft ``LoraModel``); freeze everything else
    except, with ``train_head``, the action head. Returns the peft ``LoraModel`` wrapping it
    (its ``merge_and_unload`` folds the adapters back into plain Linear layers)."""
    from peft import LoraConfig
    from peft.tuners.lora import LoraModel

    targets = list(targets) if targets is not None else lora_target_names(policy, settings)
    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=targets, bias="none")
    tuner = LoraModel(policy, config, ADAPTER_NAME)
    for name, p in policy.named_parameters():
        p.requires_grad_("lora_" in name or (settings.train_head and name.startswith("head.")))
    return tuner


def adapter_tensors(policy: VLAPolicy, settings: LoraSettings) -> dict[str, torch.Tensor]:
    """What an adapted checkpoint stores: the adapters and the fully trained modules."""
    return {k: v.detach().to("cpu").contiguous().clone() for k, v in policy.state_dict().items()
            if "lora_" in k or (settings.train_head and k.startswith("head."))}


def count_trainable(policy: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters)."""
    params = list(policy.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)


def base_digest(policy: VLAPolicy) -> str:
    """The digest an adapted checkpoint records for its base (whole state_dict)."""
    return tensor_digest(policy.state_dict())


def save_adapted(policy: VLAPolicy, path: str | os.PathLike, settings: LoraSettings, base_path: str | os.PathLike,
                 base_sha256: str, base_num_tensors: int, base_num_parameters: int) -> Path:
    """Write an adapted checkpoint (layout in the module docstring); returns its path."""
    import peft

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    targets = sorted(name.removesuffix(".base_layer") for name, m in policy.named_modules()
                     if name.endswith(".base_layer"))
    write_safetensors(adapter_tensors(policy, settings), path / ADAPTER_FILE, {"format": "pt", "vla_ros_adapter": "1"})
    doc = {
        "format_version": ADAPTER_FORMAT,
        "peft_version": peft.__version__,
        "lora": settings.to_dict(),
        "target_modules": targets,
        "trained_fully": ["head"] if settings.train_head else [],
        "base": {"path": str(Path(base_path).resolve()), "sha256": base_sha256, "num_tensors": base_num_tensors,
                 "num_parameters": base_num_parameters},
    }
    (path / ADAPTER_CONFIG_FILE).write_text(json.dumps(doc, indent=2) + "\n", encoding="utf-8")
    write_config_and_normalization(policy, path)
    return path


def is_adapted_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / ADAPTER_CONFIG_FILE).is_file()


def read_adapter_config(path: Path) -> tuple[dict, LoraSettings]:
    f = path / ADAPTER_CONFIG_FILE
    doc = _read_json(f)
    if not isinstance(doc, dict) or doc.get("format_version") != ADAPTER_FORMAT:
        found = doc.get("format_version") if isinstance(doc, dict) else None
        raise CheckpointError(f"{str(f)!r}: format_version is {found!r}, this vla_ros reads {ADAPTER_FORMAT}")
    base = doc.get("base")
    if not isinstance(base, dict) or not isinstance(base.get("sha256"), str) or not isinstance(base.get("path"), str):
        raise CheckpointError(f"{str(f)!r}: 'base' needs string fields 'path' and 'sha256'")
    targets = doc.get("target_modules")
    if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
        raise CheckpointError(f"{str(f)!r}: 'target_modules' must be a non-empty list of module names")
    try:
        settings = LoraSettings.from_dict(doc.get("lora") or {})
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{str(f)!r}: lora: {e}") from None
    return doc, settings


def _load_base(path: Path, doc: dict, base: str | os.PathLike | None = None) -> VLAPolicy:
    """The base policy the adapted checkpoint at ``path`` (its adapter config ``doc``) names, or
    ``base``, checked against its digest."""
    expected = doc["base"]["sha256"]
    base_path = Path(base) if base else Path(doc["base"]["path"])
    if not base_path.is_dir():
        raise CheckpointError(
            f"adapted checkpoint {str(path)!r} needs its base checkpoint {str(base_path)!r} (sha256 {expected}), "
            "which does not exist: pass the base's directory (--base)")
    policy = load_policy(base_path)
    found = base_digest(policy)
    if found != expected:
        raise CheckpointError(
            f"adapted checkpoint {str(path)!r} was trained on a base with sha256 {expected}, but "
            f"{str(base_path)!r} has sha256 {found}: the adapters only fit the weights they were trained on")
    return policy


def load_adapted(path: str | os.PathLike, base: str | os.PathLike | None = None, merge: bool = False,
                 device: str | torch.device = "cpu"):
    """Load an adapted checkpoint on top of its base: (policy, peft LoraModel or None).

    merge: fold the adapters into the base weights (peft's ``merge_and_unload``): a plain
    policy, as :func:`checkpoint.save_policy` writes it, whose outputs equal the adapted ones
    within float rounding. Without merge the policy keeps its LoRA layers (to go on training).
    """
    path = Path(path)
    doc, settings = read_adapter_config(path)
    config, interface = read_config(path / CONFIG_FILE)
    policy = _load_base(path, doc, base)
    if policy.config != config or policy.interface != interface:
        raise CheckpointError(f"{str(path / CONFIG_FILE)!r} describes another architecture or robot interface than "
                              f"its base: the adapters do not fit it")
    stats = read_normalization(path / NORMALIZATION_FILE, interface)
    targets = doc["target_modules"]
    missing_targets = [t for t in targets if not isinstance(_get(policy, t), nn.Linear)]
    if missing_targets:
        raise CheckpointError(f"{str(path / ADAPTER_CONFIG_FILE)!r}: target module(s) {missing_targets[:5]} are not "
                              "Linear layers of the base policy")
    tuner = apply_lora(policy, settings, targets)
    load_adapter_weights(policy, path, settings)
    policy.set_normalization_stats(stats)
    if merge:
        policy = merge_adapters(policy, tuner)
        tuner = None
    return policy.to(device).eval(), tuner


def load_adapter_weights(policy: VLAPolicy, path: str | os.PathLike, settings: LoraSettings) -> None:
    """Fill a policy that already has its adapters (apply_lora) with an adapted checkpoint's
    tensors, strictly: every adapter and fully trained tensor present, none unexpected, shapes equal."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    model_file = Path(path) / ADAPTER_FILE
    if not model_file.is_file():
        raise CheckpointError(f"adapted checkpoint {str(path)!r} is missing file {ADAPTER_FILE!r}")
    _check_safetensors_header(model_file)
    try:
        state = load_file(str(model_file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{str(model_file)!r} is not a readable safetensors file: {e}") from None
    expected = adapter_tensors(policy, settings)
    missing, unexpected = sorted(set(expected) - set(state)), sorted(set(state) - set(expected))
    if missing or unexpected:
        raise CheckpointError(f"{str(model_file)!r} does not fit its adapter_config.json: missing {missing[:5]}, "
                              f"unexpected {unexpected[:5]}")
    for name, t in state.items():
        if tuple(t.shape) != tuple(expected[name].shape):
            raise CheckpointError(f"{str(model_file)!r}: tensor {name!r} has shape {tuple(t.shape)}, the adapter "
                                  f"config gives {tuple(expected[name].shape)}")
    policy.load_state_dict(state, strict=False)


def load_any_policy(path: str | os.PathLike, device: str | torch.device = "cpu") -> VLAPolicy:
    """A plain checkpoint (checkpoint.load_policy) or an adapted one, merged over its checked base:
    the one loader of the node, the policy server, fine-tuning's --init and distillation."""
    if is_adapted_checkpoint(path):
        return load_adapted(path, merge=True, device=device)[0]
    return load_policy(path, device=device)


def merge_adapters(policy: VLAPolicy, tuner) -> VLAPolicy:
    """Fold the adapters into the weights (peft's merge_and_unload): a plain VLAPolicy."""
    adapted_frozen_tower = any(n.startswith(HF_VISION_PREFIX) for n, _ in policy.named_modules() if "lora_A" in n)
    merged = tuner.merge_and_unload()
    merged.requires_grad_(True)
    if adapted_frozen_tower and merged.config.freeze_vision_tower:
        # Its weights are no longer the pretrained source's: the checkpoint stores them itself.
        merged.config = merged.config.replace(freeze_vision_tower=False)
        merged.vision.encoder.frozen = False
    # Trainable again as a plain policy, except what a plain policy keeps frozen.
    for module in merged.pretrained_modules().values():
        if hasattr(module, "backbone"):
            module.backbone.requires_grad_(False)
        elif getattr(module, "frozen", False):
            module.tower.requires_grad_(False)
    return merged


def merge_checkpoint(adapted: str | os.PathLike, out: str | os.PathLike, base: str | os.PathLike | None = None) -> Path:
    """`vla-ros merge`: write the adapted policy as a plain checkpoint."""
    policy, _ = load_adapted(adapted, base, merge=True)
    return save_policy(policy, out)


def _get(module: nn.Module, name: str):
    try:
        return module.get_submodule(name)
    except AttributeError:
        return None


# ------------------------------------------------------------------------------ QLoRA
def check_qlora_available(device: str) -> None:
    """Refuse QLoRA at once without CUDA: bitsandbytes' NF4 kernels run on CUDA GPUs only."""
    if not torch.cuda.is_available():
        raise ValueError("--qlora needs a CUDA GPU (bitsandbytes 4-bit NF4 kernels) and this machine has none: "
                         "use --lora (float base) instead")
    if not str(device).startswith(("cuda", "auto")):
        raise ValueError(f"--qlora needs --device cuda (the NF4 base lives on the GPU), got --device {device}")


def quantize_targets_nf4(policy: VLAPolicy, targets: list[str], device: torch.device | str) -> None:
    """Replace the targeted Linear layers by bitsandbytes 4-bit NF4 layers with bf16 compute, in
    place, on ``device`` (QLoRA, Dettmers et al. 2023); peft then puts its adapters over them.
    The base's float weights stay the reference: its digest is taken before this."""
    import bitsandbytes as bnb  # only on CUDA machines: not a dependency of the CPU install

    for name in targets:
        parent_name, _, leaf = name.rpartition(".")
        parent = policy.get_submodule(parent_name)
        linear = getattr(parent, leaf)
        q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=linear.bias is not None,
                              compute_dtype=torch.bfloat16, quant_type="nf4")
        q.weight = bnb.nn.Params4bit(linear.weight.data.to("cpu"), requires_grad=False, quant_type="nf4")
        if linear.bias is not None:
            q.bias = nn.Parameter(linear.bias.data.clone(), requires_grad=False)
        setattr(parent, leaf, q.to(device))  # moving to CUDA quantizes the weight
