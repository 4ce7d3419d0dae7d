"""VLAPolicy: vision encoder + language encoder + fusion trunk + action head + normalization.

One object for training (``loss``) and inference (``predict``), built by
:func:`build_policy` from a :class:`VLAConfig` (the architecture) and a
:class:`RobotInterface` (the names of its actions, state and cameras). The data flow, with
B batch, V cameras, H chunk size, D action dims, C model width::

    images (B, V, 3, S, S) in [0, 1] --MultiCameraEncoder--> tokens (B, V*N, C), pooled (B, C)
    instructions [B str]            --language encoder---> tokens (B, L, C), valid, pooled (B, C)
                                       (with cnn_film the language runs first and its pooled
                                       (B, C) FiLM-modulates every CNN stage)
    state (B, S) robot units        --PreProcessor-------> normalized state
                                    --fusion trunk-------> queries (B, H, C), context (B, T, C)
                                    --action head--------> actions (B, H, D), normalized
                                    --PostProcessor------> actions (B, H, D), robot units

``predict`` is the one inference pipeline (preprocess, encode, decode, postprocess, each
timed); the inference engine (runtime/engine.py) calls it and adds the device, precision,
compilation and locking around it. Checkpoints are written and read by checkpoint.py.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any, Callable, Collection, ContextManager

import numpy as np
import torch
import torch.nn as nn

from ..imaging.preprocess import preprocess_images
from .config import VLAConfig, load_preset
from .decoders import build_action_head
from .fusion import FusionOutput, LanguageFeatures, build_fusion
from .interface import RobotInterface
from .language import PretrainedTextEncoder, build_language_encoder
from .normalization import FeatureStats, build_processors
from .prefix import ActionPrefixConditioning, prefix_inputs, sample_prefix_lengths
from .rtc import RTCSettings
from .types import Observation, PredictedChunk
from .vision import PretrainedVisionTower, build_vision_encoder


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator | None:
    """A torch.Generator on ``device`` seeded with ``seed`` (None -> None: global RNG)."""
    if seed is None:
        return None
    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


class VLAPolicy(nn.Module):
    def __init__(
        self,
        config: VLAConfig,
        interface: RobotInterface,
        stats: dict[str, FeatureStats | dict] | None = None,
        load_pretrained: bool | Collection[str] = True,
        pretrained_dirs: dict[str, str] | None = None,
    ):
        """A robot interface without state names turns ``config.use_state`` off (the
        policy's ``config`` says so). ``load_pretrained=False`` builds pretrained towers from their config only (the
        checkpoint loader then loads their weights); a collection of roles ("vision",
        "language") loads the pretrained weights of those towers only. ``pretrained_dirs``
        overrides the directories of the "vision" / "language" towers (a checkpoint's own
        copies)."""
        super().__init__()
        dirs = pretrained_dirs or {}
        load = {r: (load_pretrained if isinstance(load_pretrained, bool) else r in load_pretrained)
                for r in ("vision", "language")}
        if config.use_state and not interface.state_names:
            config = config.replace(use_state=False)
        self.config = config
        self.interface = interface
        self.vision = build_vision_encoder(config, interface.num_cameras, load["vision"], dirs.get("vision"))
        self.language = build_language_encoder(config, load["language"], dirs.get("language"))
        self.fusion = build_fusion(config, interface.state_dim)
        self.head = build_action_head(config, interface.action_dim)
        # Training-time RTC (model/prefix.py): the committed first actions of the chunk as input.
        self.prefix = ActionPrefixConditioning(config, interface.action_dim) if config.action_prefix else None
        self.preprocessor, self.postprocessor = build_processors(
            config.normalization_mode, interface.action_names, interface.state_names, config.unnormalized_names
        )
        if stats:
            self.set_normalization_stats(stats)

    # ------------------------------------------------------------------ normalization
    def set_normalization_stats(self, stats: dict[str, FeatureStats | dict]) -> None:
        """Install dataset statistics {"action": FeatureStats, "state": FeatureStats}."""
        unknown = sorted(set(stats) - {"action", "state"})
        if unknown:
            raise ValueError(f"unknown normalization feature(s) {unknown}; expected 'action' and/or 'state'")
        for key, value in stats.items():
            if value is None:
                continue
            st = value if isinstance(value, FeatureStats) else FeatureStats.from_dict(value)
            norm = self.preprocessor.action if key == "action" else self.preprocessor.state
            if norm is None:
                raise ValueError("state statistics given but the config has no state dimensions")
            try:
                norm.set_stats(st)
            except ValueError as e:
                raise ValueError(f"{key} statistics: {e}") from None

    @property
    def normalization_stats(self) -> dict[str, FeatureStats | None]:
        state = self.preprocessor.state
        return {"action": self.preprocessor.action.stats, "state": state.stats if state is not None else None}

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def num_parameters(self, trainable_only: bool = False) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def pretrained_modules(self) -> dict[str, nn.Module]:
        """Pretrained towers whose architecture comes from a transformers directory."""
        out: dict[str, nn.Module] = {}
        if isinstance(self.vision.encoder, PretrainedVisionTower):
            out["vision"] = self.vision.encoder
        if isinstance(self.language, PretrainedTextEncoder):
            out["language"] = self.language
        return out

    def frozen_backbones(self) -> dict[str, str]:
        """Frozen pretrained backbones: role -> state_dict key prefix of their weights.

        The language backbone of a pretrained text encoder is always frozen; a pretrained
        vision tower is when ``freeze_vision_tower``. Their projections are not included
        (they train). Checkpoints store these weights by reference (checkpoint.py).
        """
        out: dict[str, str] = {}
        if isinstance(self.vision.encoder, PretrainedVisionTower) and self.vision.encoder.frozen:
            out["vision"] = "vision.encoder.tower."
        if isinstance(self.language, PretrainedTextEncoder):
            out["language"] = "language.backbone."
        return out

    def check_images(self, images: torch.Tensor) -> None:
        c, i = self.config, self.interface
        expected = (i.num_cameras, 3, c.image_size, c.image_size)
        if images.ndim != 5 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"images must have shape (B, {', '.join(map(str, expected))}) = (batch, cameras {i.camera_names}, "
                f"RGB, height, width), got {tuple(images.shape)}"
            )
        if images.dtype == torch.uint8:
            raise ValueError("images must be float in [0, 1], got uint8 (divide by 255 or use imaging.preprocess)")

    def images_tensor(self, images: Any, color_order: str | list[str] = "rgb") -> torch.Tensor:
        """Camera frames -> (1, V, 3, S, S) float in [0, 1] on the policy's device.

        images: one H x W x 3 (or H x W grayscale) array per camera in interface order, any
        size (resized and center-cropped by imaging.preprocess), a single array for a
        one-camera policy, or an already preprocessed float tensor (V, 3, S, S) /
        (1, V, 3, S, S).
        """
        if isinstance(images, torch.Tensor):
            x = images.to(self.device, torch.float32)
            return x[None] if x.ndim == 4 else x
        cams = self.interface.camera_names
        if isinstance(images, np.ndarray) and images.ndim in (2, 3) and len(cams) == 1:
            images = [images]
        if len(images) != len(cams):
            raise ValueError(f"expected {len(cams)} images ({cams}), got {len(images)}")
        arr = preprocess_images(images, self.config.image_size, color_order)  # (V, 3, S, S)
        return torch.from_numpy(arr)[None].to(self.device, non_blocking=True)

    def state_tensor(self, state: Any, batch: int) -> torch.Tensor | None:
        """Robot-unit state (S,) or (B, S) -> float32 (B, S) on the policy's device; None
        when the policy takes no state."""
        c, i = self.config, self.interface
        if not c.use_state:
            return None
        if state is None:
            raise ValueError(f"config.use_state is true: a state of {i.state_dim} values {i.state_names} is required")
        s = torch.as_tensor(np.asarray(state, dtype=np.float32) if not isinstance(state, torch.Tensor) else state)
        s = s.to(self.device, torch.float32)
        if s.ndim == 1:
            s = s[None].expand(batch, -1)
        if tuple(s.shape) != (batch, i.state_dim):
            raise ValueError(f"state must have shape ({batch}, {i.state_dim}) ({i.state_names}), got {tuple(s.shape)}")
        return s

    # ------------------------------------------------------------------ stages
    def normalize_state(self, state: torch.Tensor | None) -> torch.Tensor | None:
        return self.preprocessor(state=state)[0]

    def encode(self, images: torch.Tensor, instructions: list[str], state_norm: torch.Tensor | None) -> FusionOutput:
        """Images (B, V, 3, S, S) in [0, 1], B instructions, normalized state -> fused features."""
        if self.vision.conditioned:  # cnn_film: the instruction modulates the CNN stages
            lang = LanguageFeatures(*self.language(list(instructions)))
            vis_tokens, vis_pooled = self.vision(images, lang.pooled)  # (B, V*N, C), (B, C)
        else:
            vis_tokens, vis_pooled = self.vision(images)  # (B, V*N, C), (B, C)
            lang = LanguageFeatures(*self.language(list(instructions)))
        return self.fusion(vis_tokens, vis_pooled, lang, state_norm)

    def condition_on_prefix(self, fused: FusionOutput, prefix: torch.Tensor, mask: torch.Tensor) -> FusionOutput:
        """Given normalized actions (B, H, D) where mask (B, H) -> fused features that continue them."""
        if self.prefix is None:
            return fused
        return dataclasses.replace(fused, queries=self.prefix(fused.queries, prefix, mask))

    def decode(self, fused: FusionOutput, generator: torch.Generator | None = None, **guidance) -> torch.Tensor:
        """Fused features -> normalized action chunk (B, H, D). ``guidance``: the flow head's
        Real-Time Chunking inputs (model/rtc.py), for that head only."""
        if guidance:
            return self.head.predict(fused, generator=generator, **guidance)
        return self.head.predict(fused, generator=generator)

    def postprocess(self, actions_norm: torch.Tensor) -> torch.Tensor:
        """Normalized (B, H, D) -> robot units (B, H, D), float32."""
        return self.postprocessor(actions_norm.float())

    def forward(
        self,
        images: torch.Tensor,
        instructions: list[str] | str,
        state: torch.Tensor | np.ndarray | None = None,
        generator: torch.Generator | None = None,
    ) -> torch.Tensor:
        """Batched inference on tensors: robot-unit state in, robot-unit actions (B, H, D) out."""
        self.check_images(images)
        B = images.shape[0]
        if isinstance(instructions, str):
            instructions = [instructions] * B
        state_n = self.normalize_state(self.state_tensor(state, B))
        return self.postprocess(self.decode(self.encode(images, instructions, state_n), generator))

    # ------------------------------------------------------------------ training
    def loss(self, batch: dict[str, Any], generator: torch.Generator | None = None) -> tuple[torch.Tensor, dict[str, float]]:
        """Training loss on a batch in robot units.

        batch: "images" (B, V, 3, S, S) float in [0, 1]; "instructions" list of B str;
        "state" (B, S) (when config.use_state); "actions" (B, H, D); optional
        "action_is_pad" (B, H) bool marking steps past the episode end.
        """
        missing = [k for k in ("images", "instructions", "actions") if k not in batch]
        if missing:
            raise ValueError(f"batch is missing key(s) {missing}")
        dev = self.device
        images = torch.as_tensor(batch["images"])
        if images.dtype == torch.uint8:
            raise ValueError("batch['images'] must be float in [0, 1], got uint8 (divide by 255)")
        images = images.to(dev, torch.float32)
        self.check_images(images)
        B = images.shape[0]
        instructions = batch["instructions"]
        if isinstance(instructions, str):
            instructions = [instructions] * B
        if len(instructions) != B:
            raise ValueError(f"batch has {B} images but {len(instructions)} instructions")
        actions = torch.as_tensor(batch["actions"]).to(dev, torch.float32)
        H, D = self.config.chunk_size, self.interface.action_dim
        if tuple(actions.shape) != (B, H, D):
            raise ValueError(f"actions must have shape ({B}, {H}, {D}), got {tuple(actions.shape)}")
        state_n, actions_n = self.preprocessor(self.state_tensor(batch.get("state"), B), actions)
        is_pad = batch.get("action_is_pad")
        if is_pad is not None:
            is_pad = torch.as_tensor(is_pad).to(dev, torch.bool)
        fused = self.encode(images, instructions, state_n)
        if self.prefix is not None:
            # Training-time RTC: each sample's first d actions are given and left out of the loss.
            d = sample_prefix_lengths(B, self.config.action_prefix, dev, generator, self.config.action_prefix_dropout)
            prefix, given = prefix_inputs(actions_n, d)
            fused = self.condition_on_prefix(fused, prefix, given)
            is_pad = given if is_pad is None else (is_pad | given)
        loss, metrics = self.head.loss(fused, actions_n, is_pad=is_pad, generator=generator)
        metrics["loss"] = loss.item()
        return loss, metrics

    # ------------------------------------------------------------------ inference
    def committed_tensor(self, observation: Observation) -> tuple[torch.Tensor | None, int, int]:
        """The observation's committed actions, normalized and zero-padded to (1, H, D), how many of
        them are frozen (the inference delay, at most the number given) and how many were given;
        (None, 0, 0) without."""
        committed = observation.committed
        if committed is None or len(committed) == 0:
            return None, 0, 0
        H, D = self.config.chunk_size, self.interface.action_dim
        c = np.asarray(committed, dtype=np.float32)
        if c.ndim != 2 or c.shape[1] != D or c.shape[0] > H:
            raise ValueError(f"committed actions must have shape (n <= {H}, {D}), got {c.shape}")
        if not np.isfinite(c).all():
            raise ValueError("committed actions contain NaN or inf")
        delay = int(observation.inference_delay)
        if delay < 0:
            raise ValueError(f"inference_delay must be >= 0, got {delay}")
        padded = torch.zeros(1, H, D, device=self.device)
        padded[0, :c.shape[0]] = self.preprocessor(actions=torch.from_numpy(c).to(self.device))[1]
        return padded, min(delay, c.shape[0]), c.shape[0]

    @torch.inference_mode()
    def predict(
        self,
        observation: Observation,
        generator: torch.Generator | None = None,
        seed: int | None = None,
        *,
        color_order: str | list[str] = "rgb",
        autocast: Callable[[], ContextManager] = contextlib.nullcontext,
        sync: Callable[[], None] = lambda: None,
        rtc: "RTCSettings | None" = None,
    ) -> PredictedChunk:
        """One observation -> one PredictedChunk (H, D) in robot units, with stage timings.

        generator / seed: the flow head's noise (seed: a fresh generator for this call).
        color_order: channel order of numpy frames, "rgb" / "bgr", globally or per camera.
        autocast: a context manager entered around encode and decode (mixed precision).
        sync: called before each stage's end time is taken, so that timings include queued
        asynchronous (GPU) work.
        rtc: Real-Time Chunking guidance settings (model/rtc.py), used by a flow head when the
        observation carries committed actions.
        A policy in training mode is switched to eval mode (no dropout) for the call.
        """
        if not self.training:
            return self._predict(observation, generator, seed, color_order, autocast, sync, rtc)
        self.eval()
        try:
            return self._predict(observation, generator, seed, color_order, autocast, sync, rtc)
        finally:
            self.train()

    def _predict(self, observation, generator, seed, color_order, autocast, sync, rtc) -> PredictedChunk:
        t0 = time.perf_counter()
        images = self.images_tensor(observation.images, color_order)
        self.check_images(images)
        if images.shape[0] != 1:
            raise ValueError(f"predict takes one observation; got a batch of {images.shape[0]} (use forward())")
        state_n = self.normalize_state(self.state_tensor(observation.state, 1))
        if seed is not None:
            generator = make_generator(seed, self.device)
        sync()
        t1 = time.perf_counter()
        with autocast():
            fused = self.encode(images, [observation.instruction], state_n)
        committed, delay, given = self.committed_tensor(observation)
        guidance = {}
        if self.prefix is not None:
            # Training-time RTC: the model continues the frozen actions. Without any, it takes the path of
            # training's d = 0 samples (every step "not given"), never a path training did not see.
            padded = committed if committed is not None else torch.zeros(
                1, self.config.chunk_size, self.interface.action_dim, device=self.device)
            fused = self.condition_on_prefix(fused, *prefix_inputs(
                padded, torch.tensor([min(delay, self.config.action_prefix)])))
        if committed is not None and rtc is not None and rtc.applies(self.head):  # inference-time RTC (flow)
            guidance = rtc.guidance(committed, delay, given)
        sync()
        t2 = time.perf_counter()
        with autocast():
            actions_n = self.decode(fused, generator, **guidance)
        sync()
        t3 = time.perf_counter()
        actions = self.postprocess(actions_n)[0].cpu().numpy().astype(np.float32)
        if delay:  # the frozen actions execute whatever the model says: return them exactly
            actions[:delay] = np.asarray(observation.committed, dtype=np.float32)[:delay]
        t4 = time.perf_counter()
        ms = lambda a, b: (b - a) * 1e3  # noqa: E731
        timings = {
            "preprocess": ms(t0, t1), "encode": ms(t1, t2), "decode": ms(t2, t3),
            "postprocess": ms(t3, t4), "total": ms(t0, t4),
        }
        return PredictedChunk(actions=actions, action_names=list(self.interface.action_names), timings=timings)


def build_policy(
    config: VLAConfig | dict | str,
    interface: RobotInterface | dict,
    stats: dict[str, FeatureStats | dict] | None = None,
    load_pretrained: bool = True,
) -> VLAPolicy:
    """A freshly initialized policy from an architecture (a VLAConfig, a config dict or a
    preset name) and the robot interface it serves."""
    if isinstance(config, str):
        config = load_preset(config)
    elif isinstance(config, dict):
        config = VLAConfig.from_dict(config)
    if isinstance(interface, dict):
        interface = RobotInterface.from_dict(interface)
    return VLAPolicy(config, interface, stats=stats, load_pretrained=load_pretrained)
