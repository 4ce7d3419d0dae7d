"""One episode bag -> an :class:`Episode` of per-frame aligned arrays.

All times are nanoseconds (see :mod:`vla_ros.data.episode_messages`).

* frames: the first camera is the reference; every other camera contributes its frame
  nearest in time within ``camera_sync_tolerance`` (a reference frame without one is
  dropped). Images are stored as uint8 ``(T, V, S, S, 3)`` RGB.
* state: for each frame, the latest joint positions at or before the frame stamp, by joint
  name (joint-state messages carrying only some joints are merged); frames before all the
  state joints have been seen are dropped.
* actions: the action source (:mod:`vla_ros.data.actions`) yields one action per control
  tick. A frame's chunk starts at the tick nearest its stamp when one is within
  ``tick_tolerance``, otherwise at the first tick after it (a frame with no tick within
  ``max_tick_delay`` after it is dropped), and holds that tick and the next
  ``chunk_size - 1`` ticks; past the last tick it is padded (with the last action) and
  ``action_is_pad`` is true.

Every problem with a bag raises :class:`DatasetError` naming the bag and what is wrong.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vla_ros.data.actions import ACTION_SOURCES
from vla_ros.data.config import NS, DatasetConfig
from vla_ros.data.episode import Episode
from vla_ros.data.episode_messages import StampedMessage, read_episode_messages
from vla_ros.data.errors import DatasetError

log = logging.getLogger("vla_ros.data.alignment")

Messages = dict[str, list[StampedMessage]]


def load_episode(path: str | os.PathLike, config: DatasetConfig, keep_size: bool = False) -> Episode:
    """Read one episode bag and align it (see the module docstring). With ``keep_size`` the
    images keep the camera's size instead of ``config.image_size`` (every camera must then have
    one size). Raises DatasetError."""
    bag = Path(path)
    msgs = read_episode_messages(bag, config, keep_size=keep_size)
    if keep_size:
        _check_one_size(bag, config, msgs)
    return align(bag, config, msgs)


def _check_one_size(bag: Path, config: DatasetConfig, msgs: Messages) -> None:
    sizes = {c.name: sorted({m.msg.shape for m in msgs.get(c.topic, [])}) for c in config.cameras}
    if len({s for v in sizes.values() for s in v}) > 1:
        raise DatasetError(f"bag {bag}: camera frames differ in size {sizes} (height, width, channels); "
                           f"give an image_size to resize them to one")


@dataclass
class _Frames:
    stamps: np.ndarray   # (T,) int64 ns of the reference camera's frames
    images: np.ndarray   # (T, V, S, S, 3) uint8
    in_sync: np.ndarray  # (T,) bool: every other camera has a frame within the tolerance


@dataclass
class _State:
    values: np.ndarray    # (T, S) float32: latest joint positions at or before each frame
    complete: np.ndarray  # (T,) bool: every state joint had been seen by the frame


@dataclass
class _Chunks:
    start: np.ndarray     # (T,) index of each frame's first tick
    actions: np.ndarray   # (T, H, D)
    is_pad: np.ndarray    # (T, H) bool
    has_tick: np.ndarray  # (T,) bool: the frame has a tick within the tolerances


def align(bag: Path, config: DatasetConfig, msgs: Messages) -> Episode:
    """The Episode of one bag's messages (``read_episode_messages``)."""
    instruction = _instruction(bag, config, msgs)
    success = _success(config, msgs)
    frames = _frames(bag, config, msgs)
    state = _state(bag, config, msgs, frames.stamps)
    ticks = ACTION_SOURCES[config.action.kind].build(config.action, msgs, bag, config.tolerance_ns("tick_tolerance"))
    chunks = _chunks(config, ticks.stamps, ticks.actions, frames.stamps)
    keep = frames.in_sync & state.complete & chunks.has_tick
    if not keep.any():
        raise DatasetError(f"bag {bag}: no usable frames ({_why_no_frames(config, state, chunks)})")
    dropped = int((~keep).sum())
    if dropped:
        log.debug("bag %s: %d of %d frames dropped (no state yet / no action tick / cameras out of sync)",
                  bag, dropped, len(keep))
    return Episode(
        path=str(bag), instruction=instruction, success=bool(success),
        images=np.ascontiguousarray(frames.images[keep]), state=state.values[keep],
        actions=chunks.actions[keep].astype(np.float32), action_is_pad=chunks.is_pad[keep],
        frame_stamps=frames.stamps[keep], action_start=chunks.start[keep].astype(np.int64),
        tick_stamps=ticks.stamps, tick_actions=ticks.actions,
        camera_names=config.camera_names, state_names=config.state_names, action_names=config.action_names,
    )


def _instruction(bag: Path, config: DatasetConfig, msgs: Messages) -> str:
    """The first non-empty instruction message, else ``default_instruction``."""
    instruction = next((m.msg.data.strip() for m in msgs.get(config.instruction_topic, [])
                        if m.msg.data.strip()), "") if config.instruction_topic else ""
    if not instruction:
        instruction = config.default_instruction
    if not instruction:
        raise DatasetError(f"bag {bag}: no instruction (no non-empty std_msgs/String on {config.instruction_topic})")
    return instruction


def _success(config: DatasetConfig, msgs: Messages) -> bool:
    if not config.success_topic:
        return True
    return any(bool(m.msg.data) for m in msgs.get(config.success_topic, []))


def _nearest(times: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Index of the entry of sorted ``times`` nearest each query (ties: the earlier one)."""
    j = np.searchsorted(times, query)
    lo, hi = np.clip(j - 1, 0, len(times) - 1), np.clip(j, 0, len(times) - 1)
    return np.where(np.abs(times[lo] - query) <= np.abs(times[hi] - query), lo, hi)


def _camera_messages(bag: Path, msgs: Messages, topic: str) -> list[StampedMessage]:
    found = msgs[topic]
    if not found:
        raise DatasetError(f"bag {bag}: camera topic {topic} has no messages")
    return found


def _frames(bag: Path, config: DatasetConfig, msgs: Messages) -> _Frames:
    """The reference camera's frames and, for each, the other cameras' nearest frames."""
    ref = _camera_messages(bag, msgs, config.cameras[0].topic)
    stamps = np.array([m.stamp for m in ref], dtype=np.int64)
    views = [np.stack([m.msg for m in ref])]
    in_sync = np.ones(len(ref), dtype=bool)
    sync = config.tolerance_ns("camera_sync_tolerance")
    for cam in config.cameras[1:]:
        other = _camera_messages(bag, msgs, cam.topic)
        t_other = np.array([m.stamp for m in other], dtype=np.int64)
        nearest = _nearest(t_other, stamps)
        in_sync &= np.abs(t_other[nearest] - stamps) <= sync
        views.append(np.stack([m.msg for m in other])[nearest])
    return _Frames(stamps, np.stack(views, axis=1), in_sync)


def _state(bag: Path, config: DatasetConfig, msgs: Messages, frame_stamps: np.ndarray) -> _State:
    """Merged joint positions by name, the latest at or before each frame."""
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
        have = sorted({n for m in js for n in m.msg.name})
        raise DatasetError(f"bag {bag}: joint(s) {missing} never appear with positions on {config.state_topic} "
                           f"(it has {have})")
    snaps_a = np.array(snaps, dtype=np.float64)
    first_complete = int(np.argmax(np.isfinite(snaps_a).all(axis=1)))
    si = np.searchsorted(np.array(snap_t, dtype=np.int64), frame_stamps, side="right") - 1
    return _State(values=snaps_a[np.maximum(si, 0)].astype(np.float32), complete=si >= first_complete)


def _chunks(config: DatasetConfig, tick_stamps: np.ndarray, tick_actions: np.ndarray,
            frame_stamps: np.ndarray) -> _Chunks:
    """Each frame's first tick (the nearest within tick_tolerance, else the next within
    max_tick_delay) and the chunk of chunk_size ticks from it, padded past the last tick."""
    tol, delay = config.tolerance_ns("tick_tolerance"), config.tolerance_ns("max_tick_delay")
    n_ticks = len(tick_stamps)
    never = np.iinfo(np.int64).max
    after = np.searchsorted(tick_stamps, frame_stamps, side="left")  # first tick >= frame
    before = after - 1
    has_before = before >= 0
    dt_before = np.where(has_before, frame_stamps - tick_stamps[np.maximum(before, 0)], never)
    dt_after = np.where(after < n_ticks, tick_stamps[np.minimum(after, n_ticks - 1)] - frame_stamps, never)
    use_before = has_before & (dt_before <= tol) & (dt_before < dt_after)
    ok_after = (after < n_ticks) & (dt_after <= delay)
    start = np.where(use_before, before, after)
    idx = start[:, None] + np.arange(config.chunk_size)[None, :]
    is_pad = idx >= n_ticks
    return _Chunks(start=start, actions=tick_actions[np.clip(idx, 0, n_ticks - 1)], is_pad=is_pad,
                   has_tick=use_before | ok_after)


def _why_no_frames(config: DatasetConfig, state: _State, chunks: _Chunks) -> str:
    reasons = []
    if not state.complete.any():
        reasons.append(f"every frame precedes the first complete joint state on {config.state_topic}")
    if not chunks.has_tick.any():
        delay = config.tolerance_ns("max_tick_delay")
        reasons.append(f"no frame has an action tick on {config.action.topic} within {delay / NS:.3f} s after it")
    return "; ".join(reasons) or "cameras never in sync"
