"""Recorder throughput: a reliable burst is recorded without loss across processes, and what
was queued for writing when SIGINT came is in the bag; the write queue's bound and drop counts.

benchmarks/record_throughput.py measures the full load (1 kHz joint states, two 640x480
cameras, a burst of 10,000) on both storages.
"""
import threading

import pytest
from rclpy.duration import Duration
from rclpy.qos import HistoryPolicy, QoSProfile
from rclpy.serialization import deserialize_message, serialize_message
from sensor_msgs.msg import JointState
from std_msgs.msg import String

from ros_testing import RosProcess, executable, spinning_node, wait_for
from vla_ros.data.bag_queue import QueuedBagWriter
from vla_ros.data.bags import BagReader, BagWriter, read_bag

N = 2000
T0 = 1_700_000_000_000_000_000


def test_recorder_records_a_reliable_burst_exactly_and_writes_the_queue_on_sigint(tmp_path):
    """2,000 Strings (KEEP_LAST 2,000) and 2,000 JointStates (KEEP_ALL), interleaved as fast as this
    process publishes; SIGINT right after the recorder acknowledged them all: every one is in
    the bag, once, in order."""
    with spinning_node("burst_publisher") as n:
        pubs = {"/burst": n.node.create_publisher(String, "/burst", QoSProfile(depth=N)),
                "/joint_burst": n.node.create_publisher(
                    JointState, "/joint_burst", QoSProfile(history=HistoryPolicy.KEEP_ALL, depth=1))}
        rec = RosProcess(executable("recorder_node", "--ros-args", "-p", "topics:=[/burst, /joint_burst]",
                                    "-p", f"output_dir:={tmp_path}", "-p", "bag_name:=burst"),
                         tmp_path / "recorder.log")
        try:
            for topic, pub in pubs.items():
                wait_for(lambda t=topic: f"recording {t} (" in rec.output(), what=f"recorder on {topic}", process=rec)
                wait_for(lambda p=pub: p.get_subscription_count() >= 1, what=f"match on {topic}", process=rec)
            for i in range(N):
                pubs["/burst"].publish(String(data=f"burst {i}"))
                pubs["/joint_burst"].publish(JointState(name=[f"j{i}"], position=[float(i)]))
            for topic, pub in pubs.items():
                assert pub.wait_for_all_acked(Duration(seconds=60)), f"{topic} not acknowledged"
            # Everything is in the recorder's DDS reader now; most of it not yet in the file.
            assert rec.stop() == 0, rec.output()
        finally:
            rec.stop()
    log = rec.output()
    assert f"bag closed: {tmp_path / 'burst'}, {2 * N} messages: /burst {N}, /joint_burst {N}; none dropped" in log, log
    assert "depth 10000)" in log   # String and JointState have no byte array: the deep queue
    with BagReader(tmp_path / "burst") as r:
        assert r.warnings == []
        assert {t: i.count for t, i in r.topics.items()} == {"/burst": N, "/joint_burst": N}
        strings = [deserialize_message(m.data, String).data for m in r.messages(["/burst"])]
        joints = [deserialize_message(m.data, JointState).name[0] for m in r.messages(["/joint_burst"])]
    assert strings == [f"burst {i}" for i in range(N)]
    assert joints == [f"j{i}" for i in range(N)]


class GatedBagWriter(BagWriter):
    """A real BagWriter whose writes wait until the test opens the gate (storage that stalls)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()

    def write(self, topic, timestamp_ns, data):
        assert self.gate.wait(60), "gate never opened"
        super().write(topic, timestamp_ns, data)


def _data(i):
    return serialize_message(String(data=f"m{i:05d}" + "x" * 90))   # 108 bytes of CDR


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_close_writes_everything_queued_then_the_bag(tmp_path, storage):
    bag = GatedBagWriter(tmp_path / "q", storage)
    q = QueuedBagWriter(bag)
    q.add_topic("/a", "std_msgs/msg/String")
    for i in range(3000):
        assert q.put("/a", T0 + i, _data(i))
    assert q.queued[0] >= 3000 - 256   # the writer holds at most one batch, stuck at the gate
    closer = threading.Thread(target=q.close)
    closer.start()
    wait_for(lambda: not q.put("/a", T0 + 10**9, _data(0)), what="close() to refuse new messages")
    bag.gate.set()
    closer.join(60)
    assert not closer.is_alive()
    assert q.dropped == {"/a": 1} and q.received == {"/a": 3001} and q.queued == (0, 0)
    assert [m.data for m in read_bag(tmp_path / "q")] == [_data(i) for i in range(3000)]


def test_a_full_queue_drops_new_messages_counts_them_and_keeps_the_queued_ones(tmp_path):
    bag = GatedBagWriter(tmp_path / "full")
    drops = []
    size = len(_data(0))
    q = QueuedBagWriter(bag, max_bytes=100 * size, on_drop=lambda topic, n: drops.append((topic, n)))
    q.add_topic("/a", "std_msgs/msg/String")
    q.add_topic("/b", "std_msgs/msg/String")
    accepted = []
    for i in range(400):
        topic = "/a" if i % 2 else "/b"
        if q.put(topic, T0 + i, _data(i)):
            accepted.append((topic, _data(i)))
    # The writer took at most one batch before the gate stopped it; the queue holds 100 messages' bytes.
    assert 100 <= len(accepted) <= 100 + 256
    assert q.queued[1] <= 100 * size and q.peak_bytes <= 100 * size
    assert sum(q.dropped.values()) == 400 - len(accepted) == len(drops)
    assert q.received == {"/a": 200, "/b": 200}
    bag.gate.set()
    q.close()
    assert [(m.topic, m.data) for m in read_bag(tmp_path / "full")] == accepted
    # The counts the recorder logs: written per topic, and metadata.yaml agrees.
    with BagReader(tmp_path / "full") as r:
        assert {t: i.count for t, i in r.topics.items()} == q.counts


def test_a_storage_error_is_kept_and_raised_by_close(tmp_path):
    bag = BagWriter(tmp_path / "err")
    q = QueuedBagWriter(bag)
    q.add_topic("/a", "std_msgs/msg/String")
    q.put("/unknown", T0, _data(0))   # BagError in the writer thread: not added
    wait_for(lambda: q.error is not None, what="the writer thread to fail")
    assert not q.put("/a", T0, _data(1))   # after a failure, messages are counted as dropped
    with pytest.raises(Exception, match="not added"):
        q.close()
    assert q.dropped["/a"] == 1
