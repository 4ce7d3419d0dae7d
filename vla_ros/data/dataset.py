"""Behaviour-cloning episodes from rosbag2 recordings (no rclpy): alignment, caching, batches.

One bag directory (MCAP or sqlite3) is one episode. :func:`load_episode` turns it into an
:class:`Episode` of aligned arrays; :func:`load_episodes` does that for many bags, with an
on-disk cache; :class:`EpisodeDataset` serves batches shaped for ``VLAPolicy.loss``.

Alignment (all times in nanoseconds, from ``header.stamp``; messages without a header, or
with a zero stamp, use the bag's receive timestamp):

* frames: the first camera is the reference; every other camera contributes its frame
  nearest in time within ``camera_sync_tolerance`` (a reference frame without one is
  dropped). Images are decoded (rgb8, bgr8, mono8, ... or JPEG/PNG CompressedImage),
  resized and center-cropped to ``image_size`` with ``imaging.preprocess.resize_center_crop``
  and stored as uint8 ``(T, V, S, S, 3)`` RGB.
* state: for each frame, the latest joint positions at or before the frame stamp, by joint
  name (joint-state messages carrying only some joints are merged); frames before all the
  state joints have been seen are dropped.
* actions: the action source yields one action per control tick. A frame's chunk starts at
  the tick nearest its stamp when one is within ``tick_tolerance``, otherwise at the first
  tick after it (a frame with no tick within ``max_tick_delay`` after it is dropped), and
  holds that tick and the next ``chunk_size - 1`` ticks; past the last tick it is padded
  (with the last action) and ``action_is_pad`` is true.

The only action source today is ``ee_delta``: ``twist * control_period`` from a
(geometry_msgs) TwistStamped topic (linear xyz, then angular xyz as an axis-angle vector)
plus, optionally, a std_msgs/Float64 gripper command (1 open, 0 closed). A gripper message
belongs to the first tick at or after its time minus ``tick_tolerance`` and holds until the
next one (the first ticks use ``gripper_default``). Headerless gripper messages are matched
against the ticks' receive timestamps, so a receive-time offset between header stamps and
the bag clock does not shift them. New sources (e.g. ``joint_position`` from a JointState or
JointTrajectory topic) plug into ``ACTION_SOURCES``.

Every problem with a bag raises :class:`DatasetError` naming the bag and what is wrong; with
``skip_bad_bags`` (the default) :func:`load_episodes` logs it and skips that bag instead.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import torch

from vla_ros.data.bags import BagError, BagReader, typestore_for
from vla_ros.model.normalization import FeatureStats, compute_stats
from vla_ros.imaging.decode import ImageDecodeError, decode_compressed, decode_raw
from vla_ros.imaging.preprocess import resize_center_crop

log = logging.getLogger("vla_ros.data.dataset")

CACHE_VERSION = 1
PANDA_JOINTS = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1", "panda_finger_joint2"]
EE_DELTA_NAMES = ["x", "y", "z", "roll", "pitch", "yaw"]
IMAGE_TYPES = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage")
STATE_TYPES = ("sensor_msgs/msg/JointState",)
TWIST_TYPES = ("geometry_msgs/msg/TwistStamped", "geometry_msgs/msg/Twist")
NS = 1_000_000_000


class DatasetError(ValueError):
    """A bag (or set of bags) that cannot be turned into training data; says which and why."""


# ----------------------------------------------------------------------------- config
@dataclass
class CameraSpec:
    """One camera view: its name (as in VLAConfig.camera_names) and its image topic."""

    name: str
    topic: str


@dataclass
class ActionSpec:
    """Where the actions come from.

    kind: "ee_delta" (the only source today): ``topic`` is a TwistStamped (or Twist) topic,
    one message per control tick, and an action is twist * ``control_period`` (x, y, z
    metres, then an axis-angle rotation vector in radians). ``gripper_topic`` ("" for none)
    adds a gripper dimension from std_msgs/Float64 commands.
    """

    kind: str = "ee_delta"
    topic: str = "/expert/twist"
    control_period: float = 0.1
    gripper_topic: str = "/expert/gripper"
    gripper_default: float = 1.0
    # Names of the action dimensions (without the gripper); empty: the source's defaults.
    names: list[str] = field(default_factory=list)
    gripper_name: str = "gripper"

    def action_names(self) -> list[str]:
        source = ACTION_SOURCES.get(self.kind)
        if source is None:
            raise DatasetError(f"unknown action source kind {self.kind!r}; supported: {sorted(ACTION_SOURCES)}")
        names = list(self.names) if self.names else list(source.default_names)
        return names + ([self.gripper_name] if self.gripper_topic else [])


@dataclass
class DatasetConfig:
    """How to turn episode bags into (images, instruction, state, action chunk) samples."""

    cameras: list[CameraSpec] = field(default_factory=lambda: [CameraSpec("front", "/front/image_raw")])
    state_topic: str = "/joint_states"
    state_joint_names: list[str] = field(default_factory=lambda: list(PANDA_JOINTS))
    action: ActionSpec = field(default_factory=ActionSpec)
    instruction_topic: str = "/instruction"
    # Used when a bag has no instruction message ("" : such a bag is an error).
    default_instruction: str = ""
    # std_msgs/Bool; the episode succeeded if any message is true. "": no success topic
    # (every episode counts as successful).
    success_topic: str = "/task_success"
    image_size: int = 64
    chunk_size: int = 8
    only_successful: bool = True
    # Seconds. None: control_period / 4.
    tick_tolerance: float | None = None
    # Seconds a frame may precede its first action tick. None: 1.5 * control_period.
    max_tick_delay: float | None = None
    # Seconds between a reference frame and the other cameras' frames. None: control_period / 2.
    camera_sync_tolerance: float | None = None
    # load_episodes: log and skip a bad bag (True) or raise (False).
    skip_bad_bags: bool = True

    def __post_init__(self) -> None:
        self.cameras = [c if isinstance(c, CameraSpec) else CameraSpec(**c) for c in self.cameras]
        if isinstance(self.action, dict):
            self.action = ActionSpec(**self.action)
        if not self.cameras:
            raise DatasetError("DatasetConfig.cameras must name at least one camera")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise DatasetError(f"DatasetConfig.cameras has duplicate names {names}")
        if not self.state_joint_names or len(set(self.state_joint_names)) != len(self.state_joint_names):
            raise DatasetError(f"DatasetConfig.state_joint_names must be non-empty and unique, "
                               f"got {self.state_joint_names}")
        for n in ("image_size", "chunk_size"):
            v = getattr(self, n)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DatasetError(f"DatasetConfig.{n} must be a positive integer, got {v!r}")
        if not self.action.control_period > 0:
            raise DatasetError(f"DatasetConfig.action.control_period must be > 0, got {self.action.control_period!r}")
        self.action.action_names()  # validates the kind

    # -------------------------------------------------------------- derived
    @property
    def camera_names(self) -> list[str]:
        return [c.name for c in self.cameras]

    @property
    def action_names(self) -> list[str]:
        return self.action.action_names()

    @property
    def state_names(self) -> list[str]:
        return list(self.state_joint_names)

    def tolerance_ns(self, name: str) -> int:
        period = self.action.control_period
        defaults = {"tick_tolerance": period / 4, "max_tick_delay": 1.5 * period, "camera_sync_tolerance": period / 2}
        value = getattr(self, name)
        return int(round((defaults[name] if value is None else value) * NS))

    # -------------------------------------------------------------- (de)serialization
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DatasetConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DatasetError(f"unknown DatasetConfig key(s) {unknown}; valid keys are {sorted(known)}")
        data = dict(data)
        if isinstance(data.get("action"), dict):
            akeys = {f.name for f in dataclasses.fields(ActionSpec)}
            bad = sorted(set(data["action"]) - akeys)
            if bad:
                raise DatasetError(f"unknown DatasetConfig.action key(s) {bad}; valid keys are {sorted(akeys)}")
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DatasetConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: invalid JSON: {e}") from None

    def cache_key_dict(self) -> dict[str, Any]:
        """The fields that change an episode's arrays (not the filtering flags)."""
        d = self.to_dict()
        for k in ("only_successful", "skip_bad_bags"):
            d.pop(k)
        return d


# ----------------------------------------------------------------------------- episode
@dataclass
class Episode:
    """One recorded episode, aligned per frame (T frames, V cameras, N control ticks)."""

    path: str
    instruction: str
    success: bool
    images: np.ndarray          # (T, V, S, S, 3) uint8 RGB
    state: np.ndarray           # (T, S) float32, robot units
    actions: np.ndarray         # (T, H, D) float32, robot units
    action_is_pad: np.ndarray   # (T, H) bool
    frame_stamps: np.ndarray    # (T,) int64 ns
    action_start: np.ndarray    # (T,) int64: index of each frame's first tick
    tick_stamps: np.ndarray     # (N,) int64 ns
    tick_actions: np.ndarray    # (N, D) float32: the recorded action of every tick
    camera_names: list[str] = field(default_factory=list)
    state_names: list[str] = field(default_factory=list)
    action_names: list[str] = field(default_factory=list)

    @property
    def num_frames(self) -> int:
        return int(self.images.shape[0])

    @property
    def name(self) -> str:
        return Path(self.path).name

    _ARRAYS = ("images", "state", "actions", "action_is_pad", "frame_stamps", "action_start", "tick_stamps",
               "tick_actions")
    _META = ("path", "instruction", "success", "camera_names", "state_names", "action_names")

    def save_npz(self, path: Path) -> None:
        """Write as .npz (arrays + a JSON string; no pickle), atomically."""
        meta = {k: getattr(self, k) for k in self._META}
        tmp = path.with_name(path.name + f".tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, meta=np.array(json.dumps(meta)), **{k: getattr(self, k) for k in self._ARRAYS})
        os.replace(tmp, path)

    @classmethod
    def load_npz(cls, path: Path) -> "Episode":
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            arrays = {k: z[k] for k in cls._ARRAYS}
        return cls(**meta, **arrays)


# ----------------------------------------------------------------------------- helpers
@lru_cache(maxsize=1)
def _typestore():
    return typestore_for()


def _deserialize(data: bytes, msgtype: str, bag: Path, topic: str):
    try:
        return _typestore().deserialize_cdr(data, msgtype)
    except Exception as e:  # rosbags raises assorted errors for malformed CDR
        raise DatasetError(f"bag {bag}: cannot deserialize a {msgtype} message on {topic}: "
                           f"{type(e).__name__}: {e}") from None


def _stamp(msg, receive_ns: int) -> tuple[int, bool]:
    """(header stamp in ns, True) or (receive time, False) for headerless / zero stamps."""
    header = getattr(msg, "header", None)
    if header is not None:
        t = int(header.stamp.sec) * NS + int(header.stamp.nanosec)
        if t > 0:
            return t, True
    return int(receive_ns), False


def _decode_image(msg, msgtype: str, size: int, where: str) -> np.ndarray:
    try:
        if msgtype.endswith("CompressedImage"):
            rgb = decode_compressed(msg.format, msg.data)
        else:
            rgb = decode_raw(msg.height, msg.width, msg.encoding, msg.step, msg.data, msg.is_bigendian)
    except ImageDecodeError as e:
        raise DatasetError(f"{where}: {e}") from None
    return np.ascontiguousarray(resize_center_crop(rgb, size), dtype=np.uint8)


def _nearest(times: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of the entry of sorted ``times`` nearest each query (ties: the earlier one)."""
    j = np.searchsorted(times, query)
    lo, hi = np.clip(j - 1, 0, len(times) - 1), np.clip(j, 0, len(times) - 1)
    return np.where(np.abs(times[lo] - query) <= np.abs(times[hi] - query), lo, hi)


@dataclass
class _Ticks:
    stamps: np.ndarray   # (N,) int64, header (or receive) time
    receive: np.ndarray  # (N,) int64, bag receive time
    actions: np.ndarray  # (N, D) float32


@dataclass(frozen=True)
class ActionSource:
    """An action source: which topics it reads and how messages become per-tick actions."""

    default_names: tuple[str, ...]
    topics: Callable[[ActionSpec], dict[str, tuple[str, ...]]]   # topic -> accepted types
    build: Callable[[ActionSpec, dict[str, list], Path, int], _Ticks]


def _ee_delta_topics(spec: ActionSpec) -> dict[str, tuple[str, ...]]:
    topics = {spec.topic: TWIST_TYPES}
    if spec.gripper_topic:
        topics[spec.gripper_topic] = ("std_msgs/msg/Float64", "std_msgs/msg/Float32")
    return topics


def _ee_delta_build(spec: ActionSpec, msgs: dict[str, list], bag: Path, tol_ns: int) -> _Ticks:
    """msgs: topic -> [(stamp, has_header, receive, msg)] sorted by stamp."""
    twists = msgs[spec.topic]
    if not twists:
        raise DatasetError(f"bag {bag}: action topic {spec.topic} has no messages")
    stamps = np.array([s for s, _, _, _ in twists], dtype=np.int64)
    receive = np.array([r for _, _, r, _ in twists], dtype=np.int64)
    vel = np.empty((len(twists), 6), dtype=np.float64)
    for i, (_, _, _, m) in enumerate(twists):
        tw = getattr(m, "twist", m)
        vel[i] = (tw.linear.x, tw.linear.y, tw.linear.z, tw.angular.x, tw.angular.y, tw.angular.z)
    actions = vel * spec.control_period
    if spec.gripper_topic:
        gripper = np.full(len(twists), float(spec.gripper_default))
        events = []  # (tick index from which the value holds, order, value)
        for order, (s, has_header, r, m) in enumerate(msgs[spec.gripper_topic]):
            times = stamps if has_header else receive
            ref = s if has_header else r
            k = int(np.searchsorted(times, ref - tol_ns, side="left"))
            events.append((k, order, float(m.data)))
        events.sort()
        for k, _, value in events:
            if k < len(gripper):
                gripper[k:] = value
        actions = np.concatenate([actions, gripper[:, None]], axis=1)
    if not np.isfinite(actions).all():
        raise DatasetError(f"bag {bag}: non-finite values (NaN/inf) in the actions from {spec.topic}")
    return _Ticks(stamps, receive, actions.astype(np.float32))


ACTION_SOURCES: dict[str, ActionSource] = {
    "ee_delta": ActionSource(tuple(EE_DELTA_NAMES), _ee_delta_topics, _ee_delta_build),
}


def _required_topics(config: DatasetConfig) -> dict[str, tuple[tuple[str, ...], str]]:
    """topic -> (accepted types, what it is for)."""
    out: dict[str, tuple[tuple[str, ...], str]] = {}
    for cam in config.cameras:
        out[cam.topic] = (IMAGE_TYPES, f"camera {cam.name!r}")
    out[config.state_topic] = (STATE_TYPES, "state")
    source = ACTION_SOURCES[config.action.kind]
    for topic, types in source.topics(config.action).items():
        out[topic] = (types, f"{config.action.kind} action")
    if config.instruction_topic and not config.default_instruction:
        out[config.instruction_topic] = (("std_msgs/msg/String",), "instruction")
    if config.success_topic and config.only_successful:
        out[config.success_topic] = (("std_msgs/msg/Bool",), "task success")
    return out


# ----------------------------------------------------------------------------- one bag
def load_episode(path: str | os.PathLike, config: DatasetConfig) -> Episode:
    """Read one episode bag and align it (see the module docstring). Raises DatasetError."""
    bag = Path(path)
    required = _required_topics(config)
    optional = {}
    if config.instruction_topic and config.instruction_topic not in required:
        optional[config.instruction_topic] = ("std_msgs/msg/String",)
    if config.success_topic and config.success_topic not in required:
        optional[config.success_topic] = ("std_msgs/msg/Bool",)
    try:
        reader = BagReader(bag)
    except BagError as e:
        raise DatasetError(f"bag {bag}: unreadable: {e}") from None
    msgs: dict[str, list] = {}
    with reader:
        for topic, (types, what) in required.items():
            info = reader.topics.get(topic)
            if info is None:
                raise DatasetError(f"bag {bag}: missing topic {topic} ({what}); the bag has {sorted(reader.topics)}")
            if info.msgtype not in types:
                raise DatasetError(f"bag {bag}: topic {topic} ({what}) has type {info.msgtype}, expected "
                                   f"{' or '.join(types)}")
        types_of = {t: reader.topics[t].msgtype for t in list(required) + list(optional) if t in reader.topics}
        for t, types in optional.items():
            if t in types_of and types_of[t] not in types:
                raise DatasetError(f"bag {bag}: topic {t} has type {types_of[t]}, expected {' or '.join(types)}")
        msgs = {t: [] for t in types_of}
        camera_topics = {c.topic for c in config.cameras}
        try:
            for m in reader.messages(list(types_of)):
                obj = _deserialize(m.data, m.msgtype, bag, m.topic)
                stamp, has_header = _stamp(obj, m.timestamp)
                if m.topic in camera_topics:
                    obj = _decode_image(obj, m.msgtype, config.image_size, f"bag {bag}: image on {m.topic}")
                msgs[m.topic].append((stamp, has_header, m.timestamp, obj))
        except BagError as e:
            raise DatasetError(f"bag {bag}: unreadable: {e}") from None
    for topic in msgs:
        msgs[topic].sort(key=lambda x: (x[0], x[2]))
    return _align(bag, config, msgs)


def _align(bag: Path, config: DatasetConfig, msgs: dict[str, list]) -> Episode:
    # ---- instruction and success
    instruction = next((m.data.strip() for _, _, _, m in msgs.get(config.instruction_topic, [])
                        if m.data.strip()), "") if config.instruction_topic else ""
    if not instruction:
        instruction = config.default_instruction
    if not instruction:
        raise DatasetError(f"bag {bag}: no instruction (no non-empty std_msgs/String on {config.instruction_topic})")
    if config.success_topic:
        success = any(bool(m.data) for _, _, _, m in msgs.get(config.success_topic, []))
    else:
        success = True

    # ---- frames (reference camera + nearest frames of the others)
    ref_cam = config.cameras[0]
    ref = msgs[ref_cam.topic]
    if not ref:
        raise DatasetError(f"bag {bag}: camera topic {ref_cam.topic} has no messages")
    frame_stamps = np.array([s for s, _, _, _ in ref], dtype=np.int64)
    views = [np.stack([img for _, _, _, img in ref])]
    keep = np.ones(len(ref), dtype=bool)
    sync = config.tolerance_ns("camera_sync_tolerance")
    for cam in config.cameras[1:]:
        other = msgs[cam.topic]
        if not other:
            raise DatasetError(f"bag {bag}: camera topic {cam.topic} has no messages")
        t_other = np.array([s for s, _, _, _ in other], dtype=np.int64)
        nearest = _nearest(t_other, frame_stamps)
        keep &= np.abs(t_other[nearest] - frame_stamps) <= sync
        imgs = np.stack([img for _, _, _, img in other])
        views.append(imgs[nearest])
    images = np.stack(views, axis=1)  # (T, V, S, S, 3)

    # ---- state: merged joint positions by name, latest at or before each frame
    names = config.state_joint_names
    js = msgs[config.state_topic]
    if not js:
        raise DatasetError(f"bag {bag}: state topic {config.state_topic} has no messages")
    index = {n: i for i, n in enumerate(names)}
    current = np.full(len(names), np.nan)
    snaps, snap_t, seen = [], [], set()
    for s, _, _, m in js:
        if len(m.position) != len(m.name):
            continue  # no positions (a velocity-only message) or malformed
        for n, p in zip(m.name, m.position):
            i = index.get(n)
            if i is not None:
                current[i] = p
                seen.add(n)
        snaps.append(current.copy())
        snap_t.append(s)
    missing = [n for n in names if n not in seen]
    if missing:
        have = sorted({n for _, _, _, m in js for n in m.name})
        raise DatasetError(f"bag {bag}: joint(s) {missing} never appear with positions on {config.state_topic} "
                           f"(it has {have})")
    snaps_a = np.array(snaps, dtype=np.float64)
    snap_t_a = np.array(snap_t, dtype=np.int64)
    complete = np.isfinite(snaps_a).all(axis=1)
    first_complete = int(np.argmax(complete))
    si = np.searchsorted(snap_t_a, frame_stamps, side="right") - 1
    keep &= si >= first_complete
    state = snaps_a[np.maximum(si, 0)].astype(np.float32)

    # ---- actions: per-tick actions, a chunk per frame
    ticks = ACTION_SOURCES[config.action.kind].build(config.action, msgs, bag, config.tolerance_ns("tick_tolerance"))
    tol, delay = config.tolerance_ns("tick_tolerance"), config.tolerance_ns("max_tick_delay")
    n_ticks = len(ticks.stamps)
    after = np.searchsorted(ticks.stamps, frame_stamps, side="left")  # first tick >= frame
    start = after.copy()
    before = after - 1
    has_before = before >= 0
    dt_before = np.where(has_before, frame_stamps - ticks.stamps[np.maximum(before, 0)], np.iinfo(np.int64).max)
    dt_after = np.where(after < n_ticks, ticks.stamps[np.minimum(after, n_ticks - 1)] - frame_stamps,
                        np.iinfo(np.int64).max)
    use_before = has_before & (dt_before <= tol) & (dt_before < dt_after)
    start = np.where(use_before, before, start)
    ok_after = (after < n_ticks) & (dt_after <= delay)
    keep &= use_before | ok_after
    H = config.chunk_size
    idx = start[:, None] + np.arange(H)[None, :]
    is_pad = idx >= n_ticks
    idx = np.clip(idx, 0, n_ticks - 1)
    chunks = ticks.actions[idx]

    if not keep.any():
        reasons = []
        if not (si >= first_complete).any():
            reasons.append(f"every frame precedes the first complete joint state on {config.state_topic}")
        if not (use_before | ok_after).any():
            reasons.append(f"no frame has an action tick on {config.action.topic} within "
                           f"{delay / NS:.3f} s after it")
        raise DatasetError(f"bag {bag}: no usable frames ({'; '.join(reasons) or 'cameras never in sync'})")
    dropped = int((~keep).sum())
    if dropped:
        log.debug("bag %s: %d of %d frames dropped (no state yet / no action tick / cameras out of sync)",
                  bag, dropped, len(keep))
    return Episode(
        path=str(bag), instruction=instruction, success=bool(success),
        images=np.ascontiguousarray(images[keep]), state=state[keep], actions=chunks[keep].astype(np.float32),
        action_is_pad=is_pad[keep], frame_stamps=frame_stamps[keep], action_start=start[keep].astype(np.int64),
        tick_stamps=ticks.stamps, tick_actions=ticks.actions,
        camera_names=config.camera_names, state_names=config.state_names, action_names=config.action_names,
    )


# ----------------------------------------------------------------------------- many bags
def _is_bag_dir(path: Path) -> bool:
    if (path / "metadata.yaml").is_file():
        return True
    return any(p.suffix in (".mcap", ".db3") for p in path.iterdir() if p.is_file())


def find_bags(paths: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """Bag directories named by ``paths``: each a bag directory, or a directory whose
    subdirectories are bags (other subdirectories are ignored). Sorted, without duplicates."""
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise DatasetError(f"data path {p} does not exist")
        if p.is_file():
            p = p.parent
        if _is_bag_dir(p):
            out.append(p)
            continue
        subs = sorted(d for d in p.iterdir() if d.is_dir() and _is_bag_dir(d))
        if not subs:
            raise DatasetError(f"data path {p} is neither a bag directory nor a directory of bag directories")
        out.extend(subs)
    seen, unique = set(), []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def cache_key(bag: str | os.PathLike, config: DatasetConfig) -> str:
    """Hash of the bag's files (path, size, mtime) and the config fields that shape the arrays."""
    bag = Path(bag).resolve()
    files = []
    if bag.is_dir():
        for f in sorted(bag.iterdir()):
            if f.is_file():
                st = f.stat()
                files.append([f.name, st.st_size, st.st_mtime_ns])
    payload = {"version": CACHE_VERSION, "bag": str(bag), "files": files, "config": config.cache_key_dict()}
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def cache_path(bag: str | os.PathLike, config: DatasetConfig, cache_dir: str | os.PathLike) -> Path:
    return Path(cache_dir) / f"{Path(bag).name}-{cache_key(bag, config)[:20]}.npz"


def load_episode_cached(path: str | os.PathLike, config: DatasetConfig,
                        cache_dir: str | os.PathLike | None = None) -> Episode:
    """load_episode through the cache: a hit reads only the .npz, a miss writes it."""
    if cache_dir is None:
        return load_episode(path, config)
    file = cache_path(path, config, cache_dir)
    if file.is_file():
        try:
            ep = Episode.load_npz(file)
            ep.path = str(path)
            return ep
        except Exception as e:  # a truncated or foreign file: rebuild it
            log.warning("episode cache %s unreadable (%s); rebuilding it", file, e)
    ep = load_episode(path, config)
    try:
        file.parent.mkdir(parents=True, exist_ok=True)
        ep.save_npz(file)
    except OSError as e:
        log.warning("cannot write episode cache %s: %s", file, e)
    return ep


def load_episodes(paths: str | os.PathLike | Iterable[str | os.PathLike], config: DatasetConfig,
                  cache_dir: str | os.PathLike | None = None) -> list[Episode]:
    """Episodes of every bag in ``paths`` (see find_bags), sorted by path.

    Unsuccessful episodes are left out when ``config.only_successful``. A bad bag raises
    DatasetError, or is logged and skipped when ``config.skip_bad_bags``; no usable episode
    at all raises DatasetError listing why.
    """
    bags = find_bags(paths)
    episodes, problems, unsuccessful = [], [], []
    for bag in bags:
        try:
            ep = load_episode_cached(bag, config, cache_dir)
        except DatasetError as e:
            if not config.skip_bad_bags:
                raise
            log.warning("skipping %s", e)
            problems.append(str(e))
            continue
        if config.only_successful and not ep.success:
            log.info("skipping unsuccessful episode %s", bag)
            unsuccessful.append(str(bag))
            continue
        episodes.append(ep)
    if not episodes:
        why = list(problems)
        if unsuccessful:
            why.append(f"{len(unsuccessful)} episode(s) were unsuccessful (only_successful=True): {unsuccessful}")
        raise DatasetError(f"no usable episodes in {[str(b) for b in bags]}: " + "; ".join(why))
    if problems:
        log.warning("%d of %d bag(s) skipped", len(problems), len(bags))
    return episodes


def split_episodes(episodes: Sequence[Episode], val_fraction: float = 0.1,
                   seed: int = 0) -> tuple[list[Episode], list[Episode]]:
    """Seeded train/validation split by episode (never frames of one episode on both sides).

    round(val_fraction * N) episodes go to validation, at least one when val_fraction > 0
    and N >= 2, and always at least one stays for training. Independent of input order.
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    eps = sorted(episodes, key=lambda e: e.path)
    n = len(eps)
    n_val = int(round(val_fraction * n))
    if val_fraction > 0 and n >= 2:
        n_val = max(n_val, 1)
    n_val = min(n_val, n - 1) if n else 0
    order = np.random.default_rng(seed).permutation(n)
    val_idx = set(order[:n_val].tolist())
    return [e for i, e in enumerate(eps) if i not in val_idx], [e for i, e in enumerate(eps) if i in val_idx]


# ----------------------------------------------------------------------------- batches
class EpisodeDataset(torch.utils.data.Dataset):
    """Every frame of some episodes as a training sample for ``VLAPolicy.loss``.

    ``dataset[i]`` is one sample; ``dataset.batch(indices)`` (or ``collate`` over samples,
    for a DataLoader) a batch: "images" float (B, V, 3, S, S) in [0, 1], "instructions"
    (B strings), "state" (B, S), "actions" (B, H, D), "action_is_pad" (B, H) bool.
    """

    def __init__(self, episodes: Sequence[Episode]):
        self.episodes = list(episodes)
        if not self.episodes:
            raise DatasetError("EpisodeDataset needs at least one episode")
        first = self.episodes[0]
        for e in self.episodes[1:]:
            for attr in ("camera_names", "state_names", "action_names"):
                if getattr(e, attr) != getattr(first, attr):
                    raise DatasetError(f"episode {e.path} has {attr} {getattr(e, attr)}, {first.path} has "
                                       f"{getattr(first, attr)}")
            if e.images.shape[1:] != first.images.shape[1:] or e.actions.shape[1:] != first.actions.shape[1:]:
                raise DatasetError(f"episode {e.path} has image/action shapes {e.images.shape[1:]}/"
                                   f"{e.actions.shape[1:]}, {first.path} has {first.images.shape[1:]}/"
                                   f"{first.actions.shape[1:]}")
        self.index = np.array([(i, t) for i, e in enumerate(self.episodes) for t in range(e.num_frames)],
                              dtype=np.int64).reshape(-1, 2)

    camera_names = property(lambda self: list(self.episodes[0].camera_names))
    state_names = property(lambda self: list(self.episodes[0].state_names))
    action_names = property(lambda self: list(self.episodes[0].action_names))
    chunk_size = property(lambda self: int(self.episodes[0].actions.shape[1]))
    image_size = property(lambda self: int(self.episodes[0].images.shape[2]))

    def __len__(self) -> int:
        return int(self.index.shape[0])

    def _frames(self, indices) -> list[tuple[Episode, int]]:
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if idx.size and (idx.min() < -len(self) or idx.max() >= len(self)):
            raise IndexError(f"frame index out of range for a dataset of {len(self)} frames")
        return [(self.episodes[e], t) for e, t in self.index[idx]]

    def batch(self, indices: Sequence[int]) -> dict[str, Any]:
        frames = self._frames(indices)
        images = np.stack([ep.images[t] for ep, t in frames])  # (B, V, S, S, 3) uint8
        images = torch.from_numpy(images).permute(0, 1, 4, 2, 3).float().div_(255.0)
        return {
            "images": images.contiguous(),
            "instructions": [ep.instruction for ep, _ in frames],
            "state": torch.from_numpy(np.stack([ep.state[t] for ep, t in frames])),
            "actions": torch.from_numpy(np.stack([ep.actions[t] for ep, t in frames])),
            "action_is_pad": torch.from_numpy(np.stack([ep.action_is_pad[t] for ep, t in frames])),
        }

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {k: v[0] for k, v in self.batch([i]).items()}

    @staticmethod
    def collate(samples: Sequence[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {"instructions": [s["instructions"] for s in samples]}
        for k in ("images", "state", "actions", "action_is_pad"):
            out[k] = torch.stack([s[k] for s in samples])
        return out

    def stats(self) -> dict[str, FeatureStats]:
        """Normalization statistics: "action" over non-pad chunk steps, "state" over frames."""
        return compute_dataset_stats(self.episodes)


def compute_dataset_stats(episodes: Sequence[Episode]) -> dict[str, FeatureStats]:
    """{"action": stats over every non-pad chunk step, "state": stats over every frame}."""
    if not episodes:
        raise DatasetError("cannot compute statistics of zero episodes")
    actions = np.concatenate([e.actions[~e.action_is_pad] for e in episodes])
    states = np.concatenate([e.state for e in episodes])
    return {"action": compute_stats(actions), "state": compute_stats(states)}
