"""LeRobotDataset v3.0: the layout, the YAML mapping between bag topics and features, statistics.

The layout follows LeRobot's own writer (lerobot/datasets/utils.py, lerobot_dataset.py,
compute_stats.py, video_utils.py; codebase_version "v3.0")::

    meta/info.json                         codebase_version, fps, features, counts, path templates
    meta/stats.json                        per feature: min max mean std count q01 q10 q50 q90 q99
    meta/tasks.parquet                     task (the pandas index) -> task_index
    meta/episodes/chunk-000/file-000.parquet   one row per episode: length, tasks, where its frames and
                                           video segments are, and its own stats/<feature>/<stat>
    data/chunk-000/file-000.parquet        one row per frame
    videos/observation.images.<camera>/chunk-000/file-000.mp4   every episode's frames, one after another

Features: ``observation.images.<camera>`` (video), ``observation.state``, ``action``, and
LeRobot's ``timestamp`` (frame_index / fps), ``frame_index``, ``episode_index``, ``index``,
``task_index``. The mapping (config/lerobot/*.yaml, :class:`LeRobotMapping`) names the topics
behind each feature and becomes the :class:`DatasetConfig` that reads the bags, so export and the
bag path align episodes with the same code (vla_ros.data.alignment).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from vla_ros.cli_fields import refuse_unknown_keys
from vla_ros.data.actions import ActionSpec
from vla_ros.data.config import CameraTopic, DatasetConfig
from vla_ros.data.errors import DatasetError
from vla_ros.share import share_dirs

CODEBASE_VERSION = "v3.0"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
VIDEO_PATH = "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
# LeRobot's defaults (DEFAULT_CHUNK_SIZE, DEFAULT_DATA_FILE_SIZE_IN_MB, DEFAULT_VIDEO_FILE_SIZE_IN_MB).
CHUNKS_SIZE = 1000
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 200
# Keys of meta/info.json, in the order LeRobot writes them (create_empty_dataset_info).
INFO_KEYS = ("codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks", "chunks_size",
             "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits", "data_path", "video_path",
             "features")
# LeRobot's DEFAULT_FEATURES: present in every dataset.
INDEX_FEATURES = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
STATE_KEY = "observation.state"
ACTION_KEY = "action"
IMAGE_PREFIX = "observation.images."
QUANTILES = (0.01, 0.10, 0.50, 0.90, 0.99)  # LeRobot's DEFAULT_QUANTILES -> q01 q10 q50 q90 q99
CODECS = {"libsvtav1": "libsvtav1", "av1": "libsvtav1", "h264": "libx264", "libx264": "libx264"}
DEFAULT_MAPPING = "sim_panda"

_TOP_KEYS = {"robot_type", "cameras", "state", "action", "instruction_topic", "success_topic", "image_size", "video"}
_STATE_KEYS = {"topic", "joints"}


def camera_key(camera: str) -> str:
    """The LeRobot feature of a camera: observation.images.<camera>."""
    return IMAGE_PREFIX + camera


def is_lerobot_dataset(path: str | Path) -> bool:
    """A directory with meta/info.json is a LeRobot dataset (bags have metadata.yaml)."""
    p = Path(path)
    return p.is_dir() and (p / "meta").is_dir() and not (p / "metadata.yaml").exists()


@dataclass
class VideoSpec:
    """How camera frames are encoded (PyAV): codec, constant-rate-factor quality, keyframe interval."""

    codec: str = "libsvtav1"
    crf: int = 30
    gop: int = 2
    pix_fmt: str = "yuv420p"

    @property
    def encoder(self) -> str:
        """The FFmpeg encoder."""
        return CODECS[self.codec]

    @property
    def codec_name(self) -> str:
        """The codec as FFmpeg's decoders name it (info.json's video.codec)."""
        return {"libsvtav1": "av1", "libx264": "h264"}[self.encoder]


@dataclass
class LeRobotMapping:
    """Which bag topics become which LeRobot features (one YAML file; see config/lerobot/)."""

    cameras: dict[str, str]
    state_topic: str
    state_joints: list[str]
    action: ActionSpec
    robot_type: str | None = None
    instruction_topic: str = "/instruction"
    success_topic: str = "/task_success"
    image_size: int | None = None
    video: VideoSpec = field(default_factory=VideoSpec)
    source: str = ""

    @property
    def fps(self) -> int:
        """Frames per second of the dataset: one frame per control tick."""
        return fps_of(self.action.control_period, self.source)

    def dataset_config(self, **overrides: Any) -> DatasetConfig:
        """The DatasetConfig that reads bags (and LeRobot datasets) the way this mapping says."""
        d: dict[str, Any] = dict(
            cameras=[CameraTopic(name, topic) for name, topic in self.cameras.items()],
            state_topic=self.state_topic, state_joint_names=list(self.state_joints),
            action=ActionSpec(**vars(self.action)), instruction_topic=self.instruction_topic,
            success_topic=self.success_topic)
        d.update(overrides)
        return DatasetConfig(**d)


def fps_of(control_period: float, where: str = "") -> int:
    """1 / control_period as the integer LeRobot's fps must be; DatasetError when it is not one."""
    fps = 1.0 / control_period
    if round(fps) < 1 or abs(fps - round(fps)) > 1e-6:
        raise DatasetError(f"{where or 'mapping'}: action.control_period {control_period} s is not 1 / an integer "
                           f"frame rate (LeRobot's fps is an integer)")
    return int(round(fps))


def mapping_path(name_or_path: str | None) -> Path:
    """A mapping file: a path, or a name in config/lerobot/ (default sim_panda)."""
    name = name_or_path or DEFAULT_MAPPING
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise DatasetError(f"LeRobot mapping {p} does not exist")
        return p
    for d in share_dirs():
        f = d / "config" / "lerobot" / f"{name}.yaml"
        if f.is_file():
            return f
    raise DatasetError(f"no LeRobot mapping {name!r} (a YAML file, or a name in config/lerobot/)")


def _refuse_unknown(path: Path, what: str, got: dict, allowed: set[str] | type) -> None:
    """One error naming the file and the unknown keys (cli_fields' message form)."""
    def error(message: str) -> DatasetError:
        return DatasetError(f"{path}: {message}")

    refuse_unknown_keys(allowed, got, what, error)


def load_mapping(name_or_path: str | None = None) -> LeRobotMapping:
    """Read and check a mapping YAML; DatasetError naming the file and key on any problem."""
    path = mapping_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DatasetError(f"{path}: invalid YAML: {e}") from None
    if not isinstance(raw, dict):
        raise DatasetError(f"{path}: expected a mapping of keys, got {type(raw).__name__}")
    _refuse_unknown(path, "mapping", raw, _TOP_KEYS)
    cams = raw.get("cameras")
    if not isinstance(cams, dict) or not cams or not all(isinstance(k, str) and isinstance(v, str) and v
                                                          for k, v in cams.items()):
        raise DatasetError(f"{path}: cameras must map camera names to image topics, got {cams!r}")
    for name in cams:
        if not name or "/" in name:
            raise DatasetError(f"{path}: camera name {name!r} must be non-empty without '/' "
                               f"(it becomes the feature {camera_key(name)})")
    state = raw.get("state")
    if not isinstance(state, dict):
        raise DatasetError(f"{path}: state must be {{topic, joints}}, got {state!r}")
    _refuse_unknown(path, "state", state, _STATE_KEYS)
    joints = state.get("joints")
    if not isinstance(joints, list) or not joints or not all(isinstance(j, str) for j in joints):
        raise DatasetError(f"{path}: state.joints must be a list of joint names, got {joints!r}")
    action = raw.get("action")
    if not isinstance(action, dict):
        raise DatasetError(f"{path}: action must be a mapping of ActionSpec fields, got {action!r}")
    _refuse_unknown(path, "action", action, ActionSpec)
    video = raw.get("video") or {}
    if not isinstance(video, dict):
        raise DatasetError(f"{path}: video must be a mapping, got {video!r}")
    _refuse_unknown(path, "video", video, VideoSpec)
    vspec = VideoSpec(**video)
    if vspec.codec not in CODECS:
        raise DatasetError(f"{path}: video.codec {vspec.codec!r} is not one of {sorted(CODECS)}")
    pix_fmts = ("yuv420p",) if vspec.encoder == "libsvtav1" else ("yuv420p", "yuv444p")
    if vspec.pix_fmt not in pix_fmts:
        raise DatasetError(f"{path}: video.pix_fmt {vspec.pix_fmt!r}: {vspec.codec} takes {list(pix_fmts)}")
    for k in ("crf", "gop"):
        v = getattr(vspec, k)
        if not isinstance(v, int) or isinstance(v, bool) or v < (1 if k == "gop" else 0):
            raise DatasetError(f"{path}: video.{k} must be a {'positive' if k == 'gop' else 'non-negative'} "
                               f"integer, got {v!r}")
    size = raw.get("image_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 16):
        raise DatasetError(f"{path}: image_size must be null or an integer >= 16, got {size!r}")
    mapping = LeRobotMapping(
        cameras=dict(cams), state_topic=str(state.get("topic", "/joint_states")), state_joints=list(joints),
        action=ActionSpec(**action), robot_type=raw.get("robot_type"),
        instruction_topic=raw.get("instruction_topic", "/instruction"),
        success_topic=raw.get("success_topic", "/task_success"), image_size=size, video=vspec, source=str(path))
    mapping.fps  # checks control_period
    mapping.dataset_config()  # checks joints and the action kind
    return mapping


# ----------------------------------------------------------------------------- reading meta/
def read_info(root: str | Path) -> dict[str, Any]:
    """meta/info.json of a LeRobot v3 dataset, checked; DatasetError naming the file and field."""
    path = Path(root) / INFO_PATH
    if not path.is_file():
        raise DatasetError(f"{path}: missing: not a LeRobot dataset (LeRobotDataset v3.0 has meta/info.json)")
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise DatasetError(f"{path}: invalid JSON: {e}") from None
    if not isinstance(info, dict):
        raise DatasetError(f"{path}: expected a JSON object, got {type(info).__name__}")
    missing = [k for k in ("codebase_version", "fps", "features", "data_path", "total_episodes") if k not in info]
    if missing:
        raise DatasetError(f"{path}: missing field(s) {missing}")
    version = str(info["codebase_version"])
    if not version.startswith("v3."):
        raise DatasetError(f"{path}: codebase_version {version!r}: only LeRobotDataset v3.x is read "
                           f"(convert with LeRobot's convert_dataset_v21_to_v30)")
    if not isinstance(info["features"], dict):
        raise DatasetError(f"{path}: features must be an object, got {type(info['features']).__name__}")
    for name, ft in info["features"].items():
        if not isinstance(ft, dict) or "dtype" not in ft or "shape" not in ft:
            raise DatasetError(f"{path}: feature {name!r} needs dtype and shape, got {ft!r}")
    if not isinstance(info["fps"], int) or info["fps"] < 1:
        raise DatasetError(f"{path}: fps must be a positive integer, got {info['fps']!r}")
    return info


# ----------------------------------------------------------------------------- statistics
def feature_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """LeRobot's statistics of a (N, D) feature over its N rows: min max mean std, quantiles, count.
    min and max keep an integer feature's dtype, as LeRobot's do."""
    raw = np.asarray(values)
    raw = raw.reshape(len(raw), -1)
    a = raw.astype(np.float64)
    stats = {"min": raw.min(0), "max": raw.max(0), "mean": a.mean(0), "std": a.std(0),
             "count": np.array([len(a)], dtype=np.int64)}
    if np.issubdtype(raw.dtype, np.floating):
        stats["min"], stats["max"] = stats["min"].astype(np.float64), stats["max"].astype(np.float64)
    for q, v in zip(QUANTILES, np.quantile(a, QUANTILES, axis=0)):
        stats[f"q{int(round(q * 100)):02d}"] = v
    return stats


def sample_frame_indices(n: int) -> np.ndarray:
    """The frames image statistics use, as LeRobot samples them (compute_stats.sample_indices): all of
    up to 100, then n ** 0.75 (at most 10,000) evenly spaced."""
    k = n if n < 100 else max(100, min(int(n ** 0.75), 10_000))
    return np.round(np.linspace(0, n - 1, k)).astype(int)


def image_stats(frames: np.ndarray) -> dict[str, np.ndarray]:
    """Per-channel statistics of (N, H, W, 3) uint8 frames in [0, 1], shaped (3, 1, 1) as LeRobot's,
    over the sampled frames (strided to about 150 pixels when a side is 300 or more); count is the
    number of frames sampled."""
    sample = frames[sample_frame_indices(len(frames))]
    h, w = sample.shape[1:3]
    if max(h, w) >= 300:
        step = int(max(h, w) / 150)
        sample = sample[:, ::step, ::step]
    s = feature_stats(sample.reshape(-1, sample.shape[-1]).astype(np.float64) / 255.0)
    out = {k: v.reshape(-1, 1, 1) for k, v in s.items() if k != "count"}
    out["count"] = np.array([len(sample)], dtype=np.int64)
    return out


def aggregate_stats(per_episode: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Dataset statistics from episode statistics as LeRobot aggregates them: exact min, max, mean and
    std (parallel variance), count-weighted quantiles."""
    counts = np.array([s["count"][0] for s in per_episode], dtype=np.float64)
    total = counts.sum()
    w = counts.reshape(-1, *([1] * per_episode[0]["mean"].ndim)) / total
    means = np.stack([s["mean"] for s in per_episode])
    mean = (means * w).sum(0)
    var = ((np.stack([s["std"] for s in per_episode]) ** 2 + (means - mean) ** 2) * w).sum(0)
    out = {"min": np.min([s["min"] for s in per_episode], axis=0),
           "max": np.max([s["max"] for s in per_episode], axis=0), "mean": mean, "std": np.sqrt(var), "count": np.array([int(total)], dtype=np.int64)}
    for k in per_episode[0]:
        if k.startswith("q"):
            out[k] = (np.stack([s[k] for s in per_episode]) * w).sum(0)
    return out


def stats_to_json(stats: dict[str, dict[str, np.ndarray]]) -> dict[str, dict[str, list]]:
    return {name: {k: np.asarray(v).tolist() for k, v in s.items()} for name, s in stats.items()}
