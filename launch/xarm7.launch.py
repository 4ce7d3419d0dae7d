"""VLA policy node for the UFactory xArm 7 (xarm_ros2).

    ros2 launch vla_ros xarm7.launch.py checkpoint:=/path/to/checkpoint camera_topic:=/camera/color/image_raw

The robot: config/robots/xarm7.yaml (limits and their sources, controllers, topics). Arguments:
vla_ros/ros/launch_policy.py (`--show-args`).
"""
from vla_ros.ros.launch_policy import robot_launch_description


def generate_launch_description():
    return robot_launch_description("xarm7")
