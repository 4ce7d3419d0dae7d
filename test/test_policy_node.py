"""The policy node in its own process, over real DDS, against a test-side robot stand-in."""
import re

import numpy as np
import pytest
from lifecycle_msgs.srv import GetState
from rclpy.action import ActionClient
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import String
from std_srvs.srv import Trigger

from controller_standin import PANDA_JOINTS, RobotStandIn
from ros_testing import ROOT, call_service, executable, ros_process, wait_for, wait_future, wait_quiet
from vla_ros.action import ExecuteInstruction
from vla_ros.msg import ActionChunk, PolicyStatus
from vla_ros.robots import robot_joints

PARAMS = ROOT / "config" / "robots" / "sim_panda_joint.yaml"
PANDA = robot_joints(PARAMS)
LOWER, UPPER, MAX_STEP = PANDA.lower, PANDA.upper, PANDA.max_step


def node_cmd(*overrides):
    args = ["--ros-args", "--params-file", str(PARAMS), "-p", "autostart:=true"]
    for o in overrides:
        args += ["-p", o]
    return executable("policy_node", *args)


@pytest.fixture
def robot():
    r = RobotStandIn()
    yield r
    r.close()


def start_node(tmp_path, *overrides, name="policy_node"):
    return ros_process(node_cmd(*overrides), tmp_path / f"{name}.log")


def wait_active(robot, proc):
    """Until the node's lifecycle state (lifecycle_msgs/GetState) is active."""
    def active():
        return robot.get_state.service_is_ready() and call_service(
            robot.get_state, GetState.Request(), "get_state response").current_state.label == "active"
    wait_for(active, what="node active", process=proc)


def last_status(robot):
    """The node's newest PolicyStatus (~/status), or None."""
    with robot.lock:
        return robot.statuses[-1] if robot.statuses else None


def wait_status(robot, proc, check, what):
    """Until the node's newest PolicyStatus passes check(status)."""
    wait_for(lambda: (s := last_status(robot)) is not None and check(s), what=what, process=proc)


def instruct(robot, proc, text):
    robot.instruction_pub.publish(String(data=text))
    wait_status(robot, proc, lambda s: s.instruction == text, what=f"status reports the instruction '{text}'")


def commands_for(robot, tmp_path, instruction, key, n, *overrides):
    """Run the node with `overrides` on `instruction` until `n` commands arrived on `key`; return them."""
    with start_node(tmp_path, *overrides) as proc:
        wait_active(robot, proc)
        instruct(robot, proc, instruction)
        wait_for(lambda: robot.counts()[key] >= n, what=f"{n} '{key}' commands", process=proc)
    return robot.received(key)


def test_image_and_instruction_produce_follow_joint_trajectory_goals_within_limits(robot, tmp_path):
    chunks = []
    robot.node.create_subscription(ActionChunk, "policy_node/action_chunk", chunks.append, 10)
    with start_node(tmp_path) as proc:
        wait_active(robot, proc)
        instruct(robot, proc, "touch the red cube")
        wait_for(lambda: robot.counts()["fjt"] >= 5, what="5 FollowJointTrajectory goals", process=proc)
        wait_for(lambda: chunks, what="an ActionChunk", process=proc)
    for traj in robot.received("fjt"):
        assert list(traj.joint_names) == PANDA_JOINTS
        pts = np.array([p.positions for p in traj.points])
        assert np.all(np.isfinite(pts)) and np.all(pts >= LOWER - 1e-9) and np.all(pts <= UPPER + 1e-9)
        times = [p.time_from_start.sec + p.time_from_start.nanosec * 1e-9 for p in traj.points]
        assert np.all(np.diff(times) > 0) and times[0] > 0
        assert np.all(np.abs(np.diff(pts, axis=0)) <= MAX_STEP + 1e-9)
    c = chunks[0]
    assert c.names == PANDA_JOINTS and c.dims == 7 and c.horizon >= 1 and len(c.actions) == c.horizon * 7
    assert c.instruction == "touch the red cube" and c.inference_latency > 0


@pytest.mark.parametrize("mode,key", [("joint_trajectory", "traj"), ("forward_position", "fwd")])
def test_topic_output_modes_publish_commands_within_limits(robot, tmp_path, mode, key):
    msgs = commands_for(robot, tmp_path, "push the blue cube left", key, 20, f"output.mode:={mode}")
    cmds = np.array([m.points[0].positions if key == "traj" else m.data for m in msgs])
    assert cmds.shape[1] == 7 and np.all(cmds >= LOWER - 1e-9) and np.all(cmds <= UPPER + 1e-9)
    assert np.all(np.abs(np.diff(cmds, axis=0)) <= MAX_STEP + 1e-9)


def test_twist_output_mode_for_end_effector_deltas(robot, tmp_path):
    twists = commands_for(robot, tmp_path, "move to the green cube", "twist", 10, "action_space:=ee_delta",
                          "output.mode:=twist", "ee.max_linear_velocity:=0.1", "ee.max_angular_velocity:=0.5")
    for t in twists:
        lin = np.array([t.twist.linear.x, t.twist.linear.y, t.twist.linear.z])
        ang = np.array([t.twist.angular.x, t.twist.angular.y, t.twist.angular.z])
        assert t.header.frame_id == "panda_link0"
        assert np.linalg.norm(lin) <= 0.1 + 1e-9 and np.linalg.norm(ang) <= 0.5 + 1e-9


def test_execute_instruction_feedback_result_and_cancel_stops_motion(robot, tmp_path):
    with start_node(tmp_path) as proc:
        wait_active(robot, proc)
        client = ActionClient(robot.node, ExecuteInstruction, "policy_node/execute_instruction")
        assert client.wait_for_server(timeout_sec=60)
        feedback = []
        goal = ExecuteInstruction.Goal(instruction="touch the red cube", max_steps=15)
        handle = wait_future(client.send_goal_async(goal, feedback_callback=lambda m: feedback.append(m.feedback)))
        assert handle.accepted
        result = wait_future(handle.get_result_async(), what="result").result
        assert result.outcome == ExecuteInstruction.Result.OUTCOME_MAX_STEPS and result.steps >= 15
        assert feedback and max(f.step for f in feedback) <= result.steps

        handle = wait_future(client.send_goal_async(ExecuteInstruction.Goal(instruction="push the red cube left")))
        wait_for(lambda: robot.counts()["fjt"] >= 3, what="motion before cancel", process=proc)
        wait_future(handle.cancel_goal_async(), what="cancel")
        result = wait_future(handle.get_result_async(), what="result after cancel").result
        assert result.outcome == ExecuteInstruction.Result.OUTCOME_CANCELED
        settled = robot.counts()["fjt"]
        # Goals stop after the cancel: a braking trajectory and a goal already in flight at most.
        assert wait_quiet(lambda: robot.counts()["fjt"]) <= settled + 2
        client.destroy()


def test_stale_images_make_the_node_hold_within_one_watchdog_period(robot, tmp_path):
    with start_node(tmp_path, "output.mode:=forward_position", "cameras.max_age:=0.3") as proc:
        wait_active(robot, proc)
        instruct(robot, proc, "touch the red cube")
        wait_for(lambda: robot.counts()["fwd"] >= 10, what="commands", process=proc)
        robot.publish_images = False
        wait_status(robot, proc, lambda s: s.state == PolicyStatus.STATE_HOLDING and "camera:front" in s.last_error,
                    what="HOLDING status for the camera")
        # The node's own clock says how old the last image was when it held: past max_age
        # (0.3 s) and within one more watchdog period (typically one 33 ms tick). Measured in
        # the node, so the test process's scheduling does not enter into it.
        age = float(re.search(r"camera:front last received ([0-9.]+) s ago", last_status(robot).last_error).group(1))
        assert 0.3 < age < 0.6, f"held when the last image was {age:.3f} s old"
        n = robot.counts()["fwd"]
        # Commands stop after the deceleration ramp.
        n2 = wait_quiet(lambda: robot.counts()["fwd"])
        assert n2 <= n + 40
        robot.publish_images = True
        wait_for(lambda: robot.counts()["fwd"] > n2, what="resumes when images return", process=proc)


def test_bad_inputs_are_logged_once_and_do_not_crash_the_node(robot, tmp_path):
    bad_raw = robot.node.create_publisher(Image, "front/image_raw", qos_profile_sensor_data)
    with start_node(tmp_path, "output.mode:=forward_position") as proc:
        wait_active(robot, proc)
        wait_for(lambda: bad_raw.get_subscription_count() > 0, what="node subscribed", process=proc)
        robot.instruction_pub.publish(String(data=""))
        robot.extra_joint_names = ["mystery_joint"]
        # Only bad frames for now: a good one in between would end the bad spell, and the next bad
        # frame would be a new one, logged again.
        robot.publish_images = False

        def publish_bad_images_until_logged():
            # Best-effort QoS: keep sending until the node has seen both (and logged each once).
            bad_raw.publish(Image(height=64, width=64, encoding="rgb8", step=192, data=b"\x00" * 100))
            bad_raw.publish(Image(height=2, width=2, encoding="yuv422_weird", step=4, data=b"\x00" * 8))
            out = proc.output()
            return "needs 12288 bytes, got 100" in out and "yuv422_weird" in out
        wait_for(publish_bad_images_until_logged, what="image errors logged", process=proc)
        wait_for(lambda: "refused an instruction from the instruction topic: it is empty" in proc.output(),
                 what="empty instruction logged", process=proc)
        wait_for(lambda: "mystery_joint" in proc.output(), what="unknown joint logged", process=proc)
        robot.publish_images = True
        instruct(robot, proc, "touch the red cube")
        wait_for(lambda: robot.counts()["fwd"] >= 5, what="still commanding after bad input", process=proc)
        out = proc.output()
        assert proc.alive()
    assert out.count("yuv422_weird") == 1 and out.count("needs 12288 bytes") == 1
    assert out.count("mystery_joint") == 1 and out.count("it is empty") == 1


def test_corrupt_compressed_image_is_refused_with_one_line(robot, tmp_path):
    pub = robot.node.create_publisher(CompressedImage, "front/image_raw/compressed", qos_profile_sensor_data)
    with start_node(tmp_path, "cameras.transports:=[compressed]") as proc:
        wait_active(robot, proc)
        wait_for(lambda: pub.get_subscription_count() > 0, what="node subscribed", process=proc)
        def publish_until_logged():
            pub.publish(CompressedImage(format="jpeg", data=b"\xff\xd8\xff\xe0truncated"))
            return "camera 'front': dropped a malformed image" in proc.output()
        wait_for(publish_until_logged, what="jpeg error", process=proc)
        assert proc.alive() and proc.output().count("dropped a malformed image") == 1


def test_estop_latches_until_reset(robot, tmp_path):
    with start_node(tmp_path, "output.mode:=forward_position") as proc:
        wait_active(robot, proc)
        instruct(robot, proc, "touch the red cube")
        wait_for(lambda: robot.counts()["fwd"] >= 5, what="commands", process=proc)
        estop = robot.node.create_client(Trigger, "policy_node/estop")
        reset = robot.node.create_client(Trigger, "policy_node/reset")
        assert estop.wait_for_service(timeout_sec=30)
        assert call_service(estop, Trigger.Request()).success
        wait_status(robot, proc, lambda s: s.state == PolicyStatus.STATE_ESTOP, what="ESTOP status")
        n = robot.counts()["fwd"]
        n2 = wait_quiet(lambda: robot.counts()["fwd"])
        assert n2 <= n + 40  # at most the deceleration ramp, then nothing
        assert call_service(reset, Trigger.Request()).success
        wait_for(lambda: robot.counts()["fwd"] > n2, what="commands after reset", process=proc)


@pytest.mark.parametrize("override,needle", [
    ("control.rate:=-5.0", "control.rate"),
    ("output.mode:=teleport", "output.mode"),
    ("joints.max_velocity:=[1.0, 2.0]", "joints.max_velocity"),
    ("joints.upper:=[.inf, 1.7628, 2.8973, -0.0698, 2.8973, 3.7525, 2.8973]", "'joints.upper' must be finite"),
    ("joints.max_velocity:=[.inf, 2.175, 2.175, 2.175, 2.61, 2.61, 2.61]", "'joints.max_velocity' must be finite"),
])
def test_invalid_parameter_stops_startup_with_a_message_naming_it(tmp_path, override, needle):
    with start_node(tmp_path, override) as proc:
        wait_for(lambda: not proc.alive(), what="node exits", timeout=60)
        out = proc.output()
    assert proc.proc.returncode != 0
    assert needle in out, out


def test_lifecycle_transitions_configure_activate_deactivate(robot, tmp_path):
    from lifecycle_msgs.msg import Transition
    from lifecycle_msgs.srv import ChangeState, GetState

    args = ["--ros-args", "--params-file", str(PARAMS), "-p", "output.mode:=forward_position"]
    with ros_process(executable("policy_node", *args), tmp_path / "lifecycle.log") as proc:
        change = robot.node.create_client(ChangeState, "policy_node/change_state")
        get = robot.node.create_client(GetState, "policy_node/get_state")
        assert change.wait_for_service(timeout_sec=60) and get.wait_for_service(timeout_sec=60)
        def state():
            return call_service(get, GetState.Request(), "get_state response").current_state.label

        assert state() == "unconfigured"

        def transition(tid, label):
            """Request a transition and check the node reached `label`. ChangeState is not safe to
            repeat, so a response lost at discovery is not re-sent: get_state tells what happened."""
            future = change.call_async(ChangeState.Request(transition=Transition(id=tid)))
            try:
                assert wait_future(future, 15.0, "change_state response").success
            except AssertionError:
                if future.done():
                    raise
            return state() == label

        assert transition(Transition.TRANSITION_CONFIGURE, "inactive")
        instruct(robot, proc, "touch the red cube")
        assert robot.counts()["fwd"] == 0  # configured but inactive: nothing is commanded
        assert transition(Transition.TRANSITION_ACTIVATE, "active")
        wait_for(lambda: robot.counts()["fwd"] >= 10, what="commands once active", process=proc)
        assert transition(Transition.TRANSITION_DEACTIVATE, "inactive")
        wait_status(robot, proc, lambda s: s.state == PolicyStatus.STATE_IDLE and s.instruction != "",
                    what="status: idle with an instruction (inactive)")
        n = robot.counts()["fwd"]
        n2 = wait_quiet(lambda: robot.counts()["fwd"])
        assert n2 <= n + 40
        assert state() == "inactive"


def test_gripper_dimension_goes_through_the_gripper_command_action(robot, tmp_path):
    with start_node(tmp_path, "gripper.enabled:=true", "output.mode:=forward_position") as proc:
        wait_active(robot, proc)
        instruct(robot, proc, "pick up the red cube")
        wait_for(lambda: robot.counts()["gripper"] >= 1 and robot.counts()["fwd"] >= 5,
                 what="a GripperCommand goal and arm commands", process=proc)
    goals, arm = robot.received("gripper"), [m.data for m in robot.received("fwd")]
    assert all(g.position in (0.04, 0.0) and g.max_effort == 20.0 for g in goals)
    assert all(len(a) == 7 for a in arm)  # the gripper dimension never reaches the arm command


def test_pose_output_mode_sends_targets_near_the_current_pose_inside_the_workspace(robot, tmp_path):
    poses = commands_for(robot, tmp_path, "move to the green cube", "pose", 10, "action_space:=ee_delta",
                         "output.mode:=pose", "ee.max_linear_velocity:=0.3")
    for ps in poses:
        xyz = np.array([ps.pose.position.x, ps.pose.position.y, ps.pose.position.z])
        q = np.array([ps.pose.orientation.w, ps.pose.orientation.x, ps.pose.orientation.y, ps.pose.orientation.z])
        assert ps.header.frame_id == "panda_link0"
        assert np.all(xyz >= [0.2, -0.5, 0.0]) and np.all(xyz <= [0.8, 0.5, 0.7])  # sim_panda workspace box
        assert np.linalg.norm(xyz - robot.ee_position) <= 0.3 / 30.0 + 1e-9  # one period at the speed limit
        assert abs(np.linalg.norm(q) - 1.0) < 1e-9


def test_new_goal_preempts_the_running_goal(robot, tmp_path):
    with start_node(tmp_path) as proc:
        wait_active(robot, proc)
        client = ActionClient(robot.node, ExecuteInstruction, "policy_node/execute_instruction")
        assert client.wait_for_server(timeout_sec=60)
        first = wait_future(client.send_goal_async(ExecuteInstruction.Goal(instruction="push the red cube left")))
        wait_for(lambda: robot.counts()["fjt"] >= 2, what="motion for the first goal", process=proc)
        second = wait_future(client.send_goal_async(ExecuteInstruction.Goal(instruction="touch the blue cube",
                                                                              max_steps=10)))
        assert first.accepted and second.accepted
        r1 = wait_future(first.get_result_async(), what="first result").result
        r2 = wait_future(second.get_result_async(), what="second result").result
        assert r1.outcome == ExecuteInstruction.Result.OUTCOME_PREEMPTED
        assert r2.outcome == ExecuteInstruction.Result.OUTCOME_MAX_STEPS
        client.destroy()


def test_rejected_trajectory_goals_are_reported(robot, tmp_path):
    robot.accept_fjt = False
    with start_node(tmp_path) as proc:
        wait_active(robot, proc)
        instruct(robot, proc, "touch the red cube")
        wait_status(robot, proc, lambda s: "rejected" in s.last_error, what="status reports the rejection")
        # ... and says so in one log line
        wait_for(lambda: "FollowJointTrajectory goal rejected by the controller" in proc.output(), process=proc)
        assert proc.output().count("goal rejected by the controller") == 1 and proc.alive()


def test_nan_joint_states_make_the_node_hold_and_log_once(robot, tmp_path):
    with start_node(tmp_path, "output.mode:=forward_position") as proc:
        wait_active(robot, proc)
        instruct(robot, proc, "touch the red cube")
        wait_for(lambda: robot.counts()["fwd"] >= 5, what="commands", process=proc)

        def nan_positions(msg):
            msg.position = [float("nan")] * len(msg.position)
            return msg
        robot.joint_state_override = nan_positions
        wait_status(robot, proc, lambda s: s.state == PolicyStatus.STATE_HOLDING and "joint_states" in s.last_error,
                    what="HOLDING status for joint_states")
        n = robot.counts()["fwd"]
        n2 = wait_quiet(lambda: robot.counts()["fwd"])
        assert n2 <= n + 40  # braking ramp at most, then nothing
        assert all(np.all(np.isfinite(m.data)) for m in robot.received("fwd"))
        robot.joint_state_override = None
        wait_for(lambda: robot.counts()["fwd"] > n2, what="resumes with finite joint states", process=proc)
        assert proc.output().count("non-finite positions") == 1
