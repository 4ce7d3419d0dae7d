"""Start the VLA policy node for one robot, configured and activated automatically.

    ros2 launch vla_ros policy.launch.py robot:=sim_panda checkpoint:=/path/to/ckpt

The robot's parameters come from config/robots/<robot>.yaml; topics and action names are
relative and remapped here, so the node needs no robot-specific Python.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, RegisterEventHandler
from launch.conditions import IfCondition
from launch.events import matches_action
from launch.substitutions import LaunchConfiguration, PathJoinSubstitution
from launch_ros.actions import LifecycleNode
from launch_ros.event_handlers import OnStateTransition
from launch_ros.events.lifecycle import ChangeState
from launch_ros.substitutions import FindPackageShare
from lifecycle_msgs.msg import Transition

ARGUMENTS = [
    ("robot", "sim_panda", "Robot configuration: the name of a file config/robots/<robot>.yaml."),
    ("model", "tiny", "Model preset from config/models/, used when no checkpoint is given."),
    ("checkpoint", "", "Checkpoint directory (model.safetensors, config.json, normalization.json)."),
    ("model_server", "", "A remote policy server (openpi's websocket protocol), e.g. ws://gpu-box:8000, used instead "
     "of a local model; empty: the local model."),
    ("server_mapping", "vla_ros", "With model_server: how the robot's inputs and actions map onto the server's "
     "(a name in config/remote/ or a file)."),
    ("namespace", "", "Namespace for the policy node and its relative topics."),
    ("use_sim_time", "false", "Use /clock (simulation or bag replay) instead of the wall clock."),
    ("dry_run", "false", "Publish action chunks only; command nothing."),
    ("camera_topic", "front/image_raw", "Image topic of the first camera (remapped to the node's front/image_raw)."),
    ("joint_states_topic", "/joint_states", "The robot's joint state topic."),
    ("trajectory_action", "/joint_trajectory_controller/follow_joint_trajectory",
     "FollowJointTrajectory action of the robot's joint trajectory controller."),
    ("gripper_action", "/gripper_controller/gripper_cmd", "GripperCommand action of the gripper controller."),
    ("autostart", "true", "Configure and activate the node on start; false leaves it unconfigured."),
    ("log_level", "info", "Log level of the policy node (debug, info, warn, error)."),
]

# The node's action clients and the launch arguments that name the robot's action servers.
ACTIONS = (("follow_joint_trajectory", "trajectory_action"), ("gripper_command", "gripper_action"))


def generate_launch_description():
    args = [DeclareLaunchArgument(name, default_value=default, description=text)
            for name, default, text in ARGUMENTS]
    cfg = {name: LaunchConfiguration(name) for name, _, _ in ARGUMENTS}
    # PathJoinSubstitution takes no nested list as one path part (Jazzy): join the suffix outside.
    params_file = [PathJoinSubstitution([FindPackageShare("vla_ros"), "config", "robots", cfg["robot"]]), ".yaml"]
    node = LifecycleNode(
        package="vla_ros", executable="policy_node", name="policy_node", namespace=cfg["namespace"],
        output="screen",
        parameters=[params_file, {"model.preset": cfg["model"], "model.checkpoint": cfg["checkpoint"],
                                  "model.server": cfg["model_server"], "model.server_mapping": cfg["server_mapping"],
                                  "use_sim_time": cfg["use_sim_time"], "dry_run": cfg["dry_run"]}],
        # Jazzy's rcl does not remap action names (ros2/ros2#1312; ros2/rcl#1170 came later), so the
        # action's own topics and services are remapped as well; newer distros honour either rule.
        remappings=[("front/image_raw", cfg["camera_topic"]), ("joint_states", cfg["joint_states_topic"]),
                    *[(name, cfg[arg]) for name, arg in ACTIONS],
                    *[(f"{name}/_action/{part}", [cfg[arg], f"/_action/{part}"])
                      for name, arg in ACTIONS
                      for part in ("send_goal", "cancel_goal", "get_result", "feedback", "status")]],
        arguments=["--ros-args", "--log-level", cfg["log_level"]],
    )
    configure = EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                            transition_id=Transition.TRANSITION_CONFIGURE),
                          condition=IfCondition(cfg["autostart"]))
    # Activate once, after configuring: only the configuring -> inactive transition. Without
    # start_state the handler also fired on active -> deactivating -> inactive and re-activated the
    # node 40 ms after every `ros2 lifecycle set /policy_node deactivate`.
    activate = RegisterEventHandler(OnStateTransition(
        target_lifecycle_node=node, start_state="configuring", goal_state="inactive",
        entities=[EmitEvent(event=ChangeState(lifecycle_node_matcher=matches_action(node),
                                              transition_id=Transition.TRANSITION_ACTIVATE))]),
        condition=IfCondition(cfg["autostart"]))
    return LaunchDescription([*args, node, activate, configure])
