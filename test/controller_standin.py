"""A test-side robot: the interfaces a ros2_control arm and its camera driver offer.

It serves FollowJointTrajectory and GripperCommand, subscribes to the JointTrajectory,
Float64MultiArray and TwistStamped command topics, publishes /joint_states and camera
images, and records everything it receives so tests can check what the policy node sent.
It stands in for the robot, not for the code under test (the policy node runs for real in
its own process).
"""
import threading

import numpy as np
from control_msgs.action import FollowJointTrajectory, GripperCommand
from geometry_msgs.msg import PoseStamped, TwistStamped
from lifecycle_msgs.srv import GetState
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_msgs.msg import Bool, Float64MultiArray, String
from trajectory_msgs.msg import JointTrajectory

from ros_testing import SpinningNode
from vla_ros.msg import PolicyStatus

PANDA_JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
PANDA_HOME = [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785]


class RobotStandIn(SpinningNode):
    def __init__(self, name="robot_standin", joints=PANDA_JOINTS, home=PANDA_HOME, image_size=(64, 64)):
        super().__init__(name)
        n = self.node
        self.lock = threading.Lock()
        self.joints = list(joints)
        self.position = np.array(home, dtype=float)
        self.fjt_goals, self.gripper_goals = [], []
        self.trajectories, self.forward, self.twists, self.poses = [], [], [], []
        self.ee_position = np.array([0.5, 0.0, 0.4])  # in panda_link0, inside the sim workspace
        self.accept_fjt = True
        self.extra_joint_names = []        # published in /joint_states besides the arm's
        self.joint_state_override = None   # callable(msg) -> msg, to inject bad data
        self.publish_images = True
        self.publish_joint_states = True
        rng = np.random.default_rng(0)
        h, w = image_size
        self.image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        self.image_pub = n.create_publisher(Image, "front/image_raw", qos_profile_sensor_data)
        self.compressed_pub = n.create_publisher(CompressedImage, "front/image_raw/compressed", qos_profile_sensor_data)
        self.js_pub = n.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.instruction_pub = n.create_publisher(String, "instruction", latched)
        self.success_pub = n.create_publisher(Bool, "task_success", 10)
        n.create_subscription(JointTrajectory, "joint_trajectory", self._rec(self.trajectories), 10)
        n.create_subscription(Float64MultiArray, "forward_position", self._rec(self.forward), 10)
        n.create_subscription(TwistStamped, "twist", self._rec(self.twists), 10)
        n.create_subscription(PoseStamped, "pose_target", self._rec(self.poses), 10)
        self.ee_pub = n.create_publisher(PoseStamped, "ee_pose", qos_profile_sensor_data)
        self.fjt_server = ActionServer(n, FollowJointTrajectory, "follow_joint_trajectory", self._fjt,
                                       goal_callback=lambda g: GoalResponse.ACCEPT if self.accept_fjt
                                       else GoalResponse.REJECT,
                                       cancel_callback=lambda h: CancelResponse.ACCEPT)
        self.gripper_server = ActionServer(n, GripperCommand, "gripper_command", self._gripper)
        # What the policy node says about itself: its PolicyStatus messages and its lifecycle state.
        self.statuses = []
        n.create_subscription(PolicyStatus, "policy_node/status", self._rec(self.statuses), 10)
        self.get_state = n.create_client(GetState, "policy_node/get_state")
        n.create_timer(0.02, self._publish_joint_states)
        n.create_timer(0.05, self._publish_image)

    def _rec(self, store):
        def cb(msg):
            with self.lock:
                store.append(msg)
                if isinstance(msg, JointTrajectory) and msg.points:
                    self.position = np.array(msg.points[0].positions)
                elif isinstance(msg, Float64MultiArray):
                    self.position = np.array(msg.data)
        return cb

    def _fjt(self, handle):
        traj = handle.request.trajectory
        with self.lock:
            self.fjt_goals.append(traj)
            if traj.points:  # track the first point at once (an ideal controller)
                self.position = np.array(traj.points[0].positions)
        handle.succeed()
        return FollowJointTrajectory.Result(error_code=0)

    def _gripper(self, handle):
        with self.lock:
            self.gripper_goals.append(handle.request.command)
        handle.succeed()
        return GripperCommand.Result(position=handle.request.command.position, reached_goal=True)

    def _publish_joint_states(self):
        if not self.publish_joint_states:
            return
        msg = JointState(name=self.joints + self.extra_joint_names)
        with self.lock:
            msg.position = self.position.tolist() + [0.0] * len(self.extra_joint_names)
        msg.header.stamp = self.node.get_clock().now().to_msg()
        pose = PoseStamped()
        pose.header.stamp, pose.header.frame_id = msg.header.stamp, "panda_link0"
        pose.pose.position.x, pose.pose.position.y, pose.pose.position.z = self.ee_position.tolist()
        pose.pose.orientation.w = 1.0
        self.ee_pub.publish(pose)
        if self.joint_state_override is not None:
            msg = self.joint_state_override(msg)
        self.js_pub.publish(msg)

    def _publish_image(self):
        if not self.publish_images:
            return
        h, w, _ = self.image.shape
        msg = Image(height=h, width=w, encoding="rgb8", step=w * 3, data=self.image.tobytes())
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.header.frame_id = "front_camera"
        self.image_pub.publish(msg)

    def _stores(self):
        return dict(fjt=self.fjt_goals, traj=self.trajectories, fwd=self.forward, twist=self.twists,
                    pose=self.poses, gripper=self.gripper_goals)

    def counts(self):
        with self.lock:
            return {key: len(store) for key, store in self._stores().items()}

    def received(self, key):
        """A copy of what arrived on one interface (a key of counts())."""
        with self.lock:
            return list(self._stores()[key])
