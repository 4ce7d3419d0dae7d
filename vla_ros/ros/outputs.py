"""How the policy node commands the robot: one class per `output.mode`, plus the gripper.

Each output is chosen once at configure time. The node calls it under its command lock (from
the control loop's thread, or from the e-stop service and deactivate, which stop the arm at
once): `send(action, tick)` turns one action (after the safety layer) into the robot's
command, `hold()` stops the arm once when the node stops following the policy, and
`continue_hold()` runs every held tick (topic modes decelerate from the last command within
the acceleration limits until at rest). `send` returns None, or the reason it refused.
Action goals (FollowJointTrajectory, GripperCommand) are handed to the executor's thread through
a guard condition and sent from there: an rclpy ActionClient used from another thread can lose
the goal response (ros2/rclpy#1123).

    mode                     sends                                      action space
    follow_joint_trajectory  control_msgs/FollowJointTrajectory goals   joint_position, joint_delta
    joint_trajectory         trajectory_msgs/JointTrajectory            joint_position, joint_delta
    forward_position         std_msgs/Float64MultiArray                 joint_position, joint_delta
    twist                    geometry_msgs/TwistStamped (MoveIt Servo)  ee_delta
    pose                     geometry_msgs/PoseStamped targets          ee_delta
"""
from __future__ import annotations

import threading
from typing import Callable

import numpy as np
from control_msgs.action import FollowJointTrajectory, GripperCommand
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.action import ActionClient
from rclpy.qos import qos_profile_sensor_data
from std_msgs.msg import Float64MultiArray
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_ros.ros.conversions import seconds_to_duration
from vla_ros.runtime.commander import JointCommander
from vla_ros.runtime.ee import compose_pose, delta_to_twist
from vla_ros.runtime.safety import SafetyFilter

CANCELED = 5  # action_msgs/GoalStatus STATUS_CANCELED


class Outbox:
    """The newest item from any thread, handed to `send` on the executor's thread (a guard condition)."""

    def __init__(self, node, send: Callable, callback_group=None):
        self.node, self.send = node, send
        self._lock = threading.Lock()
        self._item = None
        self.guard = node.create_guard_condition(self._flush, callback_group=callback_group)

    def put(self, item) -> None:
        with self._lock:
            self._item = item  # a newer goal replaces one not sent yet
        self.guard.trigger()

    def flush(self) -> None:
        self._flush()

    def _flush(self) -> None:
        with self._lock:
            item, self._item = self._item, None
        if item is not None:
            self.send(item)

    def destroy(self) -> None:
        self.node.destroy_guard_condition(self.guard)


class Output:
    """Base: `node` (the policy node: rclpy node, clear_once, report_error), `p` (parameters),
    `log_once(key, text, level)`, `current()` (measured joint positions or None)."""

    def __init__(self, node, p, safety: SafetyFilter, log_once, current: Callable[[], np.ndarray | None]):
        self.node, self.p, self.safety, self.log_once, self.current = node, p, safety, log_once, current
        self.period = 1.0 / p.control.rate
        self.entities = []  # what destroy() removes from the node

    def destroy(self) -> None:
        for destroy in self.entities:
            destroy()
        self.entities = []

    def send(self, action: np.ndarray, tick: int) -> str | None:
        raise NotImplementedError

    def hold(self) -> None:
        pass

    def flush(self) -> None:
        """Send what waits for the executor now (the caller is on the executor's thread)."""

    def continue_hold(self, tick: int) -> None:
        pass

    def resume(self) -> None:
        """The arm follows the policy again after a hold (the command history restarts from here)."""


class JointOutput(Output):
    """Joint-space actions through the JointCommander (limits at the control rate)."""

    def __init__(self, *args):
        super().__init__(*args)
        self.joint_names = list(self.p.joints.names)
        self.commander = JointCommander(self.safety, self.p.action_space)

    def send(self, action, tick):
        current = self.current()
        if current is None:
            return "no joint positions"
        res = self.commander.step(action, current)
        if res.command is None:
            return "; ".join(res.reasons)
        if res.clamped:
            self.log_once("clamped", "commands are being clamped to the robot's limits: " + "; ".join(res.reasons),
                          "info")
        self.publish(res.command, tick, current)
        return None

    def continue_hold(self, tick):
        current = self.current()
        cmd = self.commander.hold_step(current)
        if cmd is not None:
            self.publish(cmd, tick, current)

    def resume(self):
        if self.commander.prev_vel is None or not np.any(np.abs(self.commander.prev_vel) > 1e-9):
            self.commander.reset()  # at rest: start again from the measured position

    def publish(self, cmd: np.ndarray, tick: int, current: np.ndarray) -> None:
        raise NotImplementedError

    def trajectory(self, points) -> JointTrajectory:
        traj = JointTrajectory(joint_names=self.joint_names)
        # header.stamp zero: start now (joint_trajectory_controller semantics)
        for k, q in enumerate(points, start=1):
            traj.points.append(JointTrajectoryPoint(positions=[float(x) for x in q],
                                                    time_from_start=seconds_to_duration(k * self.period)))
        return traj


class ForwardPositionOutput(JointOutput):
    def __init__(self, *args):
        super().__init__(*args)
        self.pub = self.node.create_publisher(Float64MultiArray, "forward_position", 10)
        self.entities.append(lambda: self.node.destroy_publisher(self.pub))

    def publish(self, cmd, tick, current):
        self.pub.publish(Float64MultiArray(data=cmd.tolist()))


class JointTrajectoryOutput(JointOutput):
    def __init__(self, *args):
        super().__init__(*args)
        self.pub = self.node.create_publisher(JointTrajectory, "joint_trajectory", 10)
        self.entities.append(lambda: self.node.destroy_publisher(self.pub))

    def publish(self, cmd, tick, current):
        self.pub.publish(self.trajectory([cmd]))


class FollowJointTrajectoryOutput(JointOutput):
    """Sends the queued future actions as one trajectory whenever a new chunk arrived.

    The trajectory starts at this tick's (already safety-filtered) command and continues with
    the queue's next actions, each filtered from its predecessor, so it has no jump and respects
    every limit; joint_trajectory_controller replaces the rest of the previous goal with it.
    """

    def __init__(self, node, p, safety, log_once, current, peek: Callable[[int], np.ndarray | None],
                 chunk_count: Callable[[], int], callback_group=None):
        super().__init__(node, p, safety, log_once, current)
        self.peek, self.chunk_count = peek, chunk_count
        self.client = ActionClient(node, FollowJointTrajectory, p.controllers.follow_joint_trajectory,
                                   callback_group=callback_group)
        self.outbox = Outbox(node, self._send_now, callback_group)
        # The action's goal service as remapped (e.g. follow_joint_trajectory:=/arm_controller/...), to
        # count its servers: count_services does not apply remapping itself.
        self.action_name = node.resolve_topic_name(p.controllers.follow_joint_trajectory)
        self.send_goal_service = self.action_name + "/_action/send_goal"
        self.entities += [self.outbox.destroy, self.client.destroy]
        self.goal = None
        self.sent_chunk = -1
        self.sent_tick = -10**9

    def publish(self, cmd, tick, current):
        ticks_left = self.sent_tick + self.p.output.trajectory_points - tick
        if self.chunk_count() == self.sent_chunk and ticks_left > 2:
            return
        ahead = []
        for k in range(1, self.p.output.trajectory_points):
            a = self.peek(tick + k)
            if a is None:
                break
            ahead.append(a)
        self.send_points(self.commander.preview(cmd, ahead, current))
        self.sent_chunk, self.sent_tick = self.chunk_count(), tick

    def continue_hold(self, tick):
        pass  # the braking trajectory sent by hold() runs on the controller

    def hold(self):
        # A braking trajectory from the last command, within the acceleration limits. At rest, a
        # one-point trajectory at the last command still replaces the rest of the goal sent ahead.
        last = self.commander.prev_cmd
        points = self.commander.brake(self.current())
        if not points:
            stop = last if last is not None else self.current()
            points = [] if stop is None else [stop]
        if points:
            self.send_points(points)
        self.sent_chunk = -1

    def send_points(self, points) -> None:
        self.outbox.put(self.trajectory(points))

    def flush(self) -> None:
        self.outbox.flush()

    def _send_now(self, trajectory) -> None:
        if not self.client.server_is_ready():
            self.log_once("fjt_missing", "FollowJointTrajectory server 'follow_joint_trajectory' is not available; "
                                         "is the joint_trajectory_controller running and the name remapped?", "error")
            return
        self.node.clear_once("fjt_missing")
        servers = self.node.count_services(self.send_goal_service)  # ~15 us: a graph cache lookup
        if servers > 1:
            # Every server would accept the goal and run it (rclpy's client then raises "Two goals were
            # accepted with the same ID"): two controllers, or a stale simulator, moving on our command.
            error = (f"{servers} FollowJointTrajectory servers answer '{self.action_name}' (two controllers, or a "
                     "stale simulator?); no goal is sent, so the arm stops, until only one remains")
            self.node.report_error(error)
            self.log_once("fjt_twins", error, "error")
            return
        self.node.clear_once("fjt_twins")
        future = self.client.send_goal_async(FollowJointTrajectory.Goal(trajectory=trajectory))
        future.add_done_callback(self._on_response)

    def _on_response(self, future):
        handle = future.result()
        if not handle.accepted:
            self.node.report_error("FollowJointTrajectory goal rejected by the controller")
            self.log_once("fjt_rejected", "FollowJointTrajectory goal rejected by the controller (is it active? the "
                                          "next chunk is sent as a new goal)", "error")
            return
        self.node.clear_once("fjt_rejected")
        self.goal = handle
        handle.get_result_async().add_done_callback(lambda f, h=handle: self._on_result(h, f))

    def _on_result(self, handle, future):
        res = future.result()
        code = res.result.error_code
        if code != FollowJointTrajectory.Result.SUCCESSFUL and handle is self.goal and res.status != CANCELED:
            # CANCELED: superseded by our next goal, expected.
            error = f"FollowJointTrajectory goal failed (error_code {code}): {res.result.error_string}"
            self.node.report_error(error)
            self.log_once(f"fjt_failed:{code}", error, "error")


class TwistOutput(Output):
    """End-effector deltas as a velocity (MoveIt Servo's TwistStamped), speed-limited."""

    def __init__(self, *args):
        super().__init__(*args)
        self.pub = self.node.create_publisher(TwistStamped, "twist", 10)
        self.entities.append(lambda: self.node.destroy_publisher(self.pub))

    def ee_twist(self, action) -> tuple[np.ndarray | None, str]:
        twist = delta_to_twist(action, self.period, self.p.ee.rotation)
        res = self.safety.filter_twist(twist.linear, twist.angular, self.p.ee.max_linear_velocity,
                                       self.p.ee.max_angular_velocity)
        return res.command, "; ".join(res.reasons)

    def send(self, action, tick):
        cmd, why = self.ee_twist(action)
        if cmd is None:
            return why
        self.publish_twist(cmd[:3], cmd[3:])
        return None

    def hold(self):
        self.publish_twist(np.zeros(3), np.zeros(3))

    def publish_twist(self, linear, angular):
        msg = TwistStamped()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = self.p.ee.frame
        msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in linear)
        msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (float(v) for v in angular)
        self.pub.publish(msg)


class PoseOutput(TwistOutput):
    """Current pose (from ee_pose) + the speed-limited delta, as a PoseStamped target in the workspace box."""

    def __init__(self, node, p, safety, log_once, current, feed: Callable[[str], None], callback_group=None):
        Output.__init__(self, node, p, safety, log_once, current)
        self.pose = None
        self.feed = feed
        self.pub = node.create_publisher(PoseStamped, "pose_target", 10)
        self.sub = node.create_subscription(PoseStamped, "ee_pose", self._on_pose, qos_profile_sensor_data,
                                            callback_group=callback_group)
        self.entities += [lambda: node.destroy_publisher(self.pub), lambda: node.destroy_subscription(self.sub)]

    def _on_pose(self, msg: PoseStamped):
        p, o = msg.pose.position, msg.pose.orientation
        xyz, quat = np.array([p.x, p.y, p.z]), np.array([o.w, o.x, o.y, o.z])
        if not (np.all(np.isfinite(xyz)) and np.all(np.isfinite(quat))):
            self.log_once("nan_pose", "ee_pose has non-finite values; holding")
            return
        self.pose = (xyz, quat, msg.header.frame_id)
        self.feed("ee_pose")

    def send(self, action, tick):
        cmd, why = self.ee_twist(action)
        if cmd is None:
            return why
        pose = self.pose
        if pose is None:
            return "no end-effector pose on ee_pose"
        xyz, quat, frame = pose
        delta = np.concatenate([cmd[:3], cmd[3:]]) * self.period
        target, target_q, _ = compose_pose(xyz, quat, delta, "axis_angle")
        res = self.safety.filter_ee_target(target, target_q, frame=frame or None)
        if res.command is None:
            return "; ".join(res.reasons)
        msg = PoseStamped()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = self.p.ee.frame
        c = [float(v) for v in res.command]
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = c[:3]
        msg.pose.orientation.w, msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z = c[3:]
        self.pub.publish(msg)
        return None

    def hold(self):
        pass  # no new target: the arm stays at its last one


class GripperOutput:
    """The last action dimension through control_msgs/GripperCommand: open above the threshold."""

    def __init__(self, node, p, log_once, callback_group=None):
        self.node, self.p, self.log_once = node, p, log_once
        self.client = ActionClient(node, GripperCommand, p.controllers.gripper_command, callback_group=callback_group)
        self.outbox = Outbox(node, lambda goal: self.client.send_goal_async(goal), callback_group)
        self.state = None

    def destroy(self) -> None:
        self.outbox.destroy()
        self.client.destroy()

    def send(self, value: float) -> None:
        want_open = value > self.p.gripper.threshold
        if want_open == self.state:
            return
        if not self.client.server_is_ready():
            self.log_once("gripper_missing", "GripperCommand server 'gripper_command' is not available", "error")
            return
        self.state = want_open
        pos = self.p.gripper.open_position if want_open else self.p.gripper.closed_position
        self.node.get_logger().info(f"gripper: {'open' if want_open else 'close'} (model output {value:.2f})")
        goal = GripperCommand.Goal()
        goal.command.position, goal.command.max_effort = pos, self.p.gripper.max_effort
        self.outbox.put(goal)


def make_output(node, p, safety, log_once, current, peek, chunk_count, feed, callback_group=None) -> Output:
    """The output for `output.mode` (parameters were validated: the mode fits the action space)."""
    mode = p.output.mode
    args = (node, p, safety, log_once, current)
    if mode == "follow_joint_trajectory":
        return FollowJointTrajectoryOutput(*args, peek, chunk_count, callback_group)
    if mode == "pose":
        return PoseOutput(*args, feed, callback_group)
    return {"joint_trajectory": JointTrajectoryOutput, "forward_position": ForwardPositionOutput,
            "twist": TwistOutput}[mode](*args)
