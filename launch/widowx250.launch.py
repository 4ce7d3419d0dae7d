"""VLA policy node for the WidowX 250 6DOF (interbotix_xsarm_ros_control, namespace /wx250s).

    ros2 launch vla_ros widowx250.launch.py checkpoint:=/path/to/checkpoint camera_topic:=/camera/color/image_raw

Parameters: config/robots/widowx250.yaml (limits and their sources). Every argument of
policy.launch.py (model, checkpoint, namespace, use_sim_time, dry_run, camera_topic,
autostart, log_level) can be given here too; this file only sets the robot's defaults.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = [
    ("robot", "widowx250", "Robot configuration file config/robots/<robot>.yaml."),
    ("trajectory_action", "/wx250s/arm_controller/follow_joint_trajectory",
     "FollowJointTrajectory action of the robot's joint trajectory controller."),
    ("gripper_action", "/wx250s/gripper_controller/gripper_cmd", "GripperCommand action of the gripper, used when gripper.enabled is true."),
    ("joint_states_topic", "/wx250s/joint_states", "The robot's joint state topic."),
]


def generate_launch_description():
    args = [DeclareLaunchArgument(n, default_value=d, description=t) for n, d, t in ARGUMENTS]
    policy = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([FindPackageShare("vla_ros"), "launch", "policy.launch.py"])),
        launch_arguments={n: LaunchConfiguration(n) for n, _, _ in ARGUMENTS}.items())
    return LaunchDescription([*args, policy])
