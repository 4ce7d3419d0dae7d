"""The policy node's inputs: camera frames, the instruction, joint states and task success -> the controller.

Every input is checked before it reaches the controller, and a bad one is refused with one
line (logged once per kind, or throttled) while the node keeps running:
  * frames: size and encoding from the header before decoding (`cameras.max_width`,
    `cameras.max_height`, `cameras.min_side`; a compressed frame's declared size is read from its
    header), then decoded to RGB; a stamp further than `cameras.max_stamp_offset` from the node's
    clock (or zero) is refused;
  * the instruction: empty or longer than `instruction.max_length` is refused;
  * joint states: matched by name; missing joints, fewer positions than names, or non-finite values
    make the arm hold until good ones arrive.
"""
from __future__ import annotations

import unicodedata
from typing import Callable

import numpy as np
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, String

from vla_ros.ros.conversions import JointStateMatcher, compressed_to_rgb, image_to_rgb
from vla_ros.runtime.controller import Controller
from vla_ros.imaging.decode import ImageDecodeError, ImageLimits


def instruction_problem(text: str, max_length: int) -> str | None:
    """Why an instruction (already stripped) cannot be followed, or None."""
    if not text:
        return "is empty"
    if len(text) > max_length:
        return f"has {len(text)} characters (instruction.max_length is {max_length})"
    controls = sorted({f"U+{ord(ch):04X}" for ch in text if unicodedata.category(ch) == "Cc" and ch not in "\t\n"})
    if controls:  # terminal escapes and the like: they would reach the log and the model as they are
        return f"contains control characters {controls}"
    return None


class Inputs:
    def __init__(self, node, controller: Controller, p, state_names, on_frame: Callable[[], None],
                 callback_group=None):
        """node: the policy node (logger, clock, log_once, clear_once); on_frame: called after every
        accepted frame (the node then asks the controller whether an inference is due)."""
        self.node, self.controller, self.p = node, controller, p
        self.state_names = list(state_names)
        self.on_frame = on_frame
        self.cams = list(p.cameras.names)
        self.matcher = JointStateMatcher(list(p.joints.names))
        self.lower, self.upper = np.asarray(p.joints.lower, float), np.asarray(p.joints.upper, float)
        self.joint_dict = {}   # joint name -> latest position, for the arm joints and the model's state
        self.wanted = set(p.joints.names) | set(self.state_names)
        self._image_problem: set[str] = set()  # cameras whose last frame was refused
        self.limits = ImageLimits(max_width=p.cameras.max_width, max_height=p.cameras.max_height,
                                  min_side=p.cameras.min_side)
        n, subs = node, []
        for cam, transport in zip(self.cams, p.cameras.transports):
            if transport == "compressed":
                subs.append(n.create_subscription(CompressedImage, f"{cam}/image_raw/compressed",
                                                  lambda m, c=cam: self._on_image(c, m, compressed_to_rgb),
                                                  qos_profile_sensor_data, callback_group=callback_group))
            else:
                subs.append(n.create_subscription(Image, f"{cam}/image_raw",
                                                  lambda m, c=cam: self._on_image(c, m, image_to_rgb),
                                                  qos_profile_sensor_data, callback_group=callback_group))
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        subs += [n.create_subscription(String, "instruction", self._on_instruction, latched,
                                       callback_group=callback_group),
                 n.create_subscription(JointState, p.joint_states.topic, self._on_joint_states, qos_profile_sensor_data,
                                       callback_group=callback_group),
                 n.create_subscription(Bool, "task_success", lambda m: controller.note_success(m.data), 10,
                                       callback_group=callback_group)]
        self._subs = subs

    def destroy(self) -> None:
        for sub in self._subs:
            self.node.destroy_subscription(sub)
        self._subs = []

    def _now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _on_image(self, cam, msg, convert):
        try:
            rgb = convert(msg, self.limits)
        except ImageDecodeError as exc:
            # Keyed by the start of the message: its end may vary per frame (first bytes, sizes).
            self.node.log_once(f"image:{cam}:{str(exc)[:40]}", f"camera '{cam}': dropped a malformed image: {exc}")
            self._image_problem.add(cam)
            return
        if cam in self._image_problem:  # good again: the next problem is logged again
            self._image_problem.discard(cam)
            self.node.clear_once(f"image:{cam}:")
        stamp, now = msg.header.stamp, self._now()
        t = stamp.sec + stamp.nanosec * 1e-9
        if t == 0.0 or abs(now - t) > self.p.cameras.max_stamp_offset:
            self.node.get_logger().warning(
                f"camera '{cam}': refused a frame stamped {t:.3f}, {now - t:+.3f} s from the node's clock "
                f"(cameras.max_stamp_offset {self.p.cameras.max_stamp_offset:g} s; is the camera on another "
                "clock, or use_sim_time wrong?)", throttle_duration_sec=5.0)
            return
        self.controller.feed_image(cam, rgb, t, now, stamp)
        self.on_frame()

    def _on_instruction(self, msg: String):
        self.set_instruction(msg.data, "instruction topic")

    def set_instruction(self, text: str, source: str) -> str | None:
        """Validate and follow the instruction; return an error text when refused."""
        text = text.strip()
        problem = instruction_problem(text, self.p.instruction.max_length)
        if problem:
            err = f"refused an instruction from the {source}: it {problem}"
        else:
            if self.controller.set_instruction(text, self._now()):
                self.node.get_logger().info(f"instruction from the {source}: '{text}'")
            return None
        self.node.get_logger().warning(err)
        self.controller.last_error = err
        return err

    def _on_joint_states(self, msg: JointState):
        log_once = self.node.log_once
        pos, missing, unknown = self.matcher.match(msg)
        if unknown:
            shown = unknown if len(unknown) <= 10 else unknown[:10] + [f"... {len(unknown)} in all"]
            log_once(f"unknown_joints:{unknown[:10]}", f"joint_states has joints not in joints.names, ignored: "
                                                       f"{shown}", "info")
        wanted = self.wanted
        for name, v in zip(msg.name, msg.position):  # (the fingers may come in messages of their own)
            if name in wanted:
                self.joint_dict[name] = float(v)
        if pos is None:
            if missing:
                log_once(f"missing_joints:{missing}", f"joint_states lacks configured joints {missing}; "
                                                      "the arm holds until they arrive")
            elif self.matcher.duplicates:
                log_once(f"duplicate_joints:{self.matcher.duplicates}",
                         f"joint_states names {self.matcher.duplicates} more than once; ignored (the arm holds "
                         "until a message names each joint once)")
            else:
                log_once("joint_lengths", f"joint_states has {len(msg.name)} names but {len(msg.position)} "
                                          "positions; ignored")
            return
        if not np.all(np.isfinite(pos)):
            log_once("nan_joints", f"joint_states has non-finite positions {pos.tolist()}; holding")
            return
        margin = self.p.joint_states.limit_margin
        outside = (pos < self.lower - margin) | (pos > self.upper + margin)
        if np.any(outside):
            bad = {self.matcher.joint_names[i]: round(float(pos[i]), 4) for i in np.flatnonzero(outside)}
            log_once("joints_outside", f"joint_states puts {bad} further than joint_states.limit_margin "
                                       f"({margin:g}) outside joints.lower/upper; ignored, the arm holds (wrong "
                                       "joint names, units or calibration?)")
            return
        self.node.clear_once("joints_outside")
        self.node.clear_once("nan_joints")
        state = None
        if self.state_names:
            lacking = [s for s in self.state_names if s not in self.joint_dict]
            if lacking:
                log_once(f"state_missing:{lacking}", f"joint_states lacks {lacking}, which the model needs as "
                                                     "proprioception; holding")
                return
            state = np.array([self.joint_dict[s] for s in self.state_names], dtype=np.float32)
            if not np.all(np.isfinite(state)):
                log_once("nan_joints", f"joint_states has non-finite positions {state.tolist()}; holding")
                return
        self.controller.feed_joints(pos, state, self._now())
