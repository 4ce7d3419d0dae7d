"""Gazebo (gz sim) world + a ros2_control arm + the VLA policy node on simulated time.

    ros2 launch vla_ros gazebo.launch.py description_file:=/path/to/robot.urdf.xacro checkpoint:=<dir>

Needs ros_gz_sim, ros_gz_bridge, gz_ros2_control, controller_manager and
robot_state_publisher (apt: ros-$ROS_DISTRO-ros-gz, ros-$ROS_DISTRO-gz-ros2-control), and a
robot description whose <ros2_control> block uses gz_ros2_control/GazeboSimSystem with a
controllers file that defines joint_state_broadcaster and the trajectory controller (the
franka_description, ur_description and xarm_description packages can generate such a
description). The camera is a gz sensor in the world or the description; its image topic is
bridged to ROS and remapped to the policy node's camera.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import Command, LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = [
    ("robot", "sim_panda", "Robot configuration file config/robots/<robot>.yaml for the policy node."),
    ("description_file", "", "URDF or xacro file of the robot with a gz_ros2_control <ros2_control> block."),
    ("world", "empty.sdf", "Gazebo world file (a path, or a world name gz sim can find)."),
    ("gz_camera_topic", "/camera/image", "Gazebo image topic of the camera sensor, bridged to ROS."),
    ("trajectory_controller", "joint_trajectory_controller", "Name of the JointTrajectoryController to spawn."),
    ("checkpoint", "", "Checkpoint directory for the policy node."),
    ("dry_run", "false", "Publish action chunks only; command nothing."),
]


def generate_launch_description():
    args = [DeclareLaunchArgument(n, default_value=d, description=t) for n, d, t in ARGUMENTS]
    cfg = {n: LaunchConfiguration(n) for n, _, _ in ARGUMENTS}
    description = ParameterValue(Command(["xacro ", cfg["description_file"]]), value_type=str)
    gazebo = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([FindPackageShare("ros_gz_sim"), "launch", "gz_sim.launch.py"])),
        launch_arguments={"gz_args": ["-r ", cfg["world"]]}.items())
    state_publisher = Node(package="robot_state_publisher", executable="robot_state_publisher", output="screen",
                           parameters=[{"robot_description": description, "use_sim_time": True}])
    spawn = Node(package="ros_gz_sim", executable="create", output="screen",
                 arguments=["-topic", "robot_description", "-name", cfg["robot"]])
    bridge = Node(package="ros_gz_bridge", executable="parameter_bridge", output="screen",
                  arguments=["/clock@rosgraph_msgs/msg/Clock[gz.msgs.Clock",
                             [cfg["gz_camera_topic"], "@sensor_msgs/msg/Image[gz.msgs.Image"]])
    broadcaster = Node(package="controller_manager", executable="spawner", arguments=["joint_state_broadcaster"])
    trajectory = Node(package="controller_manager", executable="spawner", arguments=[cfg["trajectory_controller"]])
    policy = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([FindPackageShare("vla_ros"), "launch", "policy.launch.py"])),
        launch_arguments={
            "robot": cfg["robot"], "checkpoint": cfg["checkpoint"], "dry_run": cfg["dry_run"], "use_sim_time": "true",
            "camera_topic": cfg["gz_camera_topic"],
            "trajectory_action": ["/", cfg["trajectory_controller"], "/follow_joint_trajectory"],
            "gripper_action": "/gripper_controller/gripper_cmd", "joint_states_topic": "/joint_states",
        }.items())
    return LaunchDescription([*args, gazebo, state_publisher, spawn, bridge, broadcaster, trajectory, policy])
