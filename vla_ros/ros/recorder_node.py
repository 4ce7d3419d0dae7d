"""Record topics into a rosbag2 bag (MCAP by default), as `ros2 bag record` does, without rosbag2.

Each topic's type is discovered from the graph: the node waits until the topic has a
publisher, then subscribes with raw=True (messages stay serialized) and a QoS that matches
what its publishers offer (best-effort when any publisher is best-effort, as camera drivers
are; transient local when all are). The graph does not tell a publisher's history depth, so the
subscription's is deep: `queue_depth` (10,000) messages, or `large_queue_depth` (100) for types
with a byte array (images, compressed images, point clouds: up to megabytes each).

Receiving and writing are apart: the subscription callback takes every message DDS holds for
the topic, stamps each with the node clock (use_sim_time with /clock is honoured) and puts it
on a write queue bounded by `write_queue_mb`; a writer thread writes the queue to storage and
flushes at least every 0.5 s (MCAP chunk, sqlite3 commit). Should the writer fall that far
behind, new messages are dropped, counted per topic and said in one warning line (at most one
a second while it lasts) and in the final summary.

SIGINT or SIGTERM stops taking messages, writes everything queued, closes the bag (MCAP summary
and metadata.yaml with message counts) and exits 0.

Parameters: SPEC below (README's table is generated from it).
"""
from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, ReliabilityPolicy
from rclpy.signals import SignalHandlerOptions

from vla_ros.data.bag_queue import QueuedBagWriter
from vla_ros.data.bags import STORAGES, BagError, BagWriter
from vla_ros.ros import params
from vla_ros.ros.messages import message_class
from vla_ros.ros.params import PARAM_ERRORS, T, Spec
from vla_ros.ros.qos import offered_qos, qos
from vla_ros.ros.shutdown import StopSignal

GRAPH_POLL = 0.1  # s between looks at the graph for publishers of topics not recorded yet
# The graph does not tell a publisher's history depth (DDS does not carry it), so the queue is deep
# enough for bursts of 10,000 small messages; for types with a byte array (images, point clouds),
# 100 (over 3 s of 30 Hz frames, ~90 MB of 640x480 rgb8) bounds what DDS may hold for us.
QUEUE_DEPTH = 10000
LARGE_QUEUE_DEPTH = 100
WRITE_QUEUE_MB = 512
FLUSH_PERIOD = 0.5  # s: the longest anything received stays in memory (MCAP chunk, sqlite3 batch)
DRAIN_MAX = 1000    # messages one callback takes from a subscription before the executor runs others
DROP_LOG_PERIOD = 1.0  # s: at most one "dropped" warning line this often while drops go on

SPEC: Spec = {
    "topics": (T.STRING_ARRAY, None, "Topics to record, relative (to the node namespace) or absolute.", {}),
    "output_dir": (T.STRING, ".", "Directory the bag is created in.", {}),
    "bag_name": (T.STRING, "", "Bag directory name; empty: rosbag2_<YYYY_MM_DD-HH_MM_SS>.", {}),
    "storage": (T.STRING, "mcap", f"Storage format: {' or '.join(STORAGES)}.", {}),
    "status_period": (T.DOUBLE, 0.0, "Seconds between 'recorded:' message-count lines (only when counts "
                      "changed); 0: off.", {"range": (0.0, 3600.0)}),
    "queue_depth": (T.INTEGER, QUEUE_DEPTH, "Subscription history depth (KEEP_LAST) per topic.",
                    {"range": (1, 1000000)}),
    "large_queue_depth": (T.INTEGER, LARGE_QUEUE_DEPTH, "Subscription history depth for types with a byte array "
                          "(images, point clouds).", {"range": (1, 1000000)}),
    "write_queue_mb": (T.INTEGER, WRITE_QUEUE_MB, "Bound of the write queue in MiB; beyond it new messages are "
                       "dropped, counted and logged.", {"range": (1, 1 << 20)}),
}
RecorderParams = params.attributes_class("RecorderParams", SPEC)


def has_byte_array(cls, levels: int = 4) -> bool:
    """Whether a message class has a uint8[]/byte[] field, itself or in a nested message (images,
    compressed images, point clouds: messages that can be megabytes each)."""
    for ftype in cls.get_fields_and_field_types().values():
        base = ftype[len("sequence<"):-1] if ftype.startswith("sequence<") else ftype
        base = base.split(",")[0]
        if ftype.startswith("sequence<") and base in ("uint8", "octet", "char", "int8"):
            return True
        if "/" in base and levels > 0:
            try:
                if has_byte_array(message_class(base), levels - 1):
                    return True
            except ValueError:
                continue
    return False


class RecorderNode(Node):
    """Subscribes (raw) to the configured topics once they have publishers and writes a bag."""

    def __init__(self, **kwargs):
        super().__init__("recorder_node", **kwargs)
        params.declare(self, SPEC)
        p = params.read(self, SPEC, RecorderParams)
        topics, storage = [t for t in p.topics if t], p.storage
        if not [t for t in topics if t]:
            raise ValueError("parameter 'topics' is empty: name at least one topic to record")
        if storage not in STORAGES:
            raise ValueError(f"parameter 'storage' is {storage!r}: expected one of {sorted(STORAGES)}")
        self.topics = []
        for t in topics:
            name = self.resolve_topic_name(t)
            if t and name not in self.topics:
                self.topics.append(name)
        bag_name = p.bag_name or time.strftime("rosbag2_%Y_%m_%d-%H_%M_%S")
        self.bag_path = Path(p.output_dir).expanduser() / bag_name
        self._depth = p.queue_depth
        self._large_depth = p.large_queue_depth
        self._drops_logged = {}          # topic -> dropped count last logged
        self._last_drop_log = 0.0
        self._drop_lock = threading.Lock()
        bag = BagWriter(self.bag_path, storage, flush_period=FLUSH_PERIOD)   # BagError when it exists
        self.bag = QueuedBagWriter(bag, p.write_queue_mb << 20, on_drop=self._on_drop,
                                   flush_period=FLUSH_PERIOD)
        self._error_logged = False
        self._subs = {}
        self._waiting_logged = False
        self._started = time.monotonic()
        self.get_logger().info(f"recording to {self.bag_path} ({storage}): {', '.join(self.topics)}")
        self._graph_timer = self.create_timer(GRAPH_POLL, self._discover)
        self._health_timer = self.create_timer(DROP_LOG_PERIOD, self._check_writer)
        period = p.status_period
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
            depth = self._large_depth if has_byte_array(cls) else self._depth
            self._subs[topic] = self.create_subscription(
                cls, topic, lambda data, topic=topic: self._on_message(topic, data), qos(rel, dur, depth),
                raw=True)
            self.get_logger().info(f"recording {topic} ({msgtype}, {rel}, {dur}, depth {depth})")
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
        """Queue this message and every other one DDS already holds for the topic: one trip through
        the executor (a wait set built and waited on) per message would cap a burst at a few
        thousand messages a second on a small machine."""
        clock, put = self.get_clock(), self.bag.put
        put(topic, clock.now().nanoseconds, data)
        sub = self._subs.get(topic)
        if sub is None:
            return
        with sub.handle:
            for _ in range(DRAIN_MAX):
                taken = sub.handle.take_message(sub.msg_type, True)
                if taken is None:
                    break
                put(topic, clock.now().nanoseconds, taken[0])

    def _on_drop(self, topic: str, size: int):
        """A message was dropped because the write queue is full: one warning line a second at most."""
        now = time.monotonic()
        if now - self._last_drop_log < DROP_LOG_PERIOD:
            return
        with self._drop_lock:
            if now - self._last_drop_log < DROP_LOG_PERIOD:
                return
            self._last_drop_log = now
            self._log_drops("write queue full", warn=True)

    def _log_drops(self, why: str, warn: bool):
        dropped = dict(self.bag.dropped)
        new = {t: n - self._drops_logged.get(t, 0) for t, n in dropped.items() if n > self._drops_logged.get(t, 0)}
        if not new:
            return
        self._drops_logged = dropped
        n, b = self.bag.queued
        line = (f"dropped {sum(new.values())} messages ({why}: {n} messages, {b / 2**20:.0f} MiB queued, bound "
                f"{self.bag.max_bytes / 2**20:.0f} MiB; storage too slow?): "
                + ", ".join(f"{t} {k}" for t, k in new.items())
                + f"; dropped in all: {sum(dropped.values())}")
        (self.get_logger().warning if warn else self.get_logger().info)(line)

    def _check_writer(self):
        """Log drops that happened since the last line, and a writer that failed (disk full...)."""
        self._log_drops("write queue full", warn=True)
        if self.bag.error is not None and not self._error_logged:
            self._error_logged = True
            self.get_logger().error(f"writing {self.bag_path} failed: {type(self.bag.error).__name__}: "
                                    f"{self.bag.error}; messages received from now on are dropped")

    def counts_line(self) -> str:
        counts = self.bag.counts
        return ", ".join(f"{t} {counts.get(t, 0)}" for t in self.topics)

    def _log_status(self):
        line = self.counts_line()
        if line != self._last_status:
            self._last_status = line
            self.get_logger().info(f"recorded: {line}")

    def close(self):
        """Write everything queued, close the bag (metadata.yaml, storage summary); log what was
        recorded, and what was dropped if anything was."""
        n, b = self.bag.queued
        if n:
            self.get_logger().info(f"writing the {n} queued messages ({b / 2**20:.1f} MiB)")
        try:
            self.bag.close()
        except Exception as exc:  # noqa: BLE001 - said in the log; the bag may need `vla-ros bag reindex`
            self.get_logger().error(f"closing {self.bag_path} failed: {type(exc).__name__}: {exc}")
        total = sum(self.bag.counts.values())
        dropped = {t: k for t, k in self.bag.dropped.items() if k}
        self.get_logger().info(f"bag closed: {self.bag_path}, {total} messages: {self.counts_line()}; "
                               + (f"DROPPED {sum(dropped.values())} (write queue full): "
                                  + ", ".join(f"{t} {k}" for t, k in dropped.items()) if dropped
                                  else "none dropped")
                               + f"; write queue peak {self.bag.peak_bytes / 2**20:.1f} MiB")


def main(args=None, values: dict | None = None) -> int:
    """Record until SIGINT/SIGTERM, then close the bag and exit 0 (2: invalid parameters)."""
    rclpy.init(args=args, signal_handler_options=SignalHandlerOptions.NO)
    stop = StopSignal()
    try:
        node = RecorderNode(parameter_overrides=params.overrides(SPEC, values or {}))
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
