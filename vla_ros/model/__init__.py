"""VLA model library: encoders, fusion trunks, action heads, normalization, checkpoints.

Public API (no ROS imports; torch, numpy, safetensors, transformers only)::

    from vla_ros.model import VLAConfig, load_preset, build_policy, load_policy
    policy = build_policy(load_preset("tiny"))
    policy.set_normalization_stats({"action": compute_stats(actions), "state": compute_stats(states)})
    loss, metrics = policy.loss(batch)                     # training
    chunk = policy.predict(Observation(images, "pick up the cube", state))   # inference
    policy.save("ckpt/");  policy = load_policy("ckpt/")

Module map, bottom-up: transformer (blocks) -> vision, language -> fusion ->
discretization -> decoders -> normalization -> config -> types -> policy -> checkpoint ->
compression.
"""

from .checkpoint import CheckpointError, load_policy, save_policy
from .config import VLAConfig, list_presets, load_preset
from .normalization import FeatureStats, build_processors, compute_stats
from .policy import VLAPolicy, build_policy, make_generator
from .types import ActionChunk, Observation

__all__ = [
    "ActionChunk",
    "CheckpointError",
    "FeatureStats",
    "Observation",
    "VLAConfig",
    "VLAPolicy",
    "build_policy",
    "build_processors",
    "compute_stats",
    "list_presets",
    "load_policy",
    "load_preset",
    "make_generator",
    "save_policy",
]
