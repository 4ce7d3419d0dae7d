"""The built-in simulated Panda (sim_robot_node) and the policy node, closing the loop.

    ros2 launch vla_ros sim.launch.py                       # shipped demo checkpoint
    ros2 launch vla_ros sim.launch.py seed:=7 family:=push record:=true output_dir:=/tmp/bags
    vla-ros serve --checkpoint checkpoints/sim_demo &       # the policy served over openpi's protocol ...
    ros2 launch vla_ros sim.launch.py model_server:=ws://127.0.0.1:8000   # ... and the node as its client

The simulator is the clock (/clock); the policy node runs on simulated time with
config/robots/sim_panda.yaml (end-effector deltas sent as TwistStamped, gripper through
GripperCommand). Each episode's instruction is published on `instruction` (latched), so
the arm starts on the first task at once; a new episode:

    ros2 service call /sim_robot_node/reset_episode vla_ros/srv/ResetEpisode "{seed: 3, family: touch}"

or give the policy an instruction as a goal:

    ros2 action send_goal /policy_node/execute_instruction vla_ros/action/ExecuteInstruction \
        "{instruction: 'push the red cube left', timeout: 15.0}"
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, IncludeLaunchDescription
from launch.conditions import IfCondition
from launch.launch_description_sources import PythonLaunchDescriptionSource
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution, PythonExpression
from launch_ros.actions import Node
from launch_ros.substitutions import FindPackageShare

ARGUMENTS = [
    ("checkpoint", "", "Policy checkpoint directory; empty: the shipped demo checkpoint (share/vla_ros/checkpoints/sim_demo)."),
    ("model_server", "", "A remote policy server instead of the local checkpoint, e.g. ws://127.0.0.1:8000 "
     "(vla-ros serve --checkpoint checkpoints/sim_demo); empty: the checkpoint runs in the policy node's server process."),
    ("server_mapping", "vla_ros", "With model_server: config/remote/<name>.yaml or a file (vla_ros: our own server)."),
    ("robot", "sim_panda", "Policy node configuration config/robots/<robot>.yaml (sim_panda or sim_panda_joint)."),
    ("real_time_factor", "1.0", "Simulation speed over wall-clock time; 0: as fast as possible."),
    ("seed", "0", "Seed of the first episode (scene and task)."),
    ("family", "", "Task family of the first episode: touch, push or pick; empty: random touch or push."),
    ("phrasing", "train", "Instruction phrasings: train, heldout or newwords."),
    ("publish_instruction", "true", "Publish each episode's instruction on `instruction` (the policy starts at once)."),
    ("dry_run", "false", "Policy node publishes action chunks only; commands nothing."),
    ("record", "false", "Also start the recorder (record.launch.py's node) on the simulation's topics."),
    ("output_dir", ".", "Where the recorder creates its bag directory."),
    ("log_level", "info", "Log level of the policy node."),
]
RECORDED = ["front/image_raw", "joint_states", "ee_pose", "twist", "instruction", "task_success",
            "policy_node/action_chunk"]


def generate_launch_description():
    args = [DeclareLaunchArgument(n, default_value=d, description=t) for n, d, t in ARGUMENTS]
    cfg = {n: LaunchConfiguration(n) for n, _, _ in ARGUMENTS}
    demo = PathJoinSubstitution([FindPackageShare("vla_ros"), "checkpoints", "sim_demo"])
    checkpoint = PythonExpression(["'", cfg["checkpoint"], "' or '", demo, "'"])
    sim = Node(package="vla_ros", executable="sim_robot_node", name="sim_robot_node", output="screen",
               parameters=[{"real_time_factor": cfg["real_time_factor"], "seed": cfg["seed"],
                            "family": cfg["family"], "phrasing": cfg["phrasing"],
                            "publish_instruction": cfg["publish_instruction"]}])
    policy = IncludeLaunchDescription(
        PythonLaunchDescriptionSource(PathJoinSubstitution([FindPackageShare("vla_ros"), "launch",
                                                            "policy.launch.py"])),
        launch_arguments={"robot": cfg["robot"], "checkpoint": checkpoint, "model_server": cfg["model_server"],
                          "server_mapping": cfg["server_mapping"],
                          "use_sim_time": "true", "dry_run": cfg["dry_run"],
                          "log_level": cfg["log_level"]}.items())
    recorder = Node(package="vla_ros", executable="recorder_node", name="recorder", output="screen",
                    parameters=[{"topics": RECORDED, "output_dir": cfg["output_dir"], "use_sim_time": True}],
                    sigterm_timeout="30", condition=IfCondition(cfg["record"]))
    return LaunchDescription([*args, sim, policy, recorder])
