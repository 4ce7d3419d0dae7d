"""Start the VLA policy node for one robot, configured and activated automatically.

    ros2 launch vla_ros policy.launch.py robot:=sim_panda checkpoint:=/path/to/ckpt

The robot's parameters, controllers and topics come from config/robots/<robot>.yaml; the
arguments are those of vla_ros/ros/launch_policy.py (`--show-args` lists them).
"""
from vla_ros.ros.launch_policy import robot_launch_description


def generate_launch_description():
    return robot_launch_description()
