"""VLA model library: encoders, fusion trunks, action heads, normalization, checkpoints.

Public API (no ROS imports; torch, numpy, safetensors, transformers only)::

    from vla_ros.model import RobotInterface, build_policy, load_policy, load_preset, save_policy
    robot = RobotInterface(action_names=["x", "y", "gripper"], camera_names=["front"], state_names=["j1", "j2"])
    policy = build_policy(load_preset("tiny"), robot)
    policy.set_normalization_stats({"action": compute_stats(actions), "state": compute_stats(states)})
    loss, metrics = policy.loss(batch)                     # training
    chunk = policy.predict(Observation(images, "pick up the cube", state))   # inference
    save_policy(policy, "ckpt/");  policy = load_policy("ckpt/")

Module map, bottom-up (each imports only modules before it, and vla_ros.imaging):
transformer (blocks) -> vision, language -> fusion -> discretization -> decoders ->
normalization -> config, interface, device -> types -> policy -> checkpoint -> compression.
"""

from .checkpoint import CheckpointError, load_policy, save_policy
from .config import VLAConfig, list_presets, load_preset
from .device import resolve_device
from .interface import RobotInterface
from .normalization import FeatureStats, build_processors, compute_stats
from .policy import VLAPolicy, build_policy, make_generator
from .types import Observation, PredictedChunk

__all__ = [
    "CheckpointError",
    "FeatureStats",
    "Observation",
    "PredictedChunk",
    "RobotInterface",
    "VLAConfig",
    "VLAPolicy",
    "build_policy",
    "build_processors",
    "compute_stats",
    "list_presets",
    "load_policy",
    "load_preset",
    "make_generator",
    "resolve_device",
    "save_policy",
]
