"""Run a VLA policy: cameras and an instruction in, safe arm and gripper commands out.

A managed (lifecycle) node. configure loads the model and creates the interfaces,
activate starts commanding, deactivate holds the arm. Inference runs in its own thread on
the freshest observation; a control timer pops one action per tick from a chunk queue
(temporal ensembling), passes it through the safety layer and sends it to the robot.

Topics, services and actions (relative names; remap them to the robot's):
  subscribes  <camera>/image_raw (sensor_msgs/Image) or <camera>/image_raw/compressed
              instruction (std_msgs/String, transient local), joint_states (sensor_msgs/JointState),
              task_success (std_msgs/Bool)
  publishes   ~/action_chunk (vla_ros/ActionChunk), ~/status (vla_ros/PolicyStatus),
              /diagnostics (diagnostic_msgs/DiagnosticArray),
              joint_trajectory (trajectory_msgs/JointTrajectory)   [output.mode joint_trajectory]
              forward_position (std_msgs/Float64MultiArray)        [output.mode forward_position]
              twist (geometry_msgs/TwistStamped)                    [output.mode twist]
              pose_target (geometry_msgs/PoseStamped)               [output.mode pose; reads ee_pose]
  action srv  ~/execute_instruction (vla_ros/action/ExecuteInstruction)
  action cli  follow_joint_trajectory (control_msgs/action/FollowJointTrajectory) [follow_joint_trajectory]
              gripper_command (control_msgs/action/GripperCommand)  [gripper.enabled]
  services    ~/estop, ~/reset (std_srvs/Trigger)
Parameters: see vla_ros/ros/params.py (and `ros2 param describe`).
"""
from __future__ import annotations

import sys
import threading
import time
import traceback
from collections import deque

import numpy as np
import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from control_msgs.action import FollowJointTrajectory, GripperCommand
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.action import ActionClient, ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import MutuallyExclusiveCallbackGroup, ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from vla_ros.action import ExecuteInstruction
from vla_ros.msg import ActionChunk, PolicyStatus
from vla_ros.ros import params as P
from vla_ros.ros.conversions import (JointStateMatcher, compressed_to_rgb, image_to_rgb,
                                     seconds_to_duration)
from vla_ros.runtime.chunk_queue import ChunkQueue
from vla_ros.runtime.commander import JointCommander
from vla_ros.runtime.ee import ROTATION_SIZES, compose_pose, delta_to_twist
from vla_ros.runtime.images import ImageDecodeError
from vla_ros.runtime.policy_loader import PolicyLoadError, load_engine
from vla_ros.runtime.safety import EStop, JointLimits, SafetyFilter, WorkspaceBox
from vla_ros.runtime.watchdog import Watchdog

STATE_LABELS = {PolicyStatus.STATE_UNCONFIGURED: "unconfigured", PolicyStatus.STATE_IDLE: "idle",
                PolicyStatus.STATE_RUNNING: "running", PolicyStatus.STATE_HOLDING: "holding",
                PolicyStatus.STATE_ESTOP: "estop", PolicyStatus.STATE_ERROR: "error"}
R = ExecuteInstruction.Result


class PolicyNode(LifecycleNode):
    """Cameras + instruction -> VLA policy -> safety layer -> robot controllers."""

    def __init__(self, **kwargs):
        super().__init__("policy_node", **kwargs)
        P.declare(self)
        self.p = None
        self.engine = None
        self._lock = threading.RLock()
        self._active = False
        self._instruction = ""
        self._images = {}              # camera -> (rgb array, receive time s, header stamp)
        self._unused_frame = {}        # camera -> True while the latest frame was not used yet
        self._dropped_frames = 0
        self._joint_pos = None         # configured joints, in order
        self._joint_dict = {}          # every joint name -> position
        self._ee_pose = None           # (xyz, quaternion wxyz, frame) from ee_pose
        self._success = False
        self._tick = 0
        self._steps = 0
        self._holding_reason = "no instruction"
        self._last_error = ""
        self.commander = None          # JointCommander: actions -> safe joint commands
        self._latencies = deque(maxlen=200)
        self._inference_count = 0
        self._inference_started = None
        self._request = None
        self._request_event = threading.Event()
        self._stop_thread = threading.Event()
        self._infer_thread = None
        self._fjt_goal = None
        self._fjt_sent_chunk = -1
        self._fjt_sent_tick = -10**9
        self._chunks_added = 0
        self._gripper_state = None
        self._goal_handle = None
        self._logged_once = set()
        self.estop = EStop()
        self.exit_code = None
        if self.get_parameter("autostart").value:
            # Without a lifecycle manager (launch or `ros2 lifecycle set`), come up active.
            self._autostart_timer = self.create_timer(0.0, self._autostart)

    # ---------------------------------------------------------------- lifecycle
    def _autostart(self):
        self._autostart_timer.cancel()
        self.destroy_timer(self._autostart_timer)
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.exit_code = 2  # main() ends the process: nothing can run unconfigured
            return
        self.trigger_activate()

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            self.p = P.read(self)
            self._configure_model()
        except (P.ParameterError, PolicyLoadError) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        self._configure_interfaces()
        self._infer_thread = threading.Thread(target=self._inference_loop, name="vla_inference", daemon=True)
        self._stop_thread.clear()
        self._infer_thread.start()
        self.get_logger().info(
            f"configured: {len(self.cams)} camera(s) {self.cams}, {len(self.joint_names)} joints, "
            f"action space {self.p['action_space']}, output {self.p['output.mode']}"
            f"{' (dry run)' if self.p['dry_run'] else ''}, {self.p['control.rate']:g} Hz, "
            f"chunk {self.horizon}x{self.dim} on {self.engine.device}")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        with self._lock:
            self._active = True
            self.queue.clear()
        self.get_logger().info("active: commanding the robot" if not self.p["dry_run"]
                               else "active (dry run): publishing action chunks, commanding nothing")
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self._enter_hold("deactivated")
        with self._lock:
            self._active = False
        self.get_logger().info("inactive: holding the arm")
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        if self._active:
            self._enter_hold("shutting down")
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _teardown(self):
        self._stop_thread.set()
        self._request_event.set()
        if self._infer_thread is not None:
            self._infer_thread.join(timeout=10.0)
            self._infer_thread = None

    # ---------------------------------------------------------------- configuration
    def _configure_model(self):
        p = self.p
        self.joint_names = list(p["joints.names"])
        self.cams = list(p["cameras.names"])
        gripper = ["gripper"] if p["gripper.enabled"] else []
        if p["action_space"] == "ee_delta":
            rot = ROTATION_SIZES[p["ee.rotation"]]
            expected_dim = 3 + rot + len(gripper)
            expected_names = None
        else:
            expected_names = self.joint_names + gripper
            expected_dim = len(expected_names)
        if p["model.threads"] > 0:
            import torch  # only to set the thread count; the model code lives in vla_ros.model
            torch.set_num_threads(p["model.threads"])
        self.engine = load_engine(
            checkpoint=p["model.checkpoint"], preset=p["model.preset"], action_names=expected_names,
            action_dim=expected_dim, state_names=self.joint_names, camera_names=self.cams,
            device=p["model.device"], dtype=p["model.dtype"], compile=p["model.compile"], seed=p["model.seed"],
            log=self.get_logger().warning)
        self.state_names = list(self.engine.state_names)
        self.horizon, self.dim = self.engine.horizon, self.engine.action_dim
        self.period = 1.0 / p["control.rate"]
        limits = JointLimits(self.joint_names, np.array(p["joints.lower"]), np.array(p["joints.upper"]),
                             np.array(p["joints.max_velocity"]), np.array(p["joints.max_acceleration"]))
        self.safety = SafetyFilter(limits, self.period, max_step=p["joints.max_step"] or None,
                                   workspace=WorkspaceBox(p["ee.frame"], np.array(p["workspace.min"]),
                                                          np.array(p["workspace.max"])))
        self.commander = (JointCommander(self.safety, p["action_space"]) if p["action_space"] != "ee_delta"
                          else None)
        self.queue = ChunkQueue(self.horizon, self.dim, mode=p["control.ensemble"],
                                ensemble_decay=p["control.ensemble_decay"],
                                refill_threshold=min(p["control.refill_threshold"], self.horizon - 1))
        timeouts = {f"camera:{c}": p["cameras.max_age"] for c in self.cams}
        timeouts["joint_states"] = p["joint_states.timeout"]
        if p["output.mode"] == "pose":
            timeouts["ee_pose"] = p["joint_states.timeout"]
        self.watchdog = Watchdog(timeouts)
        self.matcher = JointStateMatcher(self.joint_names)

    def _configure_interfaces(self):
        p = self.p
        sensors = ReentrantCallbackGroup()
        self._control_group = MutuallyExclusiveCallbackGroup()
        for cam, transport in zip(self.cams, p["cameras.transports"]):
            if transport == "compressed":
                self.create_subscription(CompressedImage, f"{cam}/image_raw/compressed",
                                         lambda m, c=cam: self._on_image(c, m, compressed_to_rgb),
                                         qos_profile_sensor_data, callback_group=sensors)
            else:
                self.create_subscription(Image, f"{cam}/image_raw",
                                         lambda m, c=cam: self._on_image(c, m, image_to_rgb),
                                         qos_profile_sensor_data, callback_group=sensors)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(String, "instruction", self._on_instruction, latched, callback_group=sensors)
        self.create_subscription(JointState, "joint_states", self._on_joint_states, qos_profile_sensor_data,
                                 callback_group=sensors)
        self.create_subscription(Bool, "task_success", self._on_success, 10, callback_group=sensors)
        self.chunk_pub = self.create_publisher(ActionChunk, "~/action_chunk", 10)
        self.status_pub = self.create_publisher(PolicyStatus, "~/status", 10)
        self.diag_pub = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        mode = p["output.mode"]
        self.traj_pub = self.fwd_pub = self.twist_pub = self.pose_pub = self.fjt_client = self.gripper_client = None
        if mode == "joint_trajectory":
            self.traj_pub = self.create_publisher(JointTrajectory, "joint_trajectory", 10)
        elif mode == "forward_position":
            self.fwd_pub = self.create_publisher(Float64MultiArray, "forward_position", 10)
        elif mode == "twist":
            self.twist_pub = self.create_publisher(TwistStamped, "twist", 10)
        elif mode == "pose":
            self.pose_pub = self.create_publisher(PoseStamped, "pose_target", 10)
            self.create_subscription(PoseStamped, "ee_pose", self._on_ee_pose, qos_profile_sensor_data,
                                     callback_group=sensors)
        else:
            self.fjt_client = ActionClient(self, FollowJointTrajectory, "follow_joint_trajectory",
                                           callback_group=sensors)
        if p["gripper.enabled"]:
            self.gripper_client = ActionClient(self, GripperCommand, "gripper_command", callback_group=sensors)
        self.create_service(Trigger, "~/estop", self._on_estop, callback_group=sensors)
        self.create_service(Trigger, "~/reset", self._on_reset, callback_group=sensors)
        self._server = ActionServer(
            self, ExecuteInstruction, "~/execute_instruction", self._execute,
            goal_callback=self._on_goal, handle_accepted_callback=self._on_goal_accepted,
            cancel_callback=lambda _: CancelResponse.ACCEPT, callback_group=ReentrantCallbackGroup())
        self.create_timer(self.period, self._control_tick, callback_group=self._control_group)
        self.create_timer(1.0 / p["status_rate"], self._publish_status, callback_group=sensors)

    # ---------------------------------------------------------------- logging helpers
    def _log_once(self, key: str, text: str, level: str = "warning"):
        """Log a recurring condition once (until it clears, see _clear_once)."""
        if key in self._logged_once:
            return
        self._logged_once.add(key)
        # One call site per severity: rclpy refuses a call site that changes severity.
        if level == "error":
            self.get_logger().error(text)
        elif level == "info":
            self.get_logger().info(text)
        else:
            self.get_logger().warning(text)

    def _clear_once(self, prefix: str):
        self._logged_once = {k for k in self._logged_once if not k.startswith(prefix)}

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # ---------------------------------------------------------------- inputs
    def _on_image(self, cam, msg, convert):
        try:
            rgb = convert(msg)
        except ImageDecodeError as exc:
            self._log_once(f"image:{cam}:{exc}", f"camera '{cam}': dropped a malformed image: {exc}")
            return
        with self._lock:
            if self._unused_frame.get(cam):
                self._dropped_frames += 1
            self._images[cam] = (rgb, self._now(), msg.header.stamp)
            self._unused_frame[cam] = True
        self.watchdog.feed(f"camera:{cam}", self._now())
        self._clear_once(f"stale:camera:{cam}")

    def _on_instruction(self, msg: String):
        self._set_instruction(msg.data, source="instruction topic")

    def _set_instruction(self, text: str, source: str) -> str | None:
        """Validate and set the instruction; return an error text when refused."""
        text = text.strip()
        if not text:
            err = f"refused an empty instruction from the {source}"
        elif len(text) > self.p["instruction.max_length"]:
            err = (f"refused an instruction of {len(text)} characters from the {source} "
                   f"(instruction.max_length is {self.p['instruction.max_length']})")
        else:
            with self._lock:
                changed = text != self._instruction
                self._instruction = text
                self._success = False
                if changed:
                    self.queue.clear()
                    self._steps = 0
            if changed:
                self.get_logger().info(f"instruction from the {source}: '{text}'")
            return None
        self.get_logger().warning(err)
        self._last_error = err
        return err

    def _on_joint_states(self, msg: JointState):
        pos, missing, unknown = self.matcher.match(msg)
        if unknown:
            self._log_once(f"unknown_joints:{unknown}", f"joint_states has joints not in joints.names, "
                                                        f"ignored: {unknown}", "info")
        with self._lock:
            for n, v in zip(msg.name, msg.position):
                self._joint_dict[n] = float(v)
        if pos is None:
            self._log_once(f"missing_joints:{missing}", f"joint_states lacks configured joints {missing}; "
                                                        "the arm holds until they arrive")
            return
        if not np.all(np.isfinite(pos)):
            self._log_once("nan_joints", f"joint_states has non-finite positions {pos.tolist()}; holding")
            return
        self._clear_once("nan_joints")
        with self._lock:
            self._joint_pos = pos
        self.watchdog.feed("joint_states", self._now())

    def _on_ee_pose(self, msg: PoseStamped):
        p, o = msg.pose.position, msg.pose.orientation
        xyz, quat = np.array([p.x, p.y, p.z]), np.array([o.w, o.x, o.y, o.z])
        if not (np.all(np.isfinite(xyz)) and np.all(np.isfinite(quat))):
            self._log_once("nan_pose", "ee_pose has non-finite values; holding")
            return
        with self._lock:
            self._ee_pose = (xyz, quat, msg.header.frame_id)
        self.watchdog.feed("ee_pose", self._now())

    def _on_success(self, msg: Bool):
        if msg.data:
            with self._lock:
                self._success = True

    def _on_estop(self, request, response):
        self.estop.trigger("e-stop service called")
        self._enter_hold("e-stop")
        self.get_logger().error("E-STOP latched: holding the arm until ~/reset is called")
        response.success, response.message = True, "e-stop latched"
        return response

    def _on_reset(self, request, response):
        was = self.estop.active
        self.estop.reset()
        with self._lock:
            self.queue.clear()
            self._last_error = ""
        self.get_logger().info("reset: e-stop released" if was else "reset: nothing latched")
        response.success, response.message = True, "e-stop released" if was else "not latched"
        return response

    # ---------------------------------------------------------------- task action server
    def _on_goal(self, goal):
        if not self._active:
            self.get_logger().warning("ExecuteInstruction goal rejected: node is not active")
            return GoalResponse.REJECT
        text = goal.instruction.strip()
        if not text or len(text) > self.p["instruction.max_length"]:
            self.get_logger().warning(f"ExecuteInstruction goal rejected: instruction is empty or longer than "
                                      f"{self.p['instruction.max_length']} characters")
            return GoalResponse.REJECT
        return GoalResponse.ACCEPT

    def _on_goal_accepted(self, handle):
        with self._lock:
            previous, self._goal_handle = self._goal_handle, handle
        if previous is not None and previous.is_active:
            self.get_logger().info("new ExecuteInstruction goal preempts the running one")
        handle.execute()

    def _execute(self, handle):
        goal = handle.request
        self._set_instruction(goal.instruction, source="ExecuteInstruction goal")
        with self._lock:
            self._success = False
            self._steps = 0
        start = self._now()
        timeout = goal.timeout if goal.timeout > 0 else self.p["default_timeout"]
        result = R()

        def finish(outcome, message):
            result.outcome, result.message = outcome, message
            result.steps, result.elapsed = self._steps, self._now() - start
            self.get_logger().info(f"ExecuteInstruction '{goal.instruction}': {message}")
            return result

        while True:
            elapsed = self._now() - start
            if self._goal_handle is not handle:
                handle.abort()
                return finish(R.OUTCOME_PREEMPTED, "preempted by a newer goal")
            if handle.is_cancel_requested:
                self._stop_instruction("goal canceled")
                handle.canceled()
                return finish(R.OUTCOME_CANCELED, f"canceled after {self._steps} steps")
            if self._success:
                self._stop_instruction("task succeeded")
                handle.succeed()
                return finish(R.OUTCOME_SUCCEEDED, f"succeeded after {self._steps} steps")
            if self.estop.active or not self._active:
                self._stop_instruction("aborted")
                handle.abort()
                return finish(R.OUTCOME_ABORTED, "aborted: e-stop latched" if self.estop.active
                              else "aborted: node deactivated")
            if goal.max_steps and self._steps >= goal.max_steps:
                self._stop_instruction("step limit")
                handle.abort()
                return finish(R.OUTCOME_MAX_STEPS, f"reached max_steps {goal.max_steps}")
            if elapsed >= timeout:
                self._stop_instruction("timeout")
                handle.abort()
                return finish(R.OUTCOME_TIMEOUT, f"timed out after {timeout:g} s")
            fb = ExecuteInstruction.Feedback(step=self._steps, elapsed=elapsed,
                                             latest_latency=self._latencies[-1] if self._latencies else 0.0,
                                             queue_depth=self.queue.remaining(self._tick))
            handle.publish_feedback(fb)
            time.sleep(min(0.1, self.period))  # feedback period of this goal's own loop

    def _stop_instruction(self, reason: str):
        with self._lock:
            self._instruction = ""
        self._enter_hold(reason)

    # ---------------------------------------------------------------- control loop
    def _control_tick(self):
        try:
            self._control_step()
        except Exception as exc:  # never let the control loop die; hold and report
            self._last_error = f"control loop error: {exc!r}"
            self.get_logger().error(f"{self._last_error}\n{traceback.format_exc()}")
            self._enter_hold("control loop error")

    def _hold_reason(self, now: float) -> str | None:
        if not self._active:
            return "inactive"
        if self.estop.active:
            return "e-stop latched"
        if not self._instruction:
            return "no instruction"
        stale = self.watchdog.stale(now)
        if stale:
            return "stale input: " + ", ".join(stale)
        if self._inference_started is not None and now - self._inference_started > self.p["control.inference_timeout"]:
            return f"inference slower than control.inference_timeout ({self.p['control.inference_timeout']:g} s)"
        return None

    def _control_step(self):
        now = self._now()
        with self._lock:
            reason = self._hold_reason(now)
        if reason is not None:
            detail = ""
            if reason.startswith("stale input") and reason != self._holding_reason:
                ages = {n: self.watchdog.age(n, now) for n in self.watchdog.stale(now)}
                detail = " (last received " + ", ".join(
                    f"{n} {a:.3f} s ago" if a is not None else f"{n} never" for n, a in ages.items()) + ")"
            self._enter_hold(reason, detail)
            self._continue_hold()
            return
        tick = self._tick
        if self.queue.needs_refill(tick):
            self._request_inference(tick)
        action = self.queue.pop(tick)
        self._tick += 1
        if action is None:
            self.get_logger().warning("action queue ran dry (inference slower than one chunk, or a coarse /clock): "
                                      "holding", throttle_duration_sec=5.0)
            self._continue_hold()
            return
        if self._holding_reason:
            self.get_logger().info(f"running '{self._instruction}' (was holding: {self._holding_reason})")
            self._holding_reason = ""
        self._steps += 1
        if self.p["dry_run"]:
            return
        self._command(action, tick)

    def _request_inference(self, tick: int):
        with self._lock:
            images = []
            for cam in self.cams:
                images.append(self._images[cam][0])
                self._unused_frame[cam] = False
            # The observation's stamp: the newest camera frame's header stamp.
            obs_stamp = max((self._images[c][2] for c in self.cams), key=lambda t: (t.sec, t.nanosec))
            state = self._state_vector()
            if state is None:
                return
            req_id = self.queue.mark_request(tick)
            self._request = (req_id, tick, images, self._instruction, state, obs_stamp)
            self._inference_started = self._now()
        self._request_event.set()

    def _state_vector(self):
        missing = [n for n in self.state_names if n not in self._joint_dict]
        if missing:
            self._log_once(f"state_missing:{missing}", f"joint_states lacks {missing}, which the model needs "
                                                       "as proprioception; holding")
            return None
        return np.array([self._joint_dict[n] for n in self.state_names], dtype=np.float32)

    def _inference_loop(self):
        while not self._stop_thread.is_set():
            self._request_event.wait(timeout=0.5)
            self._request_event.clear()
            with self._lock:
                request, self._request = self._request, None
            if request is None:
                continue
            req_id, tick, images, instruction, state, obs_stamp = request
            t0 = time.perf_counter()
            try:
                chunk = self.engine.infer(images, instruction, state)
                actions = np.asarray(chunk.actions, dtype=np.float64)
                latency = time.perf_counter() - t0
                self.queue.add_chunk(actions, start_tick=tick, request_id=req_id)
            except Exception as exc:  # a failed inference must not kill the thread: hold
                self.queue.cancel_request(req_id)
                self._last_error = f"inference failed: {exc!r}"
                self._log_once(f"infer:{type(exc).__name__}", self._last_error, "error")
                with self._lock:
                    self._inference_started = None
                continue
            with self._lock:
                self._inference_started = None
                self._latencies.append(latency)
                self._inference_count += 1
                self._chunks_added += 1
            self._publish_chunk(actions, obs_stamp, latency, instruction)

    # ---------------------------------------------------------------- outputs
    def _command(self, action: np.ndarray, tick: int):
        if self.p["gripper.enabled"]:
            self._command_gripper(float(action[-1]))
        if self.p["action_space"] == "ee_delta":
            twist = delta_to_twist(action[:-1] if self.p["gripper.enabled"] else action, self.period,
                                   self.p["ee.rotation"])
            res = self.safety.filter_twist(twist.linear, twist.angular, self.p["ee.max_linear_velocity"],
                                           self.p["ee.max_angular_velocity"])
            if res.command is None:
                self._enter_hold("unsafe twist: " + "; ".join(res.reasons))
                return
            if self.p["output.mode"] == "twist":
                self._publish_twist(res.command[:3], res.command[3:])
            else:
                self._command_pose(res.command[:3] * self.period, res.command[3:] * self.period)
            return
        with self._lock:
            current = self._joint_pos
        if current is None:
            self._enter_hold("no joint positions")
            return
        res = self.commander.step(action, current)
        if res.command is None:
            self._enter_hold("unsafe command rejected: " + "; ".join(res.reasons))
            return
        if res.clamped:
            self._log_once("clamped", "commands are being clamped to the robot's limits: " + "; ".join(res.reasons),
                           "info")
        self._send_joint_command(res.command, tick, current)

    def _command_pose(self, translation: np.ndarray, rotvec: np.ndarray):
        """Send current pose + the (speed-limited) delta as a PoseStamped target in the workspace."""
        with self._lock:
            pose = self._ee_pose
        if pose is None:
            self._enter_hold("no end-effector pose on ee_pose")
            return
        xyz, quat, frame = pose
        target, target_q, _ = compose_pose(xyz, quat, np.concatenate([translation, rotvec]), "axis_angle")
        res = self.safety.filter_ee_target(target, target_q, frame=frame or None)
        if res.command is None:
            self._enter_hold("unsafe pose target: " + "; ".join(res.reasons))
            return
        msg = PoseStamped()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.p["ee.frame"]
        c = [float(v) for v in res.command]
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = c[:3]
        msg.pose.orientation.w, msg.pose.orientation.x, msg.pose.orientation.y, msg.pose.orientation.z = c[3:]
        self.pose_pub.publish(msg)

    def _send_joint_command(self, cmd: np.ndarray, tick: int, current: np.ndarray):
        mode = self.p["output.mode"]
        if mode == "forward_position":
            self.fwd_pub.publish(Float64MultiArray(data=cmd.tolist()))
        elif mode == "joint_trajectory":
            self.traj_pub.publish(self._trajectory([cmd]))
        else:
            self._send_fjt(cmd, tick)

    def _trajectory(self, points) -> JointTrajectory:
        traj = JointTrajectory(joint_names=self.joint_names)
        # header.stamp zero: start now (joint_trajectory_controller semantics)
        for k, q in enumerate(points, start=1):
            traj.points.append(JointTrajectoryPoint(positions=[float(x) for x in q],
                                                    time_from_start=seconds_to_duration(k * self.period)))
        return traj

    def _send_fjt(self, cmd: np.ndarray, tick: int):
        """Send the queued future actions as one trajectory when a new chunk arrived.

        The trajectory starts at this tick's (already safety-filtered) command and continues
        with the queue's next actions, each filtered from its predecessor, so it has no jump
        and respects every limit; joint_trajectory_controller replaces the rest of the
        previous goal with it.
        """
        ticks_left = self._fjt_sent_tick + self.p["output.trajectory_points"] - tick
        if self._chunks_added == self._fjt_sent_chunk and ticks_left > 2:
            return
        with self._lock:
            current = self._joint_pos
        ahead = []
        for k in range(1, self.p["output.trajectory_points"]):
            a = self.queue.peek(tick + k)
            if a is None:
                break
            ahead.append(a)
        self._send_fjt_points(self.commander.preview(cmd, ahead, current))
        self._fjt_sent_chunk, self._fjt_sent_tick = self._chunks_added, tick

    def _send_fjt_points(self, points):
        if not self.fjt_client.server_is_ready():
            self._log_once("fjt_missing", "FollowJointTrajectory server 'follow_joint_trajectory' is not available; "
                                          "is the joint_trajectory_controller running and the name remapped?", "error")
            return
        self._clear_once("fjt_missing")
        goal = FollowJointTrajectory.Goal(trajectory=self._trajectory(points))
        future = self.fjt_client.send_goal_async(goal)
        future.add_done_callback(self._on_fjt_response)

    def _on_fjt_response(self, future):
        handle = future.result()
        if not handle.accepted:
            self._last_error = "FollowJointTrajectory goal rejected by the controller"
            self._log_once("fjt_rejected", self._last_error + " (is it active? the next chunk is sent as a new goal)", "error")
            return
        self._clear_once("fjt_rejected")
        self._fjt_goal = handle
        handle.get_result_async().add_done_callback(lambda f, h=handle: self._on_fjt_result(h, f))

    def _on_fjt_result(self, handle, future):
        res = future.result()
        code = res.result.error_code
        if code != FollowJointTrajectory.Result.SUCCESSFUL and handle is self._fjt_goal and res.status != 5:
            # status 5 = CANCELED: superseded by our next goal, expected.
            self._last_error = f"FollowJointTrajectory goal failed (error_code {code}): {res.result.error_string}"
            self._log_once(f"fjt_failed:{code}", self._last_error, "error")

    def _command_gripper(self, value: float):
        want_open = value > self.p["gripper.threshold"]
        if want_open == self._gripper_state or self.gripper_client is None:
            return
        if not self.gripper_client.server_is_ready():
            self._log_once("gripper_missing", "GripperCommand server 'gripper_command' is not available", "error")
            return
        self._gripper_state = want_open
        pos = self.p["gripper.open_position"] if want_open else self.p["gripper.closed_position"]
        self.get_logger().info(f"gripper: {'open' if want_open else 'close'} (model output {value:.2f})")
        goal = GripperCommand.Goal()
        goal.command.position, goal.command.max_effort = pos, self.p["gripper.max_effort"]
        self.gripper_client.send_goal_async(goal)

    def _publish_twist(self, linear, angular):
        msg = TwistStamped()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.p["ee.frame"]
        msg.twist.linear.x, msg.twist.linear.y, msg.twist.linear.z = (float(v) for v in linear)
        msg.twist.angular.x, msg.twist.angular.y, msg.twist.angular.z = (float(v) for v in angular)
        self.twist_pub.publish(msg)

    # ---------------------------------------------------------------- holding
    def _enter_hold(self, reason: str, detail: str = ""):
        """Stop acting on the policy: clear the queue and bring the arm to rest."""
        if reason == self._holding_reason:
            return
        first = not self._holding_reason
        self._holding_reason = reason
        if reason not in ("no instruction", "inactive"):
            self.get_logger().warning(f"holding the arm: {reason}{detail}")
            if reason.startswith(("unsafe", "stale", "inference")):
                self._last_error = reason
        with self._lock:
            self.queue.clear()
            self._inference_started = None
        if first and self.p is not None and not self.p["dry_run"] and self._active:
            self._send_hold()

    def _continue_hold(self):
        """While holding in topic modes, decelerate from the last command until at rest."""
        if self.p["dry_run"] or self.commander is None or self.p["output.mode"] == "follow_joint_trajectory":
            return
        with self._lock:
            current = self._joint_pos
        cmd = self.commander.hold_step(current)
        if cmd is not None:
            self._send_joint_command(cmd, self._tick, current)

    def _send_hold(self):
        mode = self.p["output.mode"]
        if mode == "twist":
            self._publish_twist([0.0] * 3, [0.0] * 3)
            return
        if mode == "pose":
            return  # no new target: the arm stays at its last one
        if mode == "follow_joint_trajectory" and self.commander is not None:
            # A braking trajectory from the last command, within the acceleration limits.
            with self._lock:
                current = self._joint_pos
            points = self.commander.brake(current)
            if points:
                self._send_fjt_points(points)
            self._fjt_sent_chunk = -1

    # ---------------------------------------------------------------- telemetry
    def _publish_chunk(self, actions, obs_stamp: TimeMsg, latency: float, instruction: str):
        msg = ActionChunk(names=list(self.engine.action_names), action_space=self.p["action_space"],
                          horizon=int(actions.shape[0]), dims=int(actions.shape[1]),
                          actions=actions.ravel().tolist(), period=self.period, observation_stamp=obs_stamp,
                          inference_latency=latency, instruction=instruction)
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.header.frame_id = self.p["ee.frame"] if self.p["action_space"] == "ee_delta" else ""
        self.chunk_pub.publish(msg)

    def _state(self) -> int:
        if self.p is None or self.engine is None:
            return PolicyStatus.STATE_UNCONFIGURED
        if self.estop.active:
            return PolicyStatus.STATE_ESTOP
        if not self._active or not self._instruction:
            return PolicyStatus.STATE_IDLE
        if self._holding_reason:
            return PolicyStatus.STATE_HOLDING
        return PolicyStatus.STATE_RUNNING

    def _publish_status(self):
        with self._lock:
            lat = np.array(self._latencies) if self._latencies else np.zeros(1)
            count, self._inference_count = self._inference_count, 0
        st = self._state()
        msg = PolicyStatus(state=st, state_label=STATE_LABELS[st], instruction=self._instruction,
                           dry_run=bool(self.p["dry_run"]), inference_rate=count * self.p["status_rate"],
                           latency_p50=float(np.percentile(lat, 50)), latency_p90=float(np.percentile(lat, 90)),
                           latency_p99=float(np.percentile(lat, 99)), queue_depth=self.queue.remaining(self._tick),
                           steps=self._steps, dropped_frames=self._dropped_frames,
                           last_error=self._last_error or self._holding_reason)
        msg.header.stamp = self.get_clock().now().to_msg()
        self.status_pub.publish(msg)
        level = {PolicyStatus.STATE_ESTOP: DiagnosticStatus.ERROR, PolicyStatus.STATE_HOLDING: DiagnosticStatus.WARN}
        diag = DiagnosticArray()
        diag.header.stamp = msg.header.stamp
        diag.status.append(DiagnosticStatus(
            level=level.get(st, DiagnosticStatus.OK), name=f"{self.get_name()}: policy",
            message=msg.state_label + (f" ({msg.last_error})" if msg.last_error else ""), hardware_id="vla_ros",
            values=[KeyValue(key=k, value=v) for k, v in (
                ("inference_rate_hz", f"{msg.inference_rate:.2f}"), ("latency_p50_ms", f"{msg.latency_p50 * 1e3:.1f}"),
                ("latency_p99_ms", f"{msg.latency_p99 * 1e3:.1f}"), ("queue_depth", str(msg.queue_depth)),
                ("dropped_frames", str(msg.dropped_frames)), ("dry_ticks", str(self.queue.dry_ticks)),
                ("control_rate_hz", f"{self.p['control.rate']:g}"))]))
        self.diag_pub.publish(diag)


def main(args=None) -> int:
    """Start the policy node; exit 2 with one line when its parameters are invalid."""
    rclpy.init(args=args)
    try:
        node = PolicyNode()
    except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
        print(f"[policy_node] invalid parameter: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        while rclpy.ok() and node.exit_code is None:
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node._teardown()
        node.destroy_node()
        rclpy.try_shutdown()
    return node.exit_code or 0


if __name__ == "__main__":
    sys.exit(main())
