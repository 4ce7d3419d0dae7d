"""Make a bag whose recorder was killed readable again, as `ros2 bag reindex` does, and more.

A recorder killed with SIGKILL leaves its storage file(s) without an ending and no
metadata.yaml. `reindex(bag)`:
- MCAP: a file without a valid footer is read record by record, up to its last complete
  chunk (a chunk cut short or failing its CRC ends the scan), and rewritten with a summary
  (schemas, channels, chunk and message indexes, statistics) and footer, so any MCAP reader,
  rosbags and rosbag2 included, can open it. rosbag2's reindex only rebuilds metadata.yaml and
  relies on its MCAP reader's fallback scan; rosbags has none, hence the rewrite.
- sqlite3: the database is opened read-write, so that SQLite folds the write-ahead log (every
  committed batch) into the file, and left out of WAL mode.
- metadata.yaml is rebuilt from what the storage files hold (topics, types, offered QoS and
  type hashes as recorded in the storage, counts, times), files in time order.
"""
from __future__ import annotations

import os
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path

from mcap.exceptions import McapError
from mcap.records import Channel, Chunk, Footer, Message, Schema
from mcap.stream_reader import StreamReader, breakup_chunk
from mcap.writer import CompressionType, Writer as McapFileWriter

from vla_ros.data.bag_storage import (DEFAULT_CHUNK_SIZE, dump_yaml, finish_sqlite3, library_id, metadata_dict,
                                      write_metadata)
from vla_ros.data.bags import BagError, BagReader

MCAP_MAGIC = b"\x89MCAP0\r\n"


@dataclass
class FileReport:
    """What reindex found in one storage file."""

    path: str
    rebuilt: bool            # the file was rewritten (MCAP without footer) or its WAL folded in (sqlite3)
    messages: int
    note: str = ""           # why a scan stopped early, if it did


@dataclass
class ReindexReport:
    bag: str
    files: list[FileReport] = field(default_factory=list)

    @property
    def messages(self) -> int:
        return sum(f.messages for f in self.files)

    def lines(self) -> list[str]:
        out = []
        for f in self.files:
            what = "rebuilt" if f.rebuilt else "intact"
            out.append(f"{f.path}: {what}, {f.messages} messages{'; ' + f.note if f.note else ''}")
        out.append(f"metadata.yaml written: {self.messages} messages in {len(self.files)} file(s)")
        return out


def mcap_is_complete(path: Path) -> bool:
    """True when the file ends with a footer and the magic (it was closed)."""
    size = path.stat().st_size
    if size < 8 + 37:
        return False
    with path.open("rb") as f:
        f.seek(-37, os.SEEK_END)
        tail = f.read()
    return tail[-8:] == MCAP_MAGIC and tail[0] == 0x02


def recover_mcap(path: Path) -> FileReport:
    """Rewrite an MCAP file that has no footer from its complete chunks (see the module doc)."""
    tmp = path.with_name(path.name + ".reindex")
    tmp.unlink(missing_ok=True)
    schemas: dict[int, Schema] = {}
    channels: dict[int, Channel] = {}
    new_schema: dict[int, int] = {}
    new_channel: dict[int, int] = {}
    counts: dict[int, int] = {}
    times: list[int] = []
    note = ""
    out = tmp.open("xb")
    writer = None

    def ensure_writer(compression: str):
        nonlocal writer
        if writer is None:
            writer = McapFileWriter(out, chunk_size=DEFAULT_CHUNK_SIZE, compression=(
                CompressionType.ZSTD if compression == "zstd" else CompressionType.NONE))
            writer.start(profile="ros2", library=library_id())

    def handle(record, compression: str):
        if isinstance(record, Schema):
            schemas[record.id] = record
        elif isinstance(record, Channel):
            channels[record.id] = record
        elif isinstance(record, Message):
            channel = channels.get(record.channel_id)
            if channel is None:
                return
            ensure_writer(compression)
            if channel.id not in new_channel:
                schema = schemas.get(channel.schema_id)
                if schema is not None and schema.id not in new_schema:
                    new_schema[schema.id] = writer.register_schema(schema.name, schema.encoding, schema.data)
                new_channel[channel.id] = writer.register_channel(
                    channel.topic, channel.message_encoding, new_schema.get(channel.schema_id, 0), channel.metadata)
                counts[channel.id] = 0
            writer.add_message(new_channel[channel.id], record.log_time, record.data, record.publish_time,
                               record.sequence)
            counts[channel.id] += 1
            times.append(record.log_time)

    try:
        with path.open("rb") as src:
            try:
                for record in StreamReader(src, emit_chunks=True).records:
                    if isinstance(record, Chunk):
                        try:
                            inner = breakup_chunk(record, validate_crc=True)
                        except Exception as exc:  # noqa: BLE001 - a damaged chunk ends the scan
                            note = f"stopped at a damaged chunk ({type(exc).__name__}: {exc})"
                            break
                        for r in inner:
                            handle(r, record.compression)
                    elif isinstance(record, Footer):
                        break
                    else:
                        handle(record, "")
            except (McapError, EOFError, ValueError, OSError) as exc:
                note = f"the file ends inside a record after the last complete one ({type(exc).__name__})"
            except Exception as exc:  # noqa: BLE001 - struct errors etc. on a damaged tail
                note = f"stopped at a damaged record ({type(exc).__name__}: {exc})"
        ensure_writer("")
        total = sum(counts.values())
        files = [{"path": path.name, "start": min(times, default=0), "end": max(times, default=0), "count": total}]
        topics = [{"name": channels[c].topic, "type": schemas[channels[c].schema_id].name
                   if channels[c].schema_id in schemas else "", "qos": [], "hash": "", "count": n}
                  for c, n in counts.items()]
        writer.add_metadata("rosbag2", {"serialized_metadata": dump_yaml(
            metadata_dict("mcap", files, topics)["rosbag2_bagfile_information"])})
        writer.finish()
        out.close()
        os.replace(tmp, path)
    except BaseException:
        out.close()
        tmp.unlink(missing_ok=True)
        raise
    return FileReport(path.name, True, total, note)


def recover_sqlite3(path: Path) -> FileReport:
    """Fold a killed writer's WAL into the database file; a database that cannot be opened raises."""
    wal = path.with_name(path.name + "-wal")
    had_wal = wal.exists()
    try:
        db = sqlite3.connect(str(path))
        try:
            db.execute("SELECT count(*) FROM messages").fetchone()
            finish_sqlite3(db)
            count = db.execute("SELECT count(*) FROM messages").fetchone()[0]
        finally:
            db.close()
    except sqlite3.Error as exc:
        raise BagError(f"cannot recover {path}: {exc}") from None
    return FileReport(path.name, had_wal, count)


def reindex(path) -> ReindexReport:
    """Recover the storage files of bag directory `path` and write its metadata.yaml anew."""
    bag = Path(path)
    if not bag.is_dir():
        raise BagError(f"bag {bag} is not a directory")
    files = sorted(p for p in bag.iterdir() if p.suffix in (".mcap", ".db3") and p.is_file())
    if not files:
        raise BagError(f"bag {bag} holds no .mcap or .db3 storage file")
    kinds = {p.suffix for p in files}
    if len(kinds) > 1:
        raise BagError(f"bag {bag} holds both .mcap and .db3 files: {[p.name for p in files]}")
    storage = "mcap" if kinds == {".mcap"} else "sqlite3"
    report = ReindexReport(str(bag))
    for file in files:
        if storage == "sqlite3":
            report.files.append(recover_sqlite3(file))
        elif not mcap_is_complete(file):
            report.files.append(recover_mcap(file))
        else:
            report.files.append(FileReport(file.name, False, 0))
    entries, topics = [], {}
    for file, file_report in zip(files, report.files):
        with BagReader(file, log_warnings=False) as r:
            file_report.messages = r.message_count
            entries.append({"path": file.name, "start": r.start_time, "end": r.end_time, "count": r.message_count})
            for name, info in r.topics.items():
                t = topics.setdefault(name, {"name": name, "type": info.msgtype, "qos": list(info.qos),
                                             "hash": info.type_hash,
                                             "count": 0})
                t["count"] += info.count
    order = sorted(range(len(entries)), key=lambda i: (entries[i]["count"] == 0, entries[i]["start"]))
    write_metadata(bag, metadata_dict(storage, [entries[i] for i in order], list(topics.values())))
    report.files = [report.files[i] for i in order]
    return report
