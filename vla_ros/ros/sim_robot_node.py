"""sim_robot_node: the built-in simulated Panda (PyBullet) as a ROS 2 robot.

It offers what a ros2_control Panda with cameras offers, so the policy node (and anything
else) talks to it exactly as to a real robot, and it is the clock of the graph:

Publishes:
  /clock                     rosgraph_msgs/Clock          simulation time, every loop step (whole physics
                                                          steps nearest 10 ms: 120 Hz at physics_hz 240)
  joint_states               sensor_msgs/JointState       7 arm + 2 finger joints, joint_state_rate Hz
  <camera>/image_raw         sensor_msgs/Image            rgb8, camera.width x camera.height, camera.rate Hz
                                                          (sensor-data QoS, like camera drivers)
  ee_pose                    geometry_msgs/PoseStamped    panda_grasptarget in base_frame, with joint_states
  task_success               std_msgs/Bool                the current task's success (latched per episode),
                                                          camera.rate Hz and at once when it turns true
  instruction                std_msgs/String              the episode's instruction, transient local
                                                          [only with publish_instruction]
Subscribes (command interfaces; the newest command of any kind wins):
  joint_trajectory           trajectory_msgs/JointTrajectory      like joint_trajectory_controller's topic
  forward_position           std_msgs/Float64MultiArray           7 positions, like forward_command_controller
  twist                      geometry_msgs/TwistStamped           end-effector velocity in base_frame, like
                                                                  MoveIt Servo; held 0.25 s, then stops
Actions:
  follow_joint_trajectory    control_msgs/FollowJointTrajectory   interpolates and tracks the points; a new
                                                                  goal replaces the running one
  gripper_command            control_msgs/GripperCommand          finger position (0 closed .. 0.04 open)
Services:
  ~/reset_episode            vla_ros/ResetEpisode                 new seeded scene + task, arm at home

Parameters: SPEC below, read at start (README's table is generated from it).
"""
from __future__ import annotations

import sys
import threading
import time

import numpy as np
import rclpy
from builtin_interfaces.msg import Time as TimeMsg
from control_msgs.action import FollowJointTrajectory, GripperCommand
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.signals import SignalHandlerOptions
from rosgraph_msgs.msg import Clock
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from vla_ros.ros import params
from vla_ros.ros.params import PARAM_ERRORS, T, Spec
from vla_ros.ros.shutdown import StopSignal, spin_until_stopped
from vla_ros.sim.panda import ARM_JOINTS, CAMERA_VIEWS, JOINT_NAMES, CameraSpec, PandaSim
from vla_ros.sim.tasks import DIRECTIONS, FAMILIES, PHRASINGS
from vla_ros.srv import ResetEpisode

LOOP_DT = 0.01          # s of simulated time per loop step (/clock resolution), rounded to whole physics steps
GRIPPER_TOLERANCE = 0.002   # m: GripperCommand reached_goal
GRIPPER_STALL_TIME = 0.3    # s of simulated time without finger motion: stalled (holding an object)

SPEC: Spec = {
    "real_time_factor": (T.DOUBLE, 1.0, "Simulation speed over wall-clock time; 0: as fast as the CPU allows.",
                         {"range": (0.0, 100.0)}),
    "physics_hz": (T.DOUBLE, 240.0, "Physics steps per simulated second.", {"range": (100.0, 2000.0)}),
    "camera.names": (T.STRING_ARRAY, ["front"], "Cameras to render: " + ", ".join(CAMERA_VIEWS) + ".", {}),
    "camera.width": (T.INTEGER, 96, "Image width, pixels.", {"range": (16, 1920)}),
    "camera.height": (T.INTEGER, 96, "Image height, pixels.", {"range": (16, 1080)}),
    "camera.rate": (T.DOUBLE, 10.0, "Images per simulated second.", {"range": (0.1, 100.0)}),
    "joint_state_rate": (T.DOUBLE, 100.0, "joint_states (and ee_pose) per simulated second.", {"range": (1.0, 100.0)}),
    "objects": (T.INTEGER, 3, "Objects on the table.", {"range": (2, 4)}),
    "seed": (T.INTEGER, 0, "Seed of the first episode.", {}),
    "family": (T.STRING, "", "Task family of the first episode: " + ", ".join(FAMILIES) + "; empty: random touch "
               "or push.", {}),
    "phrasing": (T.STRING, "train", "Phrasing set of the first episode: " + ", ".join(PHRASINGS) + ".", {}),
    "publish_instruction": (T.BOOL, False, "Publish each episode's instruction on `instruction` (transient local).",
                            {}),
    "base_frame": (T.STRING, "panda_link0", "Frame of ee_pose and of twist commands.", {}),
}
SimRobotParams = params.attributes_class("SimRobotParams", SPEC)


def _stamp(t: float) -> TimeMsg:
    ns = int(round(t * 1e9))
    return TimeMsg(sec=ns // 10**9, nanosec=ns % 10**9)


def _episode_problem(family: str, phrasing: str, target: int = -1, direction: str = "",
                     objects: int = 0) -> str | None:
    """What is wrong with an episode's family ("" = random), phrasing set, target object
    (-1 = the seed's) and push direction ("" = the seed's), or None."""
    if family and family not in FAMILIES:
        return f"'family' is {family!r}; expected one of {list(FAMILIES)} or empty"
    if phrasing not in PHRASINGS:
        return f"'phrasing' is {phrasing!r}; expected one of {list(PHRASINGS)}"
    if target != -1 and not 0 <= target < objects:
        return f"'target' is {target}; expected -1 or an object index 0..{objects - 1}"
    if direction and (family != "push" or direction not in DIRECTIONS):
        return f"'direction' is {direction!r}; expected family 'push' and one of {sorted(DIRECTIONS)}, or empty"
    return None


def _next_tick(due: float, period: float, now: float) -> float:
    """The next time on the grid due + k * period after now (skipping ticks when behind)."""
    due += period
    return due if due > now + 1e-9 else now + period


def _duration(d) -> float:
    return d.sec + d.nanosec * 1e-9


class SimRobotNode(Node):
    def __init__(self, stop: threading.Event, **kwargs):
        super().__init__("sim_robot_node", **kwargs)
        self.stop = stop
        params.declare(self, SPEC)
        p = params.read(self, SPEC, SimRobotParams)
        self.cams = list(p.camera.names)
        unknown = [c for c in self.cams if c not in CAMERA_VIEWS]
        if not self.cams or unknown:
            raise ValueError(f"parameter 'camera.names' has unknown camera(s) {unknown or '(none given)'}; "
                             f"available: {sorted(CAMERA_VIEWS)}")
        family, phrasing = p.family, p.phrasing
        problem = _episode_problem(family, phrasing)
        if problem:
            raise ValueError(f"parameter {problem}")
        self.rtf = p.real_time_factor
        self.base_frame = p.base_frame
        self.camera_period = 1.0 / p.camera.rate
        self.joint_period = 1.0 / p.joint_state_rate
        self.lock = threading.RLock()
        specs = [CameraSpec.named(c, p.camera.width, p.camera.height) for c in self.cams]
        self.sim = PandaSim(specs, physics_hz=p.physics_hz, objects=p.objects)
        self.loop_dt = max(1, round(LOOP_DT * p.physics_hz)) * self.sim.dt
        self._succeeded = False
        self._fjt_goal = None
        self._gripper_goal = None
        self._logged: set[str] = set()

        self.clock_pub = self.create_publisher(Clock, "/clock", 10)
        self.joint_pub = self.create_publisher(JointState, "joint_states", 10)
        self.pose_pub = self.create_publisher(PoseStamped, "ee_pose", 10)
        self.success_pub = self.create_publisher(Bool, "task_success", 10)
        self.image_pubs = {c: self.create_publisher(Image, f"{c}/image_raw", qos_profile_sensor_data)
                           for c in self.cams}
        self.publish_instruction = p.publish_instruction
        self.instruction_pub = self.create_publisher(
            String, "instruction", QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                                              durability=DurabilityPolicy.TRANSIENT_LOCAL))
        group = ReentrantCallbackGroup()
        self.create_subscription(JointTrajectory, "joint_trajectory", self._on_trajectory, 10, callback_group=group)
        self.create_subscription(Float64MultiArray, "forward_position", self._on_forward, 10, callback_group=group)
        self.create_subscription(TwistStamped, "twist", self._on_twist, 10, callback_group=group)
        ActionServer(self, FollowJointTrajectory, "follow_joint_trajectory", self._execute_fjt,
                     goal_callback=lambda _: GoalResponse.ACCEPT, cancel_callback=lambda _: CancelResponse.ACCEPT,
                     callback_group=group)
        ActionServer(self, GripperCommand, "gripper_command", self._execute_gripper,
                     goal_callback=lambda _: GoalResponse.ACCEPT, cancel_callback=lambda _: CancelResponse.ACCEPT,
                     callback_group=group)
        self.create_service(ResetEpisode, "~/reset_episode", self._on_reset, callback_group=group)
        self._reset(p.seed, family or None, phrasing)
        self.get_logger().info(
            f"simulated Panda ready: cameras {self.cams} {p.camera.width}x{p.camera.height} at "
            f"{p.camera.rate:g} Hz, real_time_factor {self.rtf:g}; task: '{self.sim.task.instruction}'")

    # ---------------------------------------------------------------- helpers
    def _warn_once(self, key: str, text: str):
        if key not in self._logged:
            self._logged.add(key)
            self.get_logger().warning(text)

    def _arm_points(self, names, points) -> list[tuple[float, np.ndarray]]:
        """JointTrajectory points -> [(t, 7 arm positions)]; ValueError says what is wrong."""
        missing = [n for n in ARM_JOINTS if n not in names]
        if missing:
            raise ValueError(f"trajectory lacks joints {missing} (has {list(names)})")
        index = [list(names).index(n) for n in ARM_JOINTS]
        out, last_t = [], -1.0
        for k, pt in enumerate(points):
            if len(pt.positions) != len(names):
                raise ValueError(f"point {k} has {len(pt.positions)} positions for {len(names)} joints")
            q = np.array([pt.positions[i] for i in index], dtype=float)
            t = _duration(pt.time_from_start)
            if not np.all(np.isfinite(q)) or not np.isfinite(t):
                raise ValueError(f"point {k} has non-finite values")
            if t <= last_t:
                raise ValueError(f"point {k}: time_from_start {t:.3f} s is not after the previous point's")
            out.append((t, q))
            last_t = t
        if not out:
            raise ValueError("trajectory has no points")
        return out

    # ---------------------------------------------------------------- command inputs
    def _on_trajectory(self, msg: JointTrajectory):
        try:
            points = self._arm_points(msg.joint_names, msg.points)
        except ValueError as exc:
            self._warn_once("traj", f"joint_trajectory ignored: {exc}")
            return
        with self.lock:
            self._fjt_goal = None
            self.sim.command_trajectory(points)

    def _on_forward(self, msg: Float64MultiArray):
        q = np.asarray(msg.data, dtype=float)
        if q.shape != (7,) or not np.all(np.isfinite(q)):
            self._warn_once("fwd", f"forward_position ignored: needs 7 finite positions {list(ARM_JOINTS)}, "
                                   f"got {q.tolist()}")
            return
        with self.lock:
            self._fjt_goal = None
            self.sim.command_positions(q)

    def _on_twist(self, msg: TwistStamped):
        frame = msg.header.frame_id
        if frame and frame != self.base_frame:
            self._warn_once("twist_frame", f"twist in frame '{frame}' ignored: only '{self.base_frame}' "
                                           "(or an empty frame) is supported")
            return
        lin, ang = msg.twist.linear, msg.twist.angular
        try:
            with self.lock:
                self._fjt_goal = None
                self.sim.command_twist([lin.x, lin.y, lin.z], [ang.x, ang.y, ang.z])
        except ValueError as exc:
            self._warn_once("twist_nan", f"twist ignored, the arm holds: {exc}")
            with self.lock:
                self.sim.hold()

    def _execute_fjt(self, handle):
        result = FollowJointTrajectory.Result()
        try:
            points = self._arm_points(handle.request.trajectory.joint_names, handle.request.trajectory.points)
        except ValueError as exc:
            handle.abort()
            result.error_code, result.error_string = FollowJointTrajectory.Result.INVALID_GOAL, str(exc)
            self.get_logger().warning(f"FollowJointTrajectory goal aborted: {exc}")
            return result
        with self.lock:
            self._fjt_goal = handle
            self.sim.command_trajectory(points)
        fb = FollowJointTrajectory.Feedback(joint_names=list(ARM_JOINTS))
        while not self.stop.is_set():
            with self.lock:
                current = self._fjt_goal is handle
                done = current and self.sim.trajectory_done()
                q = self.sim.joint_positions()[:7]
                if current and handle.is_cancel_requested:
                    self.sim.hold()
                    self._fjt_goal = None
            if not current:
                handle.abort()
                # joint_trajectory_controller's code for a goal that a newer one replaced
                result.error_code = FollowJointTrajectory.Result.INVALID_GOAL
                result.error_string = "replaced by a newer command"
                return result
            if handle.is_cancel_requested:
                handle.canceled()
                result.error_string = "canceled; holding"
                return result
            if done:
                handle.succeed()
                result.error_code = FollowJointTrajectory.Result.SUCCESSFUL
                return result
            fb.actual.positions = [float(v) for v in q]
            handle.publish_feedback(fb)
            self.stop.wait(0.02)
        handle.abort()
        result.error_code, result.error_string = FollowJointTrajectory.Result.INVALID_GOAL, "node shutting down"
        return result

    def _execute_gripper(self, handle):
        cmd = handle.request.command
        result = GripperCommand.Result()
        if not np.isfinite(cmd.position):
            handle.abort()
            return result
        self.get_logger().info(f"GripperCommand goal: position {cmd.position:.3f}, max_effort {cmd.max_effort:g}")
        with self.lock:
            self._gripper_goal = handle
            self.sim.command_gripper(cmd.position, cmd.max_effort)
            last_pos, last_move = self.sim.gripper_position(), self.sim.time
        target = min(max(cmd.position, 0.0), 0.04)
        while not self.stop.is_set():
            with self.lock:
                current = self._gripper_goal is handle
                pos, now = self.sim.gripper_position(), self.sim.time
            if abs(pos - last_pos) > 1e-4:
                last_pos, last_move = pos, now
            result.position, result.effort = pos, float(cmd.max_effort)
            result.reached_goal = abs(pos - target) < GRIPPER_TOLERANCE
            result.stalled = not result.reached_goal and now - last_move > GRIPPER_STALL_TIME
            if not current or handle.is_cancel_requested:
                (handle.canceled if handle.is_cancel_requested else handle.abort)()
                return result
            if result.reached_goal or result.stalled:
                handle.succeed()
                return result
            handle.publish_feedback(GripperCommand.Feedback(position=pos, effort=float(cmd.max_effort),
                                                            stalled=False, reached_goal=False))
            self.stop.wait(0.02)
        handle.abort()
        return result

    # ---------------------------------------------------------------- episodes
    def _reset(self, seed: int, family: str | None, phrasing: str, target: int | None = None,
               direction: str | None = None) -> None:
        with self.lock:
            task = self.sim.reset(int(seed), family, phrasing, target=target, direction=direction)
            self._succeeded = False
            self._fjt_goal = self._gripper_goal = None
            self._pace_reset = True
        self.success_pub.publish(Bool(data=False))
        if self.publish_instruction:
            self.instruction_pub.publish(String(data=task.instruction))
        self.get_logger().info(f"episode seed {seed}: {task.family} '{task.instruction}'")

    def _on_reset(self, request, response):
        family = request.family or None
        phrasing = request.phrasing or "train"
        problem = _episode_problem(request.family, phrasing, request.target, request.direction,
                                   self.sim.object_count)
        if problem:
            response.success, response.message = False, problem
            return response
        self._reset(request.seed, family, phrasing, None if request.target == -1 else request.target,
                    request.direction or None)
        task = self.sim.task
        response.success, response.message = True, f"episode seed {request.seed}"
        response.instruction, response.family = task.instruction, task.family
        response.target, response.direction = task.target, task.direction
        return response

    # ---------------------------------------------------------------- the loop
    def run(self) -> None:
        """Step the simulation and publish, paced to real_time_factor, until stopped."""
        next_joint = next_cam = 0.0
        wall0 = sim0 = None
        while not self.stop.is_set():
            with self.lock:
                if self._pace_reset or wall0 is None:
                    wall0, sim0, self._pace_reset = time.monotonic(), self.sim.time, False
                self.sim.step(self.loop_dt)
                t = self.sim.time
                stamp = _stamp(t)
                newly = not self._succeeded and self.sim.success()
                self._succeeded = self._succeeded or newly
                joints = ee = None
                if t + 1e-9 >= next_joint:  # on a fixed grid, so rates are not rounded up to loop steps
                    next_joint = _next_tick(next_joint, self.joint_period, t)
                    joints = (self.sim.joint_positions(), self.sim.joint_velocities())
                    ee = self.sim.ee_pose()
                images = {}
                if t + 1e-9 >= next_cam:
                    next_cam = _next_tick(next_cam, self.camera_period, t)
                    images = {c: self.sim.render(c) for c in self.cams}
                success = self._succeeded
            self.clock_pub.publish(Clock(clock=stamp))
            if joints is not None:
                self._publish_joints(stamp, *joints)
                self._publish_pose(stamp, *ee)
            for cam, rgb in images.items():
                self._publish_image(cam, stamp, rgb)
            if images or newly:
                self.success_pub.publish(Bool(data=success))
            if self.rtf > 0:
                ahead = wall0 + (t - sim0) / self.rtf - time.monotonic()
                if ahead > 0:
                    self.stop.wait(ahead)

    def _publish_joints(self, stamp, pos, vel):
        msg = JointState(name=list(JOINT_NAMES), position=[float(v) for v in pos], velocity=[float(v) for v in vel])
        msg.header.stamp = stamp
        self.joint_pub.publish(msg)

    def _publish_pose(self, stamp, xyz, quat):
        msg = PoseStamped()
        msg.header.stamp, msg.header.frame_id = stamp, self.base_frame
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = (float(v) for v in xyz)
        o = msg.pose.orientation
        o.w, o.x, o.y, o.z = (float(v) for v in quat)
        self.pose_pub.publish(msg)

    def _publish_image(self, cam, stamp, rgb):
        msg = Image(height=rgb.shape[0], width=rgb.shape[1], encoding="rgb8", is_bigendian=0, step=rgb.shape[1] * 3)
        msg.header.stamp, msg.header.frame_id = stamp, f"{cam}_camera"
        msg.data = rgb.tobytes()
        self.image_pubs[cam].publish(msg)


def main(args=None, parameter_overrides: list[Parameter] | None = None) -> int:
    """Run the simulated robot until SIGINT/SIGTERM; exit 2 on invalid parameters."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = StopSignal()
    try:
        node = SimRobotNode(stop.event, parameter_overrides=parameter_overrides or [])
    except (ValueError, *PARAM_ERRORS) as exc:
        print(f"[sim_robot_node] invalid configuration: {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    spinner = threading.Thread(target=spin_until_stopped, args=(executor, stop.event), daemon=True)
    spinner.start()
    try:
        node.run()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stop.event.set()
        spinner.join(timeout=2.0)
        node.sim.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
