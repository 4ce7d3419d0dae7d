"""RobotInterface: what a policy reads from and writes to one robot, by name.

The architecture (:class:`~vla_ros.model.config.VLAConfig`) says how a policy computes;
the interface says what its inputs and outputs are: the name of each action dimension,
each proprioceptive state dimension and each camera. Training takes it from the
dataset's metadata (the episodes' action, joint and camera names), the checkpoint stores
it next to the architecture in ``config.json``, and the ROS node checks it against the
robot's parameters before it runs the policy. Presets never hold it: one architecture
serves many robots.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from vla_ros.cli_fields import refuse_unknown_keys


@dataclass
class RobotInterface:
    # Name of each action dimension, in the order the model outputs them (robot units),
    # e.g. ["x", "y", "z", "roll", "pitch", "yaw", "gripper"] for end-effector deltas.
    action_names: list[str]
    # One name per camera view; the order is the order of ``images`` in an observation.
    camera_names: list[str]
    # Name of each proprioceptive state dimension (joint positions, gripper opening), in
    # the order of the state vector. Empty: the robot gives the policy no state.
    state_names: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        for name in ("action_names", "camera_names", "state_names"):
            v = getattr(self, name)
            if isinstance(v, tuple):
                v = list(v)
                setattr(self, name, v)
            if not isinstance(v, list) or not all(isinstance(s, str) and s for s in v):
                raise ValueError(f"RobotInterface.{name} must be a list of non-empty strings, got {v!r}")
            if len(set(v)) != len(v):
                raise ValueError(f"RobotInterface.{name} must not contain duplicates, got {v!r}")
        if not self.action_names:
            raise ValueError("RobotInterface.action_names must name at least one action dimension")
        if not self.camera_names:
            raise ValueError("RobotInterface.camera_names must name at least one camera")

    @property
    def action_dim(self) -> int:
        return len(self.action_names)

    @property
    def state_dim(self) -> int:
        return len(self.state_names)

    @property
    def num_cameras(self) -> int:
        return len(self.camera_names)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "RobotInterface":
        """Build from a plain dict; unknown or missing keys are an error that names them."""
        if not isinstance(data, dict):
            raise ValueError(f"RobotInterface.from_dict expects a dict, got {type(data).__name__}")
        refuse_unknown_keys(cls, data, "RobotInterface")
        missing = [f.name for f in dataclasses.fields(cls)
                   if f.name not in data and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"RobotInterface is missing key(s) {missing}")
        return cls(**data)
