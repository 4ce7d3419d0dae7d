"""Robots as data: config/robots/<robot>.yaml, the policy node's parameters file for each robot.

A robot file lists only what differs from the node's defaults (vla_ros/ros/policy_params.py):
joints and their limits (with the source of every value), controllers, topics, gripper,
workspace. Tests, benchmarks and tools read a robot's joints and limits here instead of
restating them.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vla_ros.share import share_dirs


def robot_file(robot: str) -> Path:
    """config/robots/<robot>.yaml, from the first share directory that has it."""
    for d in share_dirs():
        f = d / "config" / "robots" / f"{robot}.yaml"
        if f.is_file():
            return f
    raise FileNotFoundError(f"no config/robots/{robot}.yaml in {[str(d) for d in share_dirs()]}")


def _flat(tree: dict, prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def robot_parameters(robot: str | Path) -> dict[str, Any]:
    """The policy node's parameters a robot file sets, by full name ("joints.lower"); a name or a path."""
    path = Path(robot) if str(robot).endswith((".yaml", ".yml")) else robot_file(str(robot))
    return _flat(yaml.safe_load(path.read_text())["policy_node"]["ros__parameters"])


@dataclass(frozen=True)
class RobotJoints:
    names: tuple[str, ...]
    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    max_acceleration: np.ndarray
    max_step: float        # 0: no per-tick bound


def robot_joints(robot: str | Path) -> RobotJoints:
    """A robot's arm joints and their limits, as its robot file gives them."""
    p = robot_parameters(robot)
    return RobotJoints(tuple(p["joints.names"]), *(np.asarray(p[f"joints.{k}"], dtype=float)
                                                   for k in ("lower", "upper", "max_velocity", "max_acceleration")),
                       float(p.get("joints.max_step", 0.0)))
