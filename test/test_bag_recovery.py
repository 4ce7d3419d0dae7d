"""Crash safety: a recorder killed with SIGKILL loses at most the last second, and
`vla-ros bag reindex` makes what it left readable (MCAP summary rebuilt from the complete
chunks, sqlite3's committed batches folded in, metadata.yaml written anew).
"""
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from mcap.reader import make_reader
from rclpy.qos import QoSProfile
from rclpy.serialization import serialize_message
from rosbags.rosbag2 import Reader as RosbagsReader
from ruamel.yaml import YAML
from sensor_msgs.msg import Image, JointState

from ros_testing import RosProcess, executable, spinning_node, wait_for
from vla_ros.data.bag_reindex import reindex
from vla_ros.data.bags import BagError, BagReader, BagWriter, read_bag

T0 = 1_700_000_000_000_000_000


def _joint_state(i):
    return serialize_message(JointState(name=[f"j{i}"], position=[float(i)] * 7))


def test_reindex_recovers_exactly_the_complete_chunks_of_a_cut_mcap(tmp_path):
    bag = tmp_path / "cut"
    written = []
    with BagWriter(bag, chunk_size=4096) as w:
        w.add_topic("/joint_states", "sensor_msgs/msg/JointState")
        w.add_topic("/slow", "std_msgs/msg/String")
        for i in range(600):
            t = T0 + i * 1_000_000
            written.append(("/joint_states", t, _joint_state(i)))
            w.write("/joint_states", t, written[-1][2])
    mcap = bag / "cut.mcap"
    with mcap.open("rb") as f:
        chunks = sorted(make_reader(f).get_summary().chunk_indexes, key=lambda c: c.chunk_start_offset)
    assert len(chunks) > 10
    # Cut in the middle of the 8th chunk, as a kill during its write does: the first 7 survive.
    cut = chunks[7].chunk_start_offset + chunks[7].chunk_length // 2
    mcap.write_bytes(mcap.read_bytes()[:cut])
    (bag / "metadata.yaml").unlink()
    with pytest.raises(BagError, match="no metadata.yaml.*vla-ros bag reindex"):
        BagReader(bag)
    expected = [m for m in written if m[1] <= chunks[6].message_end_time]
    report = reindex(bag)
    assert report.messages == len(expected) and report.files[0].rebuilt and report.files[0].note
    assert [(m.topic, m.timestamp, m.data) for m in read_bag(bag)] == expected
    meta = YAML(typ="safe").load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["message_count"] == len(expected) and meta["relative_file_paths"] == ["cut.mcap"]
    tm = meta["topics_with_message_count"][0]
    assert tm["message_count"] == len(expected) and tm["topic_metadata"]["type_description_hash"].startswith("RIHS01_")
    assert tm["topic_metadata"]["offered_qos_profiles"][0]["reliability"] == "reliable"
    with RosbagsReader(bag) as r:   # an index any MCAP reader can use
        assert sum(1 for _ in r.messages()) == len(expected)
    # A second reindex leaves the now complete file as it is.
    again = reindex(bag)
    assert not again.files[0].rebuilt and again.messages == len(expected)


def test_reindex_of_a_closed_bag_rewrites_the_same_metadata(tmp_path):
    bag = tmp_path / "closed"
    with BagWriter(bag, storage="sqlite3") as w:
        w.add_topic("/joint_states", "sensor_msgs/msg/JointState", reliability="best_effort", depth=5)
        for i in range(30):
            w.write("/joint_states", T0 + i, _joint_state(i))
    before = YAML(typ="safe").load((bag / "metadata.yaml").read_text())
    report = reindex(bag)
    assert report.messages == 30 and not report.files[0].rebuilt
    assert YAML(typ="safe").load((bag / "metadata.yaml").read_text()) == before


def _record_and_kill(tmp_path, storage):
    """Run recorder_node on a 200 Hz JointState and a 30 Hz 160x120 image stream, SIGKILL it 2.5 s
    in; return (bag, publish times by topic, kill time)."""
    rate = {"/joint_states": 200.0, "/cam/image_raw": 30.0}
    published = {t: [] for t in rate}
    with spinning_node("recovery_publisher") as n:
        qos = QoSProfile(depth=1000)
        pubs = {"/joint_states": n.node.create_publisher(JointState, "/joint_states", qos),
                "/cam/image_raw": n.node.create_publisher(Image, "/cam/image_raw", qos)}
        rec = RosProcess(executable("recorder_node", "--ros-args", "-p", "topics:=[/joint_states, /cam/image_raw]",
                                    "-p", f"output_dir:={tmp_path}", "-p", "bag_name:=killed",
                                    "-p", f"storage:={storage}"), tmp_path / "recorder.log")
        try:
            for topic, pub in pubs.items():
                wait_for(lambda t=topic: f"recording {t} (" in rec.output(), what=f"recorder on {topic}", process=rec)
                wait_for(lambda p=pub: p.get_subscription_count() >= 1, what=f"match on {topic}", process=rec)
            pixels = np.zeros(160 * 120 * 3, dtype=np.uint8)
            start = time.monotonic()
            due = {t: start for t in rate}
            while time.monotonic() - start < 2.5:
                now = time.monotonic()
                for topic, hz in rate.items():
                    if now >= due[topic]:
                        i = len(published[topic])
                        if topic == "/joint_states":
                            pubs[topic].publish(JointState(name=[f"j{i}"], position=[float(i)]))
                        else:
                            img = Image(height=120, width=160, encoding="rgb8", step=480, data=pixels.tobytes())
                            img.header.frame_id = f"f{i}"
                            pubs[topic].publish(img)
                        published[topic].append(time.monotonic())
                        due[topic] += 1.0 / hz
                time.sleep(0.001)
            killed_at = time.monotonic()
            rec.proc.send_signal(signal.SIGKILL)   # by pid: the process we started
            rec.proc.wait(timeout=30)
        finally:
            rec.stop()
    return tmp_path / "killed", published, killed_at


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_sigkilled_recorder_loses_at_most_the_last_second(tmp_path, storage):
    bag, published, killed_at = _record_and_kill(tmp_path, storage)
    assert not (bag / "metadata.yaml").exists()
    vla_ros = str(Path(sys.prefix) / "lib" / "vla_ros" / "vla-ros")
    out = subprocess.run([vla_ros, "bag", "reindex", str(bag)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "metadata.yaml written" in out.stdout
    with BagReader(bag) as r:
        assert r.warnings == []
        got = {t: [m.data for m in r.messages([t])] for t in r.topics}
    for topic, times in published.items():
        must = sum(1 for t in times if t < killed_at - 1.0)
        n = len(got.get(topic, []))
        assert must <= n <= len(times), (topic, must, n, len(times))
    # What was recovered is the stream from its start, in order, without gaps.
    from rclpy.serialization import deserialize_message
    names = [deserialize_message(d, JointState).name[0] for d in got["/joint_states"]]
    assert names == [f"j{i}" for i in range(len(names))]
    frames = [deserialize_message(d, Image).header.frame_id for d in got["/cam/image_raw"]]
    assert frames == [f"f{i}" for i in range(len(frames))]
