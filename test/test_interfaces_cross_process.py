"""Messages and actions cross real Fast DDS between two processes, unchanged."""
import numpy as np
import pytest
from rclpy.action import ActionClient
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from builtin_interfaces.msg import Time

from ros_testing import ROOT, python_script, ros_process, send_goal, spinning_node, wait_for, wait_future
from vla_ros.action import ExecuteInstruction
from vla_ros.msg import ActionChunk

QOS = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)


@pytest.fixture(scope="module")
def peer(tmp_path_factory):
    log = tmp_path_factory.mktemp("peer") / "interface_peer.log"
    with ros_process(python_script(ROOT / "test" / "peers" / "interface_peer.py"), log) as proc:
        wait_for(lambda: "interface peer ready" in proc.output(), what="peer start", process=proc)
        yield proc


@pytest.fixture
def client():
    with spinning_node("interface_test_client") as n:
        yield n


def _echo(client, peer, msg_type, topic_in, topic_out, msg):
    received = []
    client.node.create_subscription(msg_type, topic_out, received.append, QOS)
    pub = client.node.create_publisher(msg_type, topic_in, QOS)
    wait_for(lambda: pub.get_subscription_count() > 0, what=f"peer subscribed to {topic_in}", process=peer)
    # Publish until the echo arrives: the return path (peer -> us) is discovered on its own.
    for _ in range(60):
        pub.publish(msg)
        try:
            wait_for(lambda: received, timeout=1.0, what=f"echo on {topic_out}", process=peer)
            break
        except AssertionError:
            if not peer.alive():
                raise
    assert received, f"no echo on {topic_out} after 60 publications"
    return received[0]


def test_image_640x480_rgb8_crosses_processes_byte_identical(client, peer):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(480, 640, 3), dtype=np.uint8)
    msg = Image(height=480, width=640, encoding="rgb8", is_bigendian=0, step=640 * 3)
    msg.header.frame_id = "camera_optical"
    msg.header.stamp = Time(sec=12, nanosec=345)
    msg.data = pixels.tobytes()
    echoed = _echo(client, peer, Image, "peer/image_in", "peer/image_out", msg)
    assert (echoed.height, echoed.width, echoed.encoding, echoed.step) == (480, 640, "rgb8", 1920)
    assert echoed.header.frame_id == "camera_optical" and echoed.header.stamp.nanosec == 345
    np.testing.assert_array_equal(np.frombuffer(echoed.data, np.uint8).reshape(480, 640, 3), pixels)


def test_action_chunk_custom_message_crosses_processes_unchanged(client, peer):
    actions = np.arange(8 * 7, dtype=np.float64).reshape(8, 7) / 10.0
    msg = ActionChunk(names=[f"joint{i}" for i in range(1, 8)], action_space="joint_position",
                      horizon=8, dims=7, actions=actions.ravel().tolist(), period=1 / 30,
                      observation_stamp=Time(sec=5, nanosec=6), inference_latency=0.0123,
                      instruction="push the red cube left")
    echoed = _echo(client, peer, ActionChunk, "peer/chunk_in", "peer/chunk_out", msg)
    assert echoed.names == msg.names and echoed.action_space == "joint_position"
    assert (echoed.horizon, echoed.dims) == (8, 7)
    np.testing.assert_array_equal(np.asarray(echoed.actions).reshape(8, 7), actions)
    assert echoed.observation_stamp == Time(sec=5, nanosec=6)
    assert echoed.instruction == "push the red cube left" and echoed.inference_latency == 0.0123


def test_execute_instruction_goal_gets_feedback_and_result(client, peer):
    ac = ActionClient(client.node, ExecuteInstruction, "peer/execute_instruction")
    assert ac.wait_for_server(timeout_sec=60), "action server not discovered"
    feedback = []
    goal = ExecuteInstruction.Goal(instruction="touch the blue cube", timeout=10.0, max_steps=5)
    handle = send_goal(ac, goal, feedback_callback=lambda m: feedback.append(m.feedback))
    assert handle.accepted
    result = wait_future(handle.get_result_async(), what="result").result
    assert result.outcome == ExecuteInstruction.Result.OUTCOME_SUCCEEDED
    assert result.steps == 5 and result.message == "done: touch the blue cube"
    # Feedback is best-effort ordered but must come from the goal's steps.
    wait_for(lambda: len(feedback) >= 1, what="feedback")
    assert all(1 <= f.step <= 5 for f in feedback) and feedback[-1].queue_depth == 8
    ac.destroy()


def test_execute_instruction_cancel_stops_the_goal(client, peer):
    ac = ActionClient(client.node, ExecuteInstruction, "peer/execute_instruction")
    assert ac.wait_for_server(timeout_sec=60)
    feedback = []
    goal = ExecuteInstruction.Goal(instruction="pick up the green cube", max_steps=100000)
    handle = wait_future(ac.send_goal_async(goal, feedback_callback=lambda m: feedback.append(m.feedback)),
                         what="goal response")
    assert handle.accepted
    wait_for(lambda: len(feedback) >= 3, what="three feedback messages")
    cancel = wait_future(handle.cancel_goal_async(), what="cancel response")
    assert len(cancel.goals_canceling) == 1
    result = wait_future(handle.get_result_async(), what="result after cancel").result
    assert result.outcome == ExecuteInstruction.Result.OUTCOME_CANCELED
    assert 3 <= result.steps < 100000
    ac.destroy()
