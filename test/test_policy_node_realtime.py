"""The policy node as a real-time controller, through the real graph: the node in its own process
(with its policy server process), a robot stand-in here, real Fast DDS.

Each test reproduces a defect found with the real ros2 command line and launch: dry_run set
live, Ctrl-C during a goal, a success left over from the previous task, status after a cancel,
warnings at the start of every instruction, the model server dying.
"""
import os
import signal

from rcl_interfaces.msg import Parameter, ParameterType, ParameterValue
from rcl_interfaces.srv import SetParameters
from rclpy.action import ActionClient
from rclpy.duration import Duration
from std_msgs.msg import Bool

from controller_standin import RobotStandIn
from ros_testing import call_service, wait_for, wait_future, wait_quiet
from test_policy_node import instruct, start_node, wait_active
from vla_ros.action import ExecuteInstruction
from vla_ros.msg import ActionChunk, PolicyStatus

import pytest

R = ExecuteInstruction.Result


@pytest.fixture
def robot():
    r = RobotStandIn()
    yield r
    r.close()


def set_param(robot, name, value: bool):
    client = robot.node.create_client(SetParameters, "policy_node/set_parameters")
    assert client.wait_for_service(timeout_sec=60)
    req = SetParameters.Request(parameters=[Parameter(name=name, value=ParameterValue(
        type=ParameterType.PARAMETER_BOOL, bool_value=value))])
    return call_service(client, req, f"set {name}").results[0]


def test_dry_run_set_live_stops_commands_and_clearing_it_resumes(robot, tmp_path):
    chunks = []
    robot.node.create_subscription(ActionChunk, "policy_node/action_chunk", chunks.append, 10)
    with start_node(tmp_path, "output.mode:=forward_position") as proc:
        wait_active(robot, proc)
        instruct(robot, proc, "touch the red cube")
        wait_for(lambda: robot.counts()["fwd"] >= 10, what="commands", process=proc)
        assert set_param(robot, "dry_run", True).successful
        wait_for(lambda: "dry run on" in proc.output(), what="dry run applied", process=proc)
        n = robot.counts()["fwd"]
        n2 = wait_quiet(lambda: robot.counts()["fwd"])
        assert n2 <= n + 40  # the deceleration ramp at most, then nothing
        c = len(chunks)
        wait_for(lambda: len(chunks) >= c + 5, what="chunks keep coming in dry run", process=proc)
        assert robot.counts()["fwd"] == n2
        assert set_param(robot, "dry_run", False).successful
        wait_for(lambda: robot.counts()["fwd"] > n2 + 5, what="commands again", process=proc)
        # Every other parameter is read-only once the node runs.
        client = robot.node.create_client(SetParameters, "policy_node/set_parameters")
        req = SetParameters.Request(parameters=[Parameter(name="control.rate", value=ParameterValue(
            type=ParameterType.PARAMETER_DOUBLE, double_value=5.0))])
        res = call_service(client, req, "set control.rate").results[0]
        assert not res.successful and "read-only" in res.reason


def test_sigint_during_a_goal_answers_it_aborted_and_exits_cleanly(robot, tmp_path):
    with start_node(tmp_path, "output.mode:=forward_position") as proc:
        wait_active(robot, proc)
        client = ActionClient(robot.node, ExecuteInstruction, "policy_node/execute_instruction")
        assert client.wait_for_server(timeout_sec=60)
        handle = wait_future(client.send_goal_async(ExecuteInstruction.Goal(instruction="touch the red cube")))
        assert handle.accepted
        wait_for(lambda: robot.counts()["fwd"] >= 10, what="motion", process=proc)
        result_future = handle.get_result_async()
        server_pid = int(proc.output().split("policy server pid ")[1].split(")")[0])
        proc.proc.send_signal(signal.SIGINT)
        result = wait_future(result_future, what="the goal's result after SIGINT")
        assert proc.proc.wait(timeout=30) == 0
        out = proc.output()
        client.destroy()
    assert result.status == 6 and result.result.outcome == R.OUTCOME_ABORTED  # GoalStatus ABORTED
    assert "shutting down" in result.result.message
    assert "Traceback" not in out and "context is invalid" not in out
    assert not os.path.exists(f"/proc/{server_pid}"), "the policy server process outlived the node"


def test_success_left_over_from_the_previous_task_does_not_end_a_new_goal(robot, tmp_path):
    with start_node(tmp_path, "output.mode:=forward_position") as proc:
        wait_active(robot, proc)
        client = ActionClient(robot.node, ExecuteInstruction, "policy_node/execute_instruction")
        assert client.wait_for_server(timeout_sec=60)
        wait_for(lambda: robot.success_pub.get_subscription_count() > 0, what="node subscribed", process=proc)
        # The previous task's success, still being repeated; acknowledged by the node's reader
        # (reliable QoS) before the goal is sent.
        robot.success_pub.publish(Bool(data=True))
        assert robot.success_pub.wait_for_all_acked(Duration(seconds=30))
        repeat = robot.node.create_timer(0.05, lambda: robot.success_pub.publish(Bool(data=True)))
        goal = ExecuteInstruction.Goal(instruction="touch the red cube", max_steps=30)
        result = wait_future(wait_future(client.send_goal_async(goal)).get_result_async(), what="result").result
        assert result.outcome == R.OUTCOME_MAX_STEPS, result.message
        robot.node.destroy_timer(repeat)
        n = robot.counts()["fwd"]
        handle = wait_future(client.send_goal_async(ExecuteInstruction.Goal(instruction="touch the blue cube")))
        wait_for(lambda: robot.counts()["fwd"] >= n + 10, what="motion for the second goal", process=proc)
        robot.success_pub.publish(Bool(data=False))
        robot.success_pub.publish(Bool(data=True))
        result = wait_future(handle.get_result_async(), what="result").result
        assert result.outcome == R.OUTCOME_SUCCEEDED and result.steps > 0, result.message
        client.destroy()


def test_status_is_holding_after_cancel_and_no_dry_queue_warning_between_instructions(robot, tmp_path):
    statuses = []
    robot.node.create_subscription(PolicyStatus, "policy_node/status", statuses.append, 10)
    with start_node(tmp_path, "output.mode:=forward_position", "status_rate:=20.0") as proc:
        wait_active(robot, proc)
        client = ActionClient(robot.node, ExecuteInstruction, "policy_node/execute_instruction")
        assert client.wait_for_server(timeout_sec=60)
        for text in ("touch the red cube", "push the blue cube left", "touch the green cube"):
            handle = wait_future(client.send_goal_async(ExecuteInstruction.Goal(instruction=text)))
            n = robot.counts()["fwd"]
            wait_for(lambda: robot.counts()["fwd"] >= n + 10, what=f"motion for '{text}'", process=proc)
            wait_future(handle.cancel_goal_async(), what="cancel")
            assert wait_future(handle.get_result_async(), what="result").result.outcome == R.OUTCOME_CANCELED
            k = len(statuses)
            wait_for(lambda: len(statuses) > k + 2, what="statuses after the cancel")
            assert statuses[-1].state == PolicyStatus.STATE_HOLDING, statuses[-1]
        out = proc.output()
        client.destroy()
    # Until its first chunk, a new instruction waits (an info line, when a tick comes before the chunk);
    # it is not a "queue ran dry" warning.
    starts = out.split("instruction from the ExecuteInstruction goal")[1:]
    assert len(starts) == 3
    for part in starts:
        first_chunk = part.split("running '")[0]
        assert "ran dry" not in first_chunk and "holding the arm" not in first_chunk, part
    # Frames received before activation never count as stale at activation.
    assert "stale input" not in out.split("instruction from")[0]


def test_killed_policy_server_makes_the_arm_hold_and_is_restarted(robot, tmp_path):
    with start_node(tmp_path, "output.mode:=forward_position") as proc:
        wait_active(robot, proc)
        instruct(robot, proc, "touch the red cube")
        wait_for(lambda: robot.counts()["fwd"] >= 10, what="commands", process=proc)
        pid = int(proc.output().split("policy server pid ")[1].split(")")[0])
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: f"(pid {pid}) exited with code -9" in proc.output(), what="death reported", process=proc)
        wait_for(lambda: "policy server running again" in proc.output(), what="restart", process=proc)
        n = robot.counts()["fwd"]
        wait_for(lambda: robot.counts()["fwd"] > n + 10, what="commands after the restart", process=proc)
        assert proc.alive()


def test_the_control_loop_process_holds_no_torch_while_its_policy_server_does(robot, tmp_path):
    """model.process: server keeps the model out of the node's interpreter entirely: torch is mapped
    into the policy server process only (importing it cost the node ~5 s of start-up and ~250 MB)."""
    with start_node(tmp_path, "output.mode:=forward_position") as proc:
        wait_active(robot, proc)
        instruct(robot, proc, "touch the red cube")
        wait_for(lambda: robot.counts()["fwd"] >= 5, what="commands", process=proc)
        server = int(proc.output().split("policy server pid ")[1].split(")")[0])

        def maps(pid):
            with open(f"/proc/{pid}/maps") as f:
                return f.read()
        assert "libtorch" in maps(server)
        assert "libtorch" not in maps(proc.proc.pid)
