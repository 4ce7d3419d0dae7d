"""VLA policy node for the WidowX 250 6DOF (interbotix_xsarm_ros_control, namespace /wx250s).

    ros2 launch vla_ros widowx250.launch.py checkpoint:=/path/to/checkpoint camera_topic:=/camera/color/image_raw

The robot: config/robots/widowx250.yaml (limits and their sources, controllers, topics). Arguments:
vla_ros/ros/launch_policy.py (`--show-args`).
"""
from vla_ros.ros.launch_policy import robot_launch_description


def generate_launch_description():
    return robot_launch_description("widowx250")
