"""PandaSim: the built-in simulated robot (PyBullet, DIRECT mode, no display needed).

A Franka Panda (``franka_panda/panda.urdf`` from ``pybullet_data``) in front of a few
coloured objects, with the command interfaces a ros2_control robot offers, resolved here
in simulation:

* joint trajectories (what ``joint_trajectory_controller`` does for FollowJointTrajectory
  goals and JointTrajectory messages): linear interpolation between timed points;
* forward position commands (``forward_command_controller``);
* end-effector velocity (TwistStamped, as MoveIt Servo takes it): integrated into a pose
  target, clamped to the workspace and resolved by PyBullet's inverse kinematics;
* the gripper: both finger joints to one position with a force limit (GripperCommand).

Joint motors track their targets with PyBullet's position control; every commanded
target is limited to the Panda's velocity limits, so the arm cannot teleport. Time is
simulated: ``step(dt)`` advances the physics by dt, as fast as the CPU allows; pacing to
wall-clock time is the caller's business (the ROS node does it).

No ROS here (the node in vla_ros/ros/sim_robot_node.py wraps this class).
"""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pybullet
import pybullet_data
import transforms3d
from pybullet_utils import bullet_client

from .tasks import COLORS, DIRECTIONS, SceneObject, Task, sample_scene, sample_task

ARM_JOINTS = tuple(f"panda_joint{i}" for i in range(1, 8))
FINGER_JOINTS = ("panda_finger_joint1", "panda_finger_joint2")
JOINT_NAMES = ARM_JOINTS + FINGER_JOINTS
_ARM_IDX = list(range(7))
_FINGER_IDX = [9, 10]
_EE_LINK = 11  # panda_grasptarget: between the fingertips
# Panda datasheet limits (the values config/robots/sim_panda.yaml cites).
ARM_LOWER = np.array([-2.8973, -1.7628, -2.8973, -3.0718, -2.8973, -0.0175, -2.8973])
ARM_UPPER = np.array([2.8973, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973])
ARM_MAX_VELOCITY = np.array([2.175, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61])
ARM_MAX_FORCE = np.array([87.0, 87.0, 87.0, 87.0, 12.0, 12.0, 12.0])
FINGER_MAX = 0.04
# Gripper pointing straight down (tool z axis = -world z), fingers along world y.
DOWN = transforms3d.euler.euler2quat(math.pi, 0.0, 0.0)  # w, x, y, z
REST_POSE = np.array([0.0, -0.25, 0.0, -2.3, 0.0, 2.05, math.pi / 4])
HOME_XYZ = np.array([0.45, 0.0, 0.32])
# Servo targets stay inside this box (robot base frame, metres).
WORKSPACE_MIN = np.array([0.25, -0.40, 0.005])
WORKSPACE_MAX = np.array([0.80, 0.40, 0.50])
OBJECT_HALF = 0.025  # cubes are 5 cm, cylinders 5 cm across and high
TWIST_TIMEOUT = 0.25  # s without a twist message -> the servo target stops moving


# The fixed cameras: eye and target points in the base frame (m), vertical field of view (deg).
CAMERA_VIEWS = {
    "front": dict(eye=(0.95, 0.0, 0.55), target=(0.48, 0.0, 0.06), fov=48.0),
    "side": dict(eye=(0.50, -0.75, 0.50), target=(0.50, 0.0, 0.06), fov=50.0),
}


@dataclasses.dataclass
class CameraSpec:
    """A fixed camera: name, image size, eye and target points (m), vertical field of view."""
    name: str = "front"
    width: int = 96
    height: int = 96
    eye: tuple = CAMERA_VIEWS["front"]["eye"]
    target: tuple = CAMERA_VIEWS["front"]["target"]
    fov: float = CAMERA_VIEWS["front"]["fov"]

    @classmethod
    def named(cls, name: str, width: int = 96, height: int = 96) -> "CameraSpec":
        """One of CAMERA_VIEWS at the given image size."""
        return cls(name, width, height, **CAMERA_VIEWS[name])


def _wxyz_to_xyzw(q):
    return [q[1], q[2], q[3], q[0]]


def _xyzw_to_wxyz(q):
    return np.array([q[3], q[0], q[1], q[2]])


class PandaSim:
    """The simulated robot and scene. See the module docstring for the command modes."""

    def __init__(self, cameras: list[CameraSpec] | None = None, physics_hz: float = 240.0, objects: int = 3):
        self.cameras = {c.name: c for c in (cameras or [CameraSpec()])}
        self.dt = 1.0 / float(physics_hz)
        self.object_count = int(objects)
        self.time = 0.0
        self.p = bullet_client.BulletClient(connection_mode=pybullet.DIRECT)
        self.p.setAdditionalSearchPath(pybullet_data.getDataPath())
        self.p.setGravity(0, 0, -9.81)
        self.p.setTimeStep(self.dt)
        self.plane = self.p.loadURDF("plane.urdf")
        # A plain grey table top: the checkered default texture only distracts a small CNN.
        self.p.changeVisualShape(self.plane, -1, rgbaColor=[0.55, 0.52, 0.48, 1], textureUniqueId=-1)
        self.robot = self.p.loadURDF("franka_panda/panda.urdf", useFixedBase=True,
                                     flags=pybullet.URDF_USE_SELF_COLLISION_EXCLUDE_PARENT)
        for j in _FINGER_IDX:
            self.p.changeDynamics(self.robot, j, lateralFriction=1.5)
        self._views = {}
        for cam in self.cameras.values():
            view = self.p.computeViewMatrix(cam.eye, cam.target, [0, 0, 1])
            proj = self.p.computeProjectionMatrixFOV(cam.fov, cam.width / cam.height, 0.05, 4.0)
            self._views[cam.name] = (view, proj)
        self.objects: list[SceneObject] = []
        self._bodies: list[int] = []
        self._initial_xyz: list[np.ndarray] = []
        self.task: Task | None = None
        self._reset_controllers(REST_POSE)
        self._set_arm(REST_POSE, FINGER_MAX)

    # ------------------------------------------------------------------ scene
    def reset(self, seed: int, family: str | None = None, phrasing: str = "train", task: Task | None = None,
              home_jitter: float = 0.03, target: int | None = None, direction: str | None = None,
              gripper_opening: float = 0.0) -> Task:
        """A new scene and task from ``seed``: objects, a slightly jittered home pose, the task
        (its target object and push direction chosen by ``target`` / ``direction`` when given),
        the fingers at ``gripper_opening`` (m, 0 closed .. FINGER_MAX open) and held there."""
        rng = np.random.default_rng(seed)
        for body in self._bodies:
            self.p.removeBody(body)
        self.objects = sample_scene(rng, self.object_count)
        self._bodies = [self._spawn(o) for o in self.objects]
        home = HOME_XYZ + rng.uniform(-home_jitter, home_jitter, 3)
        # PyBullet's IK iterates from the CURRENT joint positions: start it from the rest pose
        # every time, so the home configuration depends on the seed only, never on where the
        # previous episode left the arm (which could yaw the hand and leave the policy
        # looking at a robot it never saw), and refine it a few times.
        q = REST_POSE
        for _ in range(3):
            self._set_arm(q, 0.0)
            q = self._ik(home, DOWN, REST_POSE)
        opening = float(np.clip(gripper_opening, 0.0, FINGER_MAX))
        self._set_arm(q, opening)
        self._reset_controllers(q)
        self._finger_target = opening
        self.task = task if task is not None else sample_task(rng, self.objects, family, phrasing, target, direction)
        # Let the objects settle on the table before anything is measured (the motors
        # already hold the new home pose, not the previous episode's targets).
        self._apply_motors()
        for _ in range(int(0.1 / self.dt)):
            self.p.stepSimulation()
        self._initial_xyz = [self.object_position(i) for i in range(len(self.objects))]
        return self.task

    def _spawn(self, obj: SceneObject) -> int:
        rgba = list(COLORS[obj.color]) + [1.0]
        if obj.shape == "cube":
            col = self.p.createCollisionShape(pybullet.GEOM_BOX, halfExtents=[OBJECT_HALF] * 3)
            vis = self.p.createVisualShape(pybullet.GEOM_BOX, halfExtents=[OBJECT_HALF] * 3, rgbaColor=rgba)
        else:
            col = self.p.createCollisionShape(pybullet.GEOM_CYLINDER, radius=OBJECT_HALF, height=2 * OBJECT_HALF)
            vis = self.p.createVisualShape(pybullet.GEOM_CYLINDER, radius=OBJECT_HALF, length=2 * OBJECT_HALF,
                                           rgbaColor=rgba)
        orn = self.p.getQuaternionFromEuler([0, 0, obj.yaw])
        body = self.p.createMultiBody(0.1, col, vis, [obj.x, obj.y, OBJECT_HALF], orn)
        self.p.changeDynamics(body, -1, lateralFriction=0.6, spinningFriction=0.001, rollingFriction=0.0005)
        return body

    def object_position(self, index: int) -> np.ndarray:
        return np.array(self.p.getBasePositionAndOrientation(self._bodies[index])[0])

    # ------------------------------------------------------------------ robot state
    def _set_arm(self, q, finger):
        for j, v in zip(_ARM_IDX, q):
            self.p.resetJointState(self.robot, j, float(v))
        for j in _FINGER_IDX:
            self.p.resetJointState(self.robot, j, float(finger))

    def _reset_controllers(self, q):
        q = np.asarray(q, dtype=float)
        self._q_target = q.copy()
        self._mode = "hold"
        self._trajectory: list[tuple[float, np.ndarray]] = []
        self._traj_start_q = q.copy()
        self._traj_start_time = 0.0
        self._forward_target = q.copy()
        self._servo_xyz, self._servo_quat = None, None
        self._twist = np.zeros(6)
        self._twist_time = -1.0
        self._finger_target, self._finger_force = 0.0, 20.0
        self._ik_countdown = 0

    def joint_positions(self) -> np.ndarray:
        """Positions of JOINT_NAMES (7 arm joints, 2 fingers)."""
        return np.array([s[0] for s in self.p.getJointStates(self.robot, _ARM_IDX + _FINGER_IDX)])

    def joint_velocities(self) -> np.ndarray:
        return np.array([s[1] for s in self.p.getJointStates(self.robot, _ARM_IDX + _FINGER_IDX)])

    def ee_pose(self) -> tuple[np.ndarray, np.ndarray]:
        """End-effector (panda_grasptarget) position and quaternion (w, x, y, z) in the base frame."""
        state = self.p.getLinkState(self.robot, _EE_LINK, computeForwardKinematics=True)
        return np.array(state[4]), _xyzw_to_wxyz(state[5])

    def gripper_position(self) -> float:
        """Mean finger joint position (0 closed, 0.04 open), GripperCommand's 'position'."""
        return float(np.mean(self.joint_positions()[7:]))

    # ------------------------------------------------------------------ commands
    def command_trajectory(self, points: list[tuple[float, np.ndarray]]) -> None:
        """Track (time_from_start s, 7 positions) points from now, replacing any active motion."""
        if not points:
            self.hold()
            return
        self._trajectory = [(float(t), np.clip(np.asarray(q, dtype=float), ARM_LOWER, ARM_UPPER)) for t, q in points]
        self._traj_start_q = self._q_target.copy()
        self._traj_start_time = self.time
        self._mode = "trajectory"

    def trajectory_done(self) -> bool:
        return self._mode != "trajectory" or self.time - self._traj_start_time >= self._trajectory[-1][0]

    def command_positions(self, q) -> None:
        """Forward position command: go to q at the joints' velocity limits."""
        self._forward_target = np.clip(np.asarray(q, dtype=float), ARM_LOWER, ARM_UPPER)
        self._mode = "forward"

    def command_twist(self, linear, angular) -> None:
        """End-effector velocity in the base frame (m/s, rad/s), held for TWIST_TIMEOUT s."""
        twist = np.concatenate([np.asarray(linear, float), np.asarray(angular, float)])
        if not np.all(np.isfinite(twist)):
            raise ValueError("twist has non-finite values")
        if self._mode != "servo":
            self._servo_xyz, self._servo_quat = self.ee_pose()
            self._ik_countdown = 0  # solve IK for the new target at once, never reuse an old solution
            self._mode = "servo"
        self._twist = twist
        self._twist_time = self.time

    def command_gripper(self, position: float, max_effort: float = 20.0) -> None:
        self._finger_target = float(np.clip(position, 0.0, FINGER_MAX))
        self._finger_force = float(max_effort) if max_effort > 0 else 20.0

    def hold(self) -> None:
        """Stop where the arm is now."""
        self._q_target = self.joint_positions()[:7]
        self._mode = "hold"

    # ------------------------------------------------------------------ stepping
    def _ik(self, xyz, quat_wxyz, rest) -> np.ndarray:
        q = self.p.calculateInverseKinematics(
            self.robot, _EE_LINK, list(map(float, xyz)), _wxyz_to_xyzw(quat_wxyz),
            lowerLimits=list(ARM_LOWER) + [0, 0], upperLimits=list(ARM_UPPER) + [FINGER_MAX] * 2,
            jointRanges=list(ARM_UPPER - ARM_LOWER) + [FINGER_MAX] * 2, restPoses=list(rest) + [0, 0],
            maxNumIterations=60, residualThreshold=1e-4)
        return np.clip(np.array(q[:7]), ARM_LOWER, ARM_UPPER)

    def _desired_q(self) -> np.ndarray:
        if self._mode == "trajectory":
            t = self.time - self._traj_start_time
            prev_t, prev_q = 0.0, self._traj_start_q
            for pt, pq in self._trajectory:
                if t < pt:
                    a = (t - prev_t) / max(pt - prev_t, 1e-9)
                    return prev_q + a * (pq - prev_q)
                prev_t, prev_q = pt, pq
            return prev_q
        if self._mode == "forward":
            return self._forward_target
        if self._mode == "servo":
            if self.time - self._twist_time > TWIST_TIMEOUT:
                self._twist[:] = 0.0
            self._servo_xyz = np.clip(self._servo_xyz + self._twist[:3] * self.dt, WORKSPACE_MIN, WORKSPACE_MAX)
            w = self._twist[3:]
            angle = float(np.linalg.norm(w)) * self.dt
            if angle > 0:
                dq = transforms3d.quaternions.axangle2quat(w / np.linalg.norm(w), angle)
                self._servo_quat = transforms3d.quaternions.qmult(dq, self._servo_quat)
            if self._ik_countdown <= 0:  # IK at a quarter of the physics rate (60 Hz) is plenty
                self._servo_q = self._ik(self._servo_xyz, self._servo_quat, self._q_target)
                self._ik_countdown = 4
            self._ik_countdown -= 1
            return self._servo_q
        return self._q_target

    def _apply_motors(self) -> None:
        self.p.setJointMotorControlArray(self.robot, _ARM_IDX, pybullet.POSITION_CONTROL,
                                         targetPositions=list(self._q_target), forces=list(ARM_MAX_FORCE),
                                         positionGains=[0.3] * 7)
        self.p.setJointMotorControlArray(self.robot, _FINGER_IDX, pybullet.POSITION_CONTROL,
                                         targetPositions=[self._finger_target] * 2, forces=[self._finger_force] * 2)

    def step(self, duration: float) -> None:
        """Advance the simulation by ``duration`` seconds (whole physics steps)."""
        for _ in range(max(1, int(round(duration / self.dt)))):
            desired = self._desired_q()
            # Velocity-limit the motor target so no command moves a joint faster than the Panda can.
            step = np.clip(desired - self._q_target, -ARM_MAX_VELOCITY * self.dt, ARM_MAX_VELOCITY * self.dt)
            self._q_target = np.clip(self._q_target + step, ARM_LOWER, ARM_UPPER)
            self._apply_motors()
            self.p.stepSimulation()
            self.time += self.dt

    # ------------------------------------------------------------------ sensing
    def render(self, camera: str = "front") -> np.ndarray:
        """An RGB uint8 (height, width, 3) image from the named camera."""
        cam = self.cameras[camera]
        view, proj = self._views[camera]
        _, _, rgba, _, _ = self.p.getCameraImage(cam.width, cam.height, view, proj,
                                                 renderer=pybullet.ER_TINY_RENDERER)
        return np.ascontiguousarray(np.asarray(rgba, dtype=np.uint8).reshape(cam.height, cam.width, 4)[:, :, :3])

    def touching(self, index: int) -> bool:
        return len(self.p.getContactPoints(self.robot, self._bodies[index])) > 0

    def success(self) -> bool:
        """Whether the current task is achieved now (privileged state; no human needed)."""
        task = self.task
        if task is None:
            return False
        i = task.target
        if task.family == "touch":
            return self.touching(i)
        moved = self.object_position(i) - self._initial_xyz[i]
        if task.family == "push":
            d = np.array(DIRECTIONS[task.direction])
            along = float(moved[:2] @ d)
            across = abs(float(moved[0] * d[1] - moved[1] * d[0]))
            return along >= 0.07 and across <= along
        if task.family == "pick":
            return self.object_position(i)[2] >= OBJECT_HALF + 0.05 and self.touching(i)
        return False

    def close(self) -> None:
        try:
            self.p.disconnect()
        except pybullet.error:
            pass
