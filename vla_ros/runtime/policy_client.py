"""The policy node's side of inference: a supervised server process, or (tests, small boards) a thread.

`PolicyProcess` starts `python -m vla_ros.runtime.policy_server`, loads the model there and
then serves `submit(observation)` calls: the frames are copied into shared memory, a small
header goes through the socket, and a reader thread hands each answer to `on_result` /
`on_failure`. When the server dies (or `restart()` is called because it stopped answering) the
in-flight request fails, the node holds the arm, and the server is started again; the model
then loads again (seconds), after which requests flow as before.

`InProcessPolicy` runs the same engine in a thread of the node's own process. The model then
competes with the control loop for the interpreter (GIL), so the control rate jitters; use it
only where a second process is not possible.

Both offer: `start() -> metadata`, `can_submit()`, `submit(obs) -> bool`, `restart(reason)`, `close()`.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from collections import deque
from typing import Callable

import numpy as np

from vla_ros.runtime import ipc
from vla_ros.runtime.controller import Observation
from vla_ros.runtime.errors import PolicyLoadError

ResultFn = Callable[[Observation, np.ndarray, float], None]      # obs, actions (H, D), latency s
FailureFn = Callable[[Observation | None, str], None]
LogFn = Callable[[str, str], None]                                 # level, text

SLOTS = 2  # image buffer sets: one being read by the server, one being written for the next request


def sends_committed(obs: Observation, load_cfg: dict, metadata: dict) -> bool:
    """Committed actions go to a policy that continues them (metadata "takes_committed"), when asked to."""
    return (obs.committed is not None and bool(load_cfg.get("send_committed"))
            and bool(metadata.get("takes_committed")))


class PolicyProcess:
    """A policy server process on this machine, started and supervised here."""

    def __init__(self, load: dict, on_result: ResultFn, on_failure: FailureFn, log: LogFn,
                 load_timeout: float = 300.0, max_restarts: int = 5):
        self.load_cfg = dict(load)
        self.on_result, self.on_failure, self.log = on_result, on_failure, log
        self.load_timeout = load_timeout
        self.max_restarts = max_restarts
        self.metadata: dict = {}
        self.restarts = 0
        self.model_ms = deque(maxlen=200)  # the model's own time per answer (the engine's timings), ms
        self._lock = threading.Lock()
        self._proc: subprocess.Popen | None = None
        self._sock = None
        self._reader: threading.Thread | None = None
        self._closing = False
        self._ready = False
        self._pending: dict[int, tuple[Observation, float]] = {}   # id -> (observation, sent at)
        self._buffers: dict[tuple[int, int], ipc.SharedBuffer] = {}
        self._serial = 0
        self._slot = 0

    # ------------------------------------------------------------------ process
    def start(self) -> dict:
        """Start the server and load the model; returns its metadata or raises PolicyLoadError."""
        ours, theirs = ipc.socket_pair()
        # The server imports vla_ros from wherever this process found it (a colcon install, the venv).
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))
        proc = subprocess.Popen([sys.executable, "-m", "vla_ros.runtime.policy_server", "--fd", str(theirs.fileno())],
                                pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, env=env)
        theirs.close()
        ours.settimeout(self.load_timeout)
        try:
            ipc.send(ours, {"type": "load", **self.load_cfg})
            while True:
                msg, _ = ipc.recv(ours)
                if msg["type"] == "log":
                    self.log(msg["level"], msg["text"])
                    continue
                break
        except (ipc.ChannelClosed, OSError) as exc:
            proc.kill()
            proc.wait()
            ours.close()
            raise PolicyLoadError(f"the policy server exited while loading the model (exit code {proc.returncode}; "
                                  f"see its output above): {exc}") from exc
        if msg["type"] != "ready":
            proc.wait(timeout=30)
            ours.close()
            raise PolicyLoadError(msg.get("message", f"unexpected answer {msg!r}"))
        ours.settimeout(None)
        with self._lock:
            self._proc, self._sock = proc, ours
            for b in self._buffers.values():  # the previous server's (a restart)
                b.close()
            self._buffers = {}
            self._pending.clear()
            self._ready = True
        self.metadata = msg
        self._reader = threading.Thread(target=self._read, args=(ours, proc), name="policy_client", daemon=True)
        self._reader.start()
        return msg

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def oldest_pending_age(self) -> float | None:
        """Seconds the oldest unanswered request has waited (None: nothing pending)."""
        with self._lock:
            sent = [t for _, t in self._pending.values()]
        return time.perf_counter() - min(sent) if sent else None

    def _call(self, fn, *args) -> None:
        """A node callback from the reader thread: an exception there must not end the thread."""
        try:
            fn(*args)
        except Exception as exc:  # noqa: BLE001 - logged; the reader keeps serving
            try:
                self.log("error", f"policy client callback failed: {type(exc).__name__}: {exc}")
            except Exception:  # noqa: BLE001
                pass

    def restart(self, reason: str) -> None:
        """Kill the server (it stopped answering): the reader then reports it and starts a new one."""
        with self._lock:
            proc = self._proc
        if proc is not None and proc.poll() is None:
            self.log("error", f"policy server (pid {proc.pid}) killed: {reason}")
            proc.kill()

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._ready = False
            proc, sock = self._proc, self._sock
        if sock is not None:
            try:
                sock.shutdown(2)  # the server sees the end of its channel and exits
            except OSError:
                pass
        if proc is not None:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._reader is not None and self._reader is not threading.current_thread():
            self._reader.join(timeout=10)
        if sock is not None:
            sock.close()
        for b in self._buffers.values():
            b.close()
        self._buffers.clear()

    # ------------------------------------------------------------------ requests
    def can_submit(self) -> bool:
        with self._lock:
            return self._ready and len(self._pending) < SLOTS

    def submit(self, obs: Observation) -> bool:
        """Send one observation; False when the server is not ready or both buffer slots are busy."""
        with self._lock:
            if not self._ready or len(self._pending) >= SLOTS:
                return False
            slot = self._slot
            self._slot = (slot + 1) % SLOTS
            images, new, fds = [], [], []
            for cam, img in enumerate(obs.images):
                img = np.ascontiguousarray(img)
                buf = self._buffers.get((slot, cam))
                if buf is None or buf.size < img.nbytes:
                    replaces = None
                    if buf is not None:
                        buf.close()
                        replaces = buf.key
                    self._serial += 1
                    buf = ipc.SharedBuffer.create(f"{slot}_{cam}_{self._serial}", max(img.nbytes, 1))
                    self._buffers[(slot, cam)] = buf
                    new.append({"key": buf.key, "size": buf.size, "replaces": replaces})
                    fds.append(buf.fd)
                buf.write(img)
                images.append({"key": buf.key, "shape": list(img.shape), "dtype": str(img.dtype)})
            msg = {"type": "infer", "id": obs.request_id, "slot": slot, "instruction": obs.instruction,
                   "state": None if obs.state is None else [float(x) for x in obs.state],
                   "images": images, "buffers": new}
            if sends_committed(obs, self.load_cfg, self.metadata):
                msg["committed"] = np.asarray(obs.committed, np.float64).tolist()
                msg["inference_delay"] = int(obs.inference_delay)
            self._pending[obs.request_id] = (obs, time.perf_counter())
            sock = self._sock
        try:
            ipc.send(sock, msg, fds)
        except (ipc.ChannelClosed, OSError, ValueError) as exc:
            with self._lock:
                self._pending.pop(obs.request_id, None)
            self.on_failure(obs, f"could not send to the policy server: {exc}")
            return False
        return True

    # ------------------------------------------------------------------ answers and supervision
    def _read(self, sock, proc) -> None:
        while True:
            try:
                msg, _ = ipc.recv(sock)
            except (ipc.ChannelClosed, OSError):
                break
            kind = msg.get("type")
            if kind == "log":
                self._call(self.log, msg["level"], msg["text"])
                continue
            with self._lock:
                obs, sent = self._pending.pop(msg.get("id"), (None, None))
            if obs is None:
                continue
            if kind == "result":
                self.model_ms.append(float(msg.get("timings", {}).get("total", float("nan"))))
                self._call(self.on_result, obs, np.asarray(msg["actions"], dtype=np.float64),
                           time.perf_counter() - sent)
            elif kind == "failed":
                self._call(self.on_failure, obs, msg["error"])
            # "skipped": a newer request superseded it; the controller already forgot it
        with self._lock:
            closing = self._closing
            self._ready = False
            lost = [o for o, _ in self._pending.values()]
            self._pending.clear()
        if closing:
            return
        code = proc.wait()
        sock.close()
        self._call(self.on_failure, lost[0] if lost else None,
                   f"the policy server (pid {proc.pid}) exited with code {code}")
        self._restart_loop(code)

    def _restart_loop(self, code) -> None:
        while not self._closing:
            if self.restarts >= self.max_restarts:
                self.log("error", f"the policy server died {self.restarts + 1} times; not restarting it again "
                                  "(the arm holds; reconfigure the node to try again)")
                return
            self.restarts += 1
            self.log("warning", f"restarting the policy server (restart {self.restarts} of at most "
                                f"{self.max_restarts}); the arm holds while the model loads")
            try:
                self.start()
                if self._closing:  # close() came while the model loaded: this server is nobody's
                    self.close()
                    return
                self.log("info", f"policy server running again (pid {self.pid})")
                return
            except PolicyLoadError as exc:
                self.log("error", f"policy server restart failed: {exc}")
                time.sleep(1.0)


class InProcessPolicy:
    """The engine in a thread of this process (tests, boards where a second process is not possible)."""

    def __init__(self, load: dict, on_result: ResultFn, on_failure: FailureFn, log: LogFn):
        self.load_cfg = dict(load)
        self.on_result, self.on_failure, self.log = on_result, on_failure, log
        self.metadata: dict = {}
        self.restarts = 0
        self.model_ms = deque(maxlen=200)
        self.pid = None
        self._engine = None
        self._cv = threading.Condition()
        self._next: Observation | None = None
        self._busy = False
        self._closing = False
        self._thread: threading.Thread | None = None
        self._emulated = None

    def start(self) -> dict:
        from vla_ros.runtime.policy_loader import load_engine
        c = self.load_cfg
        if c.get("threads", 0) > 0:
            import torch
            torch.set_num_threads(int(c["threads"]))
        self._engine = load_engine(
            checkpoint=c["checkpoint"], preset=c["preset"], action_names=c["action_names"],
            action_dim=c["action_dim"], state_names=c["state_names"], camera_names=c["camera_names"],
            device=c.get("device", "auto"), dtype=c.get("dtype", "float32"), compile=c.get("compile", False),
            seed=c.get("seed", 0), warmup=c.get("warmup", 2), log=lambda t: self.log("warning", t))
        e = self._engine
        from vla_ros.runtime.emulated_latency import EmulatedLatency
        try:
            self._emulated = EmulatedLatency.from_config(c)
        except ValueError as exc:
            raise PolicyLoadError(str(exc)) from exc
        self.metadata = {"action_names": e.action_names, "state_names": e.state_names, "chunk_size": e.chunk_size,
                         "action_dim": e.action_dim, "device": e.device, "takes_committed": e.takes_committed,
                         "emulated_latency": self._emulated.describe() if self._emulated else ""}
        self._thread = threading.Thread(target=self._run, name="vla_inference", daemon=True)
        self._thread.start()
        return self.metadata

    def can_submit(self) -> bool:
        with self._cv:
            return not self._busy and self._next is None and not self._closing

    def submit(self, obs: Observation) -> bool:
        with self._cv:
            if self._busy or self._next is not None or self._closing:
                return False
            self._next = obs
            self._cv.notify()
            return True

    def restart(self, reason: str) -> None:
        self.log("error", f"in-process inference cannot be restarted ({reason}); the arm holds")

    def oldest_pending_age(self) -> float | None:
        return None

    def _run(self) -> None:
        while True:
            with self._cv:
                while self._next is None and not self._closing:
                    self._cv.wait()
                if self._closing:
                    return
                obs, self._next, self._busy = self._next, None, True
            t0 = time.perf_counter()
            try:
                send = sends_committed(obs, self.load_cfg, self.metadata)
                chunk = self._engine.infer(obs.images, obs.instruction, obs.state,
                                           committed=obs.committed if send else None,
                                           inference_delay=obs.inference_delay if send else 0)
                actions = np.asarray(chunk.actions, dtype=np.float64)
                if self._emulated is not None:  # this thread, never the control loop
                    self._emulated.wait()
            except Exception as exc:  # noqa: BLE001 - reported; the arm holds
                failure = f"{type(exc).__name__}: {exc}"
            else:
                failure = None
                self.model_ms.append(chunk.timings["total"])
            try:
                if failure is None:
                    self.on_result(obs, actions, time.perf_counter() - t0)
                else:
                    self.on_failure(obs, failure)
            except Exception as exc:  # noqa: BLE001 - the inference thread must survive the node's callbacks
                self.log("error", f"inference callback failed: {type(exc).__name__}: {exc}")
            with self._cv:
                self._busy = False

    def close(self) -> None:
        with self._cv:
            self._closing = True
            self._cv.notify()
        if self._thread is not None:
            self._thread.join(timeout=10)
