"""The policy node's parameters: the table it declares, and the checks across parameters.

`read(node)` returns a frozen `PolicyNodeParams` (`p.control.rate`, `p.joints.names`,
`p.dry_run`) or raises `ParameterError` naming the first bad parameter and its value.
"""
from __future__ import annotations

import math

from rclpy.parameter import Parameter

from vla_ros.ros.params import ParameterError, Spec, attributes_class, freeze, values

ACTION_SPACES = ("joint_position", "joint_delta", "ee_delta")
OUTPUT_MODES = ("follow_joint_trajectory", "joint_trajectory", "forward_position", "twist", "pose")
ROTATIONS = ("axis_angle", "euler", "quaternion")
TRANSPORTS = ("raw", "compressed")
EXECUTION_MODES = ("realtime", "ensemble", "latest")
INF = float("inf")


SPEC: Spec = {
    # -- model ---------------------------------------------------------------------------
    "model.checkpoint": (Parameter.Type.STRING, "",
                         "Directory of a vla_ros checkpoint (model.safetensors + config.json + "
                         "normalization.json). Empty: build `model.preset` with untrained weights "
                         "(smoke tests only; the node logs a warning).", {}),
    "model.preset": (Parameter.Type.STRING, "tiny",
                     "Model preset from config/models/ used when model.checkpoint is empty.", {}),
    "model.device": (Parameter.Type.STRING, "auto", "Inference device: auto (CUDA when present), cpu or cuda.",
                     {"choices": ("auto", "cpu", "cuda")}),
    "model.dtype": (Parameter.Type.STRING, "float32", "Inference precision; bfloat16/float16 autocast on GPU.",
                    {"choices": ("float32", "bfloat16", "float16")}),
    "model.compile": (Parameter.Type.BOOL, False, "torch.compile the model at configure time.", {}),
    "model.threads": (Parameter.Type.INTEGER, 0,
                      "CPU threads for torch (torch.set_num_threads); 0 keeps torch's default. 1 is often "
                      "fastest on small shared boards.", {"range": (0, 256)}),
    "model.process": (Parameter.Type.STRING, "server",
                      "Where the model runs: server (its own process, started and supervised by the node, so "
                      "inference never holds the control loop's interpreter) or in_process (a thread of the node; "
                      "for tests and boards where a second process is not possible: the control rate jitters).",
                      {"choices": ("server", "in_process")}),
    "model.server": (Parameter.Type.STRING, "",
                     "A remote policy server speaking openpi's websocket protocol (vla-ros serve, openpi's "
                     "serve_policy.py, ...), e.g. ws://gpu-box:8000, used instead of a local model. Empty: the "
                     "local model (model.checkpoint). The websocket client runs in the node's policy server "
                     "process (model.process must be server); unreachable at configure: configure fails.", {}),
    "model.server_mapping": (Parameter.Type.STRING, "vla_ros",
                             "With model.server: how the robot's cameras, joint states and instruction fill the "
                             "server's observation keys and how its actions map onto the robot's action space. "
                             "A file path, or a name in config/remote/ (vla_ros, droid, libero).", {}),
    "model.server_token_env": (Parameter.Type.STRING, "",
                               "With model.server: name of an environment variable holding the server's shared "
                               "token (sent as 'Authorization: Api-Key <token>'); empty: no token. The token "
                               "itself is never a parameter (parameters can be read by anyone on the graph).", {}),
    "model.server_timeout": (Parameter.Type.DOUBLE, 5.0,
                             "With model.server: seconds to connect and receive the server's metadata (configure, "
                             "reconnects). A request without an answer for 3 x control.inference_timeout drops "
                             "the connection and reconnects.", {"range": (0.1, 600.0)}),
    "model.seed": (Parameter.Type.INTEGER, 0, "Seed for sampling decoders (flow matching).", {"range": (0, 2**31 - 1)}),
    "model.emulated_latency": (Parameter.Type.DOUBLE, 0.0,
                               "What-if tool, off (0) by default: seconds added to every inference inside the policy "
                               "server process (never in the control loop), to see how the robot behaves with a "
                               "slower model (pi0 on a GPU: ~0.1 s; served over a network: 0.5-1 s). Logged loudly "
                               "when on.", {"range": (0.0, 60.0)}),
    "model.emulated_latency_p99": (Parameter.Type.DOUBLE, 0.0,
                                   "With model.emulated_latency: 0 for a fixed delay, or the 99th percentile (s) of "
                                   "a lognormal delay whose median is model.emulated_latency (latency with a tail, "
                                   "as GPUs and networks have).", {"range": (0.0, 600.0)}),
    # -- inputs --------------------------------------------------------------------------
    "cameras.names": (Parameter.Type.STRING_ARRAY, ["front"],
                      "Camera names in the model's view order; camera N subscribes to "
                      "<name>/image_raw (or <name>/image_raw/compressed). Remap to the driver's topics.", {}),
    "cameras.transports": (Parameter.Type.STRING_ARRAY, ["raw"],
                           "Per camera: raw (sensor_msgs/Image) or compressed (sensor_msgs/CompressedImage).", {}),
    "cameras.max_age": (Parameter.Type.DOUBLE, 0.5,
                        "Seconds after which a camera frame is stale and the arm holds.", {"range": (0.01, 60.0)}),
    "cameras.max_width": (Parameter.Type.INTEGER, 4096,
                          "Widest camera image accepted (pixels), checked from the header before decoding (raw "
                          "and compressed): larger frames are refused with one line.", {"range": (16, 65536)}),
    "cameras.max_height": (Parameter.Type.INTEGER, 4096, "Tallest camera image accepted (pixels), as above.",
                           {"range": (16, 65536)}),
    "cameras.min_side": (Parameter.Type.INTEGER, 16,
                         "Frames with a side shorter than this (pixels) are refused (not camera images).",
                         {"range": (1, 4096)}),
    "cameras.max_stamp_offset": (Parameter.Type.DOUBLE, 1.0,
                                 "Frames whose header stamp is further than this (s) from the node's clock, in "
                                 "either direction (or zero), are refused with a throttled line: a camera on "
                                 "another clock, or a driver re-sending old frames. Within it, the watchdog "
                                 "checks the stamp's age, not the arrival.", {"range": (0.001, 3600.0)}),
    "joint_states.timeout": (Parameter.Type.DOUBLE, 0.5,
                             "Seconds without /joint_states after which the arm holds.", {"range": (0.01, 60.0)}),
    "joint_states.limit_margin": (Parameter.Type.DOUBLE, 0.2,
                                  "Joint states further than this (rad or m) outside joints.lower/upper are "
                                  "refused as wrong (names, units, calibration); the arm holds.",
                                  {"range": (0.0, 100.0)}),
    "joint_states.topic": (Parameter.Type.STRING, "joint_states",
                           "The robot's sensor_msgs/JointState topic (a relative name is in the node's namespace).",
                           {}),
    "instruction.max_length": (Parameter.Type.INTEGER, 512,
                               "Longest accepted instruction in characters; longer ones are rejected.",
                               {"range": (1, 100000)}),
    # -- robot ---------------------------------------------------------------------------
    "joints.names": (Parameter.Type.STRING_ARRAY, [""], "Arm joint names, in the order of the action vector.", {}),
    "joints.lower": (Parameter.Type.DOUBLE_ARRAY, [0.0], "Lower position limits (rad or m), one per joint.", {}),
    "joints.upper": (Parameter.Type.DOUBLE_ARRAY, [0.0], "Upper position limits (rad or m), one per joint.", {}),
    "joints.max_velocity": (Parameter.Type.DOUBLE_ARRAY, [0.0], "Velocity limits (rad/s or m/s), one per joint.", {}),
    "joints.max_acceleration": (Parameter.Type.DOUBLE_ARRAY, [0.0],
                                "Acceleration limits (rad/s^2 or m/s^2), one per joint.", {}),
    "joints.max_step": (Parameter.Type.DOUBLE, 0.0,
                        "Largest position change per control tick for any joint; 0 disables this bound.",
                        {"range": (0.0, 10.0)}),
    # -- action space and outputs --------------------------------------------------------
    "action_space": (Parameter.Type.STRING, "joint_position",
                     "What the model's actions are: joint_position, joint_delta or ee_delta.",
                     {"choices": ACTION_SPACES}),
    "output.mode": (Parameter.Type.STRING, "follow_joint_trajectory",
                    "How commands are sent: follow_joint_trajectory (action), joint_trajectory (topic), "
                    "forward_position (Float64MultiArray), twist (TwistStamped, MoveIt Servo) or pose "
                    "(PoseStamped targets from the current ee_pose).",
                    {"choices": OUTPUT_MODES}),
    "controllers.follow_joint_trajectory": (Parameter.Type.STRING, "follow_joint_trajectory",
                                            "FollowJointTrajectory action of the robot's joint trajectory "
                                            "controller (output.mode follow_joint_trajectory).", {}),
    "controllers.gripper_command": (Parameter.Type.STRING, "gripper_command",
                                    "GripperCommand action of the gripper (gripper.enabled).", {}),
    "output.trajectory_points": (Parameter.Type.INTEGER, 8,
                                 "Most points per FollowJointTrajectory goal (taken from the action queue).",
                                 {"range": (1, 1000)}),
    "ee.frame": (Parameter.Type.STRING, "base_link", "Frame of end-effector actions and twist commands.", {}),
    "ee.rotation": (Parameter.Type.STRING, "axis_angle", "Rotation part of ee_delta actions.",
                    {"choices": ROTATIONS}),
    "ee.max_linear_velocity": (Parameter.Type.DOUBLE, 0.25,
                               "End-effector speed limit (m/s): twist commands, and pose targets move at most "
                               "this times the control period from the current pose.", {"range": (0.0, 10.0)}),
    "ee.max_angular_velocity": (Parameter.Type.DOUBLE, 1.0, "End-effector angular speed limit (rad/s), as above.",
                                {"range": (0.0, 50.0)}),
    "gripper.enabled": (Parameter.Type.BOOL, False,
                        "The last action dimension is the gripper, sent through the GripperCommand action.", {}),
    "gripper.open_position": (Parameter.Type.DOUBLE, 0.04, "GripperCommand position when open (m).", {"range": (-10.0, 10.0)}),
    "gripper.closed_position": (Parameter.Type.DOUBLE, 0.0, "GripperCommand position when closed (m).", {"range": (-10.0, 10.0)}),
    "gripper.max_effort": (Parameter.Type.DOUBLE, 20.0, "GripperCommand max_effort (N).", {"range": (0.0, 1000.0)}),
    "gripper.threshold": (Parameter.Type.DOUBLE, 0.5,
                          "Gripper actions above this value mean open, below mean closed.", {"range": (-10.0, 10.0)}),
    # -- control -------------------------------------------------------------------------
    "control.rate": (Parameter.Type.DOUBLE, 30.0, "Control loop rate (Hz): one action per tick.", {"range": (1.0, 1000.0)}),
    "control.realtime_priority": (Parameter.Type.INTEGER, 0,
                                  "SCHED_FIFO priority (1-99) for the control loop's thread, as ros2_control's "
                                  "thread_priority; 0 keeps the normal scheduler. Needs the right to use real-time "
                                  "scheduling (root, CAP_SYS_NICE or an rtprio limit); without it the node logs a "
                                  "warning and runs on the normal scheduler.", {"range": (0, 99)}),
    "control.execution": (Parameter.Type.STRING, "realtime",
                          "How chunks become commands. realtime (Real-Time Chunking): the next chunk is requested "
                          "as soon as the previous one is back, with the actions already queued for its first "
                          "ticks and how many of them run before it can arrive (from the measured latency); the "
                          "policy continues them and the new chunk takes over right after them, so a slow model "
                          "neither stops the arm nor makes it jump (needs a chunk longer than about twice the "
                          "latency). ensemble: ACT temporal ensembling of overlapping chunks, a request when "
                          "control.refill_threshold actions are left. latest: the newest chunk wins, same "
                          "requests.", {"choices": EXECUTION_MODES}),
    "control.realtime_merge": (Parameter.Type.STRING, "ensemble",
                               "realtime: after a new chunk's frozen actions, ensemble (averaged with the older "
                               "chunks, ACT's weights: smooths chunks that disagree, e.g. about when to close the "
                               "gripper) or latest (it replaces them, as the RTC paper executes). latest failed "
                               "every sim pick (the gripper command flickers), with and without prefix "
                               "conditioning.", {"choices": ("ensemble", "latest")}),
    "control.send_committed": (Parameter.Type.BOOL, True,
                               "realtime: give the policy the committed actions (a model trained with them as "
                               "input, or RTC guidance of a flow head, continues them; a policy that takes none "
                               "never gets them). false: the node still executes them before switching.", {}),
    "control.refill_threshold": (Parameter.Type.INTEGER, 4,
                                 "ensemble/latest: request a new chunk when this many actions or fewer are left; keep "
                                 "it at least the inference latency in control ticks (plus margin), or the queue runs "
                                 "dry. realtime schedules requests itself.", {"range": (0, 1000)}),
    "control.ensemble_decay": (Parameter.Type.DOUBLE, 0.01, "ensemble: m in w_i = exp(-m i) (ACT).",
                               {"range": (0.0, 10.0)}),
    "control.inference_timeout": (Parameter.Type.DOUBLE, 2.0,
                                  "Seconds an inference may take before the arm holds.", {"range": (0.01, 600.0)}),
    "workspace.min": (Parameter.Type.DOUBLE_ARRAY, [-INF, -INF, -INF], "Workspace box lower corner (m) in ee.frame.", {}),
    "workspace.max": (Parameter.Type.DOUBLE_ARRAY, [INF, INF, INF], "Workspace box upper corner (m) in ee.frame.", {}),
    # -- behaviour -----------------------------------------------------------------------
    "dry_run": (Parameter.Type.BOOL, False,
                "Compute and publish ActionChunk, command nothing. Applies live (ros2 param set): switching it on "
                "while the arm moves brings the arm to rest; every other parameter is read-only after start-up.",
                {"live": True}),
    "autostart": (Parameter.Type.BOOL, False,
                  "Configure and activate at start-up (without a lifecycle manager).", {}),
    "default_timeout": (Parameter.Type.DOUBLE, 60.0,
                        "ExecuteInstruction timeout (s) when a goal gives 0.", {"range": (0.1, 86400.0)}),
    "status_rate": (Parameter.Type.DOUBLE, 2.0, "PolicyStatus and diagnostics rate (Hz).", {"range": (0.1, 100.0)}),
}

PolicyNodeParams = attributes_class("PolicyNodeParams", SPEC)


def resolve_mapping(value: str) -> str:
    """A mapping name (config/remote/<name>.yaml) or a path -> an existing file's path."""
    from pathlib import Path

    from vla_ros.share import share_dirs
    if "/" not in value and not value.endswith((".yaml", ".yml")):
        for d in share_dirs():
            f = d / "config" / "remote" / f"{value}.yaml"
            if f.is_file():
                return str(f)
        raise ParameterError(f"parameter 'model.server_mapping' is {value!r}: no config/remote/{value}.yaml found")
    if not Path(value).is_file():
        raise ParameterError(f"parameter 'model.server_mapping' is {value!r}: no such file")
    return value


def read(node) -> PolicyNodeParams:
    """Read and validate every parameter; raise ParameterError naming the first bad one."""
    v = values(node, SPEC)
    if v["model.server"]:
        if not v["model.server"].startswith(("ws://", "wss://")):
            raise ParameterError(f"parameter 'model.server' is {v['model.server']!r}; expected ws://host:port")
        if v["model.process"] != "server":
            raise ParameterError("parameter 'model.process' is 'in_process' but model.server is set: the "
                                 "websocket client runs in the policy server process (model.process: server)")
        v["model.server_mapping"] = resolve_mapping(v["model.server_mapping"])
    names = list(v["joints.names"])
    if not names or any(not n for n in names):
        raise ParameterError(f"parameter 'joints.names' is {names!r}; give the robot's joint names "
                             "(load the robot's parameters file with --params-file)")
    if len(set(names)) != len(names):
        raise ParameterError(f"parameter 'joints.names' has duplicates: {names!r}")
    for key in ("joints.lower", "joints.upper", "joints.max_velocity", "joints.max_acceleration"):
        arr = list(v[key])
        if len(arr) != len(names):
            raise ParameterError(f"parameter '{key}' has {len(arr)} values for {len(names)} joints {names}")
        if not all(math.isfinite(x) for x in arr):
            raise ParameterError(f"parameter '{key}' must be finite numbers, got {arr}")
    for i, n in enumerate(names):
        if not v["joints.lower"][i] < v["joints.upper"][i]:
            raise ParameterError(f"parameters 'joints.lower'/'joints.upper' for joint '{n}': "
                                 f"{v['joints.lower'][i]} is not below {v['joints.upper'][i]}")
        for key in ("joints.max_velocity", "joints.max_acceleration"):
            if not v[key][i] > 0:
                raise ParameterError(f"parameter '{key}' for joint '{n}' is {v[key][i]}; it must be > 0")
    cams = list(v["cameras.names"])
    if not cams or any(not c for c in cams) or len(set(cams)) != len(cams):
        raise ParameterError(f"parameter 'cameras.names' is {cams!r}; give one or more distinct camera names")
    transports = list(v["cameras.transports"])
    if len(transports) == 1 and len(cams) > 1:
        transports = transports * len(cams)
    if len(transports) != len(cams) or any(t not in TRANSPORTS for t in transports):
        raise ParameterError(f"parameter 'cameras.transports' is {list(v['cameras.transports'])!r}; expected "
                             f"one of {list(TRANSPORTS)} per camera ({len(cams)} cameras)")
    v["cameras.transports"] = transports
    for key in ("workspace.min", "workspace.max"):
        if len(v[key]) != 3 or any(math.isnan(x) for x in v[key]):
            raise ParameterError(f"parameter '{key}' is {list(v[key])!r}; expected 3 numbers (x, y, z)")
    if any(lo >= hi for lo, hi in zip(v["workspace.min"], v["workspace.max"])):
        raise ParameterError(f"parameters 'workspace.min' {list(v['workspace.min'])} must be below "
                             f"'workspace.max' {list(v['workspace.max'])}")
    ee_modes = ("twist", "pose")
    if v["action_space"] == "ee_delta" and v["output.mode"] not in ee_modes:
        raise ParameterError(f"parameter 'output.mode' is {v['output.mode']!r} but action_space 'ee_delta' "
                             f"needs output.mode one of {list(ee_modes)}")
    if v["action_space"] != "ee_delta" and v["output.mode"] in ee_modes:
        raise ParameterError(f"parameter 'output.mode' is {v['output.mode']!r} but action_space is "
                             f"{v['action_space']!r}; end-effector outputs need action_space 'ee_delta'")
    return freeze(PolicyNodeParams, v)
