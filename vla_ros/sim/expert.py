"""A scripted expert that solves the sim tasks from privileged state, for demonstrations.

Each task becomes a short list of end-effector waypoints. The expert commands a
Cartesian velocity toward the current waypoint at constant speed and switches to the next
one as soon as it is within ``pass_radius``: it moves through intermediate waypoints
without stopping (an expert that pauses at waypoints teaches the policy to stall there),
and only the final approach slows down. It re-plans from the measured end-effector and
object positions every tick, so it recovers from the noise that data collection injects
into the executed commands (DART-style: the recorded label is always the clean action).

Output per tick: linear velocity (3, m/s, base frame), angular velocity (3, zero: the
gripper keeps pointing down) and the gripper command (1.0 open, 0.0 closed).
"""
from __future__ import annotations

import numpy as np

from .panda import OBJECT_HALF, PandaSim
from .tasks import DIRECTIONS

APPROACH_HEIGHT = 0.12   # m above the table for moving over objects
PUSH_HEIGHT = 0.025      # fingertip height while pushing (object centre height)
PUSH_STANDOFF = 0.065    # pre-push point: this far behind the object's centre
PUSH_THROUGH = 0.12      # push this far past the object's initial centre


class ScriptedExpert:
    def __init__(self, speed: float = 0.2, pass_radius: float = 0.02, final_radius: float = 0.004):
        self.speed = float(speed)
        self.pass_radius = float(pass_radius)
        self.final_radius = float(final_radius)
        self._stage = 0
        self._grasp_ticks = 0
        self._push_start = None

    def reset(self) -> None:
        self._stage = 0
        self._grasp_ticks = 0
        self._push_start = None

    @property
    def approaching(self) -> bool:
        """Whether the hand is still on its way to the first waypoint, high over the table."""
        return self._stage == 0

    def _waypoints(self, sim: PandaSim) -> list[np.ndarray]:
        task = sim.task
        obj = sim.object_position(task.target)
        if task.family == "touch":
            top = obj[2] + OBJECT_HALF
            return [np.array([obj[0], obj[1], APPROACH_HEIGHT]), np.array([obj[0], obj[1], top - 0.012])]
        if task.family == "push":
            if self._push_start is None:
                self._push_start = obj.copy()
            d = np.array([*DIRECTIONS[task.direction], 0.0])
            start = self._push_start
            pre = start - d * PUSH_STANDOFF
            end = start + d * PUSH_THROUGH
            return [np.array([pre[0], pre[1], APPROACH_HEIGHT]), np.array([pre[0], pre[1], PUSH_HEIGHT]),
                    np.array([end[0], end[1], PUSH_HEIGHT])]
        # pick: over the object, down around it with the gripper open, close, lift
        return [np.array([obj[0], obj[1], APPROACH_HEIGHT]), np.array([obj[0], obj[1], 0.02]),
                np.array([obj[0], obj[1], 0.2])]

    def act(self, sim: PandaSim, period: float) -> tuple[np.ndarray, np.ndarray, float]:
        """(linear velocity, angular velocity, gripper) for the next control period."""
        ee, _ = sim.ee_pose()
        waypoints = self._waypoints(sim)
        family = sim.task.family
        gripper = 0.0
        if family == "pick":
            gripper = 1.0 if self._stage < 2 else 0.0
            if self._stage == 2 and self._grasp_ticks < 6:  # let the fingers close before lifting
                self._grasp_ticks += 1
                return np.zeros(3), np.zeros(3), gripper
        # Advance past every waypoint already reached (never backwards).
        while self._stage < len(waypoints) - 1 and np.linalg.norm(waypoints[self._stage] - ee) < self.pass_radius:
            self._stage += 1
            if family == "pick" and self._stage == 2:
                return np.zeros(3), np.zeros(3), 0.0
        target = waypoints[self._stage]
        delta = target - ee
        dist = float(np.linalg.norm(delta))
        last = self._stage == len(waypoints) - 1
        if dist < 1e-6 or (last and dist < self.final_radius):
            return np.zeros(3), np.zeros(3), gripper
        # Full speed through intermediate waypoints; the final one is approached so that
        # one period does not overshoot it.
        speed = min(self.speed, dist / period) if last else self.speed
        return delta / dist * speed, np.zeros(3), gripper
