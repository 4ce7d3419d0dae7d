"""Bad input and faults through the real graph: the node in its own process logs one clear line,
keeps running, and the arm holds (issue: "the node survives anything a robot's graph can send it")."""
import os
import struct
import time
import zlib

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState
from rclpy.qos import qos_profile_sensor_data
from sensor_msgs.msg import CompressedImage, Image, JointState
from std_srvs.srv import Trigger

from controller_standin import PANDA_JOINTS, RobotStandIn
from ros_testing import call_service, wait_for, wait_future
from test_policy_node import instruct, start_node, wait_active, wait_status
from vla_ros.msg import PolicyStatus


@pytest.fixture
def robot():
    r = RobotStandIn()
    yield r
    r.close()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares width x height (8-bit RGB) and holds no pixel data: a decompression
    bomb's header (a real one is a few hundred KB of zlib that inflates to width*height*3 bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 1000)) + chunk(b"IEND", b"")


def test_a_second_deactivate_is_answered_as_failed_and_the_node_keeps_running(robot, tmp_path):
    with start_node(tmp_path, "output.mode:=forward_position") as proc:
        wait_active(robot, proc)
        instruct(robot, proc, "touch the red cube")
        wait_for(lambda: robot.counts()["fwd"] >= 5, what="commands", process=proc)
        change = robot.node.create_client(ChangeState, "policy_node/change_state")
        get = robot.node.create_client(GetState, "policy_node/get_state")
        assert change.wait_for_service(timeout_sec=60)
        request = ChangeState.Request(transition=Transition(id=Transition.TRANSITION_DEACTIVATE))
        wait_future(change.call_async(request), what="first deactivate")
        wait_status(robot, proc, lambda s: s.state == PolicyStatus.STATE_IDLE and s.instruction != "",
                    what="status: idle with an instruction (inactive)")
        second = wait_future(change.call_async(request), what="an answer to the second deactivate")
        assert second.success is False
        wait_for(lambda: "lifecycle transition 4 refused in state 'inactive'" in proc.output(), process=proc)
        assert call_service(get, GetState.Request()).current_state.label == "inactive" and proc.alive()
        activate = ChangeState.Request(transition=Transition(id=Transition.TRANSITION_ACTIVATE))
        assert wait_future(change.call_async(activate), what="activate").success
        n = robot.counts()["fwd"]
        wait_for(lambda: robot.counts()["fwd"] > n + 5, what="commands after re-activation", process=proc)


def test_decompression_bombs_and_odd_frames_are_refused_before_decoding(robot, tmp_path):
    compressed = robot.node.create_publisher(CompressedImage, "front/image_raw/compressed", qos_profile_sensor_data)
    bomb = png_header_only(20000, 20000)
    cases = {
        "compressed image exceeds the limit": lambda: compressed.publish(CompressedImage(format="png", data=bomb)),
    }
    with start_node(tmp_path, "cameras.transports:=[compressed]", "output.mode:=forward_position") as proc:
        wait_active(robot, proc)
        wait_for(lambda: compressed.get_subscription_count() > 0, what="node subscribed", process=proc)
        estop = robot.node.create_client(Trigger, "policy_node/estop")
        assert estop.wait_for_service(timeout_sec=60)
        for needle, send in cases.items():
            def publish_until_logged():
                send()
                return needle in proc.output()
            wait_for(publish_until_logged, what=needle, process=proc)
        # The e-stop service answers while bombs keep coming.
        for _ in range(30):
            compressed.publish(CompressedImage(format="png", data=bomb))
        t0 = time.monotonic()
        assert call_service(estop, Trigger.Request()).success
        assert time.monotonic() - t0 < 5.0
        assert proc.alive() and proc.output().count("exceeds the limit") == 1


@pytest.mark.parametrize("kind,make,needle", [
    ("depth", lambda: Image(height=64, width=64, encoding="16UC1", step=128, data=b"\x00" * 8192),
     "16UC1 is a 16-bit (depth) encoding"),
    ("sliver", lambda: Image(height=1, width=4000, encoding="rgb8", step=12000, data=b"\x00" * 12000),
     "4000x1 image is smaller than 16 pixels"),
    ("huge_raw_header", lambda: Image(height=10000, width=10000, encoding="rgb8", step=30000, data=b"\x00" * 10),
     "10000x10000 image exceeds the limit"),
])
def test_odd_raw_frames_are_refused_with_one_line(robot, tmp_path, kind, make, needle):
    raw = robot.node.create_publisher(Image, "front/image_raw", qos_profile_sensor_data)
    robot.publish_images = False
    with start_node(tmp_path, "output.mode:=forward_position") as proc:
        wait_active(robot, proc)
        wait_for(lambda: raw.get_subscription_count() > 0, what="node subscribed", process=proc)
        msg = make()

        def publish_until_logged():
            msg.header.stamp = robot.node.get_clock().now().to_msg()
            raw.publish(msg)
            return needle in proc.output()
        wait_for(publish_until_logged, what=needle, process=proc)
        for _ in range(10):
            raw.publish(msg)
        instruct(robot, proc, "touch the red cube")
        robot.publish_images = True  # good frames again: the node commands
        wait_for(lambda: robot.counts()["fwd"] >= 5, what="commands with good frames", process=proc)
        assert proc.output().count(needle) == 1


@pytest.mark.parametrize("offset,label", [(-3600.0, "an hour old"), (3600.0, "an hour ahead"), (None, "zero")])
def test_frames_stamped_far_from_the_node_clock_are_refused_and_the_arm_holds(robot, tmp_path, offset, label):
    robot.publish_images = False
    raw = robot.node.create_publisher(Image, "front/image_raw", qos_profile_sensor_data)
    with start_node(tmp_path, "output.mode:=forward_position") as proc:
        wait_active(robot, proc)
        instruct(robot, proc, "touch the red cube")
        img = Image(height=64, width=64, encoding="rgb8", step=192, data=robot.image.tobytes())

        def publish_until_logged():
            now = robot.node.get_clock().now().nanoseconds * 1e-9
            t = 0.0 if offset is None else now + offset
            img.header.stamp = Time(sec=int(t), nanosec=int((t % 1) * 1e9))
            raw.publish(img)
            return "refused a frame stamped" in proc.output()
        wait_for(publish_until_logged, what=f"a frame stamped {label} refused", process=proc)
        for _ in range(20):
            raw.publish(img)
        assert robot.counts()["fwd"] == 0  # never commanded from those frames
        assert proc.output().count("refused a frame stamped") == 1  # throttled
        robot.publish_images = True
        wait_for(lambda: robot.counts()["fwd"] >= 5, what="commands with well-stamped frames", process=proc)


def test_joint_states_with_mismatched_lengths_are_named_plainly(robot, tmp_path):
    def short_positions(msg: JointState):
        msg.position = list(msg.position)[:3]
        return msg
    robot.joint_state_override = short_positions
    with start_node(tmp_path, "output.mode:=forward_position") as proc:
        wait_active(robot, proc)
        wait_for(lambda: "joint_states has 7 names but 3 positions" in proc.output(), process=proc)
        assert "lacks configured joints []" not in proc.output()
        assert len(PANDA_JOINTS) == 7 and np.isfinite(robot.position).all()


def test_a_second_trajectory_server_under_the_same_name_gets_no_goal_until_it_is_gone(robot, tmp_path):
    """Two FollowJointTrajectory servers would both run every goal (and rclpy's ActionClient raises "Two
    goals were accepted with the same ID" out of the executor, which used to end the node): the node
    says so in one line and sends nothing until only one server remains, then commands again."""
    from control_msgs.action import FollowJointTrajectory
    from rclpy.action import ActionServer

    twin_goals = []

    def accept(handle):
        twin_goals.append(handle.request)
        handle.succeed()
        return FollowJointTrajectory.Result(error_code=0)
    twin = ActionServer(robot.node, FollowJointTrajectory, "follow_joint_trajectory", accept)
    with start_node(tmp_path) as proc:
        wait_active(robot, proc)
        instruct(robot, proc, "touch the red cube")
        wait_for(lambda: "2 FollowJointTrajectory servers answer '/follow_joint_trajectory'" in proc.output(),
                 what="the second server reported", process=proc)
        assert robot.counts()["fjt"] == 0 and not twin_goals  # nothing went out to either
        twin.destroy()
        wait_for(lambda: robot.counts()["fjt"] > 5, what="goals go out once one server remains", process=proc)
        out = proc.output()
        assert proc.alive() and "Two goals were accepted" not in out and out.count("FollowJointTrajectory servers") == 1
        assert not twin_goals


def test_cleanup_and_configure_again_leaves_one_working_node(robot, tmp_path):
    """cleanup removes the interfaces and the policy server; configure builds them again (no duplicates)."""
    from ros_testing import executable, ros_process
    from test_policy_node import PARAMS

    args = ["--ros-args", "--params-file", str(PARAMS), "-p", "output.mode:=forward_position"]
    with ros_process(executable("policy_node", *args), tmp_path / "cycle.log") as proc:
        change = robot.node.create_client(ChangeState, "policy_node/change_state")
        get = robot.node.create_client(GetState, "policy_node/get_state")
        assert change.wait_for_service(timeout_sec=60) and get.wait_for_service(timeout_sec=60)

        def go(tid, label):
            wait_future(change.call_async(ChangeState.Request(transition=Transition(id=tid))), 30.0, f"-> {label}")
            assert call_service(get, GetState.Request()).current_state.label == label

        for cycle in range(2):
            go(Transition.TRANSITION_CONFIGURE, "inactive")
            go(Transition.TRANSITION_ACTIVATE, "active")
            instruct(robot, proc, f"touch the red cube {cycle}")
            n = robot.counts()["fwd"]
            wait_for(lambda: robot.counts()["fwd"] > n + 10, what=f"commands in cycle {cycle}", process=proc)
            go(Transition.TRANSITION_DEACTIVATE, "inactive")
            go(Transition.TRANSITION_CLEANUP, "unconfigured")
        out = proc.output()
        servers = [int(x.split(")")[0]) for x in out.split("policy server pid ")[1:]]
        assert len(servers) == 2 and all(not os.path.exists(f"/proc/{pid}") for pid in servers)
        assert robot.node.count_publishers("forward_position") == 0  # cleanup removed the command publisher


@pytest.mark.parametrize("bad, line", [
    (lambda m: setattr(m, "position", [1e9] + list(m.position)[1:]) or m,
     "joint_states puts {'panda_joint1': 1000000000.0} further than joint_states.limit_margin (0.2)"),
    (lambda m: setattr(m, "name", list(m.name) + ["panda_joint1"]) or setattr(m, "position", list(m.position) + [2.5])
     or m, "joint_states names ['panda_joint1'] more than once"),
], ids=["position_1e9", "joint_named_twice"])
def test_joint_states_no_arm_can_be_in_are_refused_with_one_line_until_good_again(robot, tmp_path, bad, line):
    """A finite but impossible position (wrong names, units, calibration) or a joint named twice: the
    node never commands from it, says so once, and commands again once joint states are sane."""
    robot.joint_state_override = bad
    with start_node(tmp_path, "output.mode:=forward_position") as proc:
        wait_active(robot, proc)
        instruct(robot, proc, "touch the red cube")
        wait_for(lambda: line in proc.output(), what="the refusal", process=proc)
        wait_for(lambda: "none yet from joint_states" in proc.output(), what="the hold", process=proc)
        assert robot.counts()["fwd"] == 0 and proc.output().count(line) == 1
        robot.joint_state_override = None
        wait_for(lambda: robot.counts()["fwd"] >= 5, what="commands with sane joint states", process=proc)
