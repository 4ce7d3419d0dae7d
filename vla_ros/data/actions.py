"""Where a dataset's actions come from: :class:`ActionSpec` and the action sources.

An action source reads some topics of an episode bag and yields one action per control
tick (:class:`Ticks`). The only source is ``ee_delta``: ``twist * control_period`` from a
(geometry_msgs) TwistStamped topic (linear xyz, then angular xyz as an axis-angle vector)
plus, optionally, a std_msgs/Float64 gripper command (1 open, 0 closed). A gripper message
belongs to the first tick at or after its time minus ``tick_tolerance`` and holds until the
next one (the first ticks use ``gripper_default``). Headerless gripper messages are matched
against the ticks' receive timestamps, so a receive-time offset between header stamps and
the bag clock does not shift them. New sources (e.g. ``joint_position`` from a JointState or
JointTrajectory topic) plug into ``ACTION_SOURCES``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from vla_ros.data.errors import DatasetError

EE_DELTA_NAMES = ["x", "y", "z", "roll", "pitch", "yaw"]
TWIST_TYPES = ("geometry_msgs/msg/TwistStamped", "geometry_msgs/msg/Twist")
GRIPPER_TYPES = ("std_msgs/msg/Float64", "std_msgs/msg/Float32")


@dataclass
class ActionSpec:
    """Where the actions come from.

    kind: "ee_delta" (the only source): ``topic`` is a TwistStamped (or Twist) topic,
    one message per control tick, and an action is twist * ``control_period`` (x, y, z
    metres, then an axis-angle rotation vector in radians). ``gripper_topic`` ("" for none)
    adds a gripper dimension from std_msgs/Float64 commands.
    """

    kind: str = "ee_delta"
    topic: str = "/expert/twist"
    control_period: float = 0.1
    gripper_topic: str = "/expert/gripper"
    gripper_default: float = 1.0
    # Names of the action dimensions (without the gripper); empty: the source's defaults.
    names: list[str] = field(default_factory=list)
    gripper_name: str = "gripper"

    def action_names(self) -> list[str]:
        source = ACTION_SOURCES.get(self.kind)
        if source is None:
            raise DatasetError(f"unknown action source kind {self.kind!r}; supported: {sorted(ACTION_SOURCES)}")
        names = list(self.names) if self.names else list(source.default_names)
        return names + ([self.gripper_name] if self.gripper_topic else [])


@dataclass
class Ticks:
    """Every control tick of an episode and its action."""

    stamps: np.ndarray   # (N,) int64, header (or receive) time
    receive: np.ndarray  # (N,) int64, bag receive time
    actions: np.ndarray  # (N, D) float32


@dataclass(frozen=True)
class ActionSource:
    """An action source: which topics it reads and how messages become per-tick actions."""

    default_names: tuple[str, ...]
    topics: Callable[[ActionSpec], dict[str, tuple[str, ...]]]   # topic -> accepted types
    # (spec, topic -> [StampedMessage] sorted by stamp, bag, tick tolerance in ns) -> Ticks
    build: Callable[[ActionSpec, dict[str, list], Path, int], Ticks]


def _ee_delta_topics(spec: ActionSpec) -> dict[str, tuple[str, ...]]:
    topics = {spec.topic: TWIST_TYPES}
    if spec.gripper_topic:
        topics[spec.gripper_topic] = GRIPPER_TYPES
    return topics


def _ee_delta_build(spec: ActionSpec, msgs: dict[str, list], bag: Path, tol_ns: int) -> Ticks:
    twists = msgs[spec.topic]
    if not twists:
        raise DatasetError(f"bag {bag}: action topic {spec.topic} has no messages")
    stamps = np.array([s for s, _, _, _ in twists], dtype=np.int64)
    receive = np.array([r for _, _, r, _ in twists], dtype=np.int64)
    vel = np.empty((len(twists), 6), dtype=np.float64)
    for i, (_, _, _, m) in enumerate(twists):
        tw = getattr(m, "twist", m)
        vel[i] = (tw.linear.x, tw.linear.y, tw.linear.z, tw.angular.x, tw.angular.y, tw.angular.z)
    actions = vel * spec.control_period
    if spec.gripper_topic:
        gripper = _gripper_per_tick(spec, msgs[spec.gripper_topic], stamps, receive, tol_ns)
        actions = np.concatenate([actions, gripper[:, None]], axis=1)
    if not np.isfinite(actions).all():
        raise DatasetError(f"bag {bag}: non-finite values (NaN/inf) in the actions from {spec.topic}")
    return Ticks(stamps, receive, actions.astype(np.float32))


def _gripper_per_tick(spec: ActionSpec, commands: list, stamps: np.ndarray, receive: np.ndarray,
                      tol_ns: int) -> np.ndarray:
    """The gripper command in force at each tick (see the module docstring)."""
    gripper = np.full(len(stamps), float(spec.gripper_default))
    events = []  # (tick index from which the value holds, order, value)
    for order, (s, has_header, r, m) in enumerate(commands):
        times = stamps if has_header else receive
        ref = s if has_header else r
        k = int(np.searchsorted(times, ref - tol_ns, side="left"))
        events.append((k, order, float(m.data)))
    events.sort()
    for k, _, value in events:
        if k < len(gripper):
            gripper[k:] = value
    return gripper


ACTION_SOURCES: dict[str, ActionSource] = {
    "ee_delta": ActionSource(tuple(EE_DELTA_NAMES), _ee_delta_topics, _ee_delta_build),
}
