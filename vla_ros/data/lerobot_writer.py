"""Episode bags -> a LeRobotDataset v3.0 directory (`vla-ros export --format lerobot`).

Each bag is aligned by the same code as training reads it (vla_ros.data.alignment, with the
DatasetConfig of the mapping), so a frame's ``observation.state`` is the dataset's state and its
``action`` the action of the frame's control tick, the first step of the chunk training uses. The
camera frames keep their size (or the mapping's ``image_size``) and are encoded with PyAV into
one MP4 per camera, episode after episode; frames go to one parquet file with pyarrow. Both are
written while bags are read, so memory holds one episode at a time. The dataset is built in a
sibling directory and renamed into place when complete.

A LeRobot frame's timestamp is ``frame_index / fps`` (LeRobot decodes video frames by it): the
bags' own stamps are not kept. Reading the dataset back (vla_ros.data.lerobot_reader) makes each
frame's chunk from the next frames' actions, which is what the bag path gives when frames and
control ticks are one to one (as vla-ros collect records them); episodes where they are not are
counted and named in a warning.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vla_ros.data import lerobot as lr
from vla_ros.data.alignment import load_episode
from vla_ros.data.episode import Episode
from vla_ros.data.episodes import find_bags
from vla_ros.data.errors import DatasetError

log = logging.getLogger("vla_ros.data.lerobot")


@dataclass
class ExportSummary:
    out: str
    episodes: int = 0
    frames: int = 0
    tasks: int = 0
    seconds: float = 0.0
    bytes: int = 0
    skipped: list[str] = field(default_factory=list)       # bad bags, with the reason
    unsuccessful: list[str] = field(default_factory=list)  # left out (only successful episodes)
    not_one_to_one: list[str] = field(default_factory=list)

    def line(self) -> str:
        parts = [f"exported {self.episodes} episodes ({self.frames} frames, {self.tasks} tasks) to {self.out} "
                 f"in {self.seconds:.1f} s ({self.frames / max(self.seconds, 1e-9):.0f} frames/s, "
                 f"{self.bytes / 1e6:.1f} MB)"]
        if self.unsuccessful:
            parts.append(f"{len(self.unsuccessful)} unsuccessful left out")
        if self.skipped:
            parts.append(f"{len(self.skipped)} bad bags skipped")
        return "; ".join(parts)


class _VideoStream:
    """One camera's MP4: frames of every episode back to back, frame k at pts k (time base 1/fps)."""

    def __init__(self, path: Path, fps: int, spec: lr.VideoSpec, height: int, width: int):
        import av

        if height % 2 or width % 2:
            raise DatasetError(f"{path.parent.parent.name}: frames of {width} x {height} cannot be encoded as "
                               f"{spec.pix_fmt} (needs even sides); give the mapping an image_size")
        path.parent.mkdir(parents=True, exist_ok=True)
        # SVT-AV1 prints its configuration to stderr at every encoder start; errors only.
        os.environ.setdefault("SVT_LOG", "1")
        self.path, self.fps, self.shape = path, fps, (height, width, 3)
        self.container = av.open(str(path), mode="w")
        options = {"g": str(spec.gop), "crf": str(spec.crf)}
        if spec.encoder == "libsvtav1":
            options["preset"] = "12"  # LeRobot's default preset: the fastest
        self.stream = self.container.add_stream(spec.encoder, rate=fps, options=options)
        self.stream.width, self.stream.height, self.stream.pix_fmt = width, height, spec.pix_fmt
        self.stream.time_base = Fraction(1, fps)
        self.codec = spec.codec_name
        self.frames = 0

    def write(self, images: np.ndarray) -> None:
        import av

        for img in images:
            if img.shape != self.shape:
                raise DatasetError(f"{self.path.parent.parent.name}: a frame of shape {img.shape}, the first "
                                   f"was {self.shape}; give the mapping an image_size")
            frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(img), format="rgb24")
            frame.pts, frame.time_base = self.frames, Fraction(1, self.fps)
            for packet in self.stream.encode(frame):
                self.container.mux(packet)
            self.frames += 1

    def info(self) -> dict:
        """The feature's "info" as LeRobot's get_video_info reads it from the file."""
        return {"video.height": self.shape[0], "video.width": self.shape[1], "video.codec": self.codec,
                "video.pix_fmt": self.stream.pix_fmt, "video.is_depth_map": False, "video.fps": self.fps,
                "video.channels": 3, "has_audio": False}

    def close(self) -> None:
        for packet in self.stream.encode(None):
            self.container.mux(packet)
        self.container.close()


class LeRobotWriter:
    """Writes episodes into a new LeRobotDataset v3.0 directory; ``close`` writes meta/."""

    def __init__(self, root: str | os.PathLike, mapping: lr.LeRobotMapping):
        self.root, self.mapping, self.fps = Path(root), mapping, mapping.fps
        self.cameras = list(mapping.cameras)
        self.videos: dict[str, _VideoStream] = {}
        self.tasks: dict[str, int] = {}
        self.rows: list[dict] = []
        self.frame_stats: dict[str, list[np.ndarray]] = {}
        self.image_stats: dict[str, list[dict]] = {}
        self.data_writer: pq.ParquetWriter | None = None
        self.state_names: list[str] = []
        self.action_names: list[str] = []
        self.total_frames = 0

    # -------------------------------------------------------------- per episode
    def add(self, ep: Episode) -> None:
        if ep.camera_names != self.cameras:
            raise DatasetError(f"{ep.path}: cameras {ep.camera_names}, the mapping has {self.cameras}")
        self.state_names, self.action_names = list(ep.state_names), list(ep.action_names)
        n, e = ep.num_frames, len(self.rows)
        task_index = self.tasks.setdefault(ep.instruction, len(self.tasks))
        columns = {
            lr.STATE_KEY: np.ascontiguousarray(ep.state, dtype=np.float32),
            lr.ACTION_KEY: np.ascontiguousarray(ep.actions[:, 0, :], dtype=np.float32),
            "timestamp": (np.arange(n) / self.fps).astype(np.float32),
            "frame_index": np.arange(n, dtype=np.int64),
            "episode_index": np.full(n, e, dtype=np.int64),
            "index": np.arange(self.total_frames, self.total_frames + n, dtype=np.int64),
            "task_index": np.full(n, task_index, dtype=np.int64),
        }
        self._write_frames(columns)
        row = {"episode_index": e, "tasks": [ep.instruction], "length": n,
               "data/chunk_index": 0, "data/file_index": 0,
               "dataset_from_index": self.total_frames, "dataset_to_index": self.total_frames + n}
        stats = {k: lr.feature_stats(v) for k, v in columns.items()}
        for v, cam in enumerate(self.cameras):
            key = lr.camera_key(cam)
            images = ep.images[:, v]
            stream = self.videos.get(key)
            if stream is None:
                stream = self.videos[key] = _VideoStream(
                    self.root / lr.VIDEO_PATH.format(video_key=key, chunk_index=0, file_index=0), self.fps,
                    self.mapping.video, *images.shape[1:3])
            start = stream.frames
            stream.write(images)
            row.update({f"videos/{key}/chunk_index": 0, f"videos/{key}/file_index": 0,
                        f"videos/{key}/from_timestamp": start / self.fps,
                        f"videos/{key}/to_timestamp": (start + n) / self.fps})
            stats[key] = lr.image_stats(images)
            self.image_stats.setdefault(key, []).append(stats[key])
        for k, s in stats.items():
            for name, value in s.items():
                row[f"stats/{k}/{name}"] = np.asarray(value).tolist()
        row.update({"meta/episodes/chunk_index": 0, "meta/episodes/file_index": 0})
        self.rows.append(row)
        for k, v in columns.items():
            self.frame_stats.setdefault(k, []).append(v)
        self.total_frames += n

    def _write_frames(self, columns: dict[str, np.ndarray]) -> None:
        arrays = []
        for k, v in columns.items():
            if v.ndim == 2:
                arrays.append(pa.FixedSizeListArray.from_arrays(pa.array(v.reshape(-1)), v.shape[1]))
            else:
                arrays.append(pa.array(v))
        table = pa.table(arrays, names=list(columns))
        table = table.replace_schema_metadata({b"huggingface": json.dumps(self._hf_features(columns)).encode()})
        if self.data_writer is None:
            path = self.root / lr.DATA_PATH.format(chunk_index=0, file_index=0)
            path.parent.mkdir(parents=True, exist_ok=True)
            self.data_writer = pq.ParquetWriter(path, table.schema, compression="snappy")
        self.data_writer.write_table(table)

    @staticmethod
    def _hf_features(columns: dict[str, np.ndarray]) -> dict:
        """The Hugging Face datasets features LeRobot's writer records in the frames file (so that
        datasets.load_dataset and the Hub's viewer type the columns without LeRobot)."""
        feats = {}
        for k, v in columns.items():
            value = {"dtype": str(v.dtype), "_type": "Value"}
            feats[k] = {"feature": value, "length": int(v.shape[1]), "_type": "List"} if v.ndim == 2 else value
        return {"info": {"features": feats}}

    # -------------------------------------------------------------- meta/
    def close(self) -> None:
        if not self.rows:
            raise DatasetError("no episode to export")
        for s in self.videos.values():
            s.close()
        self.data_writer.close()
        self._write_episodes()
        self._write_tasks()
        stats = {k: lr.feature_stats(np.concatenate(v)) for k, v in self.frame_stats.items()}
        stats.update({k: lr.aggregate_stats(v) for k, v in self.image_stats.items()})
        (self.root / lr.STATS_PATH).write_text(json.dumps(lr.stats_to_json(stats), indent=4) + "\n")
        (self.root / lr.INFO_PATH).write_text(json.dumps(self.info(), indent=4) + "\n")

    def features(self) -> dict:
        feats = {}
        for cam in self.cameras:
            key = lr.camera_key(cam)
            s = self.videos[key]
            feats[key] = {"dtype": "video", "shape": list(s.shape), "names": ["height", "width", "channels"],
                          "info": s.info()}
        feats[lr.STATE_KEY] = {"dtype": "float32", "shape": [len(self.state_names)], "names": self.state_names}
        feats[lr.ACTION_KEY] = {"dtype": "float32", "shape": [len(self.action_names)], "names": self.action_names}
        feats.update(json.loads(json.dumps(lr.INDEX_FEATURES)))
        return feats

    def info(self) -> dict:
        n = len(self.rows)
        values = {"codebase_version": lr.CODEBASE_VERSION, "robot_type": self.mapping.robot_type,
                  "total_episodes": n, "total_frames": self.total_frames, "total_tasks": len(self.tasks),
                  "chunks_size": lr.CHUNKS_SIZE, "data_files_size_in_mb": lr.DATA_FILES_SIZE_IN_MB,
                  "video_files_size_in_mb": lr.VIDEO_FILES_SIZE_IN_MB, "fps": self.fps,
                  "splits": {"train": f"0:{n}"}, "data_path": lr.DATA_PATH, "video_path": lr.VIDEO_PATH,
                  "features": self.features()}
        return {k: values[k] for k in lr.INFO_KEYS}

    def _write_episodes(self) -> None:
        names = list(self.rows[0])
        table = pa.table({k: [r[k] for r in self.rows] for k in names})
        path = self.root / lr.EPISODES_PATH.format(chunk_index=0, file_index=0)
        path.parent.mkdir(parents=True, exist_ok=True)
        pq.write_table(table, path, compression="snappy")

    def _write_tasks(self) -> None:
        """tasks.parquet as LeRobot writes it, with pandas: a DataFrame of task_index whose (unnamed)
        index is the task text; LeRobot reads it with pandas.read_parquet and looks tasks up there."""
        tasks = list(self.tasks)
        index = "__index_level_0__"
        table = pa.table({"task_index": pa.array([self.tasks[t] for t in tasks], pa.int64()),
                          index: pa.array(tasks, pa.string())})
        pandas_meta = {  # the form pandas' DataFrame.to_parquet writes
            "index_columns": [index],
            "column_indexes": [{"name": None, "field_name": None, "pandas_type": "unicode", "numpy_type": "object",
                                "metadata": {"encoding": "UTF-8"}}],
            "columns": [{"name": "task_index", "field_name": "task_index", "pandas_type": "int64",
                         "numpy_type": "int64", "metadata": None},
                        {"name": None, "field_name": index, "pandas_type": "unicode", "numpy_type": "object",
                         "metadata": None}],
            "creator": {"library": "pyarrow", "version": pa.__version__},
            "pandas_version": "2.2.3",
        }
        table = table.replace_schema_metadata({b"pandas": json.dumps(pandas_meta).encode()})
        pq.write_table(table, self.root / lr.TASKS_PATH)


def export_lerobot(data: str | os.PathLike | Iterable[str | os.PathLike], out: str | os.PathLike,
                   mapping: lr.LeRobotMapping | str | None = None, include_failed: bool = False,
                   progress: bool = True, log_line: Callable[[str], None] = print) -> ExportSummary:
    """Export the episode bags in ``data`` (bag directories, directories of bags, patterns) as a
    LeRobotDataset v3.0 at ``out`` (which must not exist, or be empty)."""
    from tqdm import tqdm

    t0 = time.perf_counter()
    if not isinstance(mapping, lr.LeRobotMapping):
        mapping = lr.load_mapping(mapping)
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"--out {out} exists and is not empty; export into a new directory")
    bags = find_bags(data)
    config = mapping.dataset_config(chunk_size=1, image_size=mapping.image_size or 64,
                                    only_successful=not include_failed)
    tmp = out.with_name(f".{out.name}.partial-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    summary = ExportSummary(out=str(out))
    try:
        writer = LeRobotWriter(tmp, mapping)
        for bag in tqdm(bags, desc="export", unit="bag", disable=not progress, dynamic_ncols=True):
            try:
                ep = load_episode(bag, config, keep_size=mapping.image_size is None)
            except DatasetError as e:
                log.warning("skipping %s", e)
                summary.skipped.append(str(e))
                continue
            if config.only_successful and not ep.success:
                summary.unsuccessful.append(str(bag))
                continue
            if len(ep.tick_stamps) != ep.num_frames or not np.array_equal(ep.action_start, np.arange(ep.num_frames)):
                summary.not_one_to_one.append(str(bag))
            writer.add(ep)
        if not writer.rows:
            raise DatasetError(f"no episode to export from {[str(b) for b in bags]}: "
                               + "; ".join(summary.skipped or [f"{len(summary.unsuccessful)} unsuccessful"]))
        writer.close()
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            out.rmdir()
        tmp.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    summary.episodes, summary.frames, summary.tasks = len(writer.rows), writer.total_frames, len(writer.tasks)
    summary.bytes = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    summary.seconds = time.perf_counter() - t0
    if summary.not_one_to_one:
        log_line(f"warning: in {len(summary.not_one_to_one)} episode(s) camera frames and control ticks are not "
                 f"one to one (e.g. {summary.not_one_to_one[0]}): read back, a frame's action chunk is the next "
                 f"frames' actions, which differs from the bag path's next control ticks there")
    log_line(summary.line())
    return summary
