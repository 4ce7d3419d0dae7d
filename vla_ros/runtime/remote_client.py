"""A remote policy server (openpi's websocket protocol) as an inference engine.

The policy node's policy server child process (policy_server.py) uses this instead of a local model
when `model.server` is set: the node's seam (frames in shared memory, one request at a time, newer
requests supersede waiting ones, supervision and restarts) stays exactly as it is, and the websocket
I/O happens in that child, never on the node's interpreter. The conversation is openpi's
(`WebsocketClientPolicy`): connect, read the metadata, then send msgpack-numpy observations and read
``{"actions": ...}`` replies; a text reply is the server's refusal.

Faults:
  * not reachable at configure, or metadata that does not fit the robot: `PolicyLoadError` with the
    reason (the node stays unconfigured);
  * connection lost: the request fails at once (the node holds the arm); the next requests try to
    reconnect with exponential back-off (0.25 s doubling to 5 s), re-checking the metadata, and
    answers flow again once it is back;
  * a server slower than the chunk lasts: the node's watchdog holds (control.inference_timeout), and
    this says so once (again after it recovered);
  * actions that are non-finite or wrongly shaped: refused with one line, the arm holds.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from vla_ros.runtime import msgpack_wire as wire
from vla_ros.runtime.errors import PolicyLoadError
from vla_ros.runtime.remote_mapping import Binding, MappingError, load_mapping

BACKOFF_START = 0.25
BACKOFF_MAX = 5.0


@dataclass
class RemoteChunk:
    actions: np.ndarray
    timings: dict


class RemoteEngine:
    def __init__(self, cfg: dict, log):
        self.uri = cfg["server"]
        if not self.uri.startswith(("ws://", "wss://")):
            raise PolicyLoadError(f"model.server {self.uri!r}: expected ws://host:port (or wss://)")
        self.cfg, self.log = cfg, log
        self.token = cfg.get("token") or None
        self.connect_timeout = float(cfg.get("connect_timeout", 5.0))
        self.request_timeout = float(cfg.get("request_timeout", 10.0))
        try:
            self.mapping = load_mapping(cfg["mapping"])
        except MappingError as exc:
            raise PolicyLoadError(str(exc)) from exc
        self.ws = None
        self.binding: Binding | None = None
        self.backoff = BACKOFF_START
        self.next_attempt = 0.0
        self.slow = False
        self.device = f"remote {self.uri}"
        try:
            self._connect()
        except (OSError, TimeoutError, ValueError) as exc:
            raise PolicyLoadError(f"cannot use the policy server at {self.uri}: {exc}") from exc
        b = self.binding
        constant = [p[0] for p in b.state_parts if p[1] is None]
        if constant:
            log("warning", f"{self.mapping.source}: {constant} are sent as constants from the mapping, not measured")
        self.action_names, self.state_names = b.action_names, b.state_names
        self.chunk_size, self.action_dim = b.chunk_size, b.action_dim
        self.metadata = self._meta

    # ------------------------------------------------------------------ connection
    def _connect(self) -> None:
        import websockets
        from websockets.sync.client import connect
        headers = {"Authorization": f"Api-Key {self.token}"} if self.token else None
        try:
            ws = connect(self.uri, compression=None, max_size=None, additional_headers=headers,
                         open_timeout=self.connect_timeout, close_timeout=1.0,
                         legacy=True)  # a long-lived connection, not a `with` block (websockets >= 17.1)
        except websockets.InvalidStatus as exc:
            raise ConnectionError(f"the server refused the connection ({exc})") from exc
        except (websockets.InvalidURI, websockets.InvalidHandshake) as exc:
            raise ConnectionError(str(exc)) from exc
        try:
            raw = ws.recv(timeout=self.connect_timeout)
            meta = wire.unpackb(raw)
            if not isinstance(meta, dict):
                raise ValueError(f"the server's metadata is a {type(meta).__name__}, not a map")
            c = self.cfg
            binding = Binding(self.mapping, meta, camera_names=c["camera_names"], action_names=c["action_names"],
                              action_dim=c["action_dim"], period=c["period"], action_space=c["action_space"],
                              joint_names=c["state_names"])
        except MappingError as exc:
            ws.close()
            raise ValueError(f"refused: {exc}") from exc
        except (websockets.ConnectionClosed, TimeoutError, wire.WireError) as exc:
            ws.close()
            raise ConnectionError(f"no metadata from the server: {exc}") from exc
        if self.binding is not None and (binding.state_names != self.binding.state_names
                                         or binding.chunk_size != self.binding.chunk_size):
            ws.close()
            raise ValueError("the server's metadata changed since configure (state names or chunk size); "
                             "reconfigure the node")
        self.ws, self.binding, self._meta = ws, binding, meta

    def _drop(self) -> None:
        if self.ws is not None:
            try:
                self.ws.close()
            except Exception:  # noqa: BLE001 - it is gone either way
                pass
        self.ws = None

    def close(self) -> None:
        self._drop()

    # ------------------------------------------------------------------ inference
    @property
    def takes_committed(self) -> str:
        """What the server's metadata says its model does with committed actions ("" for openpi's)."""
        value = (self._meta or {}).get("takes_committed")
        return value if isinstance(value, str) and self.binding is not None and self.binding.identity else ""

    def infer(self, images, instruction, state, committed=None, inference_delay=0) -> RemoteChunk:
        import websockets
        now = time.monotonic()
        if self.ws is None:
            if now < self.next_attempt:
                raise ConnectionError(f"not connected to {self.uri}; reconnecting in {self.next_attempt - now:.1f} s")
            try:
                self._connect()
            except (OSError, TimeoutError) as exc:
                self.next_attempt = time.monotonic() + self.backoff
                wait, self.backoff = self.backoff, min(2 * self.backoff, BACKOFF_MAX)
                raise ConnectionError(f"cannot reconnect to {self.uri}: {exc}; next attempt in {wait:.2f} s") from exc
            except ValueError as exc:
                self.next_attempt = time.monotonic() + BACKOFF_MAX
                raise ConnectionError(f"reconnected to {self.uri} but {exc}") from exc
            self.backoff = BACKOFF_START
            self.log("info", f"reconnected to the policy server at {self.uri}")
        request = self.binding.request(images, instruction, state)
        if committed is not None and len(committed) and self.takes_committed:
            meta = self._meta
            request[meta.get("committed_key", "committed_actions")] = np.asarray(committed, np.float32)
            request[meta.get("delay_key", "inference_delay")] = int(min(inference_delay, len(committed)))
        payload = wire.packb(request)
        t0 = time.perf_counter()
        try:
            self.ws.send(payload)
            reply = self.ws.recv(timeout=self.request_timeout)
        except (websockets.ConnectionClosed, OSError, TimeoutError) as exc:
            self._drop()
            self.next_attempt = 0.0  # try again with the next request, then back off
            what = "no answer" if isinstance(exc, TimeoutError) else "connection lost"
            raise ConnectionError(f"{what} from the policy server at {self.uri} ({type(exc).__name__}: {exc}); "
                                  "the arm holds while reconnecting") from exc
        rtt = (time.perf_counter() - t0) * 1e3
        if isinstance(reply, str):
            raise RuntimeError(f"the policy server refused the request: {reply[:400]}")
        data = wire.unpackb(reply)
        actions = self.binding.actions(data)
        timing = data.get("server_timing") if isinstance(data.get("server_timing"), dict) else {}
        policy = data.get("policy_timing") if isinstance(data.get("policy_timing"), dict) else {}
        model_ms = policy.get("total", timing.get("infer_ms", float("nan")))
        period = self.cfg["period"]
        lasts = self.chunk_size * period * 1e3
        if rtt > lasts and not self.slow:
            self.log("warning", f"the policy server answered in {rtt:.0f} ms, longer than a chunk lasts "
                                f"({self.chunk_size} x {period * 1e3:.0f} ms = {lasts:.0f} ms): the arm will hold "
                                "between chunks")
        elif rtt <= lasts and self.slow:
            self.log("info", f"the policy server is keeping up again ({rtt:.0f} ms per chunk)")
        self.slow = rtt > lasts
        return RemoteChunk(actions, {"total": float(model_ms), "roundtrip": rtt,
                                     "server_infer": float(timing.get("infer_ms", float("nan")))})
