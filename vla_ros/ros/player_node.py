"""Play a rosbag2 bag (MCAP or sqlite3; ours or `ros2 bag record`'s) into the live graph.

Messages are published as they were recorded, serialized (raw CDR, never deserialized),
at their recorded timing scaled by `rate`, with the QoS their recorded publishers offered
(best-effort when any was; transient local when all were). Topic remapping works as for
any node (--ros-args -r /camera/image_raw:=/cam0/image_raw).

Parameters: SPEC below (README's table is generated from it).

Exits 0 at the end of the bag (or on SIGINT/SIGTERM), 2 on invalid parameters or an unreadable bag.
"""
from __future__ import annotations

import sys
import threading
import time

import rclpy
from rclpy.duration import Duration
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.signals import SignalHandlerOptions
from rclpy.time import Time
from rosgraph_msgs.msg import Clock
from std_srvs.srv import Trigger

from vla_ros.data.bags import BagError, BagReader
from vla_ros.ros import params
from vla_ros.ros.messages import message_class
from vla_ros.ros.params import PARAM_ERRORS, T, Spec
from vla_ros.ros.qos import qos
from vla_ros.ros.shutdown import StopSignal, spin_until_stopped

CLOCK_PERIOD = 0.025   # s of wall time between /clock messages while waiting for the next message
ACK_TIMEOUT = 5.0      # s to wait at the end for reliable subscribers to acknowledge everything

SPEC: Spec = {
    "bag": (T.STRING, "", "Bag directory (or its storage file).", {}),
    "rate": (T.DOUBLE, 1.0, "Playback speed factor (2.0: twice as fast).", {"range": (0.001, 1000.0)}),
    "start_offset": (T.DOUBLE, 0.0, "Seconds into the bag to start at.", {"range": (0.0, 1e9)}),
    "loop": (T.BOOL, False, "Play the bag again and again until SIGINT.", {}),
    "topics": (T.STRING_ARRAY, None, "Topics to play (as recorded); empty: all.", {}),
    "publish_clock": (T.BOOL, False, "Publish rosgraph_msgs/Clock on /clock from the bag time (40 Hz and before "
                      "each message), for nodes with use_sim_time.", {}),
    "wait_for_subscribers": (T.INTEGER, 0, "Wait until each played topic has at least this many subscribers before "
                             "starting.", {"range": (0, 1000)}),
    "start_paused": (T.BOOL, False, "Wait for a call of ~/resume (std_srvs/Trigger) before playing, like `ros2 bag "
                     "play --start-paused`: a caller can first make sure that its own readers have matched "
                     "(best-effort messages published before a reader matched are lost).", {}),
}
PlayerParams = params.attributes_class("PlayerParams", SPEC)


class PlayerNode(Node):
    """Publishers for the bag's topics and a play loop (`play`, run by main())."""

    def __init__(self, stop: threading.Event, **kwargs):
        super().__init__("player_node", **kwargs)
        self.stop = stop
        params.declare(self, SPEC)
        p = params.read(self, SPEC, PlayerParams)
        self.resumed = threading.Event()
        if not p.start_paused:
            self.resumed.set()
        self.create_service(Trigger, "~/resume", self._on_resume)
        path = p.bag
        if not path:
            raise ValueError("parameter 'bag' is empty: give the bag directory to play")
        self.rate = p.rate
        self.loop = p.loop
        self.min_subs = p.wait_for_subscribers
        self.reader = BagReader(path, log_warnings=False)
        for warning in self.reader.warnings:
            self.get_logger().warning(warning)
        wanted = [t for t in p.topics if t]
        unknown = [t for t in wanted if t not in self.reader.topics]
        if unknown:
            self.reader.close()
            raise BagError(f"bag {self.reader.path} has no topic(s) {unknown}; it has {sorted(self.reader.topics)}")
        self.pubs = {}
        skipped = []
        for topic in wanted or sorted(self.reader.topics):
            info = self.reader.topics[topic]
            try:
                cls = message_class(info.msgtype)
            except ValueError:
                skipped.append(f"{topic} ({info.msgtype})")   # as rosbag2 does: play the rest
                continue
            self.pubs[topic] = self.create_publisher(cls, topic, qos(info.reliability, info.durability))
        if skipped:
            self.get_logger().warning(f"skipping {len(skipped)} topic(s) whose type is not installed: "
                                      f"{', '.join(skipped)}")
        if not self.pubs:
            self.reader.close()
            raise BagError(f"bag {self.reader.path}: no topic to play (types not installed: {', '.join(skipped)})")
        self.topics = list(self.pubs)
        self.start = self.reader.start_time + int(round(p.start_offset * 1e9))
        self.clock_pub = (self.create_publisher(Clock, "/clock", qos("reliable", "volatile", 10))
                          if p.publish_clock else None)
        count = sum(self.reader.topics[t].count for t in self.topics)
        duration = max(self.reader.end_time - self.start, 0) / 1e9
        self.get_logger().info(
            f"playing {self.reader.path} ({self.reader.storage}): {count} messages on {len(self.topics)} topic(s), "
            f"{duration:.2f} s at rate {self.rate:g}{' (loop)' if self.loop else ''}"
            f"{', publishing /clock' if self.clock_pub else ''}")
        for topic in self.topics:
            info = self.reader.topics[topic]
            self.get_logger().info(f"  {topic} ({info.msgtype}, {info.count} messages, {info.reliability}, "
                                   f"{info.durability})")
        self.published = 0
        self._clock_ns = None

    def _publish_clock(self, bag_ns: int):
        """Publish the bag time on /clock; it never goes backwards within a pass."""
        if self.clock_pub is not None and (self._clock_ns is None or bag_ns > self._clock_ns):
            self._clock_ns = bag_ns
            self.clock_pub.publish(Clock(clock=Time(nanoseconds=bag_ns).to_msg()))

    def _on_resume(self, request, response):
        response.success = not self.resumed.is_set()
        response.message = "playing" if response.success else "already playing"
        if response.success:
            self.get_logger().info("resumed: playing")
        self.resumed.set()
        return response

    def _wait_for_resume(self) -> bool:
        if not self.resumed.is_set():
            self.get_logger().info("paused: call ~/resume (std_srvs/Trigger) to play")
        while not self.stop.is_set():
            if self.resumed.wait(0.05):
                return True
        return False

    def _wait_for_subscribers(self) -> bool:
        if self.min_subs <= 0:
            return True
        logged = False
        while not self.stop.is_set():
            short = [t for t, p in self.pubs.items() if p.get_subscription_count() < self.min_subs]
            if not short:
                return True
            if not logged:
                self.get_logger().info(f"waiting for {self.min_subs} subscriber(s) on {', '.join(short)}")
                logged = True
            self.stop.wait(0.02)
        return False

    def _play_once(self) -> bool:
        """One pass over the bag; False when stopped."""
        wall0 = time.monotonic()
        last_clock = None
        self._clock_ns = None   # a new pass (loop) starts the clock over at the bag's start
        for msg in self.reader.messages(self.topics, start=self.start):
            due = wall0 + (msg.timestamp - self.start) / 1e9 / self.rate
            while True:
                now = time.monotonic()
                if self.clock_pub is not None and (last_clock is None or now - last_clock >= CLOCK_PERIOD):
                    # never past the message about to be published: its stamp is the next clock
                    self._publish_clock(min(self.start + int((now - wall0) * self.rate * 1e9), msg.timestamp))
                    last_clock = now
                left = due - now
                if left <= 0:
                    break
                if self.stop.wait(min(left, CLOCK_PERIOD) if self.clock_pub is not None else left):
                    return False
            if self.stop.is_set():
                return False
            self._publish_clock(msg.timestamp)
            self.pubs[msg.topic].publish(msg.data)
            self.published += 1
        return True

    def play(self) -> None:
        if not self._wait_for_subscribers() or not self._wait_for_resume():
            return
        passes = 0
        while not self.stop.is_set():
            done = self._play_once()
            passes += 1
            if not done or not self.loop:
                break
            self.get_logger().info(f"end of bag (pass {passes}), starting over")
        for topic, pub in self.pubs.items():   # let reliable subscribers receive the last messages
            if self.reader.topics[topic].reliability == "reliable":
                pub.wait_for_all_acked(Duration(seconds=ACK_TIMEOUT))
        self.get_logger().info(f"{'stopped' if self.stop.is_set() else 'done'}: published {self.published} "
                               f"messages")

    def close(self):
        self.reader.close()


def main(args=None, values: dict | None = None) -> int:
    """Play the bag; exit 0 at its end (or on SIGINT/SIGTERM), 2 when it cannot be played."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = StopSignal()
    try:
        node = PlayerNode(stop.event, parameter_overrides=params.overrides(SPEC, values or {}))
    except (ValueError, *PARAM_ERRORS) as exc:   # BagError is a ValueError
        print(f"[player_node] {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    spinner = threading.Thread(target=spin_until_stopped, args=(executor, stop.event), daemon=True)
    spinner.start()
    code = 0
    try:
        node.play()
    except BagError as exc:
        node.get_logger().error(str(exc))
        code = 2
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        stop.event.set()
        spinner.join(timeout=2.0)
        node.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    sys.exit(main())
