"""VLA policy node for the Universal Robots UR5e (Universal_Robots_ROS2_Driver).

    ros2 launch vla_ros ur5e.launch.py checkpoint:=/path/to/checkpoint camera_topic:=/camera/color/image_raw

The robot: config/robots/ur5e.yaml (limits and their sources, controllers, topics). Arguments:
vla_ros/ros/launch_policy.py (`--show-args`).
"""
from vla_ros.ros.launch_policy import robot_launch_description


def generate_launch_description():
    return robot_launch_description("ur5e")
