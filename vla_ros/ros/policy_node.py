"""Run a VLA policy: cameras and an instruction in, safe arm and gripper commands out.

A managed (lifecycle) node; configure starts the policy server and loads the model, activate
starts commanding, deactivate holds the arm. Three activities, each on its own thread:
  * the control loop (`_control_loop`): a thread of its own that wakes at absolute deadlines
    (node clock, so /clock under use_sim_time) and does bounded work per tick: one decision
    of the controller (vla_ros/runtime/controller.py), the safety layer, one command;
  * inference: the model runs in a policy server process (vla_ros/runtime/policy_server.py)
    that this node starts and supervises; an observation is sent from the image callback as
    soon as a new frame (of every camera) arrives and the chunk queue needs one, and the
    answers come back on the client's reader thread;
  * the executor's one thread: subscriptions, services, the ExecuteInstruction server (goals
    are coroutines, see task_server.py), status. Single-threaded on purpose: rclpy's
    MultiThreadedExecutor lost 60 % of four 640x480 cameras at 30 Hz here.

Topics, services and actions (relative names; remap them to the robot's):
  subscribes  <camera>/image_raw (sensor_msgs/Image) or <camera>/image_raw/compressed
              instruction (std_msgs/String, transient local), joint_states (sensor_msgs/JointState),
              task_success (std_msgs/Bool), ee_pose (geometry_msgs/PoseStamped) [output.mode pose]
  publishes   ~/action_chunk (vla_ros/ActionChunk), ~/status (vla_ros/PolicyStatus),
              /diagnostics (diagnostic_msgs/DiagnosticArray), and the output.mode's command
              (vla_ros/ros/outputs.py)
  action srv  ~/execute_instruction (vla_ros/action/ExecuteInstruction)
  action cli  follow_joint_trajectory [follow_joint_trajectory], gripper_command [gripper.enabled]
  services    ~/estop, ~/reset (std_srvs/Trigger)
Parameters: see vla_ros/ros/params.py (and `ros2 param describe`); only dry_run can change live.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
import traceback

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, String
from std_srvs.srv import Trigger

from vla_ros.ros import params as P
from vla_ros.ros.conversions import JointStateMatcher, compressed_to_rgb, image_to_rgb
from vla_ros.ros.outputs import GripperOutput, make_output
from vla_ros.ros.task_server import TaskServer
from vla_ros.ros.telemetry import Telemetry
from vla_ros.runtime.controller import Controller, ControllerConfig, Hold
from vla_ros.runtime.ee import ROTATION_SIZES
from vla_ros.runtime.images import ImageDecodeError, ImageLimits
from vla_ros.runtime.policy_client import InProcessPolicy, PolicyProcess
from vla_ros.runtime.policy_loader import PolicyLoadError
from vla_ros.runtime.safety import JointLimits, SafetyFilter, WorkspaceBox

RCLError = _rclpy.RCLError
HANG_FACTOR = 5.0  # a server that has not answered for this many inference timeouts (at least 10 s) is restarted
# How long the control loop may wait for the interpreter while another thread runs Python (CPython
# switches threads every 5 ms by default; a 100 Hz loop needs far less).
SWITCH_INTERVAL = 0.0005


class PolicyNode(LifecycleNode):
    """Cameras + instruction -> VLA policy (own process) -> safety layer -> robot controllers."""

    def __init__(self, **kwargs):
        super().__init__("policy_node", **kwargs)
        P.declare(self)
        self.p = None
        self.controller = None
        self.policy = None
        self.exit_code = None
        self._logged_once = set()
        self._log_lock = threading.Lock()
        # Held across one tick's decision and its command, and by the e-stop service and deactivate,
        # which stop the arm at once: no command leaves after ~/estop has answered "latched".
        self._command_lock = threading.Lock()
        self._output_held = True
        self._entities = []
        self._threads = []
        self._stop = threading.Event()
        self._shutdown_held = threading.Event()
        self.add_on_set_parameters_callback(self._on_set_parameters)
        if self.get_parameter("autostart").value:
            # Without a lifecycle manager (launch or `ros2 lifecycle set`), come up active.
            self._autostart_timer = self.create_timer(0.0, self._autostart)

    # ---------------------------------------------------------------- lifecycle
    def _autostart(self):
        self.destroy_timer(self._autostart_timer)
        if self.trigger_configure() != TransitionCallbackReturn.SUCCESS:
            self.exit_code = 2  # main() ends the process: nothing can run unconfigured
            return
        self.trigger_activate()

    def on_configure(self, state: State) -> TransitionCallbackReturn:
        try:
            self.p = P.read(self)
            meta = self._start_policy()
        except (P.ParameterError, PolicyLoadError) as exc:
            self.get_logger().error(f"configure failed: {exc}")
            return TransitionCallbackReturn.FAILURE
        try:
            return self._configure(meta)
        except Exception as exc:  # noqa: BLE001 - e.g. a camera name that is not a valid topic name
            self.get_logger().error(f"configure failed: {type(exc).__name__}: {exc}")
            self._teardown()
            self.controller = None
            return TransitionCallbackReturn.FAILURE

    def _configure(self, meta) -> TransitionCallbackReturn:
        p = self.p
        self.cams, self.joint_names = list(p["cameras.names"]), list(p["joints.names"])
        self.state_names = list(meta["state_names"])
        self.period = 1.0 / p["control.rate"]
        self.controller = Controller(ControllerConfig(
            cameras=self.cams, horizon=meta["horizon"], dim=meta["action_dim"], period=self.period,
            camera_timeout=p["cameras.max_age"], joint_timeout=p["joint_states.timeout"],
            extra_inputs={"ee_pose": p["joint_states.timeout"]} if p["output.mode"] == "pose" else {},
            inference_timeout=p["control.inference_timeout"], ensemble=p["control.ensemble"],
            ensemble_decay=p["control.ensemble_decay"], refill_threshold=p["control.refill_threshold"],
            dry_run=p["dry_run"], needs_state=bool(self.state_names)))
        self._configure_interfaces(meta)
        self._stop.clear()
        self._threads = [threading.Thread(target=self._control_loop, name="vla_control", daemon=True)]
        for t in self._threads:
            t.start()
        where = (f"policy server pid {self.policy.pid}" if p["model.process"] == "server" else "in process")
        self.get_logger().info(
            f"configured: {len(self.cams)} camera(s) {self.cams}, {len(self.joint_names)} joints, "
            f"action space {p['action_space']}, output {p['output.mode']}{' (dry run)' if p['dry_run'] else ''}, "
            f"{p['control.rate']:g} Hz, chunk {meta['horizon']}x{meta['action_dim']} on {meta['device']} ({where})")
        return TransitionCallbackReturn.SUCCESS

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self.controller.activate(self._now())
        self.get_logger().info("active: commanding the robot" if not self.controller.dry_run
                               else "active (dry run): publishing action chunks, commanding nothing")
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        with self._command_lock:
            self.controller.deactivate()
            self._hold_output()
        self.get_logger().info("inactive: holding the arm")
        return super().on_deactivate(state)

    def on_cleanup(self, state: State) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def on_shutdown(self, state: State) -> TransitionCallbackReturn:
        self._teardown()
        return TransitionCallbackReturn.SUCCESS

    def _teardown(self):
        """Hold the arm, answer a running goal, stop the threads and the policy server, and remove the
        interfaces (cleanup, shutdown, Ctrl-C)."""
        if self.controller is not None:
            with self._command_lock:
                self.controller.shutdown()
                if getattr(self, "output", None) is not None:
                    self._hold_output()
                    self.output.flush()  # teardown runs on the executor's thread
            if getattr(self, "tasks", None) is not None:
                self.tasks.abort_all("the node is shutting down")
        self._stop.set()
        for t in self._threads:
            if t is not threading.current_thread():
                t.join(timeout=5.0)
        self._threads = []
        if self.policy is not None:
            self.policy.close()
            self.policy = None
        for destroy in reversed(self._entities):
            try:
                destroy()
            except Exception:  # noqa: BLE001 - already gone with the node
                pass
        self._entities = []
        self.tasks = self.output = self.gripper = self.telemetry = None

    def shutdown_gracefully(self, executor, timeout: float = 3.0):
        """Ctrl-C / SIGTERM: answer the running goal (aborted), hold the arm, then stop everything."""
        if self.controller is not None and getattr(self, "tasks", None) is not None:
            self.get_logger().info("shutting down: holding the arm")
            self.tasks.shutdown()
            self.controller.shutdown()
            end = time.monotonic() + timeout
            while (self.tasks.busy or not self._shutdown_held.is_set()) and time.monotonic() < end:
                executor.spin_once(timeout_sec=0.05)
            for _ in range(5):  # let the goal's result and the hold go out
                executor.spin_once(timeout_sec=0.02)
        self._teardown()

    def _LifecycleNodeMixin__on_change_state(self, request, response):
        """A ChangeState request for a transition the current state does not have (e.g. a second
        `deactivate`) makes rclpy raise RCLError out of the executor, and the request is never
        answered; answer it as failed instead, with one line (rclpy.lifecycle.LifecycleNodeMixin's private
        service callback, which its constructor binds through `self`)."""
        try:
            return super()._LifecycleNodeMixin__on_change_state(request, response)
        except RCLError as exc:
            t = request.transition
            self.get_logger().warning(f"lifecycle transition {t.label or t.id} refused in state "
                                      f"'{self._state_machine.current_state[1]}': {exc}")
            response.success = False
            return response

    # ---------------------------------------------------------------- configuration
    def _start_policy(self) -> dict:
        p = self.p
        gripper = ["gripper"] if p["gripper.enabled"] else []
        if p["action_space"] == "ee_delta":
            names, dim = None, 3 + ROTATION_SIZES[p["ee.rotation"]] + len(gripper)
        else:
            names = list(p["joints.names"]) + gripper
            dim = len(names)
        load = dict(checkpoint=p["model.checkpoint"], preset=p["model.preset"], action_names=names, action_dim=dim,
                    state_names=list(p["joints.names"]), camera_names=list(p["cameras.names"]),
                    device=p["model.device"], dtype=p["model.dtype"], compile=p["model.compile"],
                    seed=p["model.seed"], threads=p["model.threads"])
        cls = PolicyProcess if p["model.process"] == "server" else InProcessPolicy
        self.policy = cls(load, self._on_chunk, self._on_inference_failure, self._log)
        try:
            return self.policy.start()
        except PolicyLoadError:
            self.policy = None
            raise

    def _configure_interfaces(self, meta):
        p, n = self.p, self
        sensors = ReentrantCallbackGroup()
        own = self._entities
        self.image_limits = ImageLimits(max_width=p["cameras.max_width"], max_height=p["cameras.max_height"],
                                        min_side=p["cameras.min_side"])
        for cam, transport in zip(self.cams, p["cameras.transports"]):
            if transport == "compressed":
                sub = n.create_subscription(CompressedImage, f"{cam}/image_raw/compressed",
                                            lambda m, c=cam: self._on_image(c, m, compressed_to_rgb),
                                            qos_profile_sensor_data, callback_group=sensors)
            else:
                sub = n.create_subscription(Image, f"{cam}/image_raw", lambda m, c=cam: self._on_image(c, m, image_to_rgb),
                                            qos_profile_sensor_data, callback_group=sensors)
            own.append(lambda s=sub: n.destroy_subscription(s))
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        for sub in (n.create_subscription(String, "instruction", self._on_instruction, latched, callback_group=sensors),
                    n.create_subscription(JointState, "joint_states", self._on_joint_states, qos_profile_sensor_data,
                                          callback_group=sensors),
                    n.create_subscription(Bool, "task_success", lambda m: self.controller.note_success(m.data), 10,
                                          callback_group=sensors)):
            own.append(lambda s=sub: n.destroy_subscription(s))
        for srv in (n.create_service(Trigger, "~/estop", self._on_estop, callback_group=sensors),
                    n.create_service(Trigger, "~/reset", self._on_reset, callback_group=sensors)):
            own.append(lambda s=srv: n.destroy_service(s))
        self.matcher = JointStateMatcher(self.joint_names)
        self._joint_dict = {}
        limits = JointLimits(self.joint_names, np.array(p["joints.lower"]), np.array(p["joints.upper"]),
                             np.array(p["joints.max_velocity"]), np.array(p["joints.max_acceleration"]))
        safety = SafetyFilter(limits, self.period, max_step=p["joints.max_step"] or None,
                              workspace=WorkspaceBox(p["ee.frame"], np.array(p["workspace.min"]),
                                                     np.array(p["workspace.max"])))
        c = self.controller
        self.output = make_output(self, p, safety, self._log_once, lambda: c.joint_positions, c.peek,
                                  lambda: c.chunks, lambda name: c.feed(name, self._now()), sensors)
        self.gripper = GripperOutput(self, p, self._log_once, sensors) if p["gripper.enabled"] else None
        own.append(self.output.destroy)
        if self.gripper is not None:
            own.append(self.gripper.destroy)
        self.telemetry = Telemetry(self, c, p, meta["action_names"], self.policy.model_ms, sensors)
        supervise = n.create_timer(1.0, self._check_policy)
        own.append(lambda: n.destroy_timer(supervise))
        self.tasks = TaskServer(self, c, p, self._set_instruction, self.telemetry.latest_latency)
        own += [self.telemetry.destroy, self.tasks.destroy]

    # ---------------------------------------------------------------- logging helpers
    def _log(self, level: str, text: str):
        # One call site per severity: rclpy refuses a call site whose severity changes.
        if level == "error":
            self.get_logger().error(text)
        elif level == "info":
            self.get_logger().info(text)
        else:
            self.get_logger().warning(text)

    def _log_once(self, key: str, text: str, level: str = "warning"):
        """Log a recurring condition once (until it clears, see clear_once)."""
        with self._log_lock:
            if key in self._logged_once:
                return
            self._logged_once.add(key)
        self._log(level, text)

    def report_error(self, text: str):
        """An error that PolicyStatus.last_error should show (e.g. a controller refused a goal)."""
        self.controller.last_error = text

    def clear_once(self, prefix: str):
        with self._log_lock:
            self._logged_once = {k for k in self._logged_once if not k.startswith(prefix)}

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # ---------------------------------------------------------------- inputs
    def _on_image(self, cam, msg, convert):
        try:
            rgb = convert(msg, self.image_limits)
        except ImageDecodeError as exc:
            self._log_once(f"image:{cam}:{exc}", f"camera '{cam}': dropped a malformed image: {exc}")
            return
        stamp, now = msg.header.stamp, self._now()
        t = stamp.sec + stamp.nanosec * 1e-9
        if t == 0.0 or abs(now - t) > self.p["cameras.max_stamp_offset"]:
            self.get_logger().warning(
                f"camera '{cam}': refused a frame stamped {t:.3f}, {now - t:+.3f} s from the node's clock "
                f"(cameras.max_stamp_offset {self.p['cameras.max_stamp_offset']:g} s; is the camera on another "
                "clock, or use_sim_time wrong?)", throttle_duration_sec=5.0)
            return
        self.controller.feed_image(cam, rgb, t, now, stamp)
        self._request_inference()

    def _on_instruction(self, msg: String):
        self._set_instruction(msg.data, "instruction topic")

    def _set_instruction(self, text: str, source: str) -> str | None:
        """Validate and follow the instruction; return an error text when refused."""
        text = text.strip()
        if not text:
            err = f"refused an empty instruction from the {source}"
        elif len(text) > self.p["instruction.max_length"]:
            err = (f"refused an instruction of {len(text)} characters from the {source} "
                   f"(instruction.max_length is {self.p['instruction.max_length']})")
        else:
            if self.controller.set_instruction(text, self._now()):
                self.get_logger().info(f"instruction from the {source}: '{text}'")
            return None
        self.get_logger().warning(err)
        self.controller.last_error = err
        return err

    def _on_joint_states(self, msg: JointState):
        pos, missing, unknown = self.matcher.match(msg)
        if unknown:
            self._log_once(f"unknown_joints:{unknown}", f"joint_states has joints not in joints.names, ignored: "
                                                        f"{unknown}", "info")
        for name, v in zip(msg.name, msg.position):
            self._joint_dict[name] = float(v)
        if pos is None:
            if missing:
                self._log_once(f"missing_joints:{missing}", f"joint_states lacks configured joints {missing}; "
                                                            "the arm holds until they arrive")
            else:
                self._log_once("joint_lengths", f"joint_states has {len(msg.name)} names but {len(msg.position)} "
                                                "positions; ignored")
            return
        if not np.all(np.isfinite(pos)):
            self._log_once("nan_joints", f"joint_states has non-finite positions {pos.tolist()}; holding")
            return
        self.clear_once("nan_joints")
        state = None
        if self.state_names:
            lacking = [s for s in self.state_names if s not in self._joint_dict]
            if lacking:
                self._log_once(f"state_missing:{lacking}", f"joint_states lacks {lacking}, which the model needs "
                                                           "as proprioception; holding")
                return
            state = np.array([self._joint_dict[s] for s in self.state_names], dtype=np.float32)
            if not np.all(np.isfinite(state)):
                self._log_once("nan_joints", f"joint_states has non-finite positions {state.tolist()}; holding")
                return
        self.controller.feed_joints(pos, state, self._now())

    def _on_estop(self, request, response):
        with self._command_lock:
            self.controller.trigger_estop("e-stop service called")
            self._hold_output()
        self.get_logger().error("E-STOP latched: holding the arm until ~/reset is called")
        response.success, response.message = True, "e-stop latched"
        return response

    def _on_reset(self, request, response):
        was = self.controller.reset_estop()
        self.get_logger().info("reset: e-stop released" if was else "reset: nothing latched")
        response.success, response.message = True, "e-stop released" if was else "not latched"
        return response

    def _on_set_parameters(self, params):
        for prm in params:
            if prm.name == "dry_run" and self.controller is not None and prm.value != self.controller.dry_run:
                self.controller.set_dry_run(prm.value)
                self.get_logger().info("dry run on: publishing action chunks, commanding nothing (the arm is "
                                       "brought to rest)" if prm.value else "dry run off: commanding the robot")
        return SetParametersResult(successful=True)

    # ---------------------------------------------------------------- inference
    def _request_inference(self):
        """Send an observation to the policy when one is due (the controller decides)."""
        policy = self.policy
        if policy is None or not policy.can_submit():
            return
        obs = self.controller.take_request(self._now())
        if obs is not None and not policy.submit(obs):
            self.controller.inference_failed(obs, "the policy server is not ready")

    def _check_policy(self):
        """Restart a policy server that stopped answering (a 1 Hz timer)."""
        waited = self.policy.oldest_pending_age() if self.policy is not None else None
        if waited is not None and waited > max(10.0, HANG_FACTOR * self.p["control.inference_timeout"]):
            self.policy.restart(f"no answer for {waited:.1f} s")

    def _on_chunk(self, obs, actions, latency):
        if self.controller.add_chunk(obs, actions, self._now()):
            self.clear_once("infer:")
        self.telemetry.chunk(actions, obs, latency)

    def _on_inference_failure(self, obs, error):
        self.controller.inference_failed(obs, error)
        self._log_once(f"infer:{error[:60]}", f"inference failed: {error}", "error")

    # ---------------------------------------------------------------- control loop
    def _control_loop(self):
        c = self.controller
        sim_time = self.get_parameter("use_sim_time").value
        priority = self.p["control.realtime_priority"]
        if priority > 0:
            try:
                os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))  # this thread only (Linux)
                self.get_logger().info(f"control loop runs with SCHED_FIFO priority {priority}")
            except (PermissionError, OSError, AttributeError) as exc:
                self.get_logger().warning(f"control.realtime_priority {priority} not applied ({exc}); the control "
                                          "loop runs on the normal scheduler")
        while not self._stop.is_set():
            # The next tick's absolute deadline; a tick missed by less than a period runs at once (late),
            # further behind the loop joins the timeline where the clock is (the controller skips the rest).
            now = self._now()
            k = c.last_tick + 1
            if c.deadline(k) < now - self.period:
                k = c.tick_at(now) + 1
            deadline = c.deadline(k)
            if deadline - now > 2 * self.period:
                deadline = now  # the clock jumped back: tick now (the controller restarts its timeline)
            while not self._stop.is_set():
                remaining = deadline - self._now()
                if remaining <= 0:
                    break
                # Under /clock the deadline is in simulated time: poll it (the sim steps at its own pace).
                self._stop.wait(min(remaining, 0.002) if sim_time else remaining)
            if self._stop.is_set():
                break
            try:
                self.telemetry.loop_started(time.monotonic(), self._now() - deadline)
                self._control_step()
            except Exception as exc:  # never let the control loop die; hold and report
                c.command_failed(f"control loop error: {exc!r}")
                self.get_logger().error(f"control loop error: {exc!r}\n{traceback.format_exc()}")

    def _control_step(self):
        with self._command_lock:
            self._control_step_locked()

    def _hold_output(self):
        """Stop the arm once (again only after a command went out)."""
        if not self._output_held:
            self._output_held = True
            self.output.hold()

    def _control_step_locked(self):
        c = self.controller
        r = c.tick(self._now())
        if r.hold_changed:
            self._log_hold(r)
        if r.hold_started:
            self._hold_output()
        if r.hold is Hold.SHUTDOWN:
            self._shutdown_held.set()
        if r.action is None or not r.command:
            self.output.continue_hold(r.tick)
            return
        if r.hold_changed:
            self.output.resume()
        action = r.action
        if self.gripper is not None:
            self.gripper.send(float(action[-1]))
            if self.p["action_space"] == "ee_delta":
                action = action[:-1]
        why = self.output.send(action, r.tick)
        if why is not None:
            c.command_failed(why)
        else:
            self._output_held = False

    def _log_hold(self, r):
        log = self.get_logger()
        if r.hold is Hold.NONE:
            log.info(f"running '{self.controller.instruction}'")
        elif r.hold is Hold.DRY_RUN:
            log.info(f"running '{self.controller.instruction}' in dry run (commanding nothing)")
        elif r.hold.is_fault:
            log.warning(f"holding the arm: {r.hold.value}" + (f" ({r.detail})" if r.detail else ""))
        elif r.hold is not Hold.INACTIVE:
            log.info(f"holding: {r.hold.value}" + (f" ({r.detail})" if r.detail else ""))


def main(args=None) -> int:
    """Start the policy node; exit 2 with one line when its parameters are invalid."""
    # Our own SIGINT/SIGTERM handling: rclpy's would shut the context down at once, before the
    # running goal is answered and the arm is told to hold.
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        node = PolicyNode()
    except (InvalidParameterTypeException, InvalidParameterValueException) as exc:
        print(f"[policy_node] invalid parameter: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    sys.setswitchinterval(SWITCH_INTERVAL)
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while not stop.is_set() and node.exit_code is None and rclpy.ok():
            try:
                executor.spin_once(timeout_sec=0.1)
            except (KeyboardInterrupt, ExternalShutdownException):
                break
            except Exception as exc:  # noqa: BLE001 - e.g. a refused lifecycle request: log, keep serving
                node.get_logger().error(f"{type(exc).__name__}: {exc} (the node keeps running)")
        node.shutdown_gracefully(executor)
    finally:
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return node.exit_code or 0


if __name__ == "__main__":
    sys.exit(main())
