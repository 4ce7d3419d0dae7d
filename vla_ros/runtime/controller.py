"""The policy node's control state machine, without ROS: when to act, when to hold, when to infer.

One `Controller` owns every piece of state the control loop depends on (inputs, instruction,
chunk queue, e-stop latch, dry run, in-flight inference, step count, task success) behind one
lock, and every method takes the time as an argument (`now`, seconds on the node's clock:
wall time, or /clock under `use_sim_time`), so the whole state machine is tested with a
fake clock (test/test_runtime_controller.py).

Timeline. Control ticks are counted from an origin (activation): tick k is due at
``origin + k * period``. A chunk computed from an observation stamped ``s`` is placed on
that timeline by its stamp, its action i belonging to tick ``ceil((s - origin) / period) + i``
(the dataset aligns a frame with the control ticks from the frame on), so the actions that
are already in the past when the chunk arrives are skipped, never executed late. A loop that
wakes late takes the tick its clock says, skipping the missed ones (it never replays them).

Execution. With `realtime` (the node's default, control.execution: realtime) a request leaves as
soon as the previous answer is back and a new frame exists, and it carries the actions already
queued for the new chunk's ticks (`committed`) and how many of them will have executed before the
chunk can arrive (`inference_delay`, from the measured latency, runtime/latency.py). The policy
continues those actions (training-time RTC, model/prefix.py; RTC guidance for flow heads,
model/rtc.py) and the new chunk takes over right after them: its frozen first actions are the
committed ones, so the switch repeats nothing and skips nothing. After them the new chunk is
averaged with the older ones (`ensemble="ensemble"`, ACT's weights, the node's default
control.realtime_merge: consecutive chunks may disagree, e.g. about when to close the gripper) or
replaces them (`"latest"`, the RTC paper's execution). This is Real-Time Chunking's execution
(Black et al. 2025): a slow model never makes the arm wait as long as its chunk is longer than about
twice its latency. Without `realtime`, a request leaves when
`refill_threshold` or fewer actions are left and overlapping chunks are blended (ACT's temporal
ensembling) or the latest wins (chunk_queue.py).

Inference. `take_request` hands out an observation (the newest frame of every camera, the
joint state, the instruction) when the queue needs a refill, no request is in flight and
every camera has a frame no request used yet (or the first of them has waited
`frame_sync_window`); the node asks on every new frame, so a request leaves as soon as a new
observation is complete, and a chunk is never computed from a frame used before. `add_chunk` /
`inference_failed` answer it. A request that takes longer than `inference_timeout` makes the
arm hold until a chunk arrives again.

Threads. The node calls in from sensor callbacks, the control loop, the inference client's
reader, services and the action server; every method that reads or changes state takes the lock
(the queue and the watchdog have their own) and returns plain values.
"""
from __future__ import annotations

import enum
import math
import threading
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from vla_ros.runtime.chunk_queue import ChunkQueue
from vla_ros.runtime.latency import LatencyEstimator
from vla_ros.runtime.watchdog import Watchdog

__all__ = ["Controller", "ControllerConfig", "Hold", "Observation", "TickResult"]


class Hold(enum.Enum):
    """Why the arm is not following the policy right now (NONE: it is)."""

    NONE = "running"
    INACTIVE = "inactive"
    NO_INSTRUCTION = "no instruction"
    WAITING_FOR_INPUT = "waiting for the first camera frames and joint states"
    WAITING_FOR_CHUNK = "waiting for the first action chunk"
    STALE_INPUT = "stale input"
    INFERENCE_TIMEOUT = "inference slower than control.inference_timeout"
    INFERENCE_FAILED = "inference failed"
    QUEUE_DRY = "action queue ran dry"
    UNSAFE_COMMAND = "unsafe command rejected"
    ESTOP = "e-stop latched"
    TASK_ENDED = "task ended"
    DRY_RUN = "dry run"
    SHUTDOWN = "shutting down"
    CONTROL_ERROR = "control loop error"

    @property
    def is_fault(self) -> bool:
        """Worth a warning: something went wrong (the others are normal operation)."""
        return self in _FAULTS

    @property
    def stopped(self) -> bool:
        """Holds that come after motion was stopped on purpose (PolicyStatus HOLDING, not IDLE)."""
        return self not in (Hold.NONE, Hold.INACTIVE, Hold.NO_INSTRUCTION)


_FAULTS = {Hold.STALE_INPUT, Hold.INFERENCE_TIMEOUT, Hold.INFERENCE_FAILED, Hold.QUEUE_DRY,
           Hold.UNSAFE_COMMAND, Hold.ESTOP, Hold.CONTROL_ERROR}


@dataclass(frozen=True)
class ControllerConfig:
    cameras: Sequence[str]
    chunk_size: int
    dim: int
    period: float                       # control period, s
    camera_timeout: float = 0.5         # cameras.max_age
    joint_timeout: float = 0.5          # joint_states.timeout
    extra_inputs: dict = field(default_factory=dict)  # name -> timeout (e.g. ee_pose)
    inference_timeout: float = 2.0
    ensemble: str = "ensemble"
    ensemble_decay: float = 0.01
    refill_threshold: int = 4
    dry_run: bool = False
    needs_state: bool = True            # the model takes proprioception
    frame_sync_window: float = 0.05     # s: wait this long for every camera's next frame (see take_request)
    realtime: bool = False              # Real-Time Chunking execution (module docstring)


@dataclass(frozen=True)
class Observation:
    """What one inference request is computed from."""

    request_id: int
    images: list                        # one array per camera, config order
    instruction: str
    state: np.ndarray | None            # the model's state vector (None: the model takes none)
    stamp: float                        # the newest frame's stamp (s, node clock)
    stamp_msg: Any                      # the same stamp as the caller gave it (e.g. builtin_interfaces/Time)
    start_tick: int                     # the tick that chunk[0] belongs to
    committed: np.ndarray | None = None  # (n, D) actions queued for ticks start_tick .. (realtime)
    inference_delay: int = 0            # how many of them execute before the chunk can arrive (frozen)


@dataclass(frozen=True)
class TickResult:
    tick: int
    action: np.ndarray | None           # the action for this tick, None while holding
    hold: Hold
    detail: str                         # more about the hold (stale inputs and their age, ...)
    hold_started: bool                  # the arm was following the policy until this tick: stop it
    hold_changed: bool                  # a different hold reason than last tick (log it)
    command: bool                       # send `action` to the robot (false in dry run)


class Controller:
    """Inputs in, one decision per control tick out. See the module docstring."""

    def __init__(self, cfg: ControllerConfig):
        if not cfg.period > 0 or not math.isfinite(cfg.period):
            raise ValueError(f"period must be a positive number, got {cfg.period!r}")
        self.cfg = cfg
        self.cameras = list(cfg.cameras)
        self.period = float(cfg.period)
        # Realtime: a request may leave whenever none is in flight; after its frozen prefix (which repeats
        # the queue's actions) the new chunk replaces the older ones ("latest") or is averaged with them
        # ("ensemble": adding a chunk whose value equals the current weighted mean leaves the mean as it
        # is, so the frozen ticks stay exactly as committed).
        self.queue = ChunkQueue(cfg.chunk_size, cfg.dim, mode=cfg.ensemble,
                                ensemble_decay=cfg.ensemble_decay,
                                refill_threshold=cfg.chunk_size - 1 if cfg.realtime
                                else min(cfg.refill_threshold, cfg.chunk_size - 1))
        self.latency = LatencyEstimator()
        timeouts = {f"camera:{c}": cfg.camera_timeout for c in self.cameras}
        timeouts["joint_states"] = cfg.joint_timeout
        timeouts.update(cfg.extra_inputs)
        self.watchdog = Watchdog(timeouts)
        self._lock = threading.RLock()
        self._active = False
        self._shutdown = False
        self._estop: str | None = None
        self.dry_run = bool(cfg.dry_run)
        self.instruction = ""
        self._frames: dict[str, tuple[Any, float, Any]] = {}   # camera -> (image, stamp s, stamp as given)
        self._unused: dict[str, float] = {}                    # camera -> arrival of a frame no request used
        self.dropped_frames = 0                                # replaced before any request used them
        self.frames_received = 0
        self.joint_positions: np.ndarray | None = None         # configured joints, in order
        self.state: np.ndarray | None = None                   # the model's state vector
        self._origin = 0.0
        self._last_tick = -1
        self._hold = Hold.INACTIVE
        self._detail = ""
        self._ended_hold: tuple[Hold, str] | None = None       # set by stop(): reported at the next tick
        self._had_chunk = False                                # a chunk arrived for this instruction
        self._in_flight_since: float | None = None
        self._in_flight_id: int | None = None
        self._error_hold: tuple[Hold, str] | None = None       # inference failure / unsafe command, until a chunk
        self.steps = 0
        self.dry_steps = 0                                     # QUEUE_DRY ticks since the instruction/goal
        self.chunks = 0
        self.last_error = ""
        # Task success counts only on a false -> true edge after the goal started (a success still
        # being repeated from the previous task must not end a new goal at once).
        self._success_seen: bool | None = None
        self._success_armed = False
        self.succeeded = False

    # ------------------------------------------------------------------ lifecycle
    def activate(self, now: float) -> None:
        with self._lock:
            self._active = True
            self._reset_timeline(now)
            # Arrivals from before activation do not count: wait for fresh ones.
            self.watchdog.reset()
            self._frames.clear()
            self._unused.clear()
            self.joint_positions = self.state = None

    def deactivate(self) -> None:
        with self._lock:
            self._active = False
            self._clear_queue()

    def shutdown(self) -> None:
        with self._lock:
            self._shutdown = True
            self._clear_queue()

    @property
    def active(self) -> bool:
        with self._lock:
            return self._active and not self._shutdown

    def _reset_timeline(self, now: float) -> None:
        self._origin = float(now)
        self._last_tick = -1
        self._clear_queue()
        self.queue.restart()

    def _clear_queue(self) -> None:
        self.queue.clear()
        self._in_flight_since = self._in_flight_id = None
        self._had_chunk = False
        self._error_hold = None

    @property
    def last_tick(self) -> int:
        with self._lock:
            return self._last_tick

    def tick_at(self, t: float) -> int:
        """The control tick due at or before time t."""
        return math.floor((t - self._origin) / self.period + 1e-6)

    def deadline(self, tick: int) -> float:
        return self._origin + tick * self.period

    # ------------------------------------------------------------------ inputs
    def feed_image(self, camera: str, image, stamp: float, now: float, stamp_msg=None) -> None:
        """A decoded frame. `stamp` is its header stamp (s): its age is what the watchdog checks (a
        driver re-sending an old buffered frame is stale however fresh its arrival). A stamp further
        in the future than the camera timeout is replaced by the arrival time (the node refuses
        frames further off than cameras.max_stamp_offset before this)."""
        with self._lock:
            self.frames_received += 1
            if camera in self._unused:
                self.dropped_frames += 1
            if not math.isfinite(stamp) or stamp > now + self.cfg.camera_timeout:
                stamp = now  # a stamp from the future: place the frame by its arrival
            # An old stamp stays: the watchdog then sees the frame as stale (a re-sent old frame).
            self._frames[camera] = (image, stamp, stamp_msg)
            self._unused.setdefault(camera, now)
            self.watchdog.feed(f"camera:{camera}", min(stamp, now))

    def feed_joints(self, positions: np.ndarray | None, state: np.ndarray | None, now: float) -> None:
        """Configured joint positions (in order) and the model's state vector, both finite."""
        with self._lock:
            if positions is not None:
                self.joint_positions = np.asarray(positions, dtype=np.float64)
            if state is not None:
                self.state = np.asarray(state, dtype=np.float32)
            if positions is not None and (state is not None or not self.cfg.needs_state):
                self.watchdog.feed("joint_states", now)

    def feed(self, name: str, now: float) -> None:
        """Another watched input arrived (e.g. ee_pose)."""
        self.watchdog.feed(name, now)

    # ------------------------------------------------------------------ instruction and task
    def set_instruction(self, text: str, now: float) -> bool:
        """Follow `text`; returns True when it differs from the current one (the queue restarts)."""
        with self._lock:
            changed = text != self.instruction
            self.instruction = text
            self.succeeded = False
            if changed or self._ended_hold is not None:
                self._clear_queue()
                self.steps = self.dry_steps = 0
            self._ended_hold = None
            return changed

    def start_task(self) -> None:
        """A goal starts now: reset the step count and arm the success edge."""
        with self._lock:
            self.steps = self.dry_steps = 0
            self.succeeded = False
            self._success_armed = self._success_seen is not True

    def note_success(self, value: bool) -> None:
        with self._lock:
            if not value:
                self._success_armed = True
            elif self._success_armed:
                self.succeeded = True
            self._success_seen = bool(value)

    def stop(self, detail: str, hold: Hold = Hold.TASK_ENDED) -> None:
        """Stop following the instruction (goal ended or canceled): hold until a new one."""
        with self._lock:
            self.instruction = ""
            self._clear_queue()
            self._ended_hold = (hold, detail)

    # ------------------------------------------------------------------ safety switches
    def trigger_estop(self, reason: str) -> None:
        with self._lock:
            self._estop = reason
            self._clear_queue()

    def reset_estop(self) -> bool:
        with self._lock:
            was = self._estop is not None
            self._estop = None
            self._clear_queue()
            self.last_error = ""
            return was

    @property
    def estopped(self) -> bool:
        with self._lock:
            return self._estop is not None

    def set_dry_run(self, value: bool) -> None:
        with self._lock:
            self.dry_run = bool(value)

    def command_failed(self, detail: str) -> None:
        """The safety layer refused this tick's command: hold until the next chunk."""
        with self._lock:
            self._error_hold = (Hold.UNSAFE_COMMAND, detail)
            self.last_error = f"{Hold.UNSAFE_COMMAND.value}: {detail}"
            self.queue.clear()
            self._in_flight_since = self._in_flight_id = None

    # ------------------------------------------------------------------ inference
    def take_request(self, now: float) -> Observation | None:
        """An observation to infer from, when one is due (see the module docstring), else None."""
        with self._lock:
            if self._blocking_hold(now)[0] is not None or self._in_flight_id is not None:
                return None
            if not self._unused or any(c not in self._frames for c in self.cameras):
                return None
            # A new observation is every camera's next frame; a camera that is slower than the others
            # (or has stopped) holds the request back by frame_sync_window at most.
            if len(self._unused) < len(self.cameras) and now - min(self._unused.values()) < self.cfg.frame_sync_window:
                return None
            if self.cfg.needs_state and self.state is None:
                return None
            tick = max(self.tick_at(now), self._last_tick + 1)
            if not self.queue.needs_refill(tick):
                return None
            newest = max(self.cameras, key=lambda c: self._frames[c][1])
            _, stamp, stamp_msg = self._frames[newest]
            start = math.ceil((stamp - self._origin) / self.period - 1e-6)
            committed, delay = self._committed(start, now) if self.cfg.realtime else (None, 0)
            req = self.queue.mark_request(start)
            self._in_flight_id, self._in_flight_since = req, now
            self._unused.clear()
            return Observation(req, [self._frames[c][0] for c in self.cameras], self.instruction,
                               None if self.state is None else self.state.copy(), stamp, stamp_msg, start,
                               committed, delay)

    def _committed(self, start: int, now: float) -> tuple[np.ndarray | None, int]:
        """The queued actions for ticks start, start + 1, ... (as many as are queued, at most a chunk)
        and how many of them will have executed when a chunk requested now arrives: ticks up to the
        one due at now + the latency estimate (the new chunk's frozen prefix)."""
        actions = []
        for tick in range(start, start + self.cfg.chunk_size):
            a = self.queue.peek(tick)
            if a is None:
                break
            actions.append(a)
        if not actions:
            return None, 0
        latency = self.latency.estimate()
        arrival_tick = self.tick_at(now + (latency or 0.0))
        delay = min(len(actions), max(0, arrival_tick - start + 1))
        return np.stack(actions), delay

    def expected_delay_ticks(self) -> int | None:
        """The latency estimate in control ticks (rounded up), None before the first answer."""
        with self._lock:
            est = self.latency.estimate()
            return None if est is None else math.ceil(est / self.period - 1e-6)

    def add_chunk(self, obs: Observation, actions: np.ndarray, now: float) -> int:
        """The chunk computed from `obs`; returns how many of its actions are still ahead (0: dropped)."""
        with self._lock:
            if obs.request_id == self._in_flight_id:
                if self._in_flight_since is not None:
                    self.latency.add(now - self._in_flight_since)
                self._in_flight_id = self._in_flight_since = None
            if obs.inference_delay and obs.committed is not None:
                # The frozen prefix executes as committed whatever the policy returned (a server that
                # ignores it, e.g. openpi's): the switch to this chunk never repeats or skips an action.
                actions = np.array(actions, dtype=np.float64, copy=True)
                d = min(obs.inference_delay, len(actions))
                actions[:d] = obs.committed[:d]
            start = obs.start_tick
            if self.cfg.realtime:
                # The arm held still from the end of the committed actions until now (the first chunk of
                # an instruction, or a chunk later than the queue lasted): it is where those actions left
                # it, so the chunk resumes from its next action instead of skipping the held ticks' ones
                # (which would start it mid-motion, as if it had moved).
                n = 0 if obs.committed is None else len(obs.committed)
                held = max(self.tick_at(now), self._last_tick + 1) - (start + n)
                if held > 0:
                    start += held
            kept = self.queue.add_chunk(actions, start_tick=start, request_id=obs.request_id)
            if kept:
                self._had_chunk = True
                self._error_hold = None
                self.chunks += 1
            return kept

    def inference_failed(self, obs: Observation | None, error: str) -> None:
        with self._lock:
            if obs is None or obs.request_id == self._in_flight_id:
                self.queue.cancel_request(None if obs is None else obs.request_id)
                self._in_flight_id = self._in_flight_since = None
            self._error_hold = (Hold.INFERENCE_FAILED, error)
            self.last_error = f"{Hold.INFERENCE_FAILED.value}: {error}"

    # ------------------------------------------------------------------ the tick
    def _blocking_hold(self, now: float) -> tuple[Hold | None, str]:
        """Holds that also stop inference requests."""
        if self._shutdown:
            return Hold.SHUTDOWN, ""
        if not self._active:
            return Hold.INACTIVE, ""
        if self._estop is not None:
            return Hold.ESTOP, self._estop
        if not self.instruction:
            return self._ended_hold or (Hold.NO_INSTRUCTION, "")
        stale = self.watchdog.stale(now)
        if stale:
            ages = {n: self.watchdog.age(n, now) for n in stale}
            if all(a is None for a in ages.values()):
                return Hold.WAITING_FOR_INPUT, "none yet from " + ", ".join(stale)
            return Hold.STALE_INPUT, ", ".join(
                f"{n} last received {a:.3f} s ago" if a is not None else f"{n} never received"
                for n, a in ages.items())
        return None, ""

    def tick(self, now: float) -> TickResult:
        """Decide this tick: the action to send, or why to hold."""
        with self._lock:
            if self._last_tick >= 0 and now < self.deadline(self._last_tick) - max(2 * self.period, 0.05):
                # The clock jumped back (a bag or simulation restarted): start the timeline again and
                # wait for inputs stamped on the new clock (the old arrivals lie in its future).
                self._reset_timeline(now)
                self.watchdog.reset()
                self._frames.clear()
                self._unused.clear()
            # A late wake-up takes the tick its clock says: missed ticks are past, never executed late.
            tick = max(self.tick_at(now), self._last_tick + 1)
            self._last_tick = tick
            hold, detail = self._blocking_hold(now)
            action = None
            if hold is None:
                waited = None if self._in_flight_since is None else now - self._in_flight_since
                if waited is not None and waited > self.cfg.inference_timeout:
                    self._clear_queue()  # a chunk that still comes is dropped (its request id is void)
                    self._error_hold = (Hold.INFERENCE_TIMEOUT, f"no chunk for {waited:.3f} s")
                if self._error_hold is not None:
                    hold, detail = self._error_hold
                    self.queue.advance(tick)
                else:
                    action = self.queue.pop(tick)
                    if action is None:
                        hold = Hold.QUEUE_DRY if self._had_chunk else Hold.WAITING_FOR_CHUNK
                        if hold is Hold.QUEUE_DRY:
                            self.dry_steps += 1
                    elif self.dry_run:
                        hold = Hold.DRY_RUN
            else:
                if hold != self._hold:
                    self._clear_queue()  # nothing computed before a hold is executed after it
                self.queue.advance(tick)
            if hold is None:
                hold = Hold.NONE
            if action is not None:
                self.steps += 1
            hold_started = self._hold is Hold.NONE and hold is not Hold.NONE
            changed = hold != self._hold
            self._hold, self._detail = hold, detail
            if hold.is_fault and changed:
                self.last_error = f"{hold.value}" + (f": {detail}" if detail else "")
            return TickResult(tick, action, hold, detail, hold_started, changed,
                              command=action is not None and not self.dry_run)

    def peek(self, tick: int) -> np.ndarray | None:
        """The queued action for a future tick (None when there is none); for trajectories sent ahead."""
        return self.queue.peek(tick)

    # ------------------------------------------------------------------ telemetry
    @property
    def hold(self) -> tuple[Hold, str]:
        with self._lock:
            return self._hold, self._detail

    def queue_depth(self, now: float) -> int:
        with self._lock:
            return self.queue.remaining(max(self.tick_at(now), self._last_tick + 1))
