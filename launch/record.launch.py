"""Record demonstrations on any robot: the recorder writes a rosbag2 (MCAP) directory.

    ros2 launch vla_ros record.launch.py output_dir:=~/demos bag_name:=pick_cube_001

Stop it with Ctrl-C: the recorder closes the bag, so nothing recorded is lost. The bag plays
with `ros2 bag play` and with replay.launch.py. Topics are names in the launch namespace;
the defaults are what the policy node sees and sends.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument
from launch.substitutions import LaunchConfiguration, PythonExpression
from launch_ros.actions import Node

ARGUMENTS = [
    ("topics", "front/image_raw joint_states instruction task_success policy_node/action_chunk",
     "Space-separated topics to record."),
    ("output_dir", ".", "Directory in which the bag directory is created."),
    ("bag_name", "", "Name of the bag directory; empty uses rosbag2_<date>-<time>."),
    ("storage", "mcap", "Storage format: mcap or sqlite3."),
    ("namespace", "", "Namespace the topics are resolved in."),
    ("use_sim_time", "false", "Stamp messages with /clock time (simulation) instead of the wall clock."),
]


def generate_launch_description():
    args = [DeclareLaunchArgument(n, default_value=d, description=t) for n, d, t in ARGUMENTS]
    cfg = {n: LaunchConfiguration(n) for n, _, _ in ARGUMENTS}
    recorder = Node(
        package="vla_ros", executable="recorder_node", name="recorder", namespace=cfg["namespace"], output="screen",
        parameters=[{"topics": PythonExpression(["'", cfg["topics"], "'.split()"]), "output_dir": cfg["output_dir"],
                     "bag_name": cfg["bag_name"], "storage": cfg["storage"], "use_sim_time": cfg["use_sim_time"]}],
        sigterm_timeout="30")
    return LaunchDescription([*args, recorder])
