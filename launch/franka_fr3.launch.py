"""VLA policy node for the Franka Research 3 (franka_ros2).

    ros2 launch vla_ros franka_fr3.launch.py checkpoint:=/path/to/checkpoint camera_topic:=/camera/color/image_raw

The robot: config/robots/franka_fr3.yaml (limits and their sources, controllers, topics). Arguments:
vla_ros/ros/launch_policy.py (`--show-args`).
"""
from vla_ros.ros.launch_policy import robot_launch_description


def generate_launch_description():
    return robot_launch_description("franka_fr3")
