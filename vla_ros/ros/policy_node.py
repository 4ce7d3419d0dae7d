"""Run a VLA policy: cameras and an instruction in, safe arm and gripper commands out.

A managed (lifecycle) node; configure starts the policy server and loads the model, activate
starts commanding, deactivate holds the arm. Three activities, each on its own thread:
  * the control loop (vla_ros/ros/control_loop.py): a thread of its own that wakes at absolute
    deadlines (node clock, so /clock under use_sim_time) and does bounded work per tick: one
    decision of the controller (vla_ros/runtime/controller.py), the safety layer, one command;
  * inference: the model runs in a policy server process (vla_ros/runtime/policy_server.py)
    that this node starts and supervises; an observation is sent from the image callback as
    soon as a new frame (of every camera) arrives and the chunk queue needs one, and the
    answers come back on the client's reader thread;
  * the executor's one thread: subscriptions (vla_ros/ros/inputs.py), services, the
    ExecuteInstruction server (goals are coroutines, see task_server.py), status. Single-threaded on purpose: rclpy's
    MultiThreadedExecutor lost 60 % of four 640x480 cameras at 30 Hz here.

Topics, services and actions (relative names; remap them to the robot's, or name them with the
parameters joint_states.topic, controllers.follow_joint_trajectory, controllers.gripper_command):
  subscribes  <camera>/image_raw (sensor_msgs/Image) or <camera>/image_raw/compressed
              instruction (std_msgs/String, transient local), joint_states (sensor_msgs/JointState),
              task_success (std_msgs/Bool), ee_pose (geometry_msgs/PoseStamped) [output.mode pose]
  publishes   ~/action_chunk (vla_ros/ActionChunk), ~/status (vla_ros/PolicyStatus),
              /diagnostics (diagnostic_msgs/DiagnosticArray), and the output.mode's command
              (vla_ros/ros/outputs.py)
  action srv  ~/execute_instruction (vla_ros/action/ExecuteInstruction)
  action cli  follow_joint_trajectory [follow_joint_trajectory], gripper_command [gripper.enabled]
  services    ~/estop, ~/reset (std_srvs/Trigger)
Parameters: vla_ros/ros/policy_params.py (README, `ros2 param describe`); only dry_run can change live.
"""
from __future__ import annotations

import os
import signal
import sys
import threading

import numpy as np
import rclpy
from rcl_interfaces.msg import SetParametersResult
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.impl.implementation_singleton import rclpy_implementation as _rclpy
from rclpy.lifecycle import Node as LifecycleNode
from rclpy.lifecycle import State, TransitionCallbackReturn
from rclpy.signals import SignalHandlerOptions
from std_srvs.srv import Trigger

from vla_ros.ros import policy_params
from vla_ros.ros.control_loop import ControlLoop
from vla_ros.ros.inputs import Inputs
from vla_ros.ros.outputs import GripperOutput, make_output
from vla_ros.ros.params import PARAM_ERRORS, ParameterError, declare
from vla_ros.ros.task_server import TaskServer
from vla_ros.ros.telemetry import Telemetry
from vla_ros.runtime.controller import Controller, ControllerConfig
from vla_ros.runtime.ee import ROTATION_SIZES
from vla_ros.runtime.policy_client import InProcessPolicy, PolicyProcess
from vla_ros.runtime.errors import PolicyLoadError
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
        declare(self, policy_params.SPEC)
        self.p = None
        self.controller = None
        self.policy = None
        self.exit_code = None
        self.loop = self.tasks = self.output = self.gripper = self.telemetry = self.inputs = None
        self._logged_once = set()
        self._log_lock = threading.Lock()
        self._entities = []
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
            self.p = policy_params.read(self)
            meta = self._start_policy()
        except (ParameterError, PolicyLoadError) as exc:
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
        self.cams, self.joint_names = list(p.cameras.names), list(p.joints.names)
        self.period = 1.0 / p.control.rate
        self.controller = Controller(ControllerConfig(
            cameras=self.cams, chunk_size=meta["chunk_size"], dim=meta["action_dim"], period=self.period,
            camera_timeout=p.cameras.max_age, joint_timeout=p.joint_states.timeout,
            extra_inputs={"ee_pose": p.joint_states.timeout} if p.output.mode == "pose" else {},
            inference_timeout=p.control.inference_timeout, realtime=p.control.execution == "realtime",
            ensemble=p.control.realtime_merge if p.control.execution == "realtime" else p.control.execution,
            ensemble_decay=p.control.ensemble_decay, refill_threshold=p.control.refill_threshold,
            dry_run=p.dry_run, needs_state=bool(meta["state_names"])))
        self._configure_interfaces(meta)
        self.loop = ControlLoop(self, self.controller, p, self.output, self.gripper, self.telemetry)
        self.loop.start()
        where = (f"policy server pid {self.policy.pid}" if p.model.process == "server" else "in process")
        if p.model.server:
            where = f"through policy server pid {self.policy.pid}, mapping {p.model.server_mapping}"
        self.get_logger().info(
            f"configured: {len(self.cams)} camera(s) {self.cams}, {len(self.joint_names)} joints, "
            f"action space {p.action_space}, output {p.output.mode}{' (dry run)' if p.dry_run else ''}, "
            f"{p.control.rate:g} Hz, chunk {meta['chunk_size']}x{meta['action_dim']} on {meta['device']} ({where})")
        self.get_logger().info(self._execution_summary(meta))
        if meta.get("emulated_latency"):
            self.get_logger().warning(
                f"EMULATED LATENCY ON: every inference is held back ({meta['emulated_latency']}) in the policy "
                "server process to emulate a slower model (model.emulated_latency); a what-if tool, not for real use")
        return TransitionCallbackReturn.SUCCESS

    def _execution_summary(self, meta) -> str:
        p = self.p
        chunk_s = meta["chunk_size"] / p.control.rate
        if p.control.execution != "realtime":
            return (f"execution {p.control.execution}: a request when {p.control.refill_threshold} actions or fewer "
                    f"are left of a {chunk_s:g} s chunk")
        how = meta.get("takes_committed") or ""
        if not p.control.send_committed:
            how = "not sent (control.send_committed false)"
        elif not how:
            how = "not taken by this policy (kept by the node)"
        return (f"execution realtime: back-to-back requests, committed actions {how}, new chunks "
                f"{'replace' if p.control.realtime_merge == 'latest' else 'are averaged with'} the older ones after them; "
                f"a {chunk_s:g} s chunk keeps the arm moving for inference latencies up to about {chunk_s / 2:.2g} s")

    def on_activate(self, state: State) -> TransitionCallbackReturn:
        self.controller.activate(self._now())
        self.get_logger().info("active: commanding the robot" if not self.controller.dry_run
                               else "active (dry run): publishing action chunks, commanding nothing")
        return super().on_activate(state)

    def on_deactivate(self, state: State) -> TransitionCallbackReturn:
        self.loop.stop_now(self.controller.deactivate)
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
        if self.loop is not None:
            self.loop.stop_now(self.controller.shutdown)
            self.output.flush()  # teardown runs on the executor's thread
            self.tasks.abort_all("the node is shutting down")
            self.loop.stop()
        if self.policy is not None:
            self.policy.close()
            self.policy = None
        for destroy in reversed(self._entities):
            try:
                destroy()
            except Exception:  # noqa: BLE001 - already gone with the node
                pass
        self._entities = []
        self.loop = self.tasks = self.output = self.gripper = self.telemetry = self.inputs = None

    def shutdown_gracefully(self, executor, spins: int = 10):
        """Ctrl-C / SIGTERM: hold the arm, answer the running goal (aborted), then stop everything.

        Nothing here waits for a timer or a control tick: under use_sim_time the simulator may
        already be gone, and its /clock with it."""
        if self.loop is not None:
            self.get_logger().info("shutting down: holding the arm")
            self.loop.stop_now(self.controller.shutdown)
            self.output.flush()
            self.tasks.abort_all("the node is shutting down")
            for _ in range(spins):  # let the goal's result and the hold go out
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
        gripper = ["gripper"] if p.gripper.enabled else []
        if p.action_space == "ee_delta":
            names, dim = None, 3 + ROTATION_SIZES[p.ee.rotation] + len(gripper)
        else:
            names = list(p.joints.names) + gripper
            dim = len(names)
        load = dict(checkpoint=p.model.checkpoint, preset=p.model.preset, action_names=names, action_dim=dim,
                    state_names=list(p.joints.names), camera_names=list(p.cameras.names),
                    device=p.model.device, dtype=p.model.dtype, compile=p.model.compile,
                    seed=p.model.seed, threads=p.model.threads,
                    emulated_latency={"latency": p.model.emulated_latency, "p99": p.model.emulated_latency_p99,
                                      "seed": p.model.seed},
                    send_committed=p.control.execution == "realtime" and p.control.send_committed)
        if p.model.server:
            token_env = p.model.server_token_env
            token = os.environ.get(token_env, "") if token_env else ""
            if token_env and not token:
                raise PolicyLoadError(f"model.server_token_env names {token_env!r}, which is empty or unset")
            timeout = p.model.server_timeout
            load.update(server=p.model.server, mapping=p.model.server_mapping, token=token,
                        connect_timeout=timeout, request_timeout=3.0 * p.control.inference_timeout,
                        period=1.0 / p.control.rate, action_space=p.action_space)
        cls = PolicyProcess if p.model.process == "server" else InProcessPolicy
        self.policy = cls(load, self._on_chunk, self._on_inference_failure, self.log)
        try:
            return self.policy.start()
        except PolicyLoadError:
            self.policy = None
            raise

    def _configure_interfaces(self, meta):
        p, n, c, own = self.p, self, self.controller, self._entities
        self.inputs = Inputs(self, c, p, meta["state_names"], self._request_inference)
        own.append(self.inputs.destroy)
        for srv in (n.create_service(Trigger, "~/estop", self._on_estop),
                    n.create_service(Trigger, "~/reset", self._on_reset)):
            own.append(lambda s=srv: n.destroy_service(s))
        limits = JointLimits(self.joint_names, np.array(p.joints.lower), np.array(p.joints.upper),
                             np.array(p.joints.max_velocity), np.array(p.joints.max_acceleration))
        safety = SafetyFilter(limits, self.period, max_step=p.joints.max_step or None,
                              workspace=WorkspaceBox(p.ee.frame, np.array(p.workspace.min),
                                                     np.array(p.workspace.max)))
        self.output = make_output(self, p, safety, self.log_once, lambda: c.joint_positions, c.peek,
                                  lambda: c.chunks, lambda name: c.feed(name, self._now()))
        own.append(self.output.destroy)
        self.gripper = GripperOutput(self, p, self.log_once) if p.gripper.enabled else None
        if self.gripper is not None:
            own.append(self.gripper.destroy)
        self.telemetry = Telemetry(self, c, p, meta["action_names"], self.policy.model_ms)
        supervise = n.create_timer(1.0, self._check_policy)
        own.append(lambda: n.destroy_timer(supervise))
        self.tasks = TaskServer(self, c, p, self.inputs.set_instruction, self.telemetry.latest_latency)
        own += [self.telemetry.destroy, self.tasks.destroy]

    # ---------------------------------------------------------------- logging helpers
    def log(self, level: str, text: str):
        # One call site per severity: rclpy refuses a call site whose severity changes.
        if level == "error":
            self.get_logger().error(text)
        elif level == "info":
            self.get_logger().info(text)
        else:
            self.get_logger().warning(text)

    def log_once(self, key: str, text: str, level: str = "warning"):
        """Log a recurring condition once (until it clears, see clear_once)."""
        with self._log_lock:
            if key in self._logged_once:
                return
            self._logged_once.add(key)
        self.log(level, text)

    def report_error(self, text: str):
        """An error that PolicyStatus.last_error should show (e.g. a controller refused a goal)."""
        self.controller.last_error = text

    def clear_once(self, prefix: str):
        with self._log_lock:
            self._logged_once = {k for k in self._logged_once if not k.startswith(prefix)}

    def _now(self) -> float:
        return self.get_clock().now().nanoseconds * 1e-9

    # ---------------------------------------------------------------- services and parameters
    def _on_estop(self, request, response):
        self.loop.stop_now(lambda: self.controller.trigger_estop("e-stop service called"))
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
        if waited is not None and waited > max(10.0, HANG_FACTOR * self.p.control.inference_timeout):
            self.policy.restart(f"no answer for {waited:.1f} s")

    def _on_chunk(self, obs, actions, latency):
        if self.controller.add_chunk(obs, actions, self._now()):
            self.clear_once("infer:")
        self.telemetry.chunk(actions, obs, latency)

    def _on_inference_failure(self, obs, error):
        self.controller.inference_failed(obs, error)
        self.log_once(f"infer:{error[:60]}", f"inference failed: {error}", "error")


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
    except PARAM_ERRORS as exc:
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
                # Logged once per kind (e.g. a second FollowJointTrajectory server under the same name
                # makes rclpy's ActionClient raise "Two goals were accepted with the same ID" per goal).
                node.log_once(f"executor:{type(exc).__name__}:{str(exc)[:40]}",
                              f"{type(exc).__name__}: {exc} (the node keeps running)", "error")
        node.shutdown_gracefully(executor)
    finally:
        executor.shutdown(timeout_sec=2.0)
        node.destroy_node()
        rclpy.try_shutdown()
    return node.exit_code or 0


if __name__ == "__main__":
    sys.exit(main())
