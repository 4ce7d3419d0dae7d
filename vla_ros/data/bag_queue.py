"""A bounded write queue in front of a BagWriter, written by a thread of its own.

The recorder's subscription callbacks only put (topic, receive time, CDR bytes) here, so taking
messages from DDS never waits for storage (an MCAP chunk write, an sqlite3 commit, a slow
disk). The queue is bounded in bytes: when the writer falls that far behind, new messages are
dropped (never the ones already queued), counted per topic, and `on_drop` is told (the recorder
logs it). close() writes everything queued, then closes the bag.

    q = QueuedBagWriter(BagWriter(path), max_bytes=512 << 20)
    q.add_topic("/joint_states", "sensor_msgs/msg/JointState")
    q.put("/joint_states", t_ns, data)      # any thread; False if dropped
    q.close()                               # everything queued is written

No rclpy here.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from typing import Callable

from vla_ros.data.bag_storage import DEFAULT_FLUSH_PERIOD
from vla_ros.data.bags import BagWriter

DEFAULT_MAX_BYTES = 512 * 1024 * 1024
BATCH = 256   # messages written per lock hold: put() from other threads waits at most this long


class QueuedBagWriter:
    """Thread-safe front of a BagWriter: put() enqueues, a writer thread writes and flushes."""

    def __init__(self, bag: BagWriter, max_bytes: int = DEFAULT_MAX_BYTES,
                 on_drop: Callable[[str, int], None] | None = None, flush_period: float = DEFAULT_FLUSH_PERIOD):
        self.bag = bag
        self.max_bytes = int(max_bytes)
        self.on_drop = on_drop
        self._flush_period = flush_period
        self._queue: deque = deque()
        self._lock = threading.Lock()          # queue, byte and drop counts
        self._bag_lock = threading.Lock()      # the BagWriter (not thread-safe)
        self._wake = threading.Event()
        self._queued_bytes = 0
        self.peak_bytes = 0
        self.received: dict[str, int] = {}
        self.dropped: dict[str, int] = {}
        self._written: dict[str, int] = {}     # kept here: reading the bag's would wait for a long flush
        self.error: BaseException | None = None
        self._closing = False
        self._thread = threading.Thread(target=self._run, name="bag_writer", daemon=True)
        self._thread.start()

    # -------------------------------------------------------------------- any thread
    def add_topic(self, topic: str, msgtype: str, **kwargs) -> None:
        with self._bag_lock:
            self.bag.add_topic(topic, msgtype, **kwargs)
        with self._lock:
            self.received.setdefault(topic, 0)
            self.dropped.setdefault(topic, 0)
            self._written.setdefault(topic, 0)

    def type_hash(self, topic: str) -> str:
        with self._bag_lock:
            return self.bag.type_hash(topic)

    def put(self, topic: str, timestamp_ns: int, data: bytes) -> bool:
        """Queue one message; False (and counted as dropped) when the queue holds max_bytes."""
        n = len(data)
        with self._lock:
            self.received[topic] = self.received.get(topic, 0) + 1
            if self._closing or self._queued_bytes + n > self.max_bytes and self._queue:
                self.dropped[topic] = self.dropped.get(topic, 0) + 1
                dropped = True
            else:
                self._queue.append((topic, timestamp_ns, data))
                self._queued_bytes += n
                self.peak_bytes = max(self.peak_bytes, self._queued_bytes)
                dropped = False
        if dropped:
            if self.on_drop is not None:
                self.on_drop(topic, n)
            return False
        if not self._wake.is_set():
            self._wake.set()
        return True

    @property
    def queued(self) -> tuple[int, int]:
        """(messages, bytes) waiting to be written."""
        with self._lock:
            return len(self._queue), self._queued_bytes

    @property
    def counts(self) -> dict[str, int]:
        """Messages written to the bag so far per topic (never waits for the writer thread, which
        may be in a long flush: an sqlite3 commit and WAL checkpoint, a slow disk)."""
        with self._lock:
            return dict(self._written)

    def close(self, timeout: float | None = None) -> None:
        """Write everything queued, then close the bag (metadata.yaml, storage summary)."""
        with self._lock:
            self._closing = True
        self._wake.set()
        self._thread.join(timeout)
        if self._thread.is_alive():
            raise TimeoutError(f"bag writer still writing after {timeout} s")
        with self._bag_lock:
            self.bag.close()
        if self.error is not None:
            raise self.error

    # -------------------------------------------------------------------- the writer thread
    def _take(self, limit: int) -> list:
        with self._lock:
            n = min(limit, len(self._queue))
            batch = [self._queue.popleft() for _ in range(n)]
            self._queued_bytes -= sum(len(m[2]) for m in batch)
            return batch

    def _run(self) -> None:
        period = self._flush_period
        last_flush = time.monotonic()
        batch, done = [], 0
        try:
            while True:
                batch, done = self._take(BATCH), 0
                if batch:
                    with self._bag_lock:
                        for topic, t, data in batch:
                            self.bag.write(topic, t, data)
                            done += 1
                    self._count_written(batch)
                    batch = []
                if time.monotonic() - last_flush >= period:
                    # Slow topics too reach the file within the flush period (a killed recorder loses at most that).
                    with self._bag_lock:
                        self.bag.flush()
                    last_flush = time.monotonic()
                if done:
                    continue
                with self._lock:
                    if self._closing and not self._queue:
                        return
                self._wake.wait(period / 2)
                self._wake.clear()
        except BaseException as exc:  # noqa: BLE001 - `error`, raised again by close(); the recorder logs it
            self.error = exc
            self._count_written(batch[:done])
            with self._lock:
                self._closing = True
                for topic, _, _ in [*batch[done:], *self._queue]:
                    self.dropped[topic] = self.dropped.get(topic, 0) + 1
                self._queue.clear()
                self._queued_bytes = 0

    def _count_written(self, messages) -> None:
        with self._lock:
            for topic, _, _ in messages:
                self._written[topic] = self._written.get(topic, 0) + 1
