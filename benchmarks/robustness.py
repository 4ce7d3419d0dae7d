"""Bad input and faults against the real policy node: does it stay up, say so in one line, hold, recover?

This starts `policy_node` in its own process (config/robots/sim_panda_joint.yaml, forward_position
output, the tiny preset, 1 torch thread) and a robot stand-in in this process (joint states at
50 Hz, camera frames at 20 fps, the command topic, a FollowJointTrajectory server). For each kind
of bad input or fault it starts from a node that is commanding, injects the bad input repeatedly
for a window (~1.8 s), restores good input and records:
  * alive:      the node process is still running (a restart counts as a failure of the kind that needed it);
  * clear line: the node's log grew by at most a few WARN/ERROR lines (and at least one for a bad
                input), and no "Traceback";
  * held:       hold kinds: no ActionChunk computed from a bad frame, and no command in the window after
                the watchdog's grace (max_age 0.5 s + a tick + deceleration); valid kinds: commands kept
                flowing ("kept"); n/a where neither applies;
  * recovered:  commands flow again once good input is back;
  * limits:     every command received while the kind ran is finite, inside the joint position limits,
                and moves at most joints.max_step (0.05 rad, below the velocity limits / 30 Hz) per tick.
One node process serves as many kinds as possible; it is restarted only when a kind kills it or
needs other parameters (compressed camera transport, follow_joint_trajectory output).

    python benchmarks/robustness.py [--quick] [--kinds NAME ...] [--out FILE]
"""
import argparse
import json
import math
import os
import re
import signal
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test"))  # ros_testing helpers (SpinningNode, wait_for)
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_localhost.xml"))
os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import cv2  # noqa: E402
from builtin_interfaces.msg import Time  # noqa: E402
from control_msgs.action import FollowJointTrajectory  # noqa: E402
from lifecycle_msgs.msg import Transition  # noqa: E402
from lifecycle_msgs.srv import ChangeState  # noqa: E402
from rclpy.action import ActionClient, ActionServer, CancelResponse, GoalResponse  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import CompressedImage, Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402
from std_srvs.srv import Trigger  # noqa: E402

from ros_testing import RosProcess, SpinningNode, remove_stale_shm, shm_files  # noqa: E402
from vla_ros.action import ExecuteInstruction  # noqa: E402
from vla_ros.msg import ActionChunk  # noqa: E402
from vla_ros.robots import robot_joints  # noqa: E402

PARAMS = ROOT / "config" / "robots" / "sim_panda_joint.yaml"
RESULTS = ROOT / "benchmarks" / "results"
JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
HOME = [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785]
PANDA = robot_joints(PARAMS)
LOWER, UPPER, MAX_VEL, MAX_ACC, MAX_STEP = (PANDA.lower, PANDA.upper, PANDA.max_velocity, PANDA.max_acceleration,
                                            PANDA.max_step)
RATE, MAX_AGE, JS_TIMEOUT = 30.0, 0.5, 0.5
STEP_BOUND = np.minimum(MAX_STEP, MAX_VEL / RATE) + 1e-9
WINDOW = 1.8                          # injection window (s)
GRACE = MAX_AGE + 1 / RATE + 0.35     # watchdog + a tick + deceleration to rest
INSTRUCTION = "touch the red cube"
GROUPS = {  # node parameter sets beyond the common ones
    "raw": [],
    "compressed": ["cameras.transports:=[compressed]"],
    "fjt": ["output.mode:=follow_joint_trajectory"],
    "wild": [],  # the soak: model.checkpoint is added (a deliberately wild policy)
}
WARN_RE = re.compile(r"^\[(WARN|ERROR|FATAL)\]", re.M)
LINE_TS = re.compile(r"^\[(?:WARN|ERROR|INFO|FATAL)\] \[(\d+\.\d+)\] \[[^\]]*\]: (.*)$", re.M)
PID_RE = re.compile(r"policy server (?:running again \()?pid (\d+)")

RNG = np.random.default_rng(0)
GOOD_RGB = RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
GOOD_JPEG = cv2.imencode(".jpg", GOOD_RGB[:, :, ::-1])[1].tobytes()
GOOD_PNG = cv2.imencode(".png", GOOD_RGB[:, :, ::-1])[1].tobytes()
NOISE_RNG = np.random.default_rng(1)  # the soak's camera: a new random frame every time


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring width x height (8-bit RGB) without the pixels: a decompression bomb's header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000))
            + chunk(b"IEND", b""))


_BIG_JPEG = []


def big_jpeg() -> bytes:
    """A 6000x6000 JPEG (108 MB decoded), encoded once: a smooth gradient, so the file stays small."""
    if not _BIG_JPEG:
        ramp = np.linspace(0, 255, 6000, dtype=np.float32).astype(np.uint8)
        img = np.empty((6000, 6000, 3), dtype=np.uint8)
        img[:] = ramp[None, :, None]
        _BIG_JPEG.append(cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 50])[1].tobytes())
        del img
    return _BIG_JPEG[0]


def stamp_of(t: float) -> Time:
    sec = math.floor(t)
    return Time(sec=int(sec), nanosec=int((t - sec) * 1e9))


def ns_of(stamp) -> int:
    return stamp.sec * 10**9 + stamp.nanosec


# ------------------------------------------------------------------------------ the robot stand-in
class FjtServer(SpinningNode):
    """The FollowJointTrajectory server in a node of its own, so a kind can take it away and bring it back."""

    def __init__(self, robot, name="robustness_fjt_server"):
        super().__init__(name)
        self.robot = robot
        self.server = ActionServer(self.node, FollowJointTrajectory, "follow_joint_trajectory", self._execute,
                                   goal_callback=lambda g: GoalResponse.ACCEPT if robot.accept_fjt
                                   else GoalResponse.REJECT,
                                   cancel_callback=lambda h: CancelResponse.ACCEPT)

    def _execute(self, handle):
        traj = handle.request.trajectory
        self.robot.record_fjt(traj)
        handle.succeed()
        return FollowJointTrajectory.Result(error_code=0)

    def close(self):
        self.server.destroy()
        super().close()


class Robot(SpinningNode):
    """Joint states, a camera (raw or compressed, good or bad on demand), the command topic, clients."""

    def __init__(self):
        super().__init__("robustness_robot")
        n = self.node
        self.lock = threading.Lock()
        self.position = np.array(HOME, dtype=float)
        self.commands = []          # (monotonic arrival, positions) from forward_position or FJT goals
        self.fjt_points = []        # (monotonic arrival, points array) per FJT goal
        self.chunk_stamps = []      # observation stamps (ns) of every ActionChunk
        self.bad_stamps = set()     # stamps of bad frames published
        self.last_good_frame = 0.0  # ROS time (s) of the last good frame published
        self.transport = "raw"
        self.camera = "good"        # "good", None (off) or callable(now) -> message
        self.joint_states = "good"  # "good", None (off) or callable(msg) -> msg
        self.accept_fjt = True
        self.output = "fwd"
        self.raw_pub = n.create_publisher(Image, "front/image_raw", qos_profile_sensor_data)
        self.comp_pub = n.create_publisher(CompressedImage, "front/image_raw/compressed", qos_profile_sensor_data)
        self.js_pub = n.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
        latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.instruction_pub = n.create_publisher(String, "instruction", latched)
        n.create_subscription(Float64MultiArray, "forward_position", self._on_fwd, 50)
        n.create_subscription(ActionChunk, "policy_node/action_chunk", self._on_chunk, 50)
        self.estop = n.create_client(Trigger, "policy_node/estop")
        self.reset = n.create_client(Trigger, "policy_node/reset")
        self.change_state = n.create_client(ChangeState, "policy_node/change_state")
        self.execute = ActionClient(n, ExecuteInstruction, "policy_node/execute_instruction")
        n.create_timer(0.02, self._publish_joint_states)
        n.create_timer(0.05, self._publish_image)
        self.fjt = FjtServer(self)

    # -- what arrives
    def _on_fwd(self, msg):
        with self.lock:
            pos = np.array(msg.data, dtype=float)
            self.commands.append((time.monotonic(), pos))
            if pos.shape == self.position.shape and np.all(np.isfinite(pos)):
                self.position = pos

    def record_fjt(self, traj):
        pts = np.array([p.positions for p in traj.points], dtype=float)
        with self.lock:
            self.fjt_points.append((time.monotonic(), pts))
            if len(pts):
                self.commands.append((time.monotonic(), pts[0]))
                self.position = pts[0].copy()

    def _on_chunk(self, msg):
        with self.lock:
            self.chunk_stamps.append(ns_of(msg.observation_stamp))

    def count(self) -> int:
        with self.lock:
            return len(self.commands)

    # -- what goes out
    def now(self) -> float:
        return self.node.get_clock().now().nanoseconds * 1e-9

    def _publish_joint_states(self):
        mode = self.joint_states
        if mode is None:
            return
        with self.lock:
            msg = JointState(name=list(JOINTS), position=self.position.tolist())
        msg.header.stamp = stamp_of(self.now())
        if callable(mode):
            msg = mode(msg)
        self.js_pub.publish(msg)

    def _publish_image(self):
        mode, now = self.camera, self.now()
        if mode is None:
            return
        if mode in ("good", "noise"):
            pixels = GOOD_RGB if mode == "good" else NOISE_RNG.integers(0, 256, (64, 64, 3), np.uint8)
            if self.transport == "raw":
                msg = Image(height=64, width=64, encoding="rgb8", step=192, data=pixels.tobytes())
            else:
                msg = CompressedImage(format="jpeg", data=GOOD_JPEG)
            msg.header.stamp = stamp_of(now)
            self.last_good_frame = now
        else:
            msg = mode(now)
            self.bad_stamps.add(ns_of(msg.header.stamp))
        if mode in ("good", "noise"):
            msg.header.frame_id = "front_camera"
        (self.raw_pub if isinstance(msg, Image) else self.comp_pub).publish(msg)

    def instruct(self, text=INSTRUCTION):
        self.instruction_pub.publish(String(data=text))

    def good(self):
        self.camera, self.joint_states, self.accept_fjt = "good", "good", True


# ------------------------------------------------------------------------------ the node under test
class PolicyNode:
    def __init__(self, group: str, index: int, extra=()):
        exe = Path(sys.prefix) / "lib" / "vla_ros" / "policy_node"
        cmd = [str(exe), "--ros-args", "--params-file", str(PARAMS), "-p", "autostart:=true",
               "-p", "output.mode:=forward_position", "-p", "model.preset:=tiny", "-p", "model.threads:=1"]
        for o in [*GROUPS[group], *extra]:
            cmd += ["-p", o]
        self.group = group
        self.proc = RosProcess(cmd, RESULTS / f"robustness_{index:02d}_{group}.log")

    def output(self) -> str:
        return self.proc.output()

    def alive(self) -> bool:
        return self.proc.alive()

    def stop(self):
        return self.proc.stop(signal.SIGINT, timeout=10.0)  # SIGKILL after 10 s

    def server_pid(self):
        pids = PID_RE.findall(self.output())
        return int(pids[-1]) if pids else None


def wait_until(pred, timeout: float, node: PolicyNode = None) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return True
        if node is not None and not node.alive():
            return False
        time.sleep(0.01)
    return bool(pred())


def wait_future(future, timeout: float):
    return future.result() if wait_until(future.done, timeout) else None


def commands_flow(robot, node, n=5, timeout=30.0) -> bool:
    c0 = robot.count()
    return wait_until(lambda: robot.count() >= c0 + n, timeout, node)


# ------------------------------------------------------------------------------ kinds
class Ctx:
    """What a kind's function sees."""

    def __init__(self, robot, node):
        self.robot, self.node = robot, node
        self.t0 = None
        self.marks = {}

    def begin(self):
        """The kind starts now: its time origin and the command count at its start."""
        self.t0 = time.monotonic()
        self.marks["start"] = self.robot.count()

    def window(self, seconds=WINDOW):
        """The injection window: measure the command count at its start, after the grace, at its end."""
        r = self.robot
        self.begin()
        if seconds > GRACE:
            time.sleep(GRACE)
            self.marks["grace"] = r.count()
            time.sleep(seconds - GRACE)
        else:
            time.sleep(seconds)
        self.marks["end"] = r.count()


def image_kind(make, transport="raw"):
    def run(ctx):
        ctx.robot.camera = make
        ctx.window()
        ctx.robot.camera = "good"
    run.transport = transport
    return run


def raw(h, w, enc="rgb8", step=None, data=None, offset=0.0, stamp_zero=False, fill=None, bigendian=0, frame_id=None):
    if data is None:
        ch = {"rgb8": 3, "bgr8": 3, "rgba8": 4, "bgra8": 4, "mono8": 1, "8UC1": 1, "16UC1": 2, "mono16": 2,
              "32FC1": 4, "bayer_rggb8": 1}.get(enc, 3)
        arr = np.full((h, w, ch), fill, np.uint8) if fill is not None else RNG.integers(0, 256, (h, w, ch), np.uint8)
        data = arr.tobytes()
        step = w * ch if step is None else step

    def make(now):
        msg = Image(height=h, width=w, encoding=enc, step=step if step is not None else w * 3, data=data,
                    is_bigendian=bigendian)
        msg.header.stamp = Time() if stamp_zero else stamp_of(now + offset)
        msg.header.frame_id = "front_camera" if frame_id is None else frame_id
        return msg
    return make


def compressed(fmt, data_fn):
    def make(now):
        msg = CompressedImage(format=fmt, data=data_fn())
        msg.header.stamp = stamp_of(now)
        msg.header.frame_id = "front_camera"
        return msg
    return make


def js_kind(transform):
    def run(ctx):
        ctx.robot.joint_states = transform
        ctx.window()
        ctx.robot.joint_states = "good"
    return run


def js_set(**changes):
    def f(msg):
        for k, v in changes.items():
            setattr(msg, k, v(msg) if callable(v) else v)
        return msg
    return f


def js_nan(msg):
    p = list(msg.position)
    p[2] = float("nan")
    msg.position = p
    return msg


def js_inf(msg):
    p = list(msg.position)
    p[3] = float("inf")
    msg.position = p
    return msg


def js_missing(msg):
    msg.name, msg.position = list(msg.name)[:-1], list(msg.position)[:-1]
    return msg


def js_extra(msg):
    msg.name = list(msg.name) + ["finger_joint1", "finger_joint2"]
    msg.position = list(msg.position) + [0.01, 0.01]
    return msg


def js_mismatch(msg):
    msg.position = list(msg.position)[:3]
    return msg


def js_reversed(msg):
    msg.name, msg.position = list(msg.name)[::-1], list(msg.position)[::-1]
    return msg


def js_stamp_zero(msg):
    msg.header.stamp = Time()
    return msg


def js_absurd(msg):
    p = list(msg.position)
    p[0] = 1e9  # finite, but no arm is there
    msg.position = p
    return msg


def js_past_limit(msg):
    p = list(msg.position)
    p[3] = UPPER[3] + 0.3
    msg.position = p
    return msg


def js_duplicate(msg):
    msg.name = list(msg.name) + [JOINTS[0]]
    msg.position = list(msg.position) + [2.5]
    return msg


def js_velocity_nan(msg):
    msg.velocity = [float("nan")] * len(msg.name)
    return msg


def js_many(msg):
    msg.name = list(msg.name) + [f"extra_joint_{i}" for i in range(10000)]
    msg.position = list(msg.position) + [0.0] * 10000
    return msg


def js_stamp_old(msg):
    msg.header.stamp = stamp_of(msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9 - 3600.0)
    return msg


def damaged_jpeg() -> bytes:
    """A JPEG with 300 bytes cut from its scan data: libjpeg decodes it (grey blocks) but warns
    "Corrupt JPEG data: premature end of data segment" (on stderr, where OpenCV lets it)."""
    smooth = cv2.GaussianBlur(GOOD_RGB, (5, 5), 2)
    data = bytearray(cv2.imencode(".jpg", smooth)[1].tobytes())
    cut = len(data) // 2
    del data[cut:cut + 300]
    return bytes(data)


DAMAGED_JPEG = damaged_jpeg()
GREY_JPEG = cv2.imencode(".jpg", GOOD_RGB[:, :, 0])[1].tobytes()
ALPHA_PNG = cv2.imencode(".png", np.dstack([GOOD_RGB, np.full((64, 64), 200, np.uint8)]))[1].tobytes()
PNG16 = cv2.imencode(".png", GOOD_RGB.astype(np.uint16) * 257)[1].tobytes()
GIF = b"GIF89a" + struct.pack("<HH", 64, 64) + bytes(64)


def instruction_kind(text):
    def run(ctx):
        ctx.begin()
        for _ in range(3):  # three times in the window: a person re-sending it
            ctx.robot.instruct(text)
            time.sleep(WINDOW / 3)
        ctx.marks["end"] = ctx.robot.count()
        ctx.robot.instruct(INSTRUCTION)
    return run


def goal_kind(instruction=INSTRUCTION, timeout=0.0, max_steps=0, expect_accept=False, cancel=False,
              expect_outcome=None):
    def run(ctx):
        r = ctx.robot
        if not r.execute.wait_for_server(timeout_sec=30):
            return {"error": "no ExecuteInstruction server"}
        goal = ExecuteInstruction.Goal(instruction=instruction, timeout=timeout, max_steps=max_steps)
        ctx.begin()
        handle = send_goal(r, goal)
        out = {"goal_answered": handle is not None}
        if handle is None:
            return out
        out["accepted"] = bool(handle.accepted)
        if cancel and handle.accepted:
            wait_future(handle.cancel_goal_async(), 10.0)
        if handle.accepted:
            res = wait_future(handle.get_result_async(), 20.0)
            out["outcome"] = None if res is None else int(res.result.outcome)
            out["message"] = None if res is None else res.result.message
        out["ok"] = out["accepted"] == expect_accept
        if cancel:
            out["ok"] = out["ok"] and out.get("outcome") == ExecuteInstruction.Result.OUTCOME_CANCELED
        elif max_steps:
            out["ok"] = out["ok"] and out.get("outcome") == ExecuteInstruction.Result.OUTCOME_MAX_STEPS
        if expect_outcome is not None:
            out["ok"] = out["ok"] and out.get("outcome") == expect_outcome
        time.sleep(0.3)  # let the node's hold (if any) begin before restoring
        ctx.marks["end"] = r.count()
        r.instruct(INSTRUCTION)  # the same text also ends an "ended goal" hold
        return out
    return run


def send_goal(robot, goal):
    for _ in range(3):  # a goal response can be lost right after discovery (ros2/rclpy#1123)
        handle = wait_future(robot.execute.send_goal_async(goal), 10.0)
        if handle is not None:
            return handle
    return None


def kind_goal_preempted(ctx):
    """A second goal while the first runs: the first ends PREEMPTED, the second runs (then is canceled)."""
    r = ctx.robot
    if not r.execute.wait_for_server(timeout_sec=30):
        return {"ok": False, "error": "no ExecuteInstruction server"}
    ctx.begin()
    first = send_goal(r, ExecuteInstruction.Goal(instruction=INSTRUCTION))
    if first is None or not first.accepted:
        return {"ok": False, "error": "first goal not accepted"}
    commands_flow(r, ctx.node, 3, 20.0)
    second = send_goal(r, ExecuteInstruction.Goal(instruction="push the red cube left"))
    res1 = wait_future(first.get_result_async(), 15.0)
    kept = commands_flow(r, ctx.node, 5, 20.0)  # the second goal commands
    if second is not None and second.accepted:
        wait_future(second.cancel_goal_async(), 10.0)
        wait_future(second.get_result_async(), 15.0)
    ctx.marks["end"] = r.count()
    r.instruct(INSTRUCTION)
    outcome = None if res1 is None else int(res1.result.outcome)
    return {"first_outcome": outcome, "second_accepted": bool(second and second.accepted), "second_commanded": kept,
            "ok": outcome == ExecuteInstruction.Result.OUTCOME_PREEMPTED and bool(second and second.accepted) and kept}


def kind_signal_mid_goal(sig):
    """SIGINT / SIGTERM while a goal commands the arm: the goal is answered ABORTED, commands stop,
    the node and its policy server exit (code 0) within seconds, no traceback."""
    def run(ctx):
        r, node = ctx.robot, ctx.node
        if not r.execute.wait_for_server(timeout_sec=30):
            return {"ok": False, "error": "no ExecuteInstruction server"}
        handle = send_goal(r, ExecuteInstruction.Goal(instruction=INSTRUCTION))
        if handle is None or not handle.accepted:
            return {"ok": False, "error": "goal not accepted"}
        result = handle.get_result_async()
        commands_flow(r, node, 5, 20.0)
        server = node.server_pid()
        ctx.begin()
        node.proc.proc.send_signal(sig)  # the node we started, by its pid
        res = wait_future(result, 15.0)
        exited = wait_until(lambda: not node.alive(), 20.0)
        exit_s = time.monotonic() - ctx.t0
        time.sleep(0.2)  # anything still in flight arrives
        ctx.marks["end"] = r.count()
        server_gone = server is not None and wait_until(lambda: not pid_running(server), 10.0)
        outcome = None if res is None else int(res.result.outcome)
        rc = node.proc.proc.returncode
        return {"outcome": outcome, "message": None if res is None else res.result.message, "exit_code": rc,
                "exit_s": round(exit_s, 2), "server_gone": server_gone, "ends_node": True,
                "ok": (outcome == ExecuteInstruction.Result.OUTCOME_ABORTED and exited and rc == 0 and server_gone)}
    return run


def pid_running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return False


def kind_twin_fjt_server(ctx):
    """A second FollowJointTrajectory server under the same name (a second controller manager, a
    stale simulator): both would run every goal; the node sends none while there are two."""
    r, node = ctx.robot, ctx.node
    mark = len(node.output())
    ctx.begin()
    twin = FjtServer(r, "robustness_fjt_twin")
    try:
        # Goals sent before the node has discovered the twin reach both: judge from the moment it says so.
        seen = wait_until(lambda: "FollowJointTrajectory servers answer" in node.output()[mark:], 15.0, node)
        noticed_s = time.monotonic() - ctx.t0
        time.sleep(0.3)  # a goal sent just before may still be answered
        ctx.marks["grace"] = r.count()
        time.sleep(2.0)
        ctx.marks["end"] = r.count()
    finally:
        twin.close()
    return {"noticed_after_s": round(noticed_s, 2), "ok": seen}


def last_hold_time(text: str, after: float):
    """ROS time (s) of the first 'holding' line logged after `after` (s, ROS time)."""
    for ts, body in LINE_TS.findall(text):
        if float(ts) >= after and body.startswith(("holding the arm", "holding:")):
            return float(ts)
    return None


def kind_camera_stops(ctx):
    r = ctx.robot
    r.camera = None
    ctx.window()
    last = r.last_good_frame
    r.camera = "good"
    t_hold = last_hold_time(ctx.node.output(), last)
    latency = None if t_hold is None else t_hold - last
    bound = MAX_AGE + 1 / RATE + 0.02
    return {"hold_after_s": latency, "bound_s": bound, "ok": latency is not None and latency <= bound}


def kind_joint_states_stop(ctx):
    r = ctx.robot
    t_stop = r.now()
    r.joint_states = None
    ctx.window()
    r.joint_states = "good"
    t_hold = last_hold_time(ctx.node.output(), t_stop)
    latency = None if t_hold is None else t_hold - t_stop
    bound = JS_TIMEOUT + 1 / RATE + 0.04  # the last message may be up to 20 ms older
    return {"hold_after_s": latency, "bound_s": bound, "ok": latency is not None and latency <= bound}


def kind_estop(ctx):
    r = ctx.robot
    if not r.estop.wait_for_service(timeout_sec=10):
        return {"ok": False, "error": "no estop service"}
    ctx.begin()
    ok = wait_future(r.estop.call_async(Trigger.Request()), 10.0)
    time.sleep(GRACE)
    ctx.marks["grace"] = r.count()
    time.sleep(WINDOW - GRACE)
    ctx.marks["end"] = r.count()
    done = wait_future(r.reset.call_async(Trigger.Request()), 10.0)
    return {"ok": bool(ok and ok.success and done and done.success)}


def change(ctx, tid):
    req = ChangeState.Request(transition=Transition(id=tid))
    res = wait_future(ctx.robot.change_state.call_async(req), 15.0)
    return None if res is None else bool(res.success)


def kind_lifecycle_cycles(n):
    def run(ctx):
        return lifecycle_cycles(ctx, n)
    return run


def lifecycle_cycles(ctx, n):
    r = ctx.robot
    if not r.change_state.wait_for_service(timeout_sec=10):
        return {"ok": False, "error": "no change_state service"}
    answers, quiet = [], []
    ctx.begin()
    for _ in range(n):
        answers.append(change(ctx, Transition.TRANSITION_DEACTIVATE))
        time.sleep(0.4)
        c = r.count()
        time.sleep(0.3)
        quiet.append(r.count() == c)
        answers.append(change(ctx, Transition.TRANSITION_ACTIVATE))
        quiet.append(commands_flow(r, ctx.node, 3, 20.0))  # commands again after each activation
    return {"answers": answers, "ok": all(a is True for a in answers), "held_each": all(quiet)}


def kind_second_deactivate(ctx):
    r = ctx.robot
    if not r.change_state.wait_for_service(timeout_sec=10):
        return {"ok": False, "error": "no change_state service"}
    ctx.begin()
    first = change(ctx, Transition.TRANSITION_DEACTIVATE)
    second = change(ctx, Transition.TRANSITION_DEACTIVATE)
    time.sleep(GRACE)
    ctx.marks["grace"] = r.count()
    time.sleep(0.5)
    ctx.marks["end"] = r.count()
    again = change(ctx, Transition.TRANSITION_ACTIVATE)
    return {"first": first, "second": second, "activate": again, "ok": first is True and second is False and again}


def kind_kill_policy_server(ctx):
    pid = ctx.node.server_pid()
    if pid is None:
        return {"ok": False, "error": "no 'policy server pid N' line"}
    ctx.begin()
    os.kill(pid, signal.SIGKILL)  # the node's own child: its pid is in the node's log
    time.sleep(GRACE)
    ctx.marks["grace"] = ctx.robot.count()
    # while the server restarts (model load) the arm must hold
    wait_until(lambda: ctx.node.server_pid() not in (None, pid), 60.0, ctx.node)
    ctx.marks["end"] = ctx.robot.count()
    new = ctx.node.server_pid()
    # Commands may resume as soon as the new server answers, so the 'end' mark is taken when the
    # restart is logged: anything before that cannot come from the dead server.
    return {"killed_pid": pid, "new_pid": new, "ok": new not in (None, pid)}


def kind_fjt_missing(ctx):
    r = ctx.robot
    r.fjt.close()
    ctx.window()
    r.fjt = FjtServer(r)
    return {}


def kind_fjt_rejected(ctx):
    r = ctx.robot
    r.accept_fjt = False
    ctx.window()
    r.accept_fjt = True
    return {}


def K(name, group, expect, run, needle=None, quick=False, stale=False, max_lines=20):
    """A kind: expect is 'hold' (no commands from the bad input), 'valid' (keeps commanding) or 'any'.

    needle: a regular expression that the node's new log lines must contain (the line naming the
    problem); None for valid input. stale: the frames are accepted but too old (the watchdog holds):
    chunks computed from them are reported (chunks_from_bad_frames) but only the commands decide `held`.
    """
    return dict(name=name, group=group, expect=expect, run=run, needle=needle, bad=needle is not None,
                quick=quick, stale=stale, max_lines=max_lines)


LONG = ("push the red cube left " * 4400)[:100000]  # 100000 characters
KINDS = [
    # raw frames
    K("raw: data shorter than step*height", "raw", "hold", image_kind(raw(64, 64, data=b"\x00" * 1000, step=192)),
      needle=r"needs \d+ bytes", quick=True),
    K("raw: zero width", "raw", "hold", image_kind(raw(64, 0, data=b"", step=0)), needle=r"smaller than 16 pixels"),
    K("raw: zero height", "raw", "hold", image_kind(raw(0, 64, data=b"", step=192)), needle=r"smaller than 16 pixels"),
    K("raw: 1x1", "raw", "hold", image_kind(raw(1, 1)), needle=r"smaller than 16 pixels"),
    K("raw: stamp zero", "raw", "hold", image_kind(raw(64, 64, stamp_zero=True)), quick=True,
      needle=r"refused a frame stamped"),
    K("raw: 1x4000", "raw", "hold", image_kind(raw(1, 4000)), quick=True, needle=r"smaller than 16 pixels"),
    K("raw: 10000x10000 header, 10 bytes", "raw", "hold", image_kind(raw(10000, 10000, data=b"\x00" * 10, step=30000)),
      quick=True, needle=r"exceeds the limit"),
    K("raw: unknown encoding 'yuv9'", "raw", "hold",
      image_kind(raw(64, 64, enc="yuv9", data=GOOD_RGB.tobytes(), step=192)),
      needle=r"unsupported image encoding"),
    K("raw: 16UC1", "raw", "hold", image_kind(raw(64, 64, enc="16UC1")), needle=r"16-bit"),
    K("raw: mono16", "raw", "hold", image_kind(raw(64, 64, enc="mono16")), needle=r"16-bit"),
    K("raw: stamp 1 h old", "raw", "hold", image_kind(raw(64, 64, offset=-3600.0)), needle=r"refused a frame stamped"),
    K("raw: rgba8 (valid)", "raw", "valid", image_kind(raw(64, 64, enc="rgba8")), quick=True),
    K("raw: bgra8 (valid)", "raw", "valid", image_kind(raw(64, 64, enc="bgra8"))),
    K("raw: mono8 (valid)", "raw", "valid", image_kind(raw(64, 64, enc="mono8"))),
    K("raw: bgr8 (valid)", "raw", "valid", image_kind(raw(64, 64, enc="bgr8"))),
    K("raw: stamp 1 h ahead", "raw", "hold", image_kind(raw(64, 64, offset=3600.0)), needle=r"refused a frame stamped"),
    K("raw: step smaller than width*3", "raw", "hold", image_kind(raw(64, 64, data=GOOD_RGB.tobytes(), step=100)),
      needle=r"needs step"),
    K("raw: stamp 0.8 s old (stale)", "raw", "hold", image_kind(raw(64, 64, offset=-0.8)), quick=True,
      stale=True, needle=r"stale input \(camera"),
    K("raw: all black (valid)", "raw", "valid", image_kind(raw(64, 64, fill=0))),
    K("raw: all white (valid)", "raw", "valid", image_kind(raw(64, 64, fill=255))),
    K("raw: empty encoding", "raw", "hold", image_kind(raw(64, 64, enc="", data=GOOD_RGB.tobytes(), step=192)),
      needle=r"unsupported image encoding"),
    K("raw: 32FC1 (float depth)", "raw", "hold", image_kind(raw(64, 64, enc="32FC1")),
      needle=r"unsupported image encoding"),
    K("raw: bayer_rggb8", "raw", "hold", image_kind(raw(64, 64, enc="bayer_rggb8")),
      needle=r"unsupported image encoding"),
    K("raw: 8UC1 (valid)", "raw", "valid", image_kind(raw(64, 64, enc="8UC1"))),
    K("raw: data longer than step*height", "raw", "hold",
      image_kind(raw(64, 64, data=GOOD_RGB.tobytes() + bytes(500), step=192)), needle=r"needs \d+ bytes"),
    K("raw: 4097 wide, over cameras.max_width", "raw", "hold", image_kind(raw(16, 4097)),
      needle=r"exceeds the limit"),
    K("raw: 4294967295x4294967295 header, 10 bytes", "raw", "hold",
      image_kind(raw(2**32 - 1, 2**32 - 1, data=bytes(10), step=2**32 - 1)), needle=r"exceeds the limit"),
    K("raw: is_bigendian 1, 8-bit (valid)", "raw", "valid", image_kind(raw(64, 64, bigendian=1))),
    K("raw: empty frame_id (valid)", "raw", "valid", image_kind(raw(64, 64, frame_id=""))),
    K("raw: mono8 with row padding (valid)", "raw", "valid",
      image_kind(raw(64, 64, enc="mono8", data=np.pad(GOOD_RGB[:, :, 0], ((0, 0), (0, 16))).tobytes(), step=80))),
    # joint states
    K("joint_states: NaN", "raw", "hold", js_kind(js_nan), quick=True, needle=r"non-finite"),
    K("joint_states: inf", "raw", "hold", js_kind(js_inf), needle=r"non-finite"),
    K("joint_states: a joint missing", "raw", "hold", js_kind(js_missing), needle=r"lacks configured joints"),
    K("joint_states: extra unknown joints (valid)", "raw", "valid", js_kind(js_extra)),
    K("joint_states: 7 names, 3 positions", "raw", "hold", js_kind(js_mismatch), quick=True,
      needle=r"7 names but 3 positions"),
    K("joint_states: empty message", "raw", "hold", js_kind(lambda m: JointState(header=m.header)),
      needle=r"lacks configured joints"),
    K("joint_states: stamp zero", "raw", "any", js_kind(js_stamp_zero)),
    K("joint_states: names reversed (valid)", "raw", "valid", js_kind(js_reversed)),
    K("joint_states: a position of 1e9", "raw", "hold", js_kind(js_absurd), needle=r"further than joint_states.limit"),
    K("joint_states: 0.3 rad past a limit", "raw", "hold", js_kind(js_past_limit),
      needle=r"further than joint_states.limit"),
    K("joint_states: a joint named twice", "raw", "hold", js_kind(js_duplicate), needle=r"more than once"),
    K("joint_states: velocities NaN, positions fine (valid)", "raw", "valid", js_kind(js_velocity_nan)),
    K("joint_states: 10007 joints (valid)", "raw", "valid", js_kind(js_many)),
    K("joint_states: stamp 1 h old", "raw", "any", js_kind(js_stamp_old)),
    # instruction topic (a refused one keeps the previous instruction running)
    K("instruction: empty", "raw", "valid", instruction_kind(""), needle=r"it is empty"),
    K("instruction: whitespace", "raw", "valid", instruction_kind(" \t\n  "), needle=r"it is empty"),
    K("instruction: 100000 characters", "raw", "valid", instruction_kind(LONG), quick=True,
      needle=r"it has 100000 characters"),
    K("instruction: unicode/emoji (valid)", "raw", "valid", instruction_kind("schieb den Würfel 🟥 nach links ←")),
    K("instruction: control characters", "raw", "valid", instruction_kind("touch\x1b[31m the\x07 red\x08 cube\r"),
      needle=r"it contains control characters"),
    K("instruction: a newline inside (valid)", "raw", "valid", instruction_kind("touch the\nred cube")),
    K("instruction: zero-width and right-to-left marks (valid)", "raw", "valid",
      instruction_kind("touch\u200b the \u202ered\u202c cube")),
    # ExecuteInstruction goals
    K("goal: empty instruction (rejected)", "raw", "valid", goal_kind(instruction=""),
      needle=r"goal rejected: the instruction"),
    K("goal: timeout -5 (rejected)", "raw", "valid", goal_kind(timeout=-5.0), quick=True,
      needle=r"goal rejected: timeout"),
    K("goal: timeout NaN (rejected)", "raw", "valid", goal_kind(timeout=float("nan")),
      needle=r"goal rejected: timeout"),
    K("goal: timeout inf (rejected)", "raw", "valid", goal_kind(timeout=float("inf")),
      needle=r"goal rejected: timeout"),
    K("goal: max_steps 1 (valid)", "raw", "any", goal_kind(max_steps=1, expect_accept=True)),
    K("goal: cancel immediately", "raw", "any", goal_kind(expect_accept=True, cancel=True)),
    K("goal: 100000-character instruction (rejected)", "raw", "valid", goal_kind(instruction=LONG),
      needle=r"goal rejected: the instruction has 100000 characters"),
    K("goal: timeout 0.3 s (times out)", "raw", "any",
      goal_kind(timeout=0.3, expect_accept=True, expect_outcome=ExecuteInstruction.Result.OUTCOME_TIMEOUT)),
    K("goal: max_steps 2147483647, canceled", "raw", "any",
      goal_kind(max_steps=2**31 - 1, expect_accept=True, cancel=True)),
    K("goal: a second goal preempts the first", "raw", "any", kind_goal_preempted),
    # faults
    K("fault: camera stops", "raw", "hold", kind_camera_stops, quick=True, needle=r"stale input \(camera"),
    K("fault: joint states stop", "raw", "hold", kind_joint_states_stop, needle=r"stale input \(joint_states"),
    K("fault: e-stop during motion, reset", "raw", "hold", kind_estop, quick=True, needle=r"E-STOP latched"),
    K("fault: 20 deactivate/activate cycles", "raw", "any", kind_lifecycle_cycles(20), max_lines=240),
    K("fault: second deactivate (refused)", "raw", "hold", kind_second_deactivate,
      needle=r"refused in state 'inactive'"),
    K("fault: SIGKILL of the policy server", "raw", "hold", kind_kill_policy_server, quick=True,
      needle=r"exited with code -9"),
    K("fault: SIGINT mid-goal", "raw", "hold", kind_signal_mid_goal(signal.SIGINT), quick=True,
      needle=r"shutting down: holding the arm"),
    K("fault: SIGTERM mid-goal", "raw", "hold", kind_signal_mid_goal(signal.SIGTERM),
      needle=r"shutting down: holding the arm"),
    # compressed frames
    K("compressed: truncated JPEG", "compressed", "hold",
      image_kind(compressed("jpeg", lambda: GOOD_JPEG[: len(GOOD_JPEG) // 2]), "compressed"), needle=r"truncated JPEG"),
    K("compressed: PNG declaring 20000x20000", "compressed", "hold",
      image_kind(compressed("png", lambda: png_header_only(20000, 20000)), "compressed"), quick=True,
      needle=r"exceeds the limit"),
    K("compressed: random bytes", "compressed", "hold",
      image_kind(compressed("jpeg", lambda: RNG.bytes(5000)), "compressed"), needle=r"neither JPEG nor PNG"),
    K("compressed: empty data", "compressed", "hold", image_kind(compressed("jpeg", lambda: b""), "compressed"),
      needle=r"zero-size compressed image"),
    K("compressed: PNG data, format 'jpeg'", "compressed", "any",
      image_kind(compressed("jpeg", lambda: GOOD_PNG), "compressed")),
    K("compressed: 6000x6000 JPEG", "compressed", "hold", image_kind(compressed("jpeg", big_jpeg), "compressed"),
      needle=r"6000x6000 image exceeds the limit"),
    K("compressed: damaged JPEG (libjpeg 'Corrupt JPEG data')", "compressed", "hold",
      image_kind(compressed("jpeg", lambda: DAMAGED_JPEG), "compressed"), quick=True,
      needle=r"Corrupt JPEG data: premature end of data segment"),
    K("compressed: JPEG with format '' (valid)", "compressed", "valid",
      image_kind(compressed("", lambda: GOOD_JPEG), "compressed")),
    K("compressed: compressedDepth PNG", "compressed", "hold",
      image_kind(compressed("16UC1; compressedDepth png", lambda: GOOD_PNG), "compressed"),
      needle=r"compressedDepth images are not supported"),
    K("compressed: 16-bit PNG", "compressed", "any", image_kind(compressed("png", lambda: PNG16), "compressed")),
    K("compressed: greyscale JPEG (valid)", "compressed", "valid",
      image_kind(compressed("jpeg", lambda: GREY_JPEG), "compressed")),
    K("compressed: PNG with alpha (valid)", "compressed", "valid",
      image_kind(compressed("png", lambda: ALPHA_PNG), "compressed")),
    K("compressed: GIF", "compressed", "hold", image_kind(compressed("gif", lambda: GIF), "compressed"),
      needle=r"neither JPEG nor PNG"),
    K("compressed: JPEG start marker only", "compressed", "hold",
      image_kind(compressed("jpeg", lambda: b"\xff\xd8\xff"), "compressed"), needle=r"truncated or unreadable JPEG header"),
    # follow_joint_trajectory output
    K("fjt: server missing", "fjt", "any", kind_fjt_missing, needle=r"not available"),
    K("fjt: goals rejected", "fjt", "any", kind_fjt_rejected, needle=r"goal rejected by the controller"),
    K("fjt: a second server under the same name", "fjt", "hold", kind_twin_fjt_server,
      needle=r"2 FollowJointTrajectory servers answer"),
]


# ------------------------------------------------------------------------------ the campaign
def within_limits(commands, prev):
    """Check each command (and each step from the one before); return (ok, first problem)."""
    for t, pos in commands:
        if pos.shape != (7,) or not np.all(np.isfinite(pos)):
            return False, f"bad command {pos.tolist()}"
        if np.any(pos < LOWER - 1e-9) or np.any(pos > UPPER + 1e-9):
            return False, f"outside position limits {pos.round(4).tolist()}"
        if prev is not None:
            gap = t - prev[0]
            ticks = 1 if gap > 0.25 else max(1, round(gap * RATE))  # after a hold the arm is at rest
            step = np.abs(pos - prev[1])
            if np.any(step > ticks * STEP_BOUND):
                return False, f"step {step.max():.4f} rad over {ticks} tick(s)"
        prev = (t, pos)
    return True, None


def fjt_within_limits(goals):
    for _, pts in goals:
        if pts.ndim != 2 or pts.shape[1] != 7 or not np.all(np.isfinite(pts)):
            return False, "bad trajectory"
        if np.any(pts < LOWER - 1e-9) or np.any(pts > UPPER + 1e-9):
            return False, "trajectory point outside position limits"
        if len(pts) > 1 and np.any(np.abs(np.diff(pts, axis=0)) > STEP_BOUND):
            return False, "trajectory step over joints.max_step"
    return True, None


class Campaign:
    def __init__(self, robot):
        self.robot = robot
        self.node = None
        self.starts = 0
        self.prev_cmd = None

    def ensure(self, group) -> bool:
        """A node of this group that is commanding; (re)start one when needed."""
        r = self.robot
        r.good()
        r.transport = "compressed" if group == "compressed" else "raw"
        r.output = "fjt" if group == "fjt" else "fwd"
        if self.node is not None and (self.node.group != group or not self.node.alive()):
            self.node.stop()
            self.node = None
        for _ in range(2):
            if self.node is None:
                self.starts += 1
                self.node = PolicyNode(group, self.starts)
                r.instruct(INSTRUCTION)
            if commands_flow(r, self.node, 5, 90.0):
                return True
            self.node.stop()
            self.node = None
        return False

    def run(self, kind) -> dict:
        r = self.robot
        row = {"kind": kind["name"], "group": kind["group"], "expect": kind["expect"]}
        t_start = time.monotonic()
        if not self.ensure(kind["group"]):
            row.update(alive=False, clear=False, held="n/a", recovered=False, limits=True,
                       detail="could not get a commanding node")
            return row
        node = self.node
        r.instruct(INSTRUCTION)
        mark = len(node.output())
        n_cmd = r.count()
        n_fjt = len(r.fjt_points)
        with r.lock:
            r.bad_stamps.clear()
            r.chunk_stamps.clear()
        ctx = Ctx(r, node)
        try:
            extra = kind["run"](ctx) or {}
        except Exception as exc:  # a failure of this script, not of the node
            extra = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        r.good()
        ends = bool(extra.pop("ends_node", False))  # a signal kind: the node is meant to exit (cleanly)
        if ends:
            code = node.proc.proc.returncode
            alive, alive_ok, recovered = (f"exited {code}" if code is not None else "NOT EXITED"), code == 0, "n/a"
        else:
            recovered = node.alive() and commands_flow(r, node, 5, 30.0)
            alive = alive_ok = node.alive()
        with r.lock:
            from_bad = sorted(set(r.chunk_stamps) & r.bad_stamps)
            cmds = list(r.commands[n_cmd:])
            fjts = list(r.fjt_points[n_fjt:])
        m = ctx.marks
        if kind["stale"]:
            from_bad_counts = []  # reported, not judged
        else:
            from_bad_counts = from_bad
        if kind["expect"] == "hold" and "grace" in m:
            held = "yes" if (m["end"] == m["grace"] and not from_bad_counts) else "NO"
        elif kind["expect"] == "hold" and "end" in m:
            held = "yes" if (m["end"] - m["start"] <= 12 and not from_bad_counts) else "NO"  # a deceleration at most
        elif kind["expect"] == "valid" and "end" in m:
            held = "kept" if m["end"] - m.get("grace", m["start"]) >= 5 else "STOPPED"
        else:
            held = "n/a"
        log = node.output()[mark:]
        warn_lines = [ln for ln in log.splitlines() if WARN_RE.match(ln)]
        named = kind["needle"] is None or re.search(kind["needle"], log) is not None
        control = sorted({f"{ord(ch):#04x}" for ch in log if ord(ch) < 32 and ch not in "\n\t"})
        clear = ("Traceback" not in log and len(warn_lines) <= 4 and len(log.splitlines()) <= kind["max_lines"]
                 and named and not control)
        if r.output == "fjt":
            ok, why = fjt_within_limits(fjts)
        else:
            ok, why = within_limits(cmds, self.prev_cmd)
            if cmds:
                self.prev_cmd = cmds[-1]
        if "held_each" in extra:  # lifecycle cycles: quiet while inactive, commanding after each activate
            held = "yes" if extra["held_each"] else "NO"
        if extra.get("ok") is False:
            held = held if held != "n/a" else "NO"
        row.update(alive=alive, clear=clear, held=held, recovered=recovered, limits=ok,
                   limits_detail=why, commands=len(cmds) if r.output == "fwd" else len(fjts),
                   marks=m, chunks_from_bad_frames=len(from_bad), warn_lines=warn_lines[:6], problem_named=named,
                   control_chars_in_log=control,
                   log_lines=len(log.splitlines()), traceback="Traceback" in log, seconds=time.monotonic() - t_start,
                   **{k: v for k, v in extra.items()})
        if not alive_ok:
            row["node_log_tail"] = node.output()[-3000:]
        row["pass"] = bool(alive_ok and clear and recovered and ok and held in ("yes", "kept", "n/a")
                           and extra.get("ok", True) is not False)
        if ends:
            node.stop()
            self.node = None
        return row


# ------------------------------------------------------------------------------ the soak with a wild policy
WILD_INSTRUCTIONS = ["touch the red cube", "push the blue cube to the left", "lift the green cube"]


def make_wild_checkpoint(path: Path) -> Path:
    """A real checkpoint (safetensors + JSON) of the tiny architecture, made deliberately wild: its
    action head's weights are scaled 10x and its action statistics are 3 rad wide around the middle
    of the joint ranges, so it asks for targets up to ~10 rad outside the limits and for jumps of
    metres per tick that change with every camera frame. Seeded: the same weights every run."""
    import torch

    from vla_ros.model.checkpoint import save_policy
    from vla_ros.model.config import load_preset
    from vla_ros.model.interface import RobotInterface
    from vla_ros.model.normalization import FeatureStats
    from vla_ros.model.policy import build_policy

    torch.manual_seed(0)
    cfg = load_preset("tiny", normalization_mode="mean_std")
    policy = build_policy(cfg, RobotInterface(action_names=JOINTS, camera_names=["front"], state_names=JOINTS))

    def stats(mean, std):
        lo, hi = (np.array(mean) - 3 * np.array(std)).tolist(), (np.array(mean) + 3 * np.array(std)).tolist()
        return FeatureStats(mean=list(mean), std=list(std), min=lo, max=hi, q01=lo, q99=hi, count=1)
    policy.set_normalization_stats({"action": stats(((LOWER + UPPER) / 2).tolist(), [3.0] * 7),
                                    "state": stats(HOME, [1.0] * 7)})
    with torch.no_grad():
        for name, param in policy.named_parameters():
            if name.startswith("head.") and name.endswith(".weight") and ".ln." not in name:
                param.mul_(10.0)
    save_policy(policy, path)
    return path


def proc_sample(pid):
    """(RSS kB, threads, open fds) of a process, or None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    rss = int(re.search(r"VmRSS:\s+(\d+)", status).group(1))
    threads = int(re.search(r"Threads:\s+(\d+)", status).group(1))
    return rss, threads, fds


def strict_limits(positions: np.ndarray, rate: float) -> dict:
    """Position, velocity and acceleration limits of a command sequence, tick by tick.

    Commands are checked in the order they were sent, as consecutive control ticks: the node's
    safety filter works per tick (a late wake-up skips ticks, it does not stretch one), a hold
    brakes tick by tick to a repeated command, and a resume from rest starts from that command.
    velocity: |q[k] - q[k-1]| <= min(max_velocity / rate, joints.max_step);
    acceleration: |(q[k] - q[k-1]) - (q[k-1] - q[k-2])| <= max_acceleration / rate^2."""
    dt = 1.0 / rate
    q = np.asarray(positions, dtype=float)
    out = {"commands": int(len(q))}
    if len(q) == 0:
        return {**out, "violations": 0}
    finite = np.all(np.isfinite(q), axis=1)
    pos = ~finite | np.any(q < LOWER - 1e-9, axis=1) | np.any(q > UPPER + 1e-9, axis=1)
    dq = np.diff(q, axis=0)
    vel = np.any(np.abs(dq) > np.minimum(MAX_STEP, MAX_VEL * dt) + 1e-9, axis=1)
    acc_excess = np.abs(np.diff(dq, axis=0)) - MAX_ACC * dt * dt
    acc = np.any(acc_excess > 1e-9, axis=1)
    out.update(position_violations=int(pos.sum()), velocity_violations=int(vel.sum()),
               acceleration_violations=int(acc.sum()),
               max_velocity_used=float(np.max(np.abs(dq) / np.minimum(MAX_STEP, MAX_VEL * dt))) if len(dq) else 0.0,
               max_acceleration_used=float(np.max(np.abs(np.diff(dq, axis=0)) / (MAX_ACC * dt * dt)))
               if len(dq) > 1 else 0.0)
    out["violations"] = out["position_violations"] + out["velocity_violations"] + out["acceleration_violations"]
    if acc.any():
        k = int(np.flatnonzero(acc)[0])
        out["first_acceleration_violation"] = {"index": k + 2, "excess_rad": float(acc_excess[k].max())}
    return out


def soak(robot, seconds: float, index: int, sample_every: float = 5.0) -> dict:
    """The node drives the robot stand-in with the wild policy for `seconds`: a new random camera frame
    every 50 ms, the instruction changed every 30 s, a 5 s ExecuteInstruction goal every 60 s. RSS,
    threads and open files of the node and its policy server are sampled every `sample_every` s."""
    import shutil
    import tempfile

    ckpt = Path(tempfile.mkdtemp(prefix="vla_ros_wild_")) / "wild"
    make_wild_checkpoint(ckpt)
    r = robot
    r.good()
    r.transport, r.output, r.camera = "raw", "fwd", "noise"
    node = PolicyNode("wild", index, extra=[f"model.checkpoint:={ckpt}"])
    out = {"seconds": seconds}
    try:
        r.instruct(WILD_INSTRUCTIONS[0])
        if not commands_flow(r, node, 5, 90.0):
            return {**out, "error": "the node with the wild checkpoint never commanded",
                    "node_log_tail": node.output()[-3000:], "pass": False}
        n0 = r.count()
        start = time.monotonic()
        samples, goals = [], []
        goal, k = None, 0
        next_sample, next_instruction, next_goal = start, start + 30.0, start + 45.0
        while (now := time.monotonic()) < start + seconds and node.alive():
            if now >= next_sample:
                samples.append({"t": round(now - start, 1), "node": proc_sample(node.proc.proc.pid),
                                "server": proc_sample(node.server_pid()) if node.server_pid() else None,
                                "commands": r.count() - n0})
                next_sample += sample_every
            if now >= next_instruction:
                k += 1
                r.instruct(WILD_INSTRUCTIONS[k % len(WILD_INSTRUCTIONS)])
                next_instruction += 30.0
            if now >= next_goal and goal is None:
                goal = {"sent": now - start, "future": r.execute.send_goal_async(
                    ExecuteInstruction.Goal(instruction=WILD_INSTRUCTIONS[(k + 1) % 3], timeout=5.0))}
                next_goal += 60.0
            if goal is not None and goal["future"].done():
                handle = goal["future"].result()
                if "result" not in goal:
                    goal["accepted"] = bool(handle.accepted)
                    goal["result"] = handle.get_result_async() if handle.accepted else None
                if goal["result"] is None or goal["result"].done():
                    res = goal["result"].result() if goal["result"] is not None else None
                    goals.append({"sent_s": round(goal["sent"], 1), "accepted": goal["accepted"],
                                  "outcome": None if res is None else int(res.result.outcome)})
                    goal = None
                    r.instruct(WILD_INSTRUCTIONS[k % len(WILD_INSTRUCTIONS)])  # a finished goal holds until then
            time.sleep(0.05)
        alive = node.alive()
        with r.lock:
            cmds = [c for _, c in r.commands[n0:]]
        elapsed = time.monotonic() - start
        out.update(alive=alive, elapsed=round(elapsed, 1), samples=samples, goals=goals)
        out["limits"] = strict_limits(np.array(cmds), RATE)
        log = node.output()
        out["traceback"] = "Traceback" in log
        out["log_lines"] = len(log.splitlines())
        out.update(growth(samples, warmup=min(60.0, seconds / 5)))
        code = node.stop()
        out["exit_code"] = code
        judged_growth = seconds >= 300
        out["pass"] = bool(alive and code == 0 and not out["traceback"] and out["limits"]["violations"] == 0
                           and (not judged_growth or (out.get("node_rss_growth_pct", 100) < 5
                                                      and out.get("server_rss_growth_pct", 100) < 5)))
        return out
    finally:
        if node.alive():
            node.stop()
        r.good()
        shutil.rmtree(ckpt.parent, ignore_errors=True)


def growth(samples, warmup: float) -> dict:
    """RSS growth after warm-up: the mean of the last fifth of the samples over the mean of the first
    fifth after `warmup` seconds, in percent; threads and open files as min..max."""
    out = {}
    for who in ("node", "server"):
        rows = [(s["t"], *s[who]) for s in samples if s[who] is not None]
        after = [row for row in rows if row[0] >= warmup]
        if len(after) < 5:
            continue
        n = max(1, len(after) // 5)
        first = np.mean([row[1] for row in after[:n]])
        last = np.mean([row[1] for row in after[-n:]])
        out[f"{who}_rss_mb"] = [round(float(first) / 1024, 1), round(float(last) / 1024, 1)]
        out[f"{who}_rss_growth_pct"] = round(float(100.0 * (last - first) / first), 2)
        out[f"{who}_threads"] = [min(row[2] for row in rows), max(row[2] for row in rows)]
        out[f"{who}_fds"] = [min(row[3] for row in rows), max(row[3] for row in rows)]
    return out


def mark(v):
    return v if isinstance(v, str) else ("yes" if v else "NO")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="a subset of about 12 kinds (under 2 minutes)")
    p.add_argument("--kinds", nargs="+", help="only kinds whose name contains one of these strings")
    p.add_argument("--soak", type=float, default=None,
                   help="seconds of the soak with the wild policy (default 600; 20 with --quick; 0: none)")
    p.add_argument("--out", default=str(RESULTS / "robustness.json"))
    args = p.parse_args()
    soak_s = args.soak if args.soak is not None else (20.0 if args.quick else 600.0)
    kinds = [k for k in KINDS if not args.quick or k["quick"]]
    if args.kinds:
        kinds = [k for k in kinds if any(s in k["name"] for s in args.kinds)]
    order = list(GROUPS)
    kinds.sort(key=lambda k: order.index(k["group"]))  # stable: one node per group
    RESULTS.mkdir(parents=True, exist_ok=True)
    shm_before = shm_files()
    soaked = None
    t0 = time.monotonic()
    robot = Robot()
    campaign = Campaign(robot)
    rows = []
    try:
        for k in kinds:
            row = campaign.run(k)
            rows.append(row)
            print(f"  {row['kind']}: {'pass' if row['pass'] else 'FAIL'} ({row['seconds']:.1f} s)", flush=True)
        if campaign.node is not None:
            campaign.node.stop()
            campaign.node = None
        if soak_s > 0:
            campaign.starts += 1
            soaked = soak(robot, soak_s, campaign.starts)
    finally:
        if campaign.node is not None:
            campaign.node.stop()
        robot.fjt.close()
        robot.close()
        remove_stale_shm(shm_before)
    elapsed = time.monotonic() - t0
    load = os.getloadavg()
    print(f"\npolicy_node robustness ({len(rows)} kinds, {campaign.starts} node start(s), {elapsed:.0f} s, "
          f"load average {load[0]:.2f})")
    print("| kind | node alive | clear line | held | recovered | within limits |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['kind']} | {mark(r['alive'])} | {mark(r['clear'])} | {r['held']} | {mark(r['recovered'])} "
              f"| {mark(r['limits'])} |")
    passed = sum(r["pass"] for r in rows)
    print(f"\n{len(rows)} kinds, {passed} all-pass, {campaign.starts} node start(s), {elapsed:.0f} s")
    if soaked is not None:
        print_soak(soaked)
    for r in rows:
        if not r["pass"]:
            keys = ("held", "marks", "chunks_from_bad_frames", "warn_lines", "log_lines", "problem_named",
                    "control_chars_in_log", "limits_detail", "error",
                    "accepted", "outcome", "hold_after_s", "answers", "first", "second", "ok")
            print(f"- {r['kind']}: " + json.dumps({k: r[k] for k in keys if k in r}, default=str))
    with open(args.out, "w") as f:
        json.dump({"kinds": rows, "seconds": elapsed, "node_starts": campaign.starts, "quick": args.quick,
                   "passed": passed, "load_average": load, "soak": soaked}, f, indent=1, default=str)
    return 0


def print_soak(s: dict) -> None:
    lim = s.get("limits", {})
    print(f"\nsoak with the wild policy: {s.get('elapsed', 0):.0f} s, {lim.get('commands', 0)} commands, "
          f"{'pass' if s.get('pass') else 'FAIL'}")
    if "error" in s:
        print(f"  error: {s['error']}")
        return
    print("| commands | position / velocity / acceleration violations | most of a limit used (vel, acc) "
          "| node RSS MB (growth) | server RSS MB (growth) | node threads | server threads | node fds | exit |")
    print("|---|---|---|---|---|---|---|---|---|")
    print(f"| {lim['commands']} | {lim.get('position_violations')} / {lim.get('velocity_violations')} / "
          f"{lim.get('acceleration_violations')} | {lim.get('max_velocity_used', 0):.3f}, "
          f"{lim.get('max_acceleration_used', 0):.3f} | {s.get('node_rss_mb')} ({s.get('node_rss_growth_pct')} %) "
          f"| {s.get('server_rss_mb')} ({s.get('server_rss_growth_pct')} %) | {s.get('node_threads')} "
          f"| {s.get('server_threads')} | {s.get('node_fds')} | {s.get('exit_code')} |")
    print(f"goals: {s.get('goals')}")


if __name__ == "__main__":
    sys.exit(main())
