"""Test peer: echoes an Image and an ActionChunk and serves ExecuteInstruction.

Run in its own process by test_interfaces_cross_process.py so that messages cross real
Fast DDS between processes. The action server counts steps at 50 Hz, sends feedback for
each step, succeeds after goal.max_steps and honours cancel.
"""
import time

import rclpy
from rclpy.action import ActionServer, CancelResponse, GoalResponse
from rclpy.callback_groups import ReentrantCallbackGroup
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image

from vla_ros.action import ExecuteInstruction
from vla_ros.msg import ActionChunk


class InterfacePeer(Node):
    def __init__(self):
        super().__init__("interface_peer")
        qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
        self.image_out = self.create_publisher(Image, "peer/image_out", qos)
        self.chunk_out = self.create_publisher(ActionChunk, "peer/chunk_out", qos)
        self.create_subscription(Image, "peer/image_in", self.image_out.publish, qos)
        self.create_subscription(ActionChunk, "peer/chunk_in", self.chunk_out.publish, qos)
        self.server = ActionServer(
            self, ExecuteInstruction, "peer/execute_instruction", self.execute,
            goal_callback=lambda goal: GoalResponse.ACCEPT,
            cancel_callback=lambda handle: CancelResponse.ACCEPT,
            callback_group=ReentrantCallbackGroup())
        self.get_logger().info("interface peer ready")

    def execute(self, handle):
        goal = handle.request
        start = time.monotonic()
        result = ExecuteInstruction.Result()
        step = 0
        while step < goal.max_steps:
            if handle.is_cancel_requested:
                handle.canceled()
                result.outcome = ExecuteInstruction.Result.OUTCOME_CANCELED
                result.steps, result.elapsed = step, time.monotonic() - start
                result.message = f"canceled at step {step}: {goal.instruction}"
                return result
            step += 1
            fb = ExecuteInstruction.Feedback(step=step, elapsed=time.monotonic() - start,
                                             latest_latency=0.001 * step, queue_depth=8)
            handle.publish_feedback(fb)
            time.sleep(0.02)  # the peer's own 50 Hz step rate, not a test wait
        handle.succeed()
        result.outcome = ExecuteInstruction.Result.OUTCOME_SUCCEEDED
        result.steps, result.elapsed = step, time.monotonic() - start
        result.message = f"done: {goal.instruction}"
        return result


def main():
    rclpy.init()
    node = InterfacePeer()
    executor = MultiThreadedExecutor(num_threads=4)
    executor.add_node(node)
    try:
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.destroy_node()
        rclpy.try_shutdown()


if __name__ == "__main__":
    main()
