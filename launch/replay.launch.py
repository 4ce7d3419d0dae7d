"""Check a policy against recorded data: the player on a bag + the policy node in dry run.

    ros2 launch vla_ros replay.launch.py bag:=~/demos/pick_cube_001 robot:=franka_fr3 checkpoint:=<dir>

The player publishes the bag's camera, joint state and instruction topics at their recorded
timing together with /clock, and the policy node runs on that clock with dry_run, so it only
publishes ActionChunk (policy_node/action_chunk) to compare with what was recorded.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = [
    ("bag", "", "Bag directory to play (ours or one written by ros2 bag record; MCAP or sqlite3)."),
    ("robot", "sim_panda", "Robot configuration file config/robots/<robot>.yaml the bag was recorded on."),
    ("checkpoint", "", "Checkpoint directory of the policy to check."),
    ("rate", "1.0", "Playback speed factor."),
    ("loop", "false", "Play the bag again and again."),
]


def generate_launch_description():
    args = [DeclareLaunchArgument(n, default_value=d, description=t) for n, d, t in ARGUMENTS]
    cfg = {n: LaunchConfiguration(n) for n, _, _ in ARGUMENTS}
    player = Node(package="vla_ros", executable="player_node", name="player", output="screen",
                  parameters=[{"bag": cfg["bag"], "rate": cfg["rate"], "loop": cfg["loop"], "publish_clock": True,
                               "wait_for_subscribers": 1}])
    policy = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([FindPackageShare("vla_ros"), "launch", "policy.launch.py"])),
        launch_arguments={"robot": cfg["robot"], "checkpoint": cfg["checkpoint"], "dry_run": "true",
                          "use_sim_time": "true"}.items())
    return LaunchDescription([*args, player, policy])
