"""Action-chunk queue with temporal ensembling.

A chunking policy (ACT, pi0, SmolVLA, ...) predicts ``H`` future actions from one
observation. The ROS node runs two activities at different rates:

* a control timer at rate ``f`` that calls :meth:`ChunkQueue.pop` once per tick and sends
  (after the safety filter) the action for that tick, and
* an inference thread that, whenever :meth:`ChunkQueue.needs_refill` says so, takes the
  observation of tick ``t0``, runs the policy for a while and hands the chunk back with
  :meth:`ChunkQueue.add_chunk` (``chunk[i]`` is the action for tick ``t0 + i``).

Ticks are plain integers counted by the control loop, so the queue never looks at a
clock: time-alignment of a late chunk is exact, and the behaviour is deterministic and
testable without sleeps.

Because inference is slower than one control period, a chunk arrives ``L`` ticks after
its observation. Its first ``L`` actions are already in the past and are skipped (they
would replay stale motion), which is why a refill must be requested while at least
``L`` actions remain: a new chunk lands before the queue runs dry iff
``L <= refill_threshold`` (and the threshold must stay below ``H - L`` so that a fresh
chunk is not immediately "low" again).

Blending modes
--------------
``"ensemble"``
    Temporal ensembling from ACT (Zhao et al., 2023, "Learning Fine-Grained Bimanual
    Manipulation with Low-Cost Hardware", RSS 2023, arXiv:2304.13705, section "Action
    Chunking and Temporal Ensemble"; reference code ``imitate_episodes.py``, ``k = 0.01``):
    all chunks that predicted an action for the current tick are averaged with weights
    ``w_i = exp(-m * i)`` normalised to sum 1, where ``i = 0`` is the *oldest*
    prediction. With ``m > 0`` older predictions weigh more, which smooths the seams
    between chunks; ``m = 0`` is a plain mean; ``m < 0`` favours new predictions.
``"latest"``
    Only the newest chunk (largest observation tick) that covers the tick is used: no
    averaging, maximal reactivity, possible small jumps at chunk seams.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

__all__ = ["ChunkQueue"]

_MODES = ("ensemble", "latest")


@dataclass(frozen=True)
class _Chunk:
    obs_tick: int  # tick of the observation the chunk was predicted from (its age)
    start_tick: int  # first tick still covered (obs_tick + skipped stale actions)
    seq: int  # arrival order, to break ties between chunks with the same start tick
    actions: np.ndarray  # (n, D) float64, read-only

    @property
    def end_tick(self) -> int:
        """First tick *not* covered by this chunk."""
        return self.start_tick + self.actions.shape[0]


class ChunkQueue:
    """Thread-safe queue of overlapping action chunks indexed by control tick.

    Args:
        chunk_size: ``H``, the number of actions per chunk the policy produces. Chunks
            shorter than ``H`` are accepted; longer ones are rejected.
        dim: ``D``, the action dimension.
        mode: ``"ensemble"`` (ACT temporal ensembling) or ``"latest"``.
        ensemble_decay: ``m`` in ``w_i = exp(-m * i)``; ACT's default is 0.01.
        refill_threshold: :meth:`needs_refill` becomes true once the number of
            remaining actions is ``<= refill_threshold``. Set it to at least the
            inference latency in ticks. Default ``chunk_size // 2``.

    Request bookkeeping: call :meth:`mark_request` when an inference request is sent;
    it returns a request id. Pass that id to :meth:`add_chunk` (or
    :meth:`cancel_request` if inference failed). :meth:`clear` invalidates every
    outstanding id, so a chunk computed before an e-stop or goal cancel is dropped
    when it arrives late.
    """

    def __init__(
        self,
        chunk_size: int,
        dim: int,
        mode: str = "ensemble",
        ensemble_decay: float = 0.01,
        refill_threshold: int | None = None,
    ) -> None:
        if int(chunk_size) != chunk_size or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer, got {chunk_size!r}")
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        if mode not in _MODES:
            raise ValueError(f"mode must be one of {_MODES}, got {mode!r}")
        if not np.isfinite(ensemble_decay):
            raise ValueError(f"ensemble_decay must be finite, got {ensemble_decay!r}")
        if refill_threshold is None:
            refill_threshold = int(chunk_size) // 2
        if int(refill_threshold) != refill_threshold or not 0 <= refill_threshold < chunk_size:
            raise ValueError(
                f"refill_threshold must be an integer in [0, chunk_size), got {refill_threshold!r}"
            )
        self.chunk_size = int(chunk_size)
        self.dim = int(dim)
        self.mode = mode
        self.ensemble_decay = float(ensemble_decay)
        self.refill_threshold = int(refill_threshold)

        self._lock = threading.Lock()
        self._chunks: list[_Chunk] = []  # sorted by (obs_tick, seq): oldest first
        self._seq = 0
        self._next_tick = 0  # ticks < _next_tick have been executed (popped)
        self._in_flight: int | None = None  # request id of the outstanding request
        self._request_counter = 0  # request ids are 1, 2, 3, ...
        self._first_valid_request = 1  # clear() invalidates every id issued before it
        self._dry_ticks = 0

    # ------------------------------------------------------------------ requests
    def mark_request(self, tick: int) -> int:
        """Record that an inference request for the observation of ``tick`` was sent.

        Returns a request id to hand back to :meth:`add_chunk`. While a request is in
        flight, :meth:`needs_refill` is false, so at most one request is outstanding.
        """
        with self._lock:
            self._request_counter += 1
            self._in_flight = self._request_counter
            return self._request_counter

    def cancel_request(self, request_id: int | None = None) -> None:
        """Forget the in-flight request (inference failed or was abandoned)."""
        with self._lock:
            if request_id is None or request_id == self._in_flight:
                self._in_flight = None

    # ------------------------------------------------------------------ chunks
    def add_chunk(self, chunk: np.ndarray, start_tick: int, request_id: int | None = None) -> int:
        """Add a chunk whose ``chunk[i]`` is the action for tick ``start_tick + i``.

        Actions for ticks that were already executed are skipped. If ``request_id`` is
        given and was issued before the last :meth:`clear`, the chunk is dropped. A chunk
        clears the in-flight flag when it answers the in-flight request, or when no
        request id is given.

        Returns:
            The number of actions that were kept (0 if the chunk was entirely stale or
            dropped).

        Raises:
            ValueError: wrong shape, or non-finite values (a NaN would poison the
                ensemble average for up to ``H`` ticks; reject the whole chunk instead).
        """
        actions = np.array(chunk, dtype=np.float64, copy=True)
        if actions.ndim == 1 and self.dim == 1:
            actions = actions[:, None]
        if actions.ndim != 2 or actions.shape[1] != self.dim:
            raise ValueError(f"chunk must have shape (n, {self.dim}), got {actions.shape}")
        if not 1 <= actions.shape[0] <= self.chunk_size:
            raise ValueError(
                f"chunk length must be in [1, chunk_size={self.chunk_size}], got {actions.shape[0]}"
            )
        if not np.all(np.isfinite(actions)):
            raise ValueError("chunk contains NaN or inf")
        start_tick = int(start_tick)

        with self._lock:
            if request_id is not None:
                if request_id < self._first_valid_request:
                    return 0  # computed before clear(): stale by definition
                if request_id == self._in_flight:
                    self._in_flight = None
            else:
                self._in_flight = None
            skip = max(0, self._next_tick - start_tick)
            if skip >= actions.shape[0]:
                return 0
            kept = actions[skip:]
            kept.flags.writeable = False
            self._chunks.append(_Chunk(start_tick, start_tick + skip, self._seq, kept))
            self._seq += 1
            # Oldest observation first: the order ACT's weights refer to, and the order
            # "latest" mode picks from (last = newest observation).
            self._chunks.sort(key=lambda c: (c.obs_tick, c.seq))
            return kept.shape[0]

    def _covering(self, tick: int) -> list[_Chunk]:
        return [c for c in self._chunks if c.start_tick <= tick < c.end_tick]

    def _action_at(self, tick: int) -> np.ndarray | None:
        covering = self._covering(tick)
        if not covering:
            return None
        if self.mode == "latest" or len(covering) == 1:
            c = covering[-1]  # newest observation (list is sorted oldest first)
            return c.actions[tick - c.start_tick].copy()
        preds = np.stack([c.actions[tick - c.start_tick] for c in covering])
        # ACT: w_i = exp(-m * i), i = 0 is the oldest prediction, normalised.
        weights = np.exp(-self.ensemble_decay * np.arange(len(covering)))
        weights /= weights.sum()
        return weights @ preds

    def pop(self, tick: int) -> np.ndarray | None:
        """Return the action for control tick ``tick`` and mark it executed.

        Returns ``None`` when no chunk covers ``tick`` (the queue is dry: the caller
        must hold the arm). Ticks must be non-decreasing; popping a tick marks every
        earlier tick as executed too.
        """
        tick = int(tick)
        with self._lock:
            action = self._action_at(tick)
            self._next_tick = max(self._next_tick, tick + 1)
            # Drop chunks that can never be used again.
            self._chunks = [c for c in self._chunks if c.end_tick > self._next_tick]
            if action is None:
                self._dry_ticks += 1
            return action

    def restart(self) -> None:
        """A new timeline (ticks count from 0 again): drop everything and void every request id issued
        so far; ids keep growing, so an answer to a request from the old timeline is never taken."""
        with self._lock:
            self._chunks = []
            self._in_flight = None
            self._first_valid_request = self._request_counter + 1
            self._next_tick = 0

    def advance(self, tick: int) -> None:
        """Mark every tick up to ``tick`` executed without taking an action (the caller held the arm)."""
        with self._lock:
            self._next_tick = max(self._next_tick, int(tick) + 1)
            self._chunks = [c for c in self._chunks if c.end_tick > self._next_tick]

    def peek(self, tick: int) -> np.ndarray | None:
        """Like :meth:`pop` but without marking the tick executed."""
        with self._lock:
            return self._action_at(int(tick))

    def _remaining_locked(self, tick: int) -> int:
        t = tick
        # Chunks may in principle leave gaps (e.g. a chunk starting in the future),
        # so walk the coverage instead of taking max(end) - tick.
        progressed = True
        while progressed:
            progressed = False
            for c in self._chunks:
                if c.start_tick <= t < c.end_tick:
                    t = c.end_tick
                    progressed = True
        return t - tick

    def remaining(self, tick: int) -> int:
        """Number of consecutive ticks from ``tick`` onward that have an action."""
        with self._lock:
            return self._remaining_locked(int(tick))

    def needs_refill(self, tick: int) -> bool:
        """True when ``remaining(tick) <= refill_threshold`` and no request is in flight."""
        with self._lock:
            if self._in_flight is not None:
                return False
            return self._remaining_locked(int(tick)) <= self.refill_threshold

    def clear(self) -> None:
        """Drop every queued action and invalidate in-flight requests (cancel / e-stop)."""
        with self._lock:
            self._chunks = []
            self._in_flight = None
            self._first_valid_request = self._request_counter + 1

    @property
    def dry_ticks(self) -> int:
        """Number of :meth:`pop` calls that returned ``None`` (for diagnostics)."""
        with self._lock:
            return self._dry_ticks
