"""Storage files of a rosbag2 bag, written the way rosbag2 writes them, and its metadata.yaml.

- MCAP through `mcap` (the MCAP project's own Python library, as rosbag2_storage_mcap uses
  its C++ twin): profile "ros2", one schema per type (the ros2msg definition), one channel per
  topic with the metadata rosbag2 writes (`offered_qos_profiles`, `topic_type_hash`), chunks of
  `chunk_size` bytes, optionally zstd-compressed, and the "rosbag2" metadata record at close.
- sqlite3 with rosbag2's schema version 4 (tables `schema`, `metadata`, `topics`,
  `message_definitions`, `messages`), in WAL mode so that a killed writer leaves a consistent
  database holding every committed batch.

Both flush what they hold at least every `flush_period` seconds (an MCAP chunk is closed and
written, an sqlite3 transaction is committed): a writer killed with SIGKILL loses at most that
much. rosbag2 writes chunks only when they fill (768 KiB by default), which for a slow topic can
be minutes; `vla-ros bag reindex` then rebuilds the index and metadata.yaml (bag_reindex.py).
"""
from __future__ import annotations

import os
import sqlite3
import time
from io import StringIO
from pathlib import Path
from typing import Sequence

from mcap.writer import CompressionType, Writer as McapFileWriter
from rosbags.interfaces import Qos
from rosbags.rosbag2.metadata import dump_qos_v9
from ruamel.yaml import YAML

BAG_VERSION = 9          # rosbag2 metadata version written by Jazzy
SQLITE_SCHEMA_VERSION = 4
DEFAULT_CHUNK_SIZE = 1024 * 1024
DEFAULT_FLUSH_PERIOD = 0.5   # s: at most this much is lost when the writer is killed
MCAP_COMPRESSIONS = {"none": CompressionType.NONE, "zstd": CompressionType.ZSTD}


def ros_distro() -> str:
    """The ROS distribution rosbag2 would record: $ROS_DISTRO, else jazzy (our wheels)."""
    return os.environ.get("ROS_DISTRO") or "jazzy"


def library_id() -> str:
    try:
        from vla_ros import __version__
    except ImportError:  # pragma: no cover - partial installs
        __version__ = "unknown"
    return f"vla_ros-{__version__}"


def qos_yaml(profiles: Sequence[Qos]) -> str:
    """Offered QoS profiles serialized as rosbag2 (version 9) stores them in storage files."""
    if not profiles:
        return ""
    stream = StringIO()
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    yaml.dump(dump_qos_v9(list(profiles)), stream)
    return stream.getvalue().strip()


class TopicEntry:
    """A topic as the writer knows it: name, type, definition, hash, QoS and its count."""

    def __init__(self, tid: int, name: str, msgtype: str, msgdef: str, encoding: str, rihs01: str,
                 qos: Sequence[Qos]):
        self.id, self.name, self.msgtype, self.msgdef, self.encoding = tid, name, msgtype, msgdef, encoding
        self.rihs01, self.qos = rihs01, list(qos)
        self.count = 0


# ------------------------------------------------------------------------------- MCAP
class McapStorage:
    """One MCAP storage file, written as rosbag2_storage_mcap writes it."""

    suffix = ".mcap"

    def __init__(self, path: Path, chunk_size: int = DEFAULT_CHUNK_SIZE, compression: str = "none"):
        if compression not in MCAP_COMPRESSIONS:
            raise ValueError(f"unknown MCAP chunk compression {compression!r}: expected one of "
                             f"{sorted(MCAP_COMPRESSIONS)}")
        self.path = path
        self._file = open(path, "xb")
        self._writer = McapFileWriter(self._file, chunk_size=chunk_size, compression=MCAP_COMPRESSIONS[compression])
        self._writer.start(profile="ros2", library=library_id())
        self._schemas: dict[str, int] = {}
        self._channels: dict[int, int] = {}

    def add_topic(self, topic: TopicEntry) -> None:
        if topic.msgtype not in self._schemas:
            self._schemas[topic.msgtype] = self._writer.register_schema(
                topic.msgtype, topic.encoding, topic.msgdef.encode())
        self._channels[topic.id] = self._writer.register_channel(
            topic.name, "cdr", self._schemas[topic.msgtype],
            {"offered_qos_profiles": qos_yaml(topic.qos), "topic_type_hash": topic.rihs01})

    def write(self, topic: TopicEntry, timestamp: int, data: bytes) -> None:
        # rosbag2 stores the receive time as log time and the publish time (unknown here: same).
        self._writer.add_message(self._channels[topic.id], timestamp, data, timestamp)

    def flush(self) -> None:
        self._writer.flush()

    def close(self, metadata_yaml: str) -> None:
        # rosbag2_storage_mcap stores the bag's metadata in a Metadata record named "rosbag2".
        self._writer.add_metadata("rosbag2", {"serialized_metadata": metadata_yaml})
        self._writer.finish()
        self._file.close()


# ------------------------------------------------------------------------------- sqlite3
SQLITE_TABLES = """
CREATE TABLE schema(schema_version INTEGER PRIMARY KEY, ros_distro TEXT NOT NULL);
CREATE TABLE metadata(id INTEGER PRIMARY KEY, metadata_version INTEGER NOT NULL, metadata TEXT NOT NULL);
CREATE TABLE topics(id INTEGER PRIMARY KEY, name TEXT NOT NULL, type TEXT NOT NULL,
                    serialization_format TEXT NOT NULL, offered_qos_profiles TEXT NOT NULL,
                    type_description_hash TEXT NOT NULL);
CREATE TABLE message_definitions(id INTEGER PRIMARY KEY, topic_type TEXT NOT NULL, encoding TEXT NOT NULL,
                                 encoded_message_definition TEXT NOT NULL, type_description_hash TEXT NOT NULL);
CREATE TABLE messages(id INTEGER PRIMARY KEY, topic_id INTEGER NOT NULL, timestamp INTEGER NOT NULL,
                      data BLOB NOT NULL);
CREATE INDEX timestamp_idx ON messages (timestamp ASC);
"""


class Sqlite3Storage:
    """One sqlite3 storage file with rosbag2's schema, committed in batches (WAL mode)."""

    suffix = ".db3"

    def __init__(self, path: Path):
        if path.exists():
            raise FileExistsError(f"{path} exists already")
        self.path = path
        # isolation_level=None: we open and commit transactions ourselves (BEGIN ... COMMIT).
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        # WAL: a writer killed mid-batch leaves the database as of its last commit (rosbag2's
        # "resilient" storage preset does the same); synchronous=NORMAL is safe against a killed
        # process (the OS still holds what was written), only not against power loss.
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SQLITE_TABLES)
        self._db.execute("INSERT INTO schema(schema_version, ros_distro) VALUES (?, ?)",
                         (SQLITE_SCHEMA_VERSION, ros_distro()))
        self._types: set[str] = set()
        self._pending: list[tuple[int, int, bytes]] = []

    def add_topic(self, topic: TopicEntry) -> None:
        if topic.msgtype not in self._types:
            self._types.add(topic.msgtype)
            self._db.execute("INSERT INTO message_definitions (topic_type, encoding, encoded_message_definition, "
                             "type_description_hash) VALUES (?, ?, ?, ?)",
                             (topic.msgtype, topic.encoding, topic.msgdef, topic.rihs01))
        self._db.execute("INSERT INTO topics VALUES (?, ?, ?, ?, ?, ?)",
                         (topic.id, topic.name, topic.msgtype, "cdr", qos_yaml(topic.qos), topic.rihs01))

    def write(self, topic: TopicEntry, timestamp: int, data: bytes) -> None:
        self._pending.append((topic.id, timestamp, data))

    def flush(self) -> None:
        if self._pending:
            pending, self._pending = self._pending, []
            self._db.execute("BEGIN")
            self._db.executemany("INSERT INTO messages (topic_id, timestamp, data) VALUES (?, ?, ?)", pending)
            self._db.execute("COMMIT")

    def close(self, metadata_yaml: str) -> None:
        self.flush()
        self._db.execute("INSERT INTO metadata (metadata_version, metadata) VALUES (?, ?)",
                         (BAG_VERSION, metadata_yaml))
        finish_sqlite3(self._db)
        self._db.close()


def finish_sqlite3(db: sqlite3.Connection) -> None:
    """Fold the WAL into the database file and leave WAL mode, so that the .db3 file alone is
    the whole bag (readers that open it immutable, as rosbags does, ignore a -wal file)."""
    db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    db.execute("PRAGMA journal_mode=DELETE")


# ------------------------------------------------------------------------------- metadata.yaml
def metadata_dict(storage_identifier: str, files: Sequence[dict], topics: Sequence[dict],
                  compression_format: str = "", compression_mode: str = "", distro: str | None = None) -> dict:
    """metadata.yaml's content (version 9, as Jazzy's rosbag2 writes it).

    `files`: [{path, start, end, count}] per storage file (start/end: ns of its first/last
    message); `topics`: [{name, type, qos (list of Qos), hash, count}].
    """
    counted = [f for f in files if f["count"]]
    start = min((f["start"] for f in counted), default=0)
    end = max((f["end"] for f in counted), default=0)
    return {"rosbag2_bagfile_information": {
        "version": BAG_VERSION,
        "storage_identifier": storage_identifier,
        "duration": {"nanoseconds": end - start},
        "starting_time": {"nanoseconds_since_epoch": start},
        "message_count": sum(f["count"] for f in files),
        "topics_with_message_count": [
            {"topic_metadata": {"name": t["name"], "type": t["type"], "serialization_format": "cdr",
                                "offered_qos_profiles": dump_qos_v9(list(t["qos"])),
                                "type_description_hash": t["hash"]},
             "message_count": t["count"]} for t in topics],
        "compression_format": compression_format,
        "compression_mode": compression_mode,
        "relative_file_paths": [f["path"] for f in files],
        "files": [{"path": f["path"], "starting_time": {"nanoseconds_since_epoch": f["start"] if f["count"] else 0},
                   "duration": {"nanoseconds": f["end"] - f["start"] if f["count"] else 0},
                   "message_count": f["count"]} for f in files],
        "custom_data": None,
        "ros_distro": distro or ros_distro(),
    }}


def dump_yaml(data) -> str:
    stream = StringIO()
    yaml = YAML(typ="safe")
    yaml.default_flow_style = False
    yaml.dump(data, stream)
    return stream.getvalue()


def write_metadata(bag_dir: Path, meta: dict) -> None:
    """Write metadata.yaml atomically (a reader never sees half of it)."""
    tmp = bag_dir / "metadata.yaml.tmp"
    tmp.write_text(dump_yaml(meta))
    os.replace(tmp, bag_dir / "metadata.yaml")


class FlushClock:
    """Says when `period` seconds have passed since the last flush."""

    def __init__(self, period: float):
        self.period = period
        self.last = time.monotonic()

    def due(self) -> bool:
        now = time.monotonic()
        if now - self.last >= self.period:
            self.last = now
            return True
        return False
