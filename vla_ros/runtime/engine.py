"""InferenceEngine: the one object the ROS node uses to run a policy.

The pipeline and its stage timings are the policy's own (``VLAPolicy.predict``:
preprocess, encode, decode, postprocess). The engine owns the decisions that do not
belong in the model: which device (CUDA when present), which precision (autocast to
bf16 / fp16 on GPU: the weights stay fp32, matrix multiplies run on tensor cores),
optional ``torch.compile`` and int8 dynamic quantization on CPU, warm-up (first calls
allocate memory, pick kernels, compile), a seeded generator for the flow head's noise,
CUDA synchronisation so that stage timings include queued GPU work, a lock, and refusing
non-finite actions::

    engine = InferenceEngine(load_policy("ckpt/"), device="auto", dtype="bfloat16")
    engine.warmup(3)
    chunk = engine.infer([front_rgb, wrist_rgb], "pick up the red cube", joint_state)
    chunk.actions  # (H, D) float32 robot units;  chunk.timings["total"]  # ms

All cameras go through the vision encoder in one batched forward pass. ``infer`` is
serialized by a lock, so a node may call it from any thread.
"""

from __future__ import annotations

import threading
import warnings
from typing import Sequence

import numpy as np
import torch

from ..imaging.preprocess import COLOR_ORDERS
from ..model.compression import quantize_dynamic_int8
from ..model.device import resolve_device
from ..model.policy import VLAPolicy, make_generator
from ..model.rtc import RTCSettings
from ..model.types import Observation, PredictedChunk

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class InferenceEngine:
    def __init__(
        self,
        policy: VLAPolicy,
        device: str | torch.device = "auto",
        dtype: str = "float32",
        compile: bool = False,
        color_order: str = "rgb",
        quantize: str | None = None,
        seed: int | None = None,
        rtc: RTCSettings | None = RTCSettings(),
    ):
        """
        policy: a VLAPolicy (usually from ``load_policy``); the engine puts it in eval mode.
        device: "auto" (CUDA if available, else CPU), "cpu", "cuda" or "cuda:N"
            (model.device.resolve_device: CUDA asked for but absent is a ValueError).
        dtype: "float32", "bfloat16" or "float16": autocast precision on GPU. On CPU,
            bfloat16 uses CPU autocast and float16 falls back to float32 (slow on CPU).
        compile: torch.compile the vision encoder, fusion trunk and action head.
        color_order: default channel order of incoming frames, "rgb" or "bgr".
        quantize: None or "int8" (dynamic int8 Linear layers; CPU only).
        seed: seed of the flow-matching noise generator (None: torch's global RNG).
        rtc: Real-Time Chunking guidance of a flow head toward the committed actions a request
            carries (model/rtc.py); None: no guidance (the frozen actions are still returned).
        """
        if dtype not in DTYPES:
            raise ValueError(f"dtype must be one of {list(DTYPES)}, got {dtype!r}")
        if color_order not in COLOR_ORDERS:
            raise ValueError(f"color_order must be one of {COLOR_ORDERS}, got {color_order!r}")
        if quantize not in (None, "int8"):
            raise ValueError(f"quantize must be None or 'int8', got {quantize!r}")
        self.device = resolve_device(device)
        if quantize == "int8":
            if self.device.type != "cpu":
                raise ValueError("int8 dynamic quantization runs on CPU only; use dtype='bfloat16' on GPU")
            policy = quantize_dynamic_int8(policy)
        self.policy = policy.to(self.device).eval()
        self.config = policy.config
        self.interface = policy.interface
        self.dtype_name = dtype
        self.autocast_dtype: torch.dtype | None = None
        if dtype != "float32":
            if self.device.type == "cuda" or dtype == "bfloat16":
                self.autocast_dtype = DTYPES[dtype]
            else:
                warnings.warn("float16 autocast is not used on CPU; running in float32", stacklevel=2)
        self.color_order = color_order
        self.rtc = rtc
        self.compiled = False
        if compile:
            for module in (self.policy.vision, self.policy.fusion, self.policy.head):
                module.compile(dynamic=False)  # in place: state_dict keys unchanged
            self.compiled = True
        self._generator: torch.Generator | None = None
        if seed is not None:
            self.seed(seed)
        self._lock = threading.Lock()
        self.last_timings: dict[str, float] = {}

    # ------------------------------------------------------------------ properties
    @property
    def action_names(self) -> list[str]:
        return list(self.interface.action_names)

    @property
    def camera_names(self) -> list[str]:
        return list(self.interface.camera_names)

    @property
    def chunk_size(self) -> int:
        return self.config.chunk_size

    @property
    def takes_committed(self) -> str:
        """How the policy continues committed actions: "prefix" (trained with them as input,
        training-time RTC), "guidance" (RTC inpainting of a flow head), "prefix+guidance", or ""."""
        ways = []
        if self.config.action_prefix:
            ways.append("prefix")
        if self.rtc is not None and self.rtc.applies(self.policy.head):
            ways.append("guidance")
        return "+".join(ways)

    def seed(self, seed: int) -> None:
        """Reset the noise generator: the following sequence of chunks is reproducible."""
        self._generator = make_generator(seed, self.device)

    # ------------------------------------------------------------------ internals
    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # stage timings must include queued GPU work

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ API
    def infer(
        self,
        images: list[np.ndarray] | torch.Tensor,
        instruction: str,
        state: np.ndarray | None = None,
        *,
        seed: int | None = None,
        color_order: str | Sequence[str] | None = None,
        committed: np.ndarray | None = None,
        inference_delay: int = 0,
    ) -> PredictedChunk:
        """Camera frames + instruction (+ state in robot units) -> PredictedChunk in robot units.

        images: one H x W x 3 (or H x W grayscale) array per camera in config order, any
            size (resized and center-cropped here), or a preprocessed float tensor.
        seed: use a fresh generator seeded with this value for this call only.
        color_order: override the engine's default ("rgb"/"bgr"), globally or per camera.
        committed / inference_delay: the actions the robot has queued for the chunk's first steps
            (robot units) and how many of them execute before this chunk can take over; the chunk
            starts with those exactly and continues them (types.Observation).
        """
        observation = Observation(images, instruction, state, committed, inference_delay)
        gen = make_generator(seed, self.device) if seed is not None else self._generator
        with self._lock:
            chunk = self.policy.predict(observation, gen, color_order=color_order or self.color_order,
                                        autocast=self._autocast, sync=self._sync, rtc=self.rtc)
        if not np.isfinite(chunk.actions).all():
            raise RuntimeError("the policy produced non-finite actions (NaN/inf); refusing to return them")
        self.last_timings = chunk.timings
        return chunk

    def warmup(self, n: int = 3, instruction: str = "warm up") -> list[float]:
        """Run ``n`` dummy inferences (allocations, kernel selection, compilation).

        Uses its own generator so the engine's seeded noise sequence is not consumed.
        Returns the total latency of each call in ms.
        """
        S = self.config.image_size
        frames = [np.zeros((S, S, 3), dtype=np.uint8) for _ in self.interface.camera_names]
        state = np.zeros(self.interface.state_dim, dtype=np.float32) if self.config.use_state else None
        out = []
        for i in range(n):
            out.append(self.infer(frames, instruction, state, seed=i).timings["total"])
        return out
