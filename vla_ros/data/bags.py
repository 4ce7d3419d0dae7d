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

import heapq
import logging
import os
import shutil
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from tempfile import TemporaryDirectory
from typing import Iterable, Iterator, NamedTuple, Sequence

from backports import zstd
from rosbags.interfaces import Qos, QosDurability, QosHistory, QosLiveliness, QosReliability, QosTime
from rosbags.rosbag2 import ReaderError
from rosbags.rosbag2.metadata import parse_qos
from rosbags.rosbag2.storage_mcap import McapReader
from rosbags.rosbag2.storage_sqlite3 import Sqlite3Reader
from rosbags.typesys import Stores, get_types_from_msg, get_typestore
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from vla_ros.data.bag_storage import (BAG_VERSION, DEFAULT_CHUNK_SIZE, DEFAULT_FLUSH_PERIOD, FlushClock,
                                      McapStorage, Sqlite3Storage, TopicEntry, dump_yaml, metadata_dict,
                                      write_metadata)

STORAGES = ("mcap", "sqlite3")
STORAGE_SUFFIX = {"mcap": ".mcap", "sqlite3": ".db3"}
log = logging.getLogger("vla_ros.bags")


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
    type_hash: str = ""                  # RIHS01_..., as recorded ("" when the bag has none)


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


def _prefixes(prefixes: Sequence[str] | None = None) -> list[str]:
    if prefixes is None:
        prefixes = [p for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    return list(prefixes)


def _installed_file(pkg: str, kind: str, filename: str, prefixes: Sequence[str]) -> Path | None:
    """The first `<prefix>/share/<pkg>/<kind>/<filename>` that exists."""
    for prefix in prefixes:
        path = Path(prefix) / "share" / pkg / kind / filename
        if path.is_file():
            return path
    return None


def _find_msg_file(msgtype: str, prefixes: Sequence[str]) -> Path | None:
    pkg, kind, name = _split_type(msgtype)
    return _installed_file(pkg, kind, f"{name}.msg", prefixes)


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


def _type_description_file(msgtype: str, prefixes: Sequence[str]) -> Path | None:
    """The installed `share/<pkg>/<msg|srv|action>/<Interface>.json` that describes `msgtype`.

    rosidl writes one per interface; a service's or action's file also describes the types
    derived from it (`Trigger_Event`, `ExecuteInstruction_FeedbackMessage`, ...). Interface
    names are CamelCase, so the interface of a derived type is its name up to the first "_".
    """
    pkg, kind, name = _split_type(msgtype)
    return _installed_file(pkg, kind, f"{name.split('_')[0]}.json", prefixes)


def _type_description(msgtype: str, prefixes: Sequence[str]) -> tuple[dict, dict] | None:
    """(the installed type description of `msgtype`, its hashes by type name), or None."""
    path = _type_description_file(msgtype, prefixes)
    if path is None:
        return None
    data = _load_json(path)
    msg = data["type_description_msg"]
    hashes = {h["type_name"]: h["hash_string"] for h in data.get("type_hashes", [])}
    for desc in [msg["type_description"], *msg.get("referenced_type_descriptions", [])]:
        if desc["type_name"] == msgtype:
            return desc, hashes
    return None


_JSON_CACHE: dict[Path, dict] = {}


def _load_json(path: Path) -> dict:
    if path not in _JSON_CACHE:
        import json
        _JSON_CACHE[path] = json.loads(path.read_text())
    return _JSON_CACHE[path]


# type_description_interfaces/msg/FieldType: base type ids; +48 fixed array, +96 bounded
# sequence, +144 unbounded sequence.
_FIELD_TYPES = {2: "int8", 3: "uint8", 4: "int16", 5: "uint16", 6: "int32", 7: "uint32", 8: "int64",
                9: "uint64", 10: "float32", 11: "float64", 12: "float64", 13: "char", 14: "wchar", 15: "bool",
                16: "byte", 17: "string", 18: "wstring", 19: "string", 20: "wstring", 21: "string", 22: "wstring"}


def _field_type_text(t: dict) -> str:
    tid = int(t["type_id"])
    base_id, kind = tid % 48, tid // 48
    if base_id == 1:
        base = t["nested_type_name"]
    elif base_id in _FIELD_TYPES:
        base = _FIELD_TYPES[base_id]
        if base_id in (19, 20, 21, 22) and t.get("string_capacity"):
            base = f"{base}<={t['string_capacity']}"
    else:
        raise BagError(f"unknown field type id {tid}")
    return base + ["", f"[{t['capacity']}]", f"[<={t['capacity']}]", "[]"][kind]


def _msg_text_from_description(desc: dict) -> str:
    """A .msg definition equivalent to an installed type description (for the schema text of
    types that have no .msg file of their own: service events, action feedback messages, ...)."""
    return "".join(f"{_field_type_text(f['type'])} {f['name']}\n" for f in desc["fields"])


def _fielddefs_from_description(desc: dict) -> list:
    """rosbags' field definitions of an installed type description (rosbags' .msg parser does
    not know `wstring` and cannot parse definitions nesting pkg/srv or pkg/action types)."""
    from rosbags.typesys.base import Nodetype
    fields = []
    for f in desc["fields"]:
        t = f["type"]
        tid = int(t["type_id"])
        base_id, kind = tid % 48, tid // 48
        if base_id == 1:
            inner = (Nodetype.NAME, t["nested_type_name"])
        elif base_id in _FIELD_TYPES:
            name = {12: "float128"}.get(base_id, _FIELD_TYPES[base_id])
            inner = (Nodetype.BASE, (name, int(t.get("string_capacity") or 0) if base_id >= 17 else 0))
        else:
            raise BagError(f"{desc['type_name']}: field {f['name']} has unknown type id {tid}")
        if kind == 1:
            inner = (Nodetype.ARRAY, (inner, int(t["capacity"])))
        elif kind in (2, 3):
            inner = (Nodetype.SEQUENCE, (inner, int(t["capacity"]) if kind == 2 else 0))
        fields.append((f["name"], inner))
    return fields


def _installed_hash(msgtype: str, prefixes: Sequence[str] | None = None) -> str | None:
    """RIHS01 of `msgtype` as rosidl computed it at build time (the hash publishers advertise)."""
    found = _type_description(normalize_type(msgtype), _prefixes(prefixes))
    return found[1].get(normalize_type(msgtype)) if found else None


def type_hash(msgtype: str, store=None) -> str:
    """The RIHS01 type description hash of `msgtype`: the installed one (rosidl's, what rclpy
    publishers advertise), else computed by rosbags from the definition.

    rosbags' own computation differs from rosidl's for types that use `char` (std_msgs/Char,
    service_msgs/ServiceEventInfo and every service event), so the installed hash comes first.
    """
    msgtype = normalize_type(msgtype)
    installed = _installed_hash(msgtype)
    if installed:
        return installed
    store = store or typestore_for([msgtype])
    return store.hash_rihs01(msgtype)


def typestore_for(msgtypes: Iterable[str] = (), prefixes: Sequence[str] | None = None):
    """rosbags' Jazzy typestore, completed with installed definitions of `msgtypes` it lacks.

    Missing types (and the types they use) are loaded from `<prefix>/share/<pkg>/msg/<T>.msg`,
    or, for types without a .msg file of their own (service events, action messages) and
    definitions rosbags cannot parse, from the installed type description
    (`share/<pkg>/<kind>/<Interface>.json`), for each prefix of `prefixes` (default:
    AMENT_PREFIX_PATH). A type found nowhere raises BagError.
    """
    store = get_typestore(Stores.ROS2_JAZZY)
    add_types(store, msgtypes, prefixes)
    return store


def _types_of(name: str, prefixes: Sequence[str]):
    """rosbags type definitions of installed type `name` (from its .msg file or type description)."""
    path = _find_msg_file(name, prefixes)
    if path is not None:
        text = path.read_text()
        if "wstring" not in text:   # rosbags' .msg parser takes wstring for a nested type name
            try:
                return get_types_from_msg(text, name)
            except Exception:  # noqa: BLE001 - a definition rosbags cannot parse: use the description
                pass
    found = _type_description(name, prefixes)
    if found is not None:
        return {name: ([], _fielddefs_from_description(found[0]))}
    pkg, kind, short = _split_type(name)
    raise BagError(f"message type {name} is neither a standard Jazzy type nor installed "
                   f"(no share/{pkg}/{kind}/{short}.msg nor share/{pkg}/{kind}/{short.split('_')[0]}.json "
                   f"describing it under {list(prefixes)})")


def add_types(store, msgtypes: Iterable[str], prefixes: Sequence[str] | None = None) -> None:
    """Register `msgtypes` (and their dependencies) from installed definitions into `store`."""
    prefixes = _prefixes(prefixes)
    pending = [normalize_type(t) for t in msgtypes]
    while pending:
        name = pending.pop()
        if name in store.fielddefs:
            continue
        types = _types_of(name, prefixes)
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
def _msgdef(store, msgtype: str) -> tuple[str, str]:
    """(definition text, encoding) of `msgtype` as rosbag2 stores it in schemas."""
    try:
        msgdef, _ = store.generate_msgdef(msgtype, ros_version=2)
    except (AssertionError, KeyError, ValueError):
        # rosbags generates definitions only for types whose nested types are all pkg/msg/...;
        # service events and action messages nest pkg/srv/... and pkg/action/... types.
        return _msgdef_from_descriptions(msgtype, _prefixes()), "ros2msg"
    return msgdef, "ros2idl" if msgdef.startswith("=" * 80 + "\nIDL: ") else "ros2msg"


def _msgdef_from_descriptions(msgtype: str, prefixes: Sequence[str]) -> str:
    """rosbag2's concatenated ros2msg definition (the type, then each type it uses after a
    "====...\nMSG: pkg/kind/Type" line), built from installed type descriptions."""
    parts, seen, pending = [], set(), [msgtype]
    while pending:
        name = pending.pop(0)
        if name in seen:
            continue
        seen.add(name)
        found = _type_description(name, prefixes)
        if found is None:
            raise BagError(f"message type {name} has no installed type description")
        desc = found[0]
        text = _msg_text_from_description(desc)
        parts.append(text if name == msgtype else "=" * 80 + f"\nMSG: {name}\n" + text)
        pending.extend(f["type"]["nested_type_name"] for f in desc["fields"] if f["type"].get("nested_type_name"))
    return "".join(parts)


class BagWriter:
    """Write raw CDR messages into a new rosbag2 bag directory (MCAP by default).

        with BagWriter("bags/run1") as bag:
            bag.add_topic("/camera/image_raw", "sensor_msgs/msg/Image", reliability="best_effort")
            bag.write("/camera/image_raw", t_ns, cdr_bytes)

    What was written is flushed to the storage file at least every `flush_period` seconds (an
    MCAP chunk, an sqlite3 commit), so a killed writer loses at most that much; metadata.yaml
    and the MCAP summary are written by close() (after a kill: `vla-ros bag reindex`).
    `compression` ("none" or "zstd") compresses MCAP chunks, as rosbag2's zstd storage presets do.
    """

    def __init__(self, path, storage: str = "mcap", typestore=None, *, chunk_size: int = DEFAULT_CHUNK_SIZE,
                 compression: str = "none", flush_period: float = DEFAULT_FLUSH_PERIOD):
        if storage not in STORAGES:
            raise BagError(f"unknown bag storage {storage!r}: expected one of {sorted(STORAGES)}")
        if compression != "none" and storage != "mcap":
            raise BagError(f"chunk compression {compression!r} needs mcap storage (sqlite3 has no chunks)")
        self.path = Path(path)
        self.storage = storage
        self._store = typestore or get_typestore(Stores.ROS2_JAZZY)
        self._topics: dict[str, TopicEntry] = {}
        self._start, self._end = None, None
        self._flush = FlushClock(flush_period)
        try:
            self.path.mkdir(parents=True)
            file = self.path / f"{self.path.name}{STORAGE_SUFFIX[storage]}"
            self._storage = (McapStorage(file, chunk_size, compression) if storage == "mcap" else Sqlite3Storage(file))
        except (OSError, ValueError) as exc:
            raise BagError(f"cannot create bag {self.path}: {exc}") from None
        self._open = True

    def add_topic(self, topic: str, msgtype: str, reliability: str = "reliable", durability: str = "volatile",
                  depth: int = 100, rihs01: str | None = None, offered: Sequence[Qos] | None = None) -> None:
        """Declare a topic (once) with its type and the QoS profiles its publishers offered
        (`offered`, as the graph reports them; default: one keep-last `depth` profile with
        `reliability` and `durability`)."""
        msgtype = normalize_type(msgtype)
        if topic in self._topics:
            raise BagError(f"topic {topic} already added to bag {self.path}")
        add_types(self._store, [msgtype])
        msgdef, encoding = _msgdef(self._store, msgtype)
        entry = TopicEntry(len(self._topics) + 1, topic, msgtype, msgdef, encoding,
                           rihs01 or type_hash(msgtype, self._store), list(offered) if offered else [make_qos(reliability, durability, depth)])
        self._storage.add_topic(entry)
        self._topics[topic] = entry

    @property
    def topics(self) -> list[str]:
        return list(self._topics)

    @property
    def counts(self) -> dict[str, int]:
        """Messages written so far per topic."""
        return {name: t.count for name, t in self._topics.items()}

    def type_hash(self, topic: str) -> str:
        """The RIHS01 type hash recorded for `topic`."""
        return self._topics[topic].rihs01

    def write(self, topic: str, timestamp_ns: int, data: bytes) -> None:
        """Store one message's CDR bytes on a declared topic at `timestamp_ns`."""
        entry = self._topics.get(topic)
        if entry is None:
            raise BagError(f"topic {topic} was not added to bag {self.path}")
        t = int(timestamp_ns)
        self._storage.write(entry, t, bytes(data))
        entry.count += 1
        self._start = t if self._start is None else min(self._start, t)
        self._end = t if self._end is None else max(self._end, t)
        if self._flush.due():
            self._storage.flush()

    def flush(self) -> None:
        """Write what is buffered to the storage file now (an MCAP chunk, an sqlite3 commit)."""
        if self._open:
            self._storage.flush()

    def metadata(self) -> dict:
        count = sum(t.count for t in self._topics.values())
        files = [{"path": self._storage.path.name, "start": self._start or 0, "end": self._end or 0, "count": count}]
        topics = [{"name": t.name, "type": t.msgtype, "qos": t.qos, "hash": t.rihs01, "count": t.count}
                  for t in self._topics.values()]
        return metadata_dict(self.storage, files, topics)

    def close(self) -> None:
        """Finish the storage file (MCAP summary) and write metadata.yaml (idempotent)."""
        if self._open:
            self._open = False
            meta = self.metadata()
            self._storage.close(dump_yaml(meta["rosbag2_bagfile_information"]))
            write_metadata(self.path, meta)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def write_bag(path, messages: Iterable[tuple[str, int, bytes]], types: dict[str, str], storage: str = "mcap",
              qos: dict[str, tuple[str, str]] | None = None, **writer_options) -> Path:
    """Write (topic, timestamp_ns, cdr bytes) messages; `types` maps each topic to its type.

    `qos` optionally maps a topic to (reliability, durability); `writer_options` go to BagWriter
    (compression, chunk_size). Returns the bag path.
    """
    qos = qos or {}
    with BagWriter(path, storage, **writer_options) as bag:
        for topic, msgtype in types.items():
            rel, dur = qos.get(topic, ("reliable", "volatile"))
            bag.add_topic(topic, msgtype, reliability=rel, durability=dur)
        for topic, t, data in messages:
            bag.write(topic, t, data)
    return Path(path)


# ------------------------------------------------------------------------------- reading
def _load_metadata(path: Path) -> dict:
    """metadata.yaml's rosbag2_bagfile_information (any version, 1 to 9); BagError if unreadable."""
    try:
        meta = YAML(typ="safe").load(path.read_text())["rosbag2_bagfile_information"]
        if not isinstance(meta, dict):
            raise TypeError("rosbag2_bagfile_information is not a mapping")
        version = int(meta.get("version", 0))
        meta["relative_file_paths"] = list(meta.get("relative_file_paths") or [])
        meta["topics_with_message_count"] = list(meta.get("topics_with_message_count") or [])
    except (OSError, YAMLError, KeyError, TypeError, ValueError) as exc:
        raise BagError(f"bag {path.parent}: cannot read {path.name}: {type(exc).__name__}: {exc}") from None
    if version > BAG_VERSION:
        raise BagError(f"bag {path.parent}: metadata version {version} is newer than this reader knows ({BAG_VERSION})")
    return meta


def _parse_qos(value) -> list[Qos]:
    """Offered QoS profiles in any rosbag2 form (v4-v8 YAML string, v9 list); [] if absent or unparsable."""
    try:
        return parse_qos(value or [])
    except (ReaderError, KeyError, TypeError, ValueError):
        return []


def _qos_differs(a: Sequence[Qos], b: Sequence[Qos]) -> bool:
    return set(a) != set(b)


def _mcap_type_hashes(storage) -> dict[int, str]:
    """channel id -> `topic_type_hash` from an MCAP reader's channel metadata (rosbags reads only
    the QoS from it). The metadata is a map of uint32-length-prefixed key and value strings."""
    out = {}
    for cid, channel in getattr(storage, "channels", {}).items():
        data, pos = bytes(channel.metadata), 0
        try:
            while pos < len(data):
                n = int.from_bytes(data[pos:pos + 4], "little")
                key = data[pos + 4:pos + 4 + n].decode()
                pos += 4 + n
                n = int.from_bytes(data[pos:pos + 4], "little")
                value = data[pos + 4:pos + 4 + n].decode()
                pos += 4 + n
                if key == "topic_type_hash":
                    out[cid] = value
        except (UnicodeDecodeError, ValueError):
            continue
    return out


def _storage_of(file: Path) -> str | None:
    name = file.name[:-5] if file.name.endswith(".zstd") else file.name
    return {".mcap": "mcap", ".db3": "sqlite3"}.get(Path(name).suffix)


def _explain_storage_error(file: Path, exc: Exception) -> str:
    text = f"{type(exc).__name__}: {exc}" if not isinstance(exc, ReaderError) else str(exc)
    if "end magic" in text or "Truncated" in text:
        return (f"{file.name} is truncated (no MCAP footer or summary: was its recorder killed?); "
                f"`vla-ros bag reindex {file.parent}` recovers every complete chunk ({text})")
    if "File magic" in text or "not a database" in text or "missing tables" in text or "seems to be empty" in text:
        return f"{file.name} is not a {_storage_of(file) or 'rosbag2'} storage file ({text})"
    return f"{file.name}: {text}"


class BagReader:
    """Read a rosbag2 bag (MCAP or sqlite3, ours or `ros2 bag record`'s) as raw CDR messages.

        with BagReader("bags/run1") as bag:
            bag.topics                  # {name: TopicInfo}, counts from the storage files
            for m in bag.messages(["/joint_states"]):   # BagMessage, in time order
                ...

    `path` is a bag directory, one of its storage files, or a bare `.mcap`/`.db3` file without
    metadata.yaml. Messages are read by what the storage files hold: metadata.yaml names the
    files and fills in what storage lacks (QoS, type hashes), but never hides a topic whose QoS
    or type hash it records differently (older distros and converted bags do), and every
    disagreement is said once in `warnings` (and logged to the "vla_ros.bags" logger unless
    `log_warnings` is False: a node logs them itself). An unreadable bag raises BagError.
    """

    def __init__(self, path, log_warnings: bool = True):
        self.path = Path(path)
        self.warnings: list[str] = []
        self.metadata: dict | None = None
        if not self.path.exists():
            raise BagError(f"bag {self.path} does not exist")
        files = self._files()
        self._stack = ExitStack()
        self._storages = []
        try:
            self._open_storages(files)
        except BaseException:
            self._stack.close()
            raise
        self._build_topics()
        for w in self.warnings if log_warnings else ():
            log.warning(w)

    # -- opening
    def _files(self) -> list[Path]:
        if self.path.is_file():
            meta_path = self.path.parent / "metadata.yaml"
            if meta_path.is_file():   # a storage file given instead of its bag directory
                meta = _load_metadata(meta_path)
                if self.path.name in {PurePath(p).name for p in meta["relative_file_paths"]}:
                    self.path = self.path.parent
                    return self._files()
            if _storage_of(self.path) is None:
                raise BagError(f"bag {self.path}: not a bag directory nor a .mcap or .db3 file")
            self.storage = _storage_of(self.path)
            self.compression_mode = "file" if self.path.name.endswith(".zstd") else ""
            return [self.path]
        meta_path = self.path / "metadata.yaml"
        if not meta_path.is_file():
            found = sorted(p.name for p in self.path.iterdir() if _storage_of(p))
            hint = (f"; it holds {found}: if its recorder was killed, `vla-ros bag reindex {self.path}` rebuilds "
                    f"the metadata" if found else "")
            raise BagError(f"bag {self.path} has no metadata.yaml: not a rosbag2 bag directory "
                           f"(or its recording was not closed){hint}")
        meta = self.metadata = _load_metadata(meta_path)
        self.storage = str(meta.get("storage_identifier", ""))
        if self.storage not in STORAGES:
            raise BagError(f"bag {self.path}: storage {self.storage!r} is not supported (mcap, sqlite3)")
        mode = str(meta.get("compression_mode") or "").lower()
        self.compression_mode = "" if mode == "none" else mode
        if self.compression_mode and str(meta.get("compression_format") or "") != "zstd":
            raise BagError(f"bag {self.path}: compression {meta.get('compression_format')!r} is not supported (zstd)")
        if self.compression_mode not in ("", "file", "message"):
            raise BagError(f"bag {self.path}: compression mode {self.compression_mode!r} is not supported")
        # Foxy-era (v4) paths may include the bag directory: the file name is what counts.
        files = [self.path / PurePath(p).name for p in meta["relative_file_paths"]]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise BagError(f"bag {self.path}: storage file(s) named in metadata.yaml are missing: {missing}")
        if not files:
            raise BagError(f"bag {self.path}: metadata.yaml names no storage file")
        return files

    def _open_storages(self, files: list[Path]) -> None:
        plugin = {"mcap": McapReader, "sqlite3": Sqlite3Reader}[self.storage]
        tmpdir = None
        for file in files:
            source = file
            if self.compression_mode == "file":
                if tmpdir is None:
                    tmpdir = self._stack.enter_context(TemporaryDirectory(prefix="vla_ros_bag_"))
                source = Path(tmpdir) / (file.name[:-5] if file.name.endswith(".zstd") else file.name)
                try:
                    with file.open("rb") as raw, zstd.open(raw, "rb") as infile, source.open("wb") as out:
                        shutil.copyfileobj(infile, out)
                except Exception as exc:  # noqa: BLE001 - any decompression failure
                    raise BagError(f"cannot open bag {self.path}: {file.name} is not zstd-compressed data "
                                   f"({type(exc).__name__}: {exc})") from None
            storage = plugin(source)
            try:
                storage.open()
            except Exception as exc:  # rosbags' storage readers raise assorted errors on corrupt files
                raise BagError(f"cannot open bag {self.path}: {_explain_storage_error(file, exc)}") from None
            self._stack.callback(storage.close)
            self._storages.append(storage)

    def _build_topics(self) -> None:
        meta_topics = {}
        for entry in (self.metadata or {}).get("topics_with_message_count", []):
            try:
                tm = entry["topic_metadata"]
                meta_topics[tm["name"]] = (tm, int(entry.get("message_count", 0)))
            except (KeyError, TypeError, ValueError):
                continue
        grouped: dict[str, list] = {}
        for storage in self._storages:
            hashes = _mcap_type_hashes(storage)
            for conn in storage.connections:
                if not conn.digest and conn.id in hashes:
                    conn = conn._replace(digest=hashes[conn.id])
                grouped.setdefault(conn.topic, []).append(conn)
        self.topics: dict[str, TopicInfo] = {}
        self._conns: dict[str, list] = {}
        qos_mismatch, no_qos, count_diffs = [], [], []
        for name in sorted(grouped):
            conns = grouped[name]
            types = sorted({c.msgtype for c in conns})
            if len(types) > 1:
                self.warnings.append(f"bag {self.path}: {name} is stored with several types {types}; reading all")
            tm, meta_count = meta_topics.get(name, ({}, None))
            offered = list(dict.fromkeys(q for c in conns for q in (c.ext.offered_qos_profiles or [])))
            meta_qos = _parse_qos(tm.get("offered_qos_profiles"))
            if not offered:
                offered = meta_qos
                if self.metadata is not None:
                    no_qos.append(name)
            elif meta_qos and _qos_differs(offered, meta_qos):
                qos_mismatch.append(name)
            digest = next((c.digest for c in conns if c.digest), "") or str(tm.get("type_description_hash") or "")
            count = sum(c.msgcount for c in conns)
            if self.metadata is not None and meta_count != count:
                count_diffs.append((name, meta_count, count))
            rel, dur = adapted_qos(offered)
            self.topics[name] = TopicInfo(name, types[0], count, rel, dur, tuple(offered), digest)
            self._conns[name] = conns
        for name, (tm, meta_count) in meta_topics.items():
            if name not in grouped and meta_count:
                count_diffs.append((name, meta_count, 0))
        if qos_mismatch:
            self.warnings.append(
                f"bag {self.path}: metadata.yaml and the storage file record different offered QoS for "
                f"{', '.join(qos_mismatch)}; reading by the storage file's")
        if no_qos:
            self.warnings.append(f"bag {self.path}: the storage file records no offered QoS for {', '.join(no_qos)}; "
                                 f"using metadata.yaml's")
        if count_diffs:
            parts = [f"{n} {m if m is not None else 'absent'} in metadata.yaml, {c} in storage "
                     f"({c - (m or 0):+d})" for n, m, c in count_diffs]
            self.warnings.append(f"bag {self.path}: message counts differ from metadata.yaml: {'; '.join(parts)}")

    # -- properties
    @property
    def message_count(self) -> int:
        return sum(t.count for t in self.topics.values())

    @property
    def start_time(self) -> int:
        """Earliest message timestamp (ns); 0 for an empty bag."""
        starts = [s.metadata.start_time for s in self._storages if s.metadata.message_count]
        return min(starts) if starts else 0

    @property
    def end_time(self) -> int:
        """Latest message timestamp (ns); 0 for an empty bag."""
        ends = [s.metadata.end_time - 1 for s in self._storages if s.metadata.message_count]
        return max(ends) if ends else 0

    @property
    def files(self) -> list[Path]:
        return [Path(s.path) for s in self._storages]

    @property
    def ros_distro(self) -> str:
        return str((self.metadata or {}).get("ros_distro") or "")

    def messages(self, topics: Sequence[str] | None = None, start: int | None = None,
                 stop: int | None = None) -> Iterator[BagMessage]:
        """Messages on `topics` (None or empty: all) with start <= timestamp < stop, in time order
        (across the files of a split bag too)."""
        if topics:
            unknown = [t for t in topics if t not in self.topics]
            if unknown:
                raise BagError(f"bag {self.path} has no topic(s) {unknown}; it has {sorted(self.topics)}")
        wanted = set(topics or self.topics)
        message_mode = self.compression_mode == "message"

        def per_storage(storage):
            conns = [c for c in storage.connections if c.topic in wanted]
            if not conns:
                return
            for conn, t, data in storage.messages(conns, start, stop):
                yield t, conn.topic, conn.msgtype, (zstd.decompress(data) if message_mode else data)

        streams = [per_storage(s) for s in self._storages]
        merged = streams[0] if len(streams) == 1 else heapq.merge(*streams, key=lambda m: m[0])
        try:
            for t, topic, msgtype, data in merged:
                yield BagMessage(topic, msgtype, t, bytes(data))
        except BagError:
            raise
        except Exception as exc:  # noqa: BLE001 - corrupt storage data
            raise BagError(f"cannot read bag {self.path} (corrupt?): {type(exc).__name__}: {exc}") from None

    def close(self) -> None:
        self._stack.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _human_size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1024
    return f"{n} B"  # pragma: no cover


def _stamp(ns: int) -> str:
    import time as _time
    sec, nsec = divmod(ns, 10**9)
    return f"{_time.strftime('%b %e %Y %H:%M:%S', _time.localtime(sec))}.{nsec:09d} ({sec}.{nsec:09d})"


def format_info(reader: BagReader) -> str:
    """What `ros2 bag info` prints for the bag (Jazzy's layout)."""
    files = [Path(f) for f in reader.files]
    if reader.metadata is not None:
        files = [reader.path / PurePath(p).name for p in reader.metadata["relative_file_paths"]]
    size = sum(f.stat().st_size for f in files if f.exists())
    duration = (reader.end_time - reader.start_time) if reader.message_count else 0
    pad = " " * 19
    lines = [f"Files:             {files[0].name if files else ''}"]
    lines += [f"{pad}{f.name}" for f in files[1:]]
    lines += [f"Bag size:          {_human_size(size)}",
              f"Storage id:        {reader.storage}",
              f"ROS Distro:        {reader.ros_distro or 'unknown'}",
              f"Duration:          {duration // 10**9}.{duration % 10**9:09d}s",
              f"Start:             {_stamp(reader.start_time)}",
              f"End:               {_stamp(reader.end_time)}",
              f"Messages:          {reader.message_count}"]
    topics = [f"Topic: {t.name} | Type: {t.msgtype} | Count: {t.count} | Serialization Format: cdr"
              for t in reader.topics.values()]
    lines.append(f"Topic information: {topics[0] if topics else ''}")
    lines += [f"{pad}{t}" for t in topics[1:]]
    services = [t for t in reader.topics.values() if t.msgtype.endswith("_Event") and "/srv/" in t.msgtype]
    lines.append(f"Service:           {len(services)}")
    lines.append("Service information: " + "".join(
        f"{'' if i == 0 else pad}Service: {t.name.removesuffix('/_service_event')} | Type: "
        f"{t.msgtype.removesuffix('_Event')} | Event Count: {t.count} | Serialization Format: cdr\n"
        for i, t in enumerate(services)).rstrip("\n"))
    return "\n".join(lines)


def read_bag(path, topics: Sequence[str] | None = None) -> list[BagMessage]:
    """All messages of a bag (optionally only `topics`) in time order."""
    with BagReader(path) as bag:
        return list(bag.messages(topics))
