"""The simulated robot (sim_robot_node) in its own process, over real DDS.

One simulator process serves the whole module (at twice real time: the tests wait on
simulated time); each test that moves the arm starts from a seeded episode reset. A
spinning node in this process watches /clock, joint_states, the camera, ee_pose and
task_success, and drives the command topics, actions and the reset service. The last test
records the running simulation with recorder_node and replays the bag with player_node.
"""
import re
import signal
import threading
import time

import numpy as np
import pytest
from action_msgs.msg import GoalStatus
from builtin_interfaces.msg import Duration
from control_msgs.action import FollowJointTrajectory, GripperCommand
from geometry_msgs.msg import PoseStamped, TwistStamped
from rclpy.action import ActionClient
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import deserialize_message
from rosgraph_msgs.msg import Clock
from ruamel.yaml import YAML
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import Bool, Float64MultiArray
from std_srvs.srv import Trigger
from trajectory_msgs.msg import JointTrajectory, JointTrajectoryPoint

from ros_testing import (RawCollector, RosProcess, call_service, executable, ros_process, spinning_node, wait_for,
                         wait_future)
from vla_ros.data.bags import BagReader, read_bag
from vla_ros.sim.tasks import HELDOUT_TEMPLATES, NEWWORDS_TEMPLATES, TRAIN_TEMPLATES
from vla_ros.srv import ResetEpisode

ARM = [f"panda_joint{i}" for i in range(1, 8)]
JOINTS = ARM + ["panda_finger_joint1", "panda_finger_joint2"]
HOME_XYZ = np.array([0.45, 0.0, 0.32])   # the sim's home (jittered by up to 3 cm per axis)
RTF = 2.0
SEED = 11


def _s(stamp) -> float:
    return stamp.sec + stamp.nanosec * 1e-9


def _duration(seconds: float):
    ns = int(round(seconds * 1e9))
    return Duration(sec=ns // 10**9, nanosec=ns % 10**9)


class SimWatcher:
    """What the sim publishes, as seen by this process, plus clients for its interfaces."""

    def __init__(self, node):
        self.node = node
        self.lock = threading.Lock()
        self.clock = []        # sim seconds, in arrival order
        self.joints = []       # (stamp, names, positions)
        self.images = []       # (image, latest /clock when it arrived)
        self.poses = []        # (stamp, frame, xyz, quaternion wxyz)
        self.success = []      # (latest /clock when it arrived, data)
        node.create_subscription(Clock, "/clock", self._on_clock, 10)
        node.create_subscription(JointState, "joint_states", self._on_joints, 10)
        node.create_subscription(Image, "front/image_raw", self._on_image, qos_profile_sensor_data)
        node.create_subscription(PoseStamped, "ee_pose", self._on_pose, 10)
        node.create_subscription(Bool, "task_success", self._on_success, 10)
        self.reset_client = node.create_client(ResetEpisode, "/sim_robot_node/reset_episode")
        self.fjt = ActionClient(node, FollowJointTrajectory, "follow_joint_trajectory")
        self.gripper = ActionClient(node, GripperCommand, "gripper_command")
        self.twist_pub = node.create_publisher(TwistStamped, "twist", 10)
        self.forward_pub = node.create_publisher(Float64MultiArray, "forward_position", 10)

    def _on_clock(self, m):
        with self.lock:
            self.clock.append(_s(m.clock))

    def _on_joints(self, m):
        with self.lock:
            self.joints.append((_s(m.header.stamp), list(m.name), np.array(m.position)))

    def _on_image(self, m):
        with self.lock:
            self.images = self.images[-49:] + [(m, self.clock[-1] if self.clock else None)]

    def _on_pose(self, m):
        p, o = m.pose.position, m.pose.orientation
        with self.lock:
            self.poses.append((_s(m.header.stamp), m.header.frame_id, np.array([p.x, p.y, p.z]),
                               np.array([o.w, o.x, o.y, o.z])))

    def _on_success(self, m):
        with self.lock:
            self.success.append((self.clock[-1] if self.clock else -1.0, m.data))

    # ------------------------------------------------------------------ views
    def now(self) -> float:
        """The newest simulated time seen on /clock (-1 before the first)."""
        with self.lock:
            return self.clock[-1] if self.clock else -1.0

    def joints_after(self, t):
        with self.lock:
            return [j for j in self.joints if j[0] > t]

    def poses_after(self, t):
        with self.lock:
            return [p for p in self.poses if p[0] > t]

    def arm(self) -> np.ndarray:
        """The newest 7 arm joint positions."""
        with self.lock:
            return self.joints[-1][2][:7].copy()

    def fingers(self) -> np.ndarray:
        with self.lock:
            return self.joints[-1][2][7:].copy()

    def ee(self) -> np.ndarray:
        with self.lock:
            return self.poses[-1][2].copy()

    def wait_sim(self, seconds: float, proc, what="simulated time to pass"):
        """Wait until /clock has advanced `seconds` past its newest value now; return the new time."""
        start = self.now()
        wait_for(lambda: self.now() >= start + seconds, what=what, process=proc)
        return self.now()

    def reset(self, proc, seed=SEED, family="", phrasing="", target=-1, direction=""):
        """Call ~/reset_episode; once it succeeded, wait until fresh joint states and poses arrived."""
        assert self.reset_client.wait_for_service(timeout_sec=60)
        request = ResetEpisode.Request(seed=seed, family=family, phrasing=phrasing, target=target, direction=direction)
        response = call_service(self.reset_client, request, "reset_episode response")
        if response.success:
            # The arm is at home at once; wait for states stamped well after the reset.
            t = self.now() + 0.2
            wait_for(lambda: self.joints_after(t) and self.poses_after(t), what="states after the reset",
                     process=proc)
        return response

    def publish_during(self, pub, msg, sim_seconds: float, proc, period: float = 0.05) -> float:
        """Republish msg every `period` s of wall time until /clock advanced sim_seconds; return the time."""
        end, last = self.now() + sim_seconds, [float("-inf")]

        def keep_publishing():
            if self.now() >= end:
                return True
            if time.monotonic() - last[0] >= period:
                pub.publish(msg)
                last[0] = time.monotonic()
            return False
        wait_for(keep_publishing, what=f"{sim_seconds} s of simulated time while publishing", process=proc)
        return self.now()

    def arm_still(self, since: float, window: float = 0.3, tol: float = 1e-3) -> bool:
        """Whether the arm moved less than tol (rad) over the last `window` s of sim time after `since`."""
        js = self.joints_after(since)
        if not js or js[-1][0] - since < window:
            return False
        recent = np.array([q[:7] for t, _, q in js if t >= js[-1][0] - window])
        return float(np.ptp(recent, axis=0).max()) < tol

    def ee_still(self, since: float, window: float = 0.3, tol: float = 5e-4) -> bool:
        """Whether ee_pose moved less than tol (m) over the last `window` s of sim time after `since`."""
        poses = self.poses_after(since)
        if not poses or poses[-1][0] - since < window:
            return False
        recent = np.array([xyz for t, _, xyz, _ in poses if t >= poses[-1][0] - window])
        return float(np.ptp(recent, axis=0).max()) < tol


@pytest.fixture(scope="module")
def sim(tmp_path_factory):
    """One sim_robot_node process for the module, at real_time_factor 2, until the module ends."""
    log = tmp_path_factory.mktemp("sim") / "sim_robot_node.log"
    cmd = executable("sim_robot_node", "--ros-args", "-p", f"real_time_factor:={RTF}", "-p", f"seed:={SEED}")
    with ros_process(cmd, log) as proc:
        wait_for(lambda: "simulated Panda ready" in proc.output(), what="the sim starting", process=proc)
        yield proc


@pytest.fixture(scope="module")
def watcher(sim):
    with spinning_node("sim_test_watcher") as n:
        w = SimWatcher(n.node)
        wait_for(lambda: w.joints and w.poses and w.images and w.success, what="first sim messages", process=sim)
        yield w
        w.fjt.destroy()
        w.gripper.destroy()


# ---------------------------------------------------------------------------- what it publishes
def test_publishes_clock_joint_states_camera_pose_and_success_in_sim_time(sim, watcher):
    w = watcher
    response = w.reset(sim, seed=3, family="touch")
    assert response.success, response.message
    t_reset = w.now()
    w.wait_sim(1.0, sim)
    with w.lock:
        clock = list(w.clock)
        images = [(img, c) for img, c in w.images if c is not None and c >= t_reset]
        success = [ok for t, ok in w.success if t >= t_reset]
    # /clock: strictly increasing simulated time, advancing at about RTF x the wall clock.
    assert len(clock) > 100 and np.all(np.diff(clock) > 0)
    assert clock[-1] < 1e6, "the clock is simulated time from 0, not the wall clock"
    wall0, sim0 = time.monotonic(), w.now()
    w.wait_sim(2.0, sim)
    speed = (w.now() - sim0) / (time.monotonic() - wall0)
    assert 0.2 < speed < RTF * 1.2, f"simulated time advanced at {speed:.2f}x wall time (real_time_factor {RTF})"
    # joint_states: the 9 Panda joints, finite, stamped in sim time.
    stamp, names, q = w.joints_after(t_reset)[-1]
    assert names == JOINTS and len(q) == 9 and np.all(np.isfinite(q))
    assert abs(stamp - w.now()) < 0.5
    # front/image_raw: rgb8 96x96, stamped with the /clock time it was taken at.
    assert len(images) >= 5
    for img, clock_at_arrival in images:
        assert (img.encoding, img.height, img.width, img.step) == ("rgb8", 96, 96, 288)
        assert len(img.data) == 96 * 96 * 3 and img.header.frame_id == "front_camera"
        assert abs(_s(img.header.stamp) - clock_at_arrival) < 0.5, (_s(img.header.stamp), clock_at_arrival)
    assert max(bytes(images[-1][0].data)) > 0, "a black image"
    # ee_pose: in panda_link0, at the (jittered) home position, gripper pointing down.
    t, frame, xyz, quat = w.poses_after(t_reset)[-1]
    assert frame == "panda_link0" and abs(t - w.now()) < 0.5
    assert np.all(np.abs(xyz - HOME_XYZ) < 0.05), xyz
    assert abs(np.linalg.norm(quat) - 1) < 1e-3 and abs(quat[1]) > 0.95, quat   # ~ (0, 1, 0, 0)
    # task_success: false after the reset (the arm at home touches nothing).
    assert success and not any(success), success


# ---------------------------------------------------------------------------- episodes
def _template_match(instruction: str, templates) -> bool:
    for template in templates:
        pattern = re.sub(r"\\\{\w+\\\}", ".+", re.escape(template))  # {obj}, {Dir}, {OBJ}...
        if re.fullmatch(pattern, instruction):
            return True
    return False


def test_reset_episode_is_seeded_and_honours_family_and_phrasing(sim, watcher):
    w = watcher
    first = w.reset(sim, seed=42)
    again = w.reset(sim, seed=42)
    assert first.success and again.success, (first.message, again.message)
    assert first.instruction and (again.instruction, again.family) == (first.instruction, first.family)
    assert first.family in ("touch", "push")
    touch_a = w.reset(sim, seed=5, family="touch")
    touch_b = w.reset(sim, seed=5, family="touch")
    assert touch_a.instruction == touch_b.instruction and touch_a.family == "touch"
    assert _template_match(touch_a.instruction, TRAIN_TEMPLATES["touch"]), touch_a.instruction
    push = w.reset(sim, seed=5, family="push")
    assert push.success and push.family == "push"
    assert _template_match(push.instruction, TRAIN_TEMPLATES["push"]), push.instruction
    heldout = w.reset(sim, seed=5, family="push", phrasing="heldout")
    assert heldout.success and heldout.family == "push"
    assert _template_match(heldout.instruction, HELDOUT_TEMPLATES["push"]), heldout.instruction
    assert not _template_match(heldout.instruction, TRAIN_TEMPLATES["push"]), heldout.instruction
    assert f"push '{heldout.instruction}'" in sim.output()   # the node logs each episode

    bad = w.reset(sim, seed=5, family="juggle")
    assert not bad.success and "juggle" in bad.message and not bad.instruction
    bad_phrasing = w.reset(sim, seed=5, phrasing="shakespeare")
    assert not bad_phrasing.success and "shakespeare" in bad_phrasing.message
    # The listening probe's variants: the same scene with the target object or the direction chosen.
    assert ResetEpisode.Request().target == -1 and ResetEpisode.Request().direction == ""
    named = [w.reset(sim, seed=5, family="touch", target=t) for t in range(3)]
    assert [r.target for r in named] == [0, 1, 2] and len({r.instruction for r in named}) == 3
    assert touch_a.target in (0, 1, 2) and named[touch_a.target].instruction == touch_a.instruction
    pushed = [w.reset(sim, seed=5, family="push", phrasing="newwords", direction=d) for d in ("left", "right")]
    assert [r.direction for r in pushed] == ["left", "right"] and pushed[0].target == pushed[1].target
    assert _template_match(pushed[0].instruction, NEWWORDS_TEMPLATES["push"]), pushed[0].instruction
    for bad_request in (dict(target=3), dict(family="touch", direction="left"), dict(family="push", direction="up")):
        refused = w.reset(sim, seed=5, **bad_request)
        assert not refused.success and ("'target'" in refused.message or "'direction'" in refused.message), refused
    # Still running and serving.
    w.wait_sim(0.2, sim, "the clock advancing after refused resets")
    assert sim.alive()
    assert w.reset(sim, seed=5, family="touch").instruction == touch_a.instruction


# ---------------------------------------------------------------------------- commands
def test_twist_moves_the_end_effector_along_y_and_it_stops_after_the_timeout(sim, watcher):
    w = watcher
    assert w.reset(sim).success
    wait_for(lambda: w.twist_pub.get_subscription_count() >= 1, what="sim subscribed to twist", process=sim)
    start = w.ee()
    msg = TwistStamped()
    msg.header.frame_id = "panda_link0"
    msg.twist.linear.y = 0.1
    t_stop = w.publish_during(w.twist_pub, msg, 1.0, sim)   # ~20 Hz wall (10 Hz sim) for 1 s of sim time
    at_stop = w.ee()
    # The servo target stops 0.25 s (sim) after the last twist; the arm then settles.
    wait_for(lambda: w.ee_still(t_stop + 0.3), what="the end effector stopping", process=sim)
    end = w.ee()
    moved = end - start
    assert 0.07 < moved[1] < 0.16, moved      # ~0.1 m/s for 1 s (+ up to 0.25 s held)
    assert abs(moved[0]) < 0.02 and abs(moved[2]) < 0.02, moved
    assert end[1] - at_stop[1] < 0.06, (at_stop, end)   # no more than the hold time's worth after stopping

    # An empty frame is the base frame too.
    msg.header.frame_id = ""
    msg.twist.linear.y = -0.1
    t_stop = w.publish_during(w.twist_pub, msg, 0.5, sim)
    wait_for(lambda: w.ee_still(t_stop + 0.3), what="the end effector stopping", process=sim)
    assert 0.03 < end[1] - w.ee()[1] < 0.11, (end, w.ee())   # ~0.1 m/s for 0.5 s (+ up to 0.25 s)

    # A twist in another frame is refused (logged once) and the arm stays.
    before = w.ee()
    msg.header.frame_id = "tool0"
    msg.twist.linear.y = 0.1

    def publish_until_logged():
        w.twist_pub.publish(msg)
        return "twist in frame 'tool0' ignored" in sim.output()
    wait_for(publish_until_logged, what="the wrong frame logged", process=sim)
    for _ in range(3):
        w.twist_pub.publish(msg)
    t1 = w.wait_sim(0.5, sim)
    wait_for(lambda: w.ee_still(t1 - 0.5, window=0.4), what="the arm holding", process=sim)
    assert np.all(np.abs(w.ee() - before) < 2e-3), (before, w.ee())
    assert sim.output().count("twist in frame 'tool0' ignored") == 1


def _trajectory(names, points):
    traj = JointTrajectory(joint_names=list(names))
    for t, q in points:
        traj.points.append(JointTrajectoryPoint(positions=[float(v) for v in q],
                                                time_from_start=_duration(t)))
    return traj


def test_follow_joint_trajectory_reaches_the_target_and_rejects_a_goal_missing_a_joint(sim, watcher):
    w = watcher
    assert w.reset(sim).success
    assert w.fjt.wait_for_server(timeout_sec=60)
    q0 = w.arm()
    target = q0 + np.array([0.2, 0.0, 0.0, 0.2, 0.0, 0.0, 0.0])
    goal = FollowJointTrajectory.Goal(trajectory=_trajectory(ARM, [(0.5, (q0 + target) / 2), (1.0, target)]))
    feedback = []
    t_sent = w.now()
    handle = wait_future(w.fjt.send_goal_async(goal, feedback_callback=lambda m: feedback.append(m.feedback)),
                         what="goal response")
    assert handle.accepted
    response = wait_future(handle.get_result_async(), what="trajectory result")
    t_done = w.now()
    assert response.status == GoalStatus.STATUS_SUCCEEDED
    assert response.result.error_code == FollowJointTrajectory.Result.SUCCESSFUL, response.result.error_string
    assert t_done - t_sent >= 0.8, f"succeeded after {t_done - t_sent:.2f} s of sim time for a 1.0 s trajectory"
    assert feedback and list(feedback[-1].joint_names) == ARM and len(feedback[-1].actual.positions) == 7
    wait_for(lambda: np.all(np.abs(w.arm() - target) < 0.05), what="joint_states at the target", process=sim)
    wait_for(lambda: w.arm_still(t_done), what="the arm settling", process=sim)
    assert np.all(np.abs(w.arm() - target) < 0.05), (w.arm(), target)

    # A goal without panda_joint7: aborted as INVALID_GOAL, the arm stays where it is.
    bad = FollowJointTrajectory.Goal(trajectory=_trajectory(ARM[:6], [(1.0, q0[:6])]))
    handle = wait_future(w.fjt.send_goal_async(bad), what="goal response")
    response = wait_future(handle.get_result_async(), what="result of the bad goal")
    assert response.status == GoalStatus.STATUS_ABORTED
    assert response.result.error_code == FollowJointTrajectory.Result.INVALID_GOAL
    assert "panda_joint7" in response.result.error_string
    t1 = w.wait_sim(0.5, sim, "the clock advancing after the bad goal")
    assert sim.alive() and np.all(np.abs(w.arm() - target) < 0.05)
    assert w.arm_still(t1 - 0.5, window=0.4)


def _grip(w, position):
    goal = GripperCommand.Goal()
    goal.command.position, goal.command.max_effort = position, 20.0
    handle = wait_future(w.gripper.send_goal_async(goal), what="gripper goal response")
    assert handle.accepted
    return wait_future(handle.get_result_async(), what="gripper result")


def test_gripper_command_opens_and_closes_the_fingers(sim, watcher):
    w = watcher
    assert w.reset(sim).success
    assert w.gripper.wait_for_server(timeout_sec=60)
    opened = _grip(w, 0.04)
    assert opened.status == GoalStatus.STATUS_SUCCEEDED
    assert opened.result.reached_goal and not opened.result.stalled
    assert abs(opened.result.position - 0.04) < 0.002, opened.result.position
    wait_for(lambda: np.all(np.abs(w.fingers() - 0.04) < 0.003), what="fingers open in joint_states", process=sim)
    closed = _grip(w, 0.0)
    assert closed.status == GoalStatus.STATUS_SUCCEEDED
    assert closed.result.reached_goal and closed.result.position < 0.002, closed.result
    wait_for(lambda: np.all(w.fingers() < 0.003), what="fingers closed in joint_states", process=sim)


def test_forward_position_moves_the_arm_and_a_wrong_length_command_is_logged_once_and_ignored(sim, watcher):
    w = watcher
    assert w.reset(sim).success
    wait_for(lambda: w.forward_pub.get_subscription_count() >= 1, what="sim subscribed to forward_position",
             process=sim)
    q0 = w.arm()
    target = q0 + np.array([-0.25, 0.15, 0.0, 0.0, 0.0, 0.0, 0.2])
    w.forward_pub.publish(Float64MultiArray(data=target.tolist()))
    wait_for(lambda: np.all(np.abs(w.arm() - target) < 0.05), what="the arm at the forward target", process=sim)
    for _ in range(3):
        w.forward_pub.publish(Float64MultiArray(data=[0.5] * 5))
    wait_for(lambda: "forward_position ignored" in sim.output(), what="the wrong length logged", process=sim)
    t1 = w.wait_sim(0.5, sim)
    assert sim.alive() and np.all(np.abs(w.arm() - target) < 0.05), "a 5-value command moved the arm"
    assert w.arm_still(t1 - 0.5, window=0.4)
    # Still commanded: a valid command after the bad ones moves the arm again.
    back = q0
    w.forward_pub.publish(Float64MultiArray(data=back.tolist()))
    wait_for(lambda: np.all(np.abs(w.arm() - back) < 0.05), what="the arm back at the start", process=sim)
    assert sim.output().count("forward_position ignored") == 1


# ---------------------------------------------------------------------------- record and replay
REC_TOPICS = {"/front/image_raw": Image, "/joint_states": JointState, "/task_success": Bool, "/clock": Clock}
MIN_RECORDED = {"/front/image_raw": 5, "/joint_states": 30, "/task_success": 5, "/clock": 60}


def _recorded_counts(log: str) -> dict:
    lines = re.findall(r"recorded: (.*)", log)
    if not lines:
        return {}
    return {topic: int(n) for topic, n in re.findall(r"(\S+) (\d+)", lines[-1])}


def test_recorded_sim_bag_replays_byte_identical_under_a_remapped_namespace(sim, watcher, tmp_path):
    rec = RosProcess(executable("recorder_node", "--ros-args", "-p", f"topics:=[{', '.join(REC_TOPICS)}]",
                                "-p", f"output_dir:={tmp_path}", "-p", "bag_name:=sim",
                                "-p", "status_period:=0.1"), tmp_path / "recorder.log")
    try:
        wait_for(lambda: all(_recorded_counts(rec.output()).get(t, 0) >= n for t, n in MIN_RECORDED.items()),
                 what="the recorder recording every sim topic", process=rec)
    finally:
        rc = rec.stop(signal.SIGINT)
    log = rec.output()
    assert rc == 0, log
    assert "bag closed" in log, log
    bag = tmp_path / "sim"
    assert (bag / "metadata.yaml").is_file()
    meta = YAML(typ="safe").load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    with BagReader(bag) as r:
        assert r.storage == "mcap" and set(r.topics) == set(REC_TOPICS)
        assert r.topics["/front/image_raw"].reliability == "best_effort"
        assert r.topics["/clock"].msgtype == "rosgraph_msgs/msg/Clock"
        counts = {t: r.topics[t].count for t in REC_TOPICS}
    assert meta["storage_identifier"] == "mcap" and meta["message_count"] == sum(counts.values())
    assert all(counts[t] >= n for t, n in MIN_RECORDED.items()), counts
    originals = {t: [m.data for m in read_bag(bag, [t])] for t in REC_TOPICS}
    assert {t: len(d) for t, d in originals.items()} == counts
    # What was recorded is the simulation: its clock, its joints, its camera.
    clock = [_s(deserialize_message(d, Clock).clock) for d in originals["/clock"]]
    assert np.all(np.diff(clock) > 0)
    assert list(deserialize_message(originals["/joint_states"][0], JointState).name) == JOINTS
    assert deserialize_message(originals["/front/image_raw"][0], Image).step == 288

    # Replay under /replay, so the sim (still publishing the originals) is not heard here.
    remaps = [arg for t in REC_TOPICS for arg in ("-r", f"{t}:=/replay{t}")]
    best_effort = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)
    reliable = QoSProfile(depth=100)
    with spinning_node("sim_test_replay_listener") as n:
        col = RawCollector(n.node, {f"/replay{t}": (cls, best_effort if t == "/front/image_raw" else reliable)
                                    for t, cls in REC_TOPICS.items()})
        player = RosProcess(executable("player_node", "--ros-args", "-p", f"bag:={bag}",
                                       "-p", "wait_for_subscribers:=1", "-p", "start_paused:=true", *remaps),
                            tmp_path / "player.log")
        try:
            # Best-effort messages published before a reader has matched the writer are lost: the
            # player waits, paused, until its writers see a reader (wait_for_subscribers) and every
            # reader here has matched them (resume), then plays.
            wait_for(lambda: all(sub.get_publisher_count() >= 1 for sub in col.subs), what="readers matched",
                     process=player)
            resume = n.node.create_client(Trigger, "/player_node/resume")
            assert resume.wait_for_service(timeout_sec=60)
            call_service(resume, Trigger.Request(), "resume")
            wait_for(lambda: all(col.count(f"/replay{t}") >= counts[t] for t in REC_TOPICS) or not player.alive(),
                     what="every replayed message")
            wait_for(lambda: not player.alive(), what="the player exiting at the end of the bag")
        finally:
            rc = player.stop()
        assert rc == 0, player.output()
        assert f"done: published {sum(counts.values())} messages" in player.output(), player.output()
        for topic in REC_TOPICS:  # every message, byte-identical to the bag's, in the bag's order
            assert col.data(f"/replay{topic}") == originals[topic], topic
    assert sim.alive()
