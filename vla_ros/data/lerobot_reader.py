"""A LeRobotDataset v3.0 directory -> the same :class:`Episode` objects the bag path makes.

Features are found by the DatasetConfig's names (the mapping's, vla_ros.data.lerobot):
``observation.images.<camera>`` for each camera (video), ``observation.state`` (its names, when
the dataset gives them, must be the config's joints), ``action`` (as many values as the
config's action names); the dataset's fps must be 1 / ``action.control_period``. Frames come
from data/*.parquet (pyarrow), images from the MP4s (PyAV), decoded one file at a time and
resized and center-cropped to ``image_size`` as bag frames are. An episode's instruction is the
task of its first frame. As in LeRobot, a frame's action chunk is the actions of that frame and
the next ``chunk_size - 1`` frames, padded with the last action past the episode's end.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from vla_ros.data import lerobot as lr
from vla_ros.data.config import NS, DatasetConfig
from vla_ros.data.episode import Episode
from vla_ros.data.errors import DatasetError
from vla_ros.imaging.preprocess import resize_center_crop

# A decoded frame's time may differ from frame_index / fps by this much (LeRobot's tolerance_s).
TIME_TOLERANCE_S = 1e-4


def _read_parquet(path: Path, columns: list[str] | None = None) -> pa.Table:
    if not path.is_file():
        raise DatasetError(f"{path}: missing")
    try:
        table = pq.read_table(path)
    except (pa.ArrowException, OSError) as e:
        raise DatasetError(f"{path}: unreadable parquet: {e}") from None
    missing = [c for c in columns or [] if c not in table.column_names]
    if missing:
        raise DatasetError(f"{path}: missing column(s) {missing}; it has {table.column_names}")
    return table


def _check_features(root: Path, info: dict, config: DatasetConfig) -> None:
    where = root / lr.INFO_PATH
    feats = info["features"]
    for cam in config.camera_names:
        key = lr.camera_key(cam)
        if key not in feats:
            have = [k for k in feats if k.startswith(lr.IMAGE_PREFIX)]
            raise DatasetError(f"{where}: no feature {key} for camera {cam!r}; the dataset's cameras are {have} "
                               f"(name them in the mapping's cameras)")
        if feats[key]["dtype"] != "video":
            raise DatasetError(f"{where}: feature {key} has dtype {feats[key]['dtype']!r}; only video is read")
    for key, names in ((lr.STATE_KEY, config.state_names), (lr.ACTION_KEY, config.action_names)):
        ft = feats.get(key)
        if ft is None:
            raise DatasetError(f"{where}: no feature {key}")
        if list(ft["shape"]) != [len(names)]:
            raise DatasetError(f"{where}: feature {key} has shape {list(ft['shape'])}, the mapping names "
                               f"{len(names)}: {names}")
        given = ft.get("names")
        if isinstance(given, dict):  # LeRobot's older {"motors": [...]} form
            given = next(iter(given.values()), None)
        if key == lr.STATE_KEY and given is not None and list(given) != list(names):
            raise DatasetError(f"{where}: feature {key} names {list(given)}, the mapping's joints are {names}")
    fps = lr.fps_of(config.action.control_period)
    if info["fps"] != fps:
        raise DatasetError(f"{where}: fps {info['fps']}, but the mapping's action.control_period "
                           f"{config.action.control_period} s is {fps} frames per second")


def _episodes_table(root: Path, info: dict) -> list[dict]:
    files = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    if not files:
        raise DatasetError(f"{root / 'meta' / 'episodes'}: no episodes parquet file")
    rows = []
    for f in files:
        table = _read_parquet(f, ["episode_index", "dataset_from_index", "dataset_to_index"])
        rows += table.select([c for c in table.column_names if not c.startswith("stats/")]).to_pylist()
    rows.sort(key=lambda r: r["episode_index"])
    if len(rows) != info["total_episodes"]:
        raise DatasetError(f"{root / lr.INFO_PATH}: total_episodes {info['total_episodes']}, meta/episodes has "
                           f"{len(rows)}")
    return rows


def _tasks(root: Path) -> dict[int, str]:
    table = _read_parquet(root / lr.TASKS_PATH, ["task_index"])
    meta = json.loads((table.schema.metadata or {}).get(b"pandas", b"{}"))
    text_cols = [c for c in meta.get("index_columns", []) if isinstance(c, str)] + ["task", "__index_level_0__"]
    col = next((c for c in text_cols if c in table.column_names), None)
    if col is None:
        raise DatasetError(f"{root / lr.TASKS_PATH}: no task text column; it has {table.column_names}")
    return dict(zip(table.column("task_index").to_pylist(), table.column(col).to_pylist()))


def _frames(root: Path, info: dict, episodes: list[dict], config: DatasetConfig) -> dict[int, dict[str, np.ndarray]]:
    """episode_index -> its frames' columns, in frame order."""
    cols = ["episode_index", "frame_index", "task_index", "timestamp", lr.STATE_KEY, lr.ACTION_KEY]
    files = sorted({(r.get("data/chunk_index", 0), r.get("data/file_index", 0)) for r in episodes})
    out: dict[int, dict[str, np.ndarray]] = {}
    for chunk, file in files:
        path = root / info["data_path"].format(chunk_index=chunk, file_index=file)
        table = _read_parquet(path, cols)
        ep = table.column("episode_index").to_numpy()
        arrays = {"episode_index": ep, "frame_index": table.column("frame_index").to_numpy(),
                  "task_index": table.column("task_index").to_numpy(),
                  "timestamp": table.column("timestamp").to_numpy().astype(np.float64)}
        for key, n in ((lr.STATE_KEY, len(config.state_names)), (lr.ACTION_KEY, len(config.action_names))):
            values = np.asarray(table.column(key).combine_chunks().flatten().to_numpy(zero_copy_only=False),
                                dtype=np.float32)
            if values.size != n * len(table):
                raise DatasetError(f"{path}: column {key} does not hold {n} values per frame")
            arrays[key] = values.reshape(len(table), n)
        for e in np.unique(ep):
            sel = ep == e
            order = np.argsort(arrays["frame_index"][sel], kind="stable")
            out[int(e)] = {k: v[sel][order] for k, v in arrays.items()}
    return out


def _video_frames(root: Path, info: dict, episodes: list[dict], frames: dict, camera: str,
                  size: int) -> dict[int, np.ndarray]:
    """episode_index -> (T, size, size, 3) uint8 frames of one camera, decoded one MP4 at a time."""
    import av

    key, fps = lr.camera_key(camera), info["fps"]
    by_file: dict[tuple[int, int], list[dict]] = {}
    for r in episodes:
        by_file.setdefault((r.get(f"videos/{key}/chunk_index", 0), r.get(f"videos/{key}/file_index", 0)), []).append(r)
    out: dict[int, np.ndarray] = {}
    for (chunk, file), rows in sorted(by_file.items()):
        path = root / info["video_path"].format(video_key=key, chunk_index=chunk, file_index=file)
        # the global frame number (time * fps in this file) of every frame an episode wants
        wanted: dict[int, tuple[int, int]] = {}
        for r in rows:
            e = r["episode_index"]
            t = float(r.get(f"videos/{key}/from_timestamp", 0.0)) + frames[e]["timestamp"]
            k = np.rint(t * fps).astype(np.int64)
            out[e] = np.zeros((len(k), size, size, 3), np.uint8)
            for i, ki in enumerate(k):
                wanted[int(ki)] = (e, i)
        found = 0
        try:
            with av.open(str(path)) as container:
                stream = container.streams.video[0]
                for frame in container.decode(stream):
                    t = float(frame.pts * frame.time_base)
                    k = int(round(t * fps))
                    target = wanted.get(k)
                    if target is None or abs(t - k / fps) > TIME_TOLERANCE_S:
                        continue
                    e, i = target
                    out[e][i] = resize_center_crop(frame.to_ndarray(format="rgb24"), size)
                    found += 1
        except (av.error.FFmpegError, OSError) as err:
            raise DatasetError(f"{path}: cannot decode: {err}") from None
        if found != len(wanted):
            raise DatasetError(f"{path}: {len(wanted) - found} of {len(wanted)} frames the episodes name were not "
                               f"found within {TIME_TOLERANCE_S} s of their timestamp")
    return out


def read_lerobot_episodes(root: str | Path, config: DatasetConfig) -> list[Episode]:
    """Every episode of the LeRobot dataset at ``root`` as an Episode shaped by ``config``
    (cameras, state and action names, image_size, chunk_size). Raises DatasetError."""
    root = Path(root)
    info = lr.read_info(root)
    _check_features(root, info, config)
    if info.get("video_path") is None:
        raise DatasetError(f"{root / lr.INFO_PATH}: video_path is null (no videos)")
    episodes = _episodes_table(root, info)
    tasks = _tasks(root)
    frames = _frames(root, info, episodes, config)
    for r in episodes:
        e = r["episode_index"]
        n = r["dataset_to_index"] - r["dataset_from_index"]
        if e not in frames or len(frames[e]["frame_index"]) != n:
            raise DatasetError(f"{root}: episode {e} has {len(frames.get(e, {}).get('frame_index', []))} frames in "
                               f"data/, meta/episodes says {n}")
    images = {cam: _video_frames(root, info, episodes, frames, cam, config.image_size) for cam in config.camera_names}
    out = []
    for r in episodes:
        e = r["episode_index"]
        f = frames[e]
        n, h = len(f["frame_index"]), config.chunk_size
        task = int(f["task_index"][0])
        if task not in tasks:
            raise DatasetError(f"{root / lr.TASKS_PATH}: no task_index {task} (episode {e})")
        idx = np.arange(n)[:, None] + np.arange(h)[None, :]
        stamps = np.rint(f["timestamp"] * NS).astype(np.int64)
        actions = f[lr.ACTION_KEY]
        out.append(Episode(
            path=str(root / f"episode_{e:06d}"), instruction=tasks[task], success=True,
            images=np.ascontiguousarray(np.stack([images[c][e] for c in config.camera_names], axis=1)),
            state=f[lr.STATE_KEY], actions=actions[np.minimum(idx, n - 1)], action_is_pad=idx >= n,
            frame_stamps=stamps, action_start=np.arange(n, dtype=np.int64), tick_stamps=stamps,
            tick_actions=actions, camera_names=config.camera_names, state_names=config.state_names,
            action_names=config.action_names))
    return out
