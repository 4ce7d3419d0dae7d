"""The policy node's launch description, shared by policy.launch.py and every robot's launch file.

A robot is data: config/robots/<robot>.yaml holds its joints, limits, controller action names
and topics, and its launch file only names it:

    from vla_ros.ros.launch_policy import robot_launch_description

    def generate_launch_description():
        return robot_launch_description("franka_fr3")

The node is a lifecycle node, configured and activated here (autostart:=false leaves it
unconfigured). Launch arguments override the robot file: trajectory_action, gripper_action and
joint_states_topic set the parameters controllers.follow_joint_trajectory,
controllers.gripper_command and joint_states.topic when given; camera_topic remaps the first
camera's front/image_raw.
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, EmitEvent, OpaqueFunction, RegisterEventHandler
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
    ("joint_states_topic", "", "The robot's joint state topic; empty: the robot file's joint_states.topic."),
    ("trajectory_action", "", "FollowJointTrajectory action of the robot's joint trajectory controller; empty: "
     "the robot file's controllers.follow_joint_trajectory."),
    ("gripper_action", "", "GripperCommand action of the gripper; empty: the robot file's "
     "controllers.gripper_command."),
    ("autostart", "true", "Configure and activate the node on start; false leaves it unconfigured."),
    ("log_level", "info", "Log level of the policy node (debug, info, warn, error)."),
]
# Launch arguments that, when given, override a parameter of the robot file.
OVERRIDES = {"joint_states_topic": "joint_states.topic", "trajectory_action": "controllers.follow_joint_trajectory",
             "gripper_action": "controllers.gripper_command"}


def _policy_node(context):
    cfg = {name: LaunchConfiguration(name) for name, _, _ in ARGUMENTS}
    # PathJoinSubstitution takes no nested list as one path part (Jazzy): join the suffix outside.
    params_file = [PathJoinSubstitution([FindPackageShare("vla_ros"), "config", "robots", cfg["robot"]]), ".yaml"]
    overrides = {param: cfg[arg] for arg, param in OVERRIDES.items() if cfg[arg].perform(context)}
    node = LifecycleNode(
        package="vla_ros", executable="policy_node", name="policy_node", namespace=cfg["namespace"],
        output="screen",
        parameters=[params_file, {"model.preset": cfg["model"], "model.checkpoint": cfg["checkpoint"],
                                  "model.server": cfg["model_server"], "model.server_mapping": cfg["server_mapping"],
                                  "use_sim_time": cfg["use_sim_time"], "dry_run": cfg["dry_run"], **overrides}],
        remappings=[("front/image_raw", cfg["camera_topic"])],
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
    return [node, activate, configure]


def robot_launch_description(robot: str = "sim_panda") -> LaunchDescription:
    """Every argument of ARGUMENTS declared (robot's default: `robot`), and the policy node started with
    config/robots/<robot>.yaml."""
    args = [DeclareLaunchArgument(name, default_value=robot if name == "robot" else default, description=text)
            for name, default, text in ARGUMENTS]
    return LaunchDescription([*args, OpaqueFunction(function=_policy_node)])
