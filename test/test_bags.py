"""Recording and replaying bags: recorder_node and player_node in their own processes, real DDS.

The recorder records images (best-effort, as camera drivers publish), joint states and
strings published by this test process; the player plays the bag back and every message
must arrive byte-identical and in order, at the recorded timing (scaled by rate).
"""
import json
import os
import re
import shutil
import signal
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from rosgraph_msgs.msg import Clock
from ruamel.yaml import YAML
from sensor_msgs.msg import Image, JointState
from std_msgs.msg import String
from std_srvs.srv import Trigger

from ros_testing import RawCollector, RosProcess, call_service, executable, spinning_node, wait_for
from vla_ros.data.bags import BagError, BagReader, BagWriter, read_bag, write_bag

N = 50
TOPICS = {"/cam/image_raw": "sensor_msgs/msg/Image", "/joint_states": "sensor_msgs/msg/JointState",
          "/chatter": "std_msgs/msg/String"}
RELIABLE = QoSProfile(depth=100)
BEST_EFFORT = QoSProfile(depth=100, reliability=ReliabilityPolicy.BEST_EFFORT)


def _messages(n=N, seed=7):
    """Seeded originals per topic: 64x64 rgb8 images, 7-joint states, strings."""
    rng = np.random.default_rng(seed)
    out = {t: [] for t in TOPICS}
    for i in range(n):
        img = Image(height=64, width=64, encoding="rgb8", step=64 * 3,
                    data=rng.integers(0, 256, 64 * 64 * 3, dtype=np.uint8).tobytes())
        img.header.frame_id = "cam"
        img.header.stamp.sec, img.header.stamp.nanosec = 100 + i, 1000 * i
        js = JointState(name=[f"panda_joint{k}" for k in range(1, 8)],
                        position=rng.normal(size=7).tolist(), velocity=rng.normal(size=7).tolist())
        out["/cam/image_raw"].append(img)
        out["/joint_states"].append(js)
        out["/chatter"].append(String(data=f"message {i}: {rng.integers(1 << 30)}"))
    return out


def _installed_hash(msgtype):
    pkg, _, name = msgtype.split("/")
    for prefix in os.environ["AMENT_PREFIX_PATH"].split(os.pathsep):
        path = Path(prefix) / "share" / pkg / "msg" / f"{name}.json"
        if path.is_file():
            return json.loads(path.read_text())["type_hashes"][0]["hash_string"]
    raise AssertionError(f"no installed type description for {msgtype}")


# ---------------------------------------------------------------------------- recording
@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """Record N messages on three topics with recorder_node; returns (bag path, originals, log)."""
    out = tmp_path_factory.mktemp("bags")
    originals = _messages()
    with spinning_node("bag_test_publisher") as n:
        pubs = {"/cam/image_raw": n.node.create_publisher(Image, "/cam/image_raw", qos_profile_sensor_data),
                "/joint_states": n.node.create_publisher(JointState, "/joint_states", RELIABLE),
                "/chatter": n.node.create_publisher(String, "/chatter", RELIABLE)}
        rec = RosProcess(executable("recorder_node", "--ros-args",
                                    "-p", "topics:=[/cam/image_raw, joint_states, chatter]",  # relative too
                                    "-p", f"output_dir:={out}", "-p", "bag_name:=run1",
                                    "-p", "status_period:=0.1"), out / "recorder.log")
        try:
            for topic in TOPICS:
                wait_for(lambda t=topic: f"recording {t} (" in rec.output(), what=f"recorder subscribing {topic}",
                         process=rec)
            for topic, pub in pubs.items():
                wait_for(lambda p=pub: p.get_subscription_count() >= 1, what=f"recorder matched on {topic}",
                         process=rec)
            for i in range(N):
                for topic, pub in pubs.items():
                    pub.publish(originals[topic][i])
                time.sleep(0.01)  # publish pacing (100 Hz), so the bag has real inter-message intervals
            want = "recorded: " + ", ".join(f"{t} {N}" for t in TOPICS)
            wait_for(lambda: want in rec.output(), what=f"'{want}' in the recorder's log", process=rec)
        finally:
            rc = rec.stop(signal.SIGINT)
    return out / "run1", originals, rec.output(), rc


def test_recorder_writes_mcap_bag_with_metadata_and_counts(recorded):
    bag, originals, log, rc = recorded
    assert rc == 0, log
    assert f"bag closed: {bag}, {3 * N} messages" in log, log
    meta = YAML(typ="safe").load((bag / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    assert meta["storage_identifier"] == "mcap"
    assert meta["version"] == 9
    assert meta["message_count"] == 3 * N
    assert [f["path"] for f in meta["files"]] == ["run1.mcap"] and (bag / "run1.mcap").is_file()
    topics = {t["topic_metadata"]["name"]: t for t in meta["topics_with_message_count"]}
    assert set(topics) == set(TOPICS)
    for name, msgtype in TOPICS.items():
        tm = topics[name]["topic_metadata"]
        assert topics[name]["message_count"] == N
        assert tm["type"] == msgtype and tm["serialization_format"] == "cdr"
        assert tm["type_description_hash"] == _installed_hash(msgtype)  # what ros2 bag play checks
        expected = "best_effort" if name == "/cam/image_raw" else "reliable"
        assert tm["offered_qos_profiles"][0]["reliability"] == expected


def test_recorded_bytes_are_the_published_messages_in_order(recorded):
    bag, originals, _, _ = recorded
    msgs = read_bag(bag)
    assert [m.timestamp for m in msgs] == sorted(m.timestamp for m in msgs)
    for topic, msgtype in TOPICS.items():
        cls = {"sensor_msgs/msg/Image": Image, "sensor_msgs/msg/JointState": JointState,
               "std_msgs/msg/String": String}[msgtype]
        # Compared as messages: serialize_message leaves CDR padding bytes uninitialized (and may
        # append 4 bytes of alignment), so its bytes are not a reference; the replay test
        # compares the bag's bytes with the replayed bytes exactly.
        data = [m.data for m in msgs if m.topic == topic]
        assert [deserialize_message(d, cls) for d in data] == originals[topic], topic
    only = read_bag(bag, topics=["/chatter"])
    assert {m.topic for m in only} == {"/chatter"} and len(only) == N
    with BagReader(bag) as r:
        assert r.topics["/cam/image_raw"].reliability == "best_effort"
        assert r.topics["/joint_states"].count == N
        assert r.end_time - r.start_time > 0.3e9  # N messages at 100 Hz


# ---------------------------------------------------------------------------- replay
def test_player_replays_every_message_byte_identical_in_order(recorded, tmp_path):
    bag, originals, _, _ = recorded
    with spinning_node("bag_test_player_listener") as n:
        col = RawCollector(n.node, {"/cam/image_raw": (Image, BEST_EFFORT), "/joint_states": (JointState, RELIABLE),
                                    "/chatter": (String, RELIABLE)})
        player = RosProcess(executable("player_node", "--ros-args", "-p", f"bag:={bag}",
                                       "-p", "wait_for_subscribers:=1"), tmp_path / "player.log")
        try:
            wait_for(lambda: all(col.count(t) >= N for t in TOPICS) or not player.alive(),
                     what="all replayed messages")
            wait_for(lambda: not player.alive(), what="player exiting at the end of the bag")
        finally:
            rc = player.stop()
        log = player.output()
        assert rc == 0, log
        assert f"done: published {3 * N} messages" in log, log
        for topic in TOPICS:
            # byte-identical to what was recorded, every message, in order
            assert col.data(topic) == [m.data for m in read_bag(bag, [topic])], topic


def _timing_bag(path, storage="sqlite3"):
    """A bag of String messages on /timing at irregular, known intervals (s)."""
    intervals = [0.05, 0.2, 0.1, 0.3, 0.05, 0.15, 0.25, 0.1, 0.2, 0.1]
    t, stamps = 5_000_000_000_000, []
    for dt in [0.0] + intervals:
        t += int(dt * 1e9)
        stamps.append(t)
    write_bag(path, [("/timing", s, serialize_message(String(data=f"t{i}"))) for i, s in enumerate(stamps)],
              {"/timing": "std_msgs/msg/String"}, storage=storage)
    return np.diff(stamps) / 1e9, stamps


def _play_and_time(args, log_path, n_expected, extra_topics=None, paused=False):
    """Play, collect what arrives and when. paused: the player starts paused and is resumed once
    this side's readers have matched its writers, so no message waits for discovery in a burst."""
    with spinning_node("bag_test_timing_listener") as n:
        topics = {"/timing": (String, RELIABLE), **(extra_topics or {})}
        col = RawCollector(n.node, topics)
        p = RosProcess(args, log_path)
        try:
            if paused:
                wait_for(lambda: all(s.get_publisher_count() >= 1 for s in col.subs) or not p.alive(),
                         what="readers matched")
                resume = n.node.create_client(Trigger, "/player_node/resume")
                assert resume.wait_for_service(timeout_sec=60), p.output()
                call_service(resume, Trigger.Request(), "resume")
            wait_for(lambda: col.count("/timing") >= n_expected or not p.alive(), what="replayed timing messages")
            wait_for(lambda: not p.alive(), what="player exiting")
        finally:
            rc = p.stop()
        assert rc == 0, p.output()
        assert col.count("/timing") == n_expected, p.output()
        return np.diff(col.times("/timing")), col, p.output()


def test_replay_follows_recorded_timing_and_publishes_clock(tmp_path):
    recorded_dt, stamps = _timing_bag(tmp_path / "timing")
    dt, col, log = _play_and_time(
        executable("player_node", "--ros-args", "-p", f"bag:={tmp_path / 'timing'}", "-p", "publish_clock:=true",
                   "-p", "wait_for_subscribers:=1"),
        tmp_path / "player.log", len(stamps), {"/clock": (Clock, RELIABLE)})
    assert "(sqlite3)" in log
    assert np.all(np.abs(dt - recorded_dt) < 0.06), (dt, recorded_dt)
    assert abs(dt.sum() - recorded_dt.sum()) < 0.15, (dt.sum(), recorded_dt.sum())
    clock = [deserialize_message(d, Clock).clock for d in col.data("/clock")]
    ns = [c.sec * 10**9 + c.nanosec for c in clock]
    assert ns and ns == sorted(ns), "the /clock never goes backwards"
    assert stamps[0] <= ns[0] and ns[-1] == stamps[-1]
    assert len(ns) > 20  # 40 Hz while waiting, over ~1.5 s


def test_replay_at_rate_2_halves_the_duration_via_cli(tmp_path):
    recorded_dt, stamps = _timing_bag(tmp_path / "timing", storage="mcap")
    vla_ros = str(Path(sys.prefix) / "lib" / "vla_ros" / "vla-ros")
    _, col, _ = _play_and_time([vla_ros, "replay", str(tmp_path / "timing"), "--rate", "2.0", "--start-paused"],
                               tmp_path / "player.log", len(stamps), paused=True)
    # Receive time against recorded time: the slope is 1 / rate. Played only once the readers have
    # matched (a reader still matching got the first four messages in one burst), and estimated as
    # the median of the slopes between every pair of messages (Theil-Sen), so one message delivered
    # late on loaded cores cannot move it, while a player at another rate still fails.
    received = np.array(col.times("/timing"))
    recorded = (np.array(stamps) - stamps[0]) / 1e9
    i, j = np.triu_indices(len(stamps), k=1)
    slope = float(np.median((received[j] - received[i]) / (recorded[j] - recorded[i])))
    assert 0.4 < slope < 0.62, (slope, np.diff(received), recorded_dt)


def test_replay_start_offset_topic_selection_and_loop(tmp_path):
    _, stamps = _timing_bag(tmp_path / "timing")
    # start_offset 0.6 s skips the messages recorded before (t0 + 0, .05, .25, .35 s).
    offset_after = sum(1 for s in stamps if s >= stamps[0] + 0.6e9)
    _play_and_time(executable("player_node", "--ros-args", "-p", f"bag:={tmp_path / 'timing'}",
                              "-p", "start_offset:=0.6", "-p", "topics:=[/timing]", "-p", "rate:=4.0",
                              "-p", "wait_for_subscribers:=1"), tmp_path / "offset.log", offset_after)
    with spinning_node("bag_test_loop_listener") as n:
        col = RawCollector(n.node, {"/timing": (String, RELIABLE)})
        p = RosProcess(executable("player_node", "--ros-args", "-p", f"bag:={tmp_path / 'timing'}",
                                  "-p", "loop:=true", "-p", "rate:=8.0", "-p", "wait_for_subscribers:=1"),
                       tmp_path / "loop.log")
        try:
            wait_for(lambda: col.count("/timing") > 2 * len(stamps), what="two passes of a looping bag", process=p)
        finally:
            rc = p.stop(signal.SIGINT)
        assert rc == 0, p.output()
        assert "starting over" in p.output()
        first = [bytes(d) for d in col.data("/timing")[:len(stamps)]]
        assert col.data("/timing")[len(stamps):2 * len(stamps)] == first


# ---------------------------------------------------------------------------- reader
def test_reader_reads_sqlite3_bags_written_by_rosbags_in_time_order(tmp_path):
    store = get_typestore(Stores.ROS2_JAZZY)
    path = tmp_path / "sq"
    written = []
    with Writer(path, version=9, storage_plugin=StoragePlugin.SQLITE3) as w:
        a = w.add_connection("/a", "std_msgs/msg/String", typestore=store)
        b = w.add_connection("/b", "sensor_msgs/msg/JointState", typestore=store)
        for i, t in enumerate([30, 10, 20, 50, 40]):   # written out of time order
            conn, msg = (a, String(data=f"a{i}")) if i % 2 == 0 else (b, JointState(name=[f"j{i}"], position=[i]))
            data = serialize_message(msg)
            w.write(conn, t, data)
            written.append((conn.topic, t, data))
    msgs = read_bag(path)
    assert [(m.topic, m.timestamp, m.data) for m in msgs] == sorted(written, key=lambda x: x[1])
    assert msgs[0].msgtype == "sensor_msgs/msg/JointState"
    assert [m.timestamp for m in read_bag(path, topics=["/a"])] == [20, 30, 40]
    with BagReader(path) as r:
        assert r.storage == "sqlite3" and r.message_count == 5 and (r.start_time, r.end_time) == (10, 50)
        with pytest.raises(BagError, match="no topic"):
            list(r.messages(["/missing"]))


def test_writer_knows_our_own_message_types(tmp_path):
    from vla_ros.msg import ActionChunk
    data = serialize_message(ActionChunk(names=["a"], horizon=1, dims=1, actions=[0.5]))
    with BagWriter(tmp_path / "ours") as bag:
        bag.add_topic("/policy_node/action_chunk", "vla_ros/msg/ActionChunk")
        bag.write("/policy_node/action_chunk", 1, data)
    meta = YAML(typ="safe").load((tmp_path / "ours" / "metadata.yaml").read_text())["rosbag2_bagfile_information"]
    tm = meta["topics_with_message_count"][0]["topic_metadata"]
    assert tm["type_description_hash"] == _installed_hash("vla_ros/msg/ActionChunk")
    assert read_bag(tmp_path / "ours")[0].data == data
    with pytest.raises(BagError, match="exists"):
        BagWriter(tmp_path / "ours")


def test_corrupt_or_missing_bags_raise_bag_error(recorded, tmp_path):
    bag, _, _, _ = recorded
    with pytest.raises(BagError, match="does not exist"):
        read_bag(tmp_path / "nothing")
    no_meta = tmp_path / "no_meta"
    shutil.copytree(bag, no_meta)
    (no_meta / "metadata.yaml").unlink()
    with pytest.raises(BagError, match="metadata.yaml"):
        read_bag(no_meta)
    truncated = tmp_path / "truncated"
    shutil.copytree(bag, truncated)
    mcap = truncated / "run1.mcap"
    mcap.write_bytes(mcap.read_bytes()[: mcap.stat().st_size // 2])
    with pytest.raises(BagError, match="truncated"):
        read_bag(truncated)
    garbage = tmp_path / "garbage"
    shutil.copytree(bag, garbage)
    (garbage / "run1.mcap").write_bytes(b"not an mcap file at all" * 10)
    with pytest.raises(BagError, match="garbage"):
        read_bag(garbage)
    assert issubclass(BagError, ValueError)
    # The player refuses it with one line and exit code 2.
    p = RosProcess(executable("player_node", "--ros-args", "-p", f"bag:={truncated}"), tmp_path / "player.log")
    wait_for(lambda: not p.alive(), what="player exiting on a corrupt bag")
    assert p.stop() == 2
    out = p.output().strip()
    assert out.startswith("[player_node] cannot open bag") and "Traceback" not in out, out


def test_cli_record_makes_a_closed_bag_on_sigint(tmp_path):
    vla_ros = str(Path(sys.prefix) / "lib" / "vla_ros" / "vla-ros")
    p = RosProcess([vla_ros, "record", "--topics", "/cli_never_published", "--output-dir", str(tmp_path),
                    "--bag-name", "cli", "--storage", "sqlite3"], tmp_path / "record.log")
    wait_for(lambda: "recording to" in p.output(), what="the recorder starting", process=p)
    assert p.stop(signal.SIGINT) == 0, p.output()
    assert "bag closed" in p.output()
    with BagReader(tmp_path / "cli") as r:
        assert r.storage == "sqlite3" and r.message_count == 0


def test_bags_module_does_not_import_rclpy():
    import subprocess
    code = "import sys, vla_ros.data.bags; sys.exit('rclpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_player_skips_topics_whose_type_is_not_installed_with_one_warning(tmp_path):
    import sqlite3
    bag = tmp_path / "mixed"
    stamps = [5_000_000_000_000 + i * 50_000_000 for i in range(8)]
    write_bag(bag, [(t, s, serialize_message(String(data=f"{t} {i}"))) for i, s in enumerate(stamps)
                    for t in ("/timing", "/exotic")],
              {"/timing": "std_msgs/msg/String", "/exotic": "std_msgs/msg/String"}, storage="sqlite3")
    db = sqlite3.connect(bag / "mixed.db3")   # a type this machine does not have (the storage is read)
    db.execute("UPDATE topics SET type = 'robot_vendor_msgs/msg/Exotic' WHERE name = '/exotic'")
    db.commit()
    db.close()
    _, _, log = _play_and_time(executable("player_node", "--ros-args", "-p", f"bag:={bag}",
                                          "-p", "wait_for_subscribers:=1"), tmp_path / "player.log", len(stamps))
    assert log.count("skipping 1 topic(s) whose type is not installed: /exotic (robot_vendor_msgs/msg/Exotic)") == 1, log
    assert f"done: published {len(stamps)} messages" in log, log
