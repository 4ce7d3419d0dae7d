"""Policy actions -> safe joint commands, one control tick at a time.

Keeps the last command actually sent and its velocity, which the safety filter needs for
its velocity and acceleration bounds, and turns each action of the action space
(absolute joint positions or joint deltas) into a target before filtering it. The node
sends only what comes out of here.
"""
from __future__ import annotations

import numpy as np

from vla_ros.runtime.safety import SafetyFilter, SafetyResult

JOINT_SPACES = ("joint_position", "joint_delta")


class JointCommander:
    def __init__(self, safety: SafetyFilter, action_space: str):
        if action_space not in JOINT_SPACES:
            raise ValueError(f"action_space must be one of {JOINT_SPACES}, got {action_space!r}")
        self.safety = safety
        self.action_space = action_space
        self.n = safety.limits.size
        self.prev_cmd: np.ndarray | None = None
        self.prev_vel: np.ndarray | None = None

    def reset(self) -> None:
        """Forget the command history (the arm is at rest where it is measured)."""
        self.prev_cmd = self.prev_vel = None

    def _target(self, action, reference: np.ndarray) -> np.ndarray:
        a = np.asarray(action, dtype=np.float64)[: self.n]
        return a if self.action_space == "joint_position" else reference + a

    def step(self, action, current) -> SafetyResult:
        """Filter one action; on success the command becomes the new history."""
        reference = self.prev_cmd if self.prev_cmd is not None else np.asarray(current, dtype=np.float64)
        res = self.safety.filter_joint_target(self._target(action, reference), current, self.prev_cmd, self.prev_vel)
        if res.command is not None:
            self.prev_cmd, self.prev_vel = res.command, res.velocity
        return res

    def preview(self, first_command: np.ndarray, actions, current) -> list[np.ndarray]:
        """Commands for the actions after `first_command`, each filtered from its predecessor.

        The history is not changed: this is the rest of a trajectory sent ahead of time
        (FollowJointTrajectory), which the next chunk may replace.
        """
        points, prev, vel = [first_command], first_command, self.prev_vel
        for a in actions:
            res = self.safety.filter_joint_target(self._target(a, prev), current, prev, vel)
            if res.command is None:
                break
            points.append(res.command)
            prev, vel = res.command, res.velocity
        return points

    def hold_step(self, current) -> np.ndarray | None:
        """One tick of maximal deceleration from the last command (None when at rest or unknown)."""
        if self.prev_cmd is None or self.prev_vel is None or not np.any(np.abs(self.prev_vel) > 1e-9):
            return None
        cmd = self.safety.hold_command(current, self.prev_cmd, self.prev_vel)
        if cmd is None:
            return None
        self.prev_vel, self.prev_cmd = (cmd - self.prev_cmd) / self.safety.control_period, cmd
        return cmd

    def brake(self, current, max_ticks: int = 1000) -> list[np.ndarray]:
        """The whole deceleration to rest, tick by tick (a braking trajectory)."""
        points = []
        for _ in range(max_ticks):
            cmd = self.hold_step(current)
            if cmd is None:
                break
            points.append(cmd)
        self.prev_vel = None
        return points
