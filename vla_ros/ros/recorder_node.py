"""Record topics into a rosbag2 bag (MCAP by default), as `ros2 bag record` does, without rosbag2.

Each topic's type is discovered from the graph: the node waits until the topic has a
publisher, then subscribes with raw=True (messages stay serialized) and a QoS that matches
what its publishers offer (best-effort when any publisher is best-effort, as camera drivers
are; transient local when all are; keep-last 100). Every message is written with its receive
time on the node clock, so use_sim_time with /clock is honoured.

SIGINT or SIGTERM closes the bag (MCAP summary and metadata.yaml with message counts) and
exits 0: nothing received before the signal is lost.

Parameters:
  topics        string[]  topics to record, relative (to the node namespace) or absolute
  output_dir    string    directory the bag is created in (default: current directory)
  bag_name      string    bag directory name (default: rosbag2_<date>-<time>)
  storage       string    mcap or sqlite3
  status_period double    seconds between "recorded:" count lines while counts change (0: off)
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import rclpy
from rcl_interfaces.msg import ParameterDescriptor
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from vla_ros.data.bags import STORAGES, BagError, BagWriter
from vla_ros.ros.bag_common import (PARAM_ERRORS, StopSignal, descriptor, message_class, offered_qos, qos,
                                    string_array)

GRAPH_POLL = 0.1  # s between looks at the graph for publishers of topics not recorded yet
# The graph does not tell a publisher's history depth (DDS does not carry it), so the queue is deep
# enough for bursts: 10,000 small messages, or a second of 30 Hz images held up by the executor.
QUEUE_DEPTH = 10000
FLUSH_PERIOD = 0.5  # s: the longest anything received stays in memory (MCAP chunk, sqlite3 batch)


class RecorderNode(Node):
    """Subscribes (raw) to the configured topics once they have publishers and writes a bag."""

    def __init__(self, **kwargs):
        super().__init__("recorder_node", **kwargs)
        self.declare_parameter("topics", Parameter.Type.STRING_ARRAY, ParameterDescriptor(
            description="Topics to record, relative (to the node namespace) or absolute.", read_only=True))
        self.declare_parameter("output_dir", ".", descriptor("Directory the bag is created in.", read_only=True))
        self.declare_parameter("bag_name", "", descriptor(
            "Bag directory name; empty: rosbag2_<YYYY_MM_DD-HH_MM_SS>.", read_only=True))
        self.declare_parameter("storage", "mcap", descriptor(
            f"Storage format: {' or '.join(STORAGES)}.", read_only=True))
        self.declare_parameter("status_period", 0.0, descriptor(
            "Seconds between 'recorded:' message-count lines (only when counts changed); 0: off.",
            float_range=(0.0, 3600.0)))
        topics = string_array(self, "topics")
        storage = self.get_parameter("storage").value
        if not [t for t in topics if t]:
            raise ValueError("parameter 'topics' is empty: name at least one topic to record")
        if storage not in STORAGES:
            raise ValueError(f"parameter 'storage' is {storage!r}: expected one of {sorted(STORAGES)}")
        self.topics = []
        for t in topics:
            name = self.resolve_topic_name(t)
            if t and name not in self.topics:
                self.topics.append(name)
        bag_name = self.get_parameter("bag_name").value or time.strftime("rosbag2_%Y_%m_%d-%H_%M_%S")
        self.bag_path = Path(self.get_parameter("output_dir").value).expanduser() / bag_name
        self.bag = BagWriter(self.bag_path, storage, flush_period=FLUSH_PERIOD)   # BagError when it exists
        self._subs = {}
        self._waiting_logged = False
        self._started = time.monotonic()
        self.get_logger().info(f"recording to {self.bag_path} ({storage}): {', '.join(self.topics)}")
        self._graph_timer = self.create_timer(GRAPH_POLL, self._discover)
        # Slow topics too reach the file within FLUSH_PERIOD (a killed recorder loses at most that).
        self._flush_timer = self.create_timer(FLUSH_PERIOD / 2, self.bag.flush)
        period = self.get_parameter("status_period").value
        self._last_status = None
        if period > 0:
            self._status_timer = self.create_timer(period, self._log_status)

    def _discover(self):
        """Subscribe to every configured topic that now has a publisher."""
        for topic in self.topics:
            if topic in self._subs:
                continue
            infos = [i for i in self.get_publishers_info_by_topic(topic) if i.node_name != self.get_name()
                     or i.node_namespace != self.get_namespace()]
            if not infos:
                continue
            types = sorted({i.topic_type for i in infos})
            msgtype = types[0]
            if len(types) > 1:
                self.get_logger().warning(f"{topic} is published with several types {types}; recording {msgtype}")
            infos = [i for i in infos if i.topic_type == msgtype]
            reliable = all(i.qos_profile.reliability == ReliabilityPolicy.RELIABLE for i in infos)
            transient = all(i.qos_profile.durability == DurabilityPolicy.TRANSIENT_LOCAL for i in infos)
            rel = "reliable" if reliable else "best_effort"
            dur = "transient_local" if transient else "volatile"
            try:
                cls = message_class(msgtype)
                self.bag.add_topic(topic, msgtype, offered=[offered_qos(i.qos_profile) for i in infos])
            except (ValueError, BagError) as exc:
                self.get_logger().error(f"cannot record {topic}: {exc}")
                self._subs[topic] = None
                continue
            self._check_hash(topic, msgtype, infos)
            self._subs[topic] = self.create_subscription(
                cls, topic, lambda data, topic=topic: self._on_message(topic, data), qos(rel, dur, QUEUE_DEPTH),
                raw=True)
            self.get_logger().info(f"recording {topic} ({msgtype}, {rel}, {dur})")
        pending = [t for t in self.topics if t not in self._subs]
        if not pending:
            self._graph_timer.cancel()
        elif not self._waiting_logged and time.monotonic() - self._started > 2.0:
            self._waiting_logged = True
            self.get_logger().info(f"waiting for publishers on {', '.join(pending)}")

    def _check_hash(self, topic, msgtype, infos):
        hashes = {str(i.topic_type_hash) for i in infos if str(i.topic_type_hash).startswith("RIHS01_")}
        ours = self.bag.type_hash(topic)
        if hashes and ours not in hashes:
            self.get_logger().warning(f"{topic}: publisher's type hash {sorted(hashes)} differs from the installed "
                                      f"{msgtype} definition ({ours}); the bag records the installed one")

    def _on_message(self, topic: str, data: bytes):
        self.bag.write(topic, self.get_clock().now().nanoseconds, data)

    def counts_line(self) -> str:
        return ", ".join(f"{t} {self.bag.counts.get(t, 0)}" for t in self.topics)

    def _log_status(self):
        line = self.counts_line()
        if line != self._last_status:
            self._last_status = line
            self.get_logger().info(f"recorded: {line}")

    def close(self):
        """Close the bag (metadata.yaml, storage summary); log what was recorded."""
        self.bag.close()
        total = sum(self.bag.counts.values())
        self.get_logger().info(f"bag closed: {self.bag_path}, {total} messages: {self.counts_line()}")


def main(args=None, parameter_overrides=None) -> int:
    """Record until SIGINT/SIGTERM, then close the bag and exit 0 (2: invalid parameters)."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = StopSignal()
    try:
        node = RecorderNode(parameter_overrides=parameter_overrides or [])
    except (ValueError, BagError, *PARAM_ERRORS) as exc:
        print(f"[recorder_node] {exc}", file=sys.stderr)
        rclpy.try_shutdown()
        return 2
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    try:
        while rclpy.ok() and not stop:
            executor.spin_once(timeout_sec=0.1)
        for _ in range(1000):   # take what DDS already delivered before the signal
            executor.spin_once(timeout_sec=0.0)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        node.close()
        node.destroy_node()
        rclpy.try_shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
