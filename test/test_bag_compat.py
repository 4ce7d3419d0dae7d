"""Reading bags as other writers leave them: rosbag2's older metadata, converted bags, split and
compressed bags, bags whose metadata.yaml disagrees with their storage file, bare .mcap files.

Each bag is written by our BagWriter and then edited on purpose to reproduce one condition
found in rosbag2's own test bags (a metadata.yaml rewritten, an sqlite3 `topics` row updated,
a storage file compressed or moved). Every test checks exact message counts: a reader that
pairs topics by identical QoS strings (rosbags does) reads these bags as no messages at all.
"""
import logging
import sqlite3
import shutil

import pytest
from backports import zstd
from rosbags.rosbag2 import Reader as RosbagsReader
from rosbags.typesys import Stores, get_typestore
from ruamel.yaml import YAML

from vla_ros.data.bags import BagError, BagReader, BagWriter, read_bag, write_bag

STORE = get_typestore(Stores.ROS2_JAZZY)
T0 = 1_700_000_000_000_000_000
# What Foxy's rosbag2 stored in the sqlite3 `topics` table of its "talker" bags: the deadline and
# lifespan as the DDS "infinite" (2147483647 s, 4294967295 ns), while metadata.yaml says 0/0.
FOXY_STORAGE_QOS = """- history: 3
  depth: 0
  reliability: 1
  durability: 2
  deadline:
    sec: 2147483647
    nsec: 4294967295
  lifespan:
    sec: 2147483647
    nsec: 4294967295
  liveliness: 1
  liveliness_lease_duration:
    sec: 2147483647
    nsec: 4294967295
  avoid_ros_namespace_conventions: false"""


def _string(text):
    return bytes(STORE.serialize_cdr(STORE.types["std_msgs/msg/String"](data=text), "std_msgs/msg/String"))


def _bag(path, storage="sqlite3", counts=None, start=T0, **options):
    """A bag of String messages: {topic: count}, interleaved 10 ms apart; returns the messages."""
    counts = counts or {"/chatter": 20, "/rosout_like": 7}
    msgs = []
    t = start
    for i in range(max(counts.values())):
        for topic, n in counts.items():
            if i < n:
                msgs.append((topic, t, _string(f"{topic} {i}")))
                t += 10_000_000
    write_bag(path, msgs, {topic: "std_msgs/msg/String" for topic in counts}, storage=storage, **options)
    return msgs


def _meta(bag):
    return YAML(typ="safe").load((bag / "metadata.yaml").read_text())


def _write_meta(bag, meta):
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    with (bag / "metadata.yaml").open("w") as f:
        yaml.dump(meta, f)


def _rosbags_count(bag):
    with RosbagsReader(bag) as r:
        return sum(1 for _ in r.messages())


def _counts(bag):
    out = {}
    for m in read_bag(bag):
        out[m.topic] = out.get(m.topic, 0) + 1
    return out


def test_storage_qos_differing_from_metadata_reads_every_message_and_says_so_once(tmp_path, caplog):
    bag = tmp_path / "talker"
    written = _bag(bag)
    db = sqlite3.connect(bag / "talker.db3")
    db.execute("UPDATE topics SET offered_qos_profiles = ?", (FOXY_STORAGE_QOS,))
    db.commit()
    db.close()
    assert _rosbags_count(bag) == 0, "the condition: rosbags pairs topics by identical QoS strings"
    with caplog.at_level(logging.WARNING, logger="vla_ros.bags"):
        with BagReader(bag) as r:
            msgs = list(r.messages())
            assert r.topics["/chatter"].count == 20 and r.topics["/rosout_like"].count == 7
            assert r.topics["/chatter"].durability == "volatile"  # the storage's profile (durability 2)
            assert len(r.warnings) == 1, r.warnings
            assert "different offered QoS for /chatter, /rosout_like; reading by the storage" in r.warnings[0]
    assert [(m.topic, m.timestamp, m.data) for m in msgs] == written
    assert sum("different offered QoS" in rec.getMessage() for rec in caplog.records) == 1


def test_metadata_qos_differing_from_mcap_channels_reads_every_message(tmp_path):
    bag = tmp_path / "edited"
    written = _bag(bag, storage="mcap")
    meta = _meta(bag)
    for t in meta["rosbag2_bagfile_information"]["topics_with_message_count"]:
        t["topic_metadata"]["offered_qos_profiles"][0]["deadline"] = {"sec": 0, "nsec": 0}
        t["topic_metadata"]["offered_qos_profiles"][0]["depth"] = 10
    _write_meta(bag, meta)
    assert _rosbags_count(bag) == 0
    with BagReader(bag) as r:
        assert [(m.topic, m.timestamp, m.data) for m in r.messages()] == written
        assert len(r.warnings) == 1 and "different offered QoS" in r.warnings[0]


def test_foxy_v4_metadata_with_infinite_storage_deadlines_reads_exact_counts(tmp_path):
    bag = tmp_path / "talker"
    _bag(bag, counts={"/topic": 20, "/rosout": 5})
    db = sqlite3.connect(bag / "talker.db3")
    db.execute("UPDATE topics SET offered_qos_profiles = ?, type_description_hash = ''", (FOXY_STORAGE_QOS,))
    db.execute("DROP TABLE message_definitions")   # schema version 3 and older had none
    db.execute("UPDATE schema SET schema_version = 2")
    db.commit()
    db.close()
    # metadata.yaml as Foxy wrote it: version 4, paths that include the bag directory, QoS as a
    # string with numeric enums and 0/0 durations, no type hashes, no per-file section, no distro.
    foxy_qos = FOXY_STORAGE_QOS.replace("2147483647", "0").replace("4294967295", "0")
    _write_meta(bag, {"rosbag2_bagfile_information": {
        "version": 4, "storage_identifier": "sqlite3", "relative_file_paths": ["talker/talker.db3"],
        "duration": {"nanoseconds": 240_000_000}, "starting_time": {"nanoseconds_since_epoch": T0},
        "message_count": 25,
        "topics_with_message_count": [
            {"topic_metadata": {"name": n, "type": "std_msgs/msg/String", "serialization_format": "cdr",
                                "offered_qos_profiles": foxy_qos}, "message_count": c}
            for n, c in (("/topic", 20), ("/rosout", 5))],
        "compression_format": "", "compression_mode": ""}})
    assert _rosbags_count(bag) == 0
    with BagReader(bag) as r:
        assert {n: t.count for n, t in r.topics.items()} == {"/topic": 20, "/rosout": 5}
        assert sum(1 for _ in r.messages()) == 25
        assert r.topics["/topic"].reliability == "reliable"
        assert r.warnings and "different offered QoS" in r.warnings[0]


def test_converted_bag_without_qos_in_storage_uses_metadata_qos(tmp_path):
    bag = tmp_path / "converted"
    _bag(bag, qos={"/chatter": ("best_effort", "volatile")})
    db = sqlite3.connect(bag / "converted.db3")
    db.execute("UPDATE topics SET offered_qos_profiles = ''")
    db.commit()
    db.close()
    assert _rosbags_count(bag) == 0
    with BagReader(bag) as r:
        assert _counts(bag) == {"/chatter": 20, "/rosout_like": 7}
        assert r.topics["/chatter"].reliability == "best_effort"   # from metadata.yaml
        assert r.topics["/rosout_like"].reliability == "reliable"
        assert r.warnings == [f"bag {bag}: the storage file records no offered QoS for /chatter, /rosout_like; "
                              f"using metadata.yaml's"]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_split_bag_reads_both_files_in_time_order(tmp_path, storage):
    suffix = {"mcap": ".mcap", "sqlite3": ".db3"}[storage]
    first = _bag(tmp_path / "a", storage, counts={"/chatter": 30, "/b": 3})
    second = _bag(tmp_path / "b", storage, counts={"/chatter": 12}, start=first[-1][1] + 10_000_000)
    bag = tmp_path / "split"
    bag.mkdir()
    shutil.move(tmp_path / "a" / f"a{suffix}", bag / f"split_0{suffix}")
    shutil.move(tmp_path / "b" / f"b{suffix}", bag / f"split_1{suffix}")
    meta = _meta(tmp_path / "a")
    info = meta["rosbag2_bagfile_information"]
    info["relative_file_paths"] = [f"split_0{suffix}", f"split_1{suffix}"]
    info["message_count"] = 45
    info["topics_with_message_count"][0]["message_count"] = 42
    _write_meta(bag, meta)
    with BagReader(bag) as r:
        msgs = list(r.messages())
        assert r.warnings == []
        assert len(r.files) == 2
        assert {n: t.count for n, t in r.topics.items()} == {"/chatter": 42, "/b": 3}
    assert [(m.topic, m.timestamp, m.data) for m in msgs] == first + second
    assert [m.timestamp for m in read_bag(bag, ["/chatter"])][-12:] == [t for _, t, _ in second]


def test_zstd_chunk_compressed_mcap_reads_exact_counts(tmp_path):
    bag = tmp_path / "zstd"
    written = _bag(bag, storage="mcap", compression="zstd", counts={"/chatter": 500})
    raw = (bag / "zstd.mcap").read_bytes()
    assert b"zstd" in raw and b"/chatter 499" not in raw   # chunks are compressed
    assert [(m.topic, m.timestamp, m.data) for m in read_bag(bag)] == written
    assert _rosbags_count(bag) == 500


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_zstd_file_compressed_bag_reads_exact_counts(tmp_path, storage):
    """rosbag2's `--compression-mode file --compression-format zstd`: each storage file zstd'd."""
    suffix = {"mcap": ".mcap", "sqlite3": ".db3"}[storage]
    bag = tmp_path / "cfile"
    written = _bag(bag, storage)
    plain = bag / f"cfile{suffix}"
    with plain.open("rb") as src, zstd.open(bag / f"cfile{suffix}.zstd", "wb") as dst:
        shutil.copyfileobj(src, dst)
    plain.unlink()
    meta = _meta(bag)
    info = meta["rosbag2_bagfile_information"]
    info.update(compression_format="zstd", compression_mode="FILE", relative_file_paths=[f"cfile{suffix}.zstd"])
    _write_meta(bag, meta)
    assert [(m.topic, m.timestamp, m.data) for m in read_bag(bag)] == written


def test_zstd_message_compressed_bag_reads_exact_counts(tmp_path):
    bag = tmp_path / "cmsg"
    written = _bag(bag)
    db = sqlite3.connect(bag / "cmsg.db3")
    for rowid, data in db.execute("SELECT id, data FROM messages").fetchall():
        db.execute("UPDATE messages SET data = ? WHERE id = ?", (zstd.compress(data), rowid))
    db.commit()
    db.close()
    meta = _meta(bag)
    meta["rosbag2_bagfile_information"].update(compression_format="zstd", compression_mode="MESSAGE")
    _write_meta(bag, meta)
    assert [(m.topic, m.timestamp, m.data) for m in read_bag(bag)] == written


def test_counts_differing_from_metadata_name_the_topics_and_the_difference(tmp_path):
    bag = tmp_path / "counts"
    _bag(bag, storage="mcap")
    meta = _meta(bag)
    topics = meta["rosbag2_bagfile_information"]["topics_with_message_count"]
    topics[0]["message_count"] = 23            # /chatter: 20 stored
    topics.append({"topic_metadata": dict(topics[1]["topic_metadata"], name="/gone"), "message_count": 4})
    _write_meta(bag, meta)
    with BagReader(bag) as r:
        assert r.message_count == 27
        assert r.warnings == [f"bag {bag}: message counts differ from metadata.yaml: /chatter 23 in metadata.yaml, "
                              f"20 in storage (-3); /gone 4 in metadata.yaml, 0 in storage (-4)"]


@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_bare_storage_file_without_metadata_is_a_bag(tmp_path, storage):
    suffix = {"mcap": ".mcap", "sqlite3": ".db3"}[storage]
    written = _bag(tmp_path / "rec", storage)
    bare = tmp_path / f"bare{suffix}"
    shutil.move(tmp_path / "rec" / f"rec{suffix}", bare)
    with BagReader(bare) as r:
        assert r.storage == storage and r.warnings == [] and r.metadata is None
        assert [(m.topic, m.timestamp, m.data) for m in r.messages()] == written
        assert r.topics["/chatter"].type_hash.startswith("RIHS01_")


def test_unreadable_bags_raise_bag_error_with_the_reason(tmp_path):
    bag = tmp_path / "b"
    _bag(bag, storage="mcap")
    (bag / "b.mcap").rename(bag / "elsewhere.mcap")
    with pytest.raises(BagError, match=r"storage file\(s\) named in metadata.yaml are missing: \['b.mcap'\]"):
        BagReader(bag)
    (bag / "elsewhere.mcap").rename(bag / "b.mcap")
    meta = _meta(bag)
    meta["rosbag2_bagfile_information"].update(compression_format="lz4", compression_mode="FILE")
    _write_meta(bag, meta)
    with pytest.raises(BagError, match="compression 'lz4' is not supported"):
        BagReader(bag)
    (bag / "metadata.yaml").write_text("rosbag2_bagfile_information: [unclosed")
    with pytest.raises(BagError, match="cannot read metadata.yaml"):
        BagReader(bag)
    (bag / "metadata.yaml").unlink()
    with pytest.raises(BagError, match=r"no metadata.yaml.*it holds \['b.mcap'\].*vla-ros bag reindex"):
        BagReader(bag)
    cut = tmp_path / "cut.mcap"
    cut.write_bytes((bag / "b.mcap").read_bytes()[:-100])
    with pytest.raises(BagError, match="cut.mcap is truncated.*vla-ros bag reindex"):
        BagReader(cut)
    junk = tmp_path / "notes.txt"
    junk.write_text("not a bag")
    with pytest.raises(BagError, match="not a bag directory nor a .mcap or .db3 file"):
        BagReader(junk)


def test_writer_metadata_is_what_rosbag2_writes(tmp_path, monkeypatch):
    monkeypatch.setenv("ROS_DISTRO", "jazzy")
    with BagWriter(tmp_path / "m", compression="zstd") as bag:
        bag.add_topic("/chatter", "std_msgs/msg/String", reliability="best_effort", depth=7)
        bag.write("/chatter", T0, _string("x"))
    info = _meta(tmp_path / "m")["rosbag2_bagfile_information"]
    assert info["ros_distro"] == "jazzy" and info["version"] == 9
    assert info["topics_with_message_count"][0]["topic_metadata"]["offered_qos_profiles"][0]["depth"] == 7
    from mcap.reader import make_reader
    with open(tmp_path / "m" / "m.mcap", "rb") as f:
        summary = make_reader(f).get_summary()
    channel = next(iter(summary.channels.values()))
    assert channel.metadata["topic_type_hash"] == info["topics_with_message_count"][0]["topic_metadata"][
        "type_description_hash"]
    assert "reliability: best_effort" in channel.metadata["offered_qos_profiles"]
    assert {c.compression for c in summary.chunk_indexes} == {"zstd"}
