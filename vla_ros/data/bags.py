"""Thin helpers over `rosbags` to write and read rosbag2 bags as raw CDR bytes (no rclpy).

A bag is a rosbag2 directory: `metadata.yaml` plus one storage file (MCAP by default, or
sqlite3). Messages stay serialized (CDR, as they travel over DDS): the writer stores the
bytes it is given, the reader hands back the stored bytes, nothing is deserialized.

Message definitions and type description hashes (RIHS01) come from rosbags' Jazzy typestore,
completed with the `.msg` files of installed packages (`AMENT_PREFIX_PATH`) for types it does
not know (our `vla_ros/msg/*`), so the metadata matches the installed definitions and
`ros2 bag info/play` accept the bag.

Any unreadable bag (missing directory or metadata.yaml, truncated or corrupt storage file)
raises `BagError` with one message naming the bag.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator, NamedTuple, Sequence

from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from ruamel.yaml import YAML
from rosbags.rosbag2 import Reader, ReaderError, StoragePlugin, Writer, WriterError
from rosbags.typesys import Stores, get_types_from_msg, get_typestore

STORAGES = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}
BAG_VERSION = 9  # rosbag2 metadata version written by Jazzy


class BagError(ValueError):
    """A bag that cannot be read or written; the message names the bag and the reason."""


class BagMessage(NamedTuple):
    """One recorded message: its topic, type ("pkg/msg/Type"), receive time (ns) and CDR bytes."""

    topic: str
    msgtype: str
    timestamp: int
    data: bytes


@dataclass(frozen=True)
class TopicInfo:
    """A topic of a bag: type, message count and the QoS its publishers offered."""

    name: str
    msgtype: str
    count: int
    reliability: str = "reliable"        # "reliable" or "best_effort"
    durability: str = "volatile"         # "volatile" or "transient_local"
    qos: tuple = field(default=(), repr=False)


# ------------------------------------------------------------------------------- types
def _nested_types(fields) -> Iterator[str]:
    """Type names a rosbags field list refers to (through arrays and sequences)."""
    def walk(node):
        kind, arg = node
        if kind.name == "NAME":
            yield arg
        elif kind.name in ("ARRAY", "SEQUENCE"):
            yield from walk(arg[0])
    for _, node in fields:
        yield from walk(node)


def _find_msg_file(msgtype: str, prefixes: Sequence[str]) -> Path | None:
    pkg, kind, name = _split_type(msgtype)
    for prefix in prefixes:
        path = Path(prefix) / "share" / pkg / kind / f"{name}.msg"
        if path.is_file():
            return path
    return None


def _split_type(msgtype: str) -> tuple[str, str, str]:
    parts = msgtype.split("/")
    if len(parts) == 2:            # "pkg/Type" (ROS 1 style / short form)
        parts = [parts[0], "msg", parts[1]]
    if len(parts) != 3 or not all(parts):
        raise BagError(f"invalid message type name {msgtype!r}: expected pkg/msg/Type")
    return parts[0], parts[1], parts[2]


def normalize_type(msgtype: str) -> str:
    """"pkg/Type" or "pkg/msg/Type" -> "pkg/msg/Type"."""
    return "/".join(_split_type(msgtype))


def typestore_for(msgtypes: Iterable[str] = (), prefixes: Sequence[str] | None = None):
    """rosbags' Jazzy typestore, completed with installed definitions of `msgtypes` it lacks.

    Missing types (and the types they use) are loaded from `<prefix>/share/<pkg>/msg/<T>.msg`
    for each prefix of `prefixes` (default: AMENT_PREFIX_PATH). A type found nowhere raises
    BagError.
    """
    store = get_typestore(Stores.ROS2_JAZZY)
    add_types(store, msgtypes, prefixes)
    return store


def add_types(store, msgtypes: Iterable[str], prefixes: Sequence[str] | None = None) -> None:
    """Register `msgtypes` (and their dependencies) from installed .msg files into `store`."""
    if prefixes is None:
        prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    pending = [normalize_type(t) for t in msgtypes]
    while pending:
        name = pending.pop()
        if name in store.fielddefs:
            continue
        path = _find_msg_file(name, prefixes)
        if path is None:
            raise BagError(f"message type {name} is neither a standard Jazzy type nor installed "
                           f"(no share/{name.split('/')[0]}/msg/{name.split('/')[-1]}.msg under {list(prefixes)})")
        types = get_types_from_msg(path.read_text(), name)
        missing = [t for _, fields in types.values() for t in _nested_types(fields) if t not in store.fielddefs]
        if missing:  # register dependencies first
            pending.append(name)
            pending.extend(t for t in missing if t not in pending)
            continue
        store.register(types)


# ------------------------------------------------------------------------------- QoS
def make_qos(reliability: str = "reliable", durability: str = "volatile", depth: int = 100) -> Qos:
    """A rosbags QoS profile (what the metadata records as a publisher's offered QoS)."""
    zero = QosTime(0, 0)  # RMW_DURATION_UNSPECIFIED: the defaults
    return Qos(history=QosHistory.KEEP_LAST, depth=int(depth),
               reliability=QosReliability[reliability.upper()], durability=QosDurability[durability.upper()],
               deadline=zero, lifespan=zero, liveliness=QosLiveliness.AUTOMATIC,
               liveliness_lease_duration=zero, avoid_ros_namespace_conventions=False)


def adapted_qos(offered: Sequence[Qos]) -> tuple[str, str]:
    """(reliability, durability) that matches every offered profile, as rosbag2 adapts it.

    Reliable only when every publisher offered reliable; transient local only when every
    publisher offered it. No recorded profile: reliable, volatile.
    """
    if not offered:
        return "reliable", "volatile"
    reliable = all(q.reliability == QosReliability.RELIABLE for q in offered)
    transient = all(q.durability == QosDurability.TRANSIENT_LOCAL for q in offered)
    return ("reliable" if reliable else "best_effort"), ("transient_local" if transient else "volatile")


# ------------------------------------------------------------------------------- writing
class BagWriter:
    """Write raw CDR messages into a new rosbag2 bag directory (MCAP by default).

        with BagWriter("bags/run1") as bag:
            bag.add_topic("/camera/image_raw", "sensor_msgs/msg/Image", reliability="best_effort")
            bag.write("/camera/image_raw", t_ns, cdr_bytes)

    The bag is complete (metadata.yaml with counts, MCAP summary) only after close().
    """

    def __init__(self, path, storage: str = "mcap", typestore=None):
        if storage not in STORAGES:
            raise BagError(f"unknown bag storage {storage!r}: expected one of {sorted(STORAGES)}")
        self.path = Path(path)
        self.storage = storage
        self._store = typestore or get_typestore(Stores.ROS2_JAZZY)
        self._connections = {}
        self.counts: dict[str, int] = {}
        try:
            self._writer = Writer(self.path, version=BAG_VERSION, storage_plugin=STORAGES[storage])
            self._writer.open()
        except (WriterError, OSError) as exc:
            raise BagError(f"cannot create bag {self.path}: {exc}") from None
        self._open = True

    def add_topic(self, topic: str, msgtype: str, reliability: str = "reliable", durability: str = "volatile",
                  depth: int = 100, rihs01: str | None = None) -> None:
        """Declare a topic (once) with its type and the QoS its publisher offered."""
        msgtype = normalize_type(msgtype)
        if topic in self._connections:
            raise BagError(f"topic {topic} already added to bag {self.path}")
        add_types(self._store, [msgtype])
        msgdef, _ = self._store.generate_msgdef(msgtype, ros_version=2)
        self._connections[topic] = self._writer.add_connection(
            topic, msgtype, msgdef=msgdef, rihs01=rihs01 or self._store.hash_rihs01(msgtype),
            offered_qos_profiles=[make_qos(reliability, durability, depth)])
        self.counts[topic] = 0

    @property
    def topics(self) -> list[str]:
        return list(self._connections)

    def write(self, topic: str, timestamp_ns: int, data: bytes) -> None:
        """Store one message's CDR bytes on a declared topic at `timestamp_ns`."""
        conn = self._connections.get(topic)
        if conn is None:
            raise BagError(f"topic {topic} was not added to bag {self.path}")
        self._writer.write(conn, int(timestamp_ns), bytes(data))
        self.counts[topic] += 1

    def close(self) -> None:
        """Finish the storage file and write metadata.yaml (idempotent)."""
        if self._open:
            self._open = False
            self._writer.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_bag(path, messages: Iterable[tuple[str, int, bytes]], types: dict[str, str], storage: str = "mcap",
              qos: dict[str, tuple[str, str]] | None = None) -> Path:
    """Write (topic, timestamp_ns, cdr bytes) messages; `types` maps each topic to its type.

    `qos` optionally maps a topic to (reliability, durability). Returns the bag path.
    """
    qos = qos or {}
    with BagWriter(path, storage) as bag:
        for topic, msgtype in types.items():
            rel, dur = qos.get(topic, ("reliable", "volatile"))
            bag.add_topic(topic, msgtype, reliability=rel, durability=dur)
        for topic, t, data in messages:
            bag.write(topic, t, data)
    return Path(path)


# ------------------------------------------------------------------------------- reading
class BagReader:
    """Read a rosbag2 bag (MCAP or sqlite3, ours or `ros2 bag record`'s) as raw CDR messages.

        with BagReader("bags/run1") as bag:
            bag.topics                  # {name: TopicInfo}
            for m in bag.messages(["/joint_states"]):   # BagMessage, in time order
                ...
    """

    def __init__(self, path):
        self.path = Path(path)
        if not self.path.exists():
            raise BagError(f"bag {self.path} does not exist")
        if self.path.is_file():   # a storage file given instead of its bag directory
            self.path = self.path.parent
        if not (self.path / "metadata.yaml").is_file():
            raise BagError(f"bag {self.path} has no metadata.yaml: not a rosbag2 bag directory "
                           f"(or its recording was not closed)")
        try:
            self._reader = Reader(self.path)
            self._reader.open()
        except (ReaderError, OSError, ValueError, KeyError, EOFError) as exc:
            raise BagError(f"cannot open bag {self.path}: {exc}") from None
        except Exception as exc:  # rosbags' storage readers raise assorted errors on corrupt files
            raise BagError(f"cannot open bag {self.path} (corrupt?): {type(exc).__name__}: {exc}") from None
        self.topics: dict[str, TopicInfo] = {}
        for name, info in self._reader.topics.items():
            offered = [q for c in info.connections for q in (c.ext.offered_qos_profiles or [])]
            rel, dur = adapted_qos(offered)
            self.topics[name] = TopicInfo(name, info.msgtype or "", info.msgcount, rel, dur, tuple(offered))

    @property
    def storage(self) -> str:
        """Storage identifier from metadata.yaml: "mcap" or "sqlite3"."""
        try:
            meta = YAML(typ="safe").load((self.path / "metadata.yaml").read_text())
            return str(meta["rosbag2_bagfile_information"]["storage_identifier"])
        except Exception:  # already opened successfully: the field is informational only
            return "unknown"

    @property
    def start_time(self) -> int:
        """Earliest message timestamp (ns); 0 for an empty bag."""
        return self._reader.start_time if self._reader.message_count else 0

    @property
    def end_time(self) -> int:
        """Latest message timestamp (ns); 0 for an empty bag."""
        return self._reader.end_time - 1 if self._reader.message_count else 0

    @property
    def message_count(self) -> int:
        return self._reader.message_count

    def messages(self, topics: Sequence[str] | None = None, start: int | None = None,
                 stop: int | None = None) -> Iterator[BagMessage]:
        """Messages on `topics` (None or empty: all) with start <= timestamp < stop, in time order."""
        if topics:
            unknown = [t for t in topics if t not in self.topics]
            if unknown:
                raise BagError(f"bag {self.path} has no topic(s) {unknown}; it has {sorted(self.topics)}")
        conns = [c for c in self._reader.connections if not topics or c.topic in topics]
        if not conns:
            return
        try:
            for conn, t, data in self._reader.messages(connections=conns, start=start, stop=stop):
                yield BagMessage(conn.topic, conn.msgtype, t, bytes(data))
        except BagError:
            raise
        except Exception as exc:
            raise BagError(f"cannot read bag {self.path} (corrupt?): {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        self._reader.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_bag(path, topics: Sequence[str] | None = None) -> list[BagMessage]:
    """All messages of a bag (optionally only `topics`) in time order."""
    with BagReader(path) as bag:
        return list(bag.messages(topics))
