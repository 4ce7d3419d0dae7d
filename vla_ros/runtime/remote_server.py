"""`vla-ros serve`: a vla_ros checkpoint behind openpi's websocket policy protocol.

openpi serves its VLAs (pi0, pi0-FAST, pi0.5) with `openpi.serving.websocket_policy_server` and
clients use `openpi_client.websocket_client_policy.WebsocketClientPolicy`; this server speaks the
same protocol, so that client (and the policy node with `model.server`) works against it unchanged:

  * the connection opens with one binary message from the server: the metadata (msgpack map);
  * then each binary message from the client is an observation (a msgpack-numpy map), answered by
    ``{"actions": (H, D) float32, "server_timing": {"infer_ms", "decode_ms", "prev_total_ms"},
    "policy_timing": {<the engine's stages, ms>}}``;
  * a request that cannot be served is answered with a text message saying why (openpi's client
    raises it as a RuntimeError) and the connection stays open for the next one;
  * ``GET /healthz`` answers 200 OK; with a token (``--token-env``), every websocket connection must
    send ``Authorization: Api-Key <token>`` (what WebsocketClientPolicy's ``api_key`` sends).

The observation keys (also in the metadata, so a client can read them): ``observation/images/<camera>``
per checkpoint camera (uint8 H x W x 3 RGB, any size up to --max-image-side; the engine resizes),
``observation/state`` (float, the metadata's state_names, in robot units) when the model takes state,
and ``prompt`` (str). Optional, for Real-Time Chunking (the metadata's ``takes_committed`` says how
the model uses them): ``committed_actions`` (float (n, D), n <= chunk_size, robot units: the actions
the robot has queued for the chunk's first n steps) and ``inference_delay`` (int, how many of them
execute before the chunk can arrive); clients that do not send them (openpi's) are served as before.
``--emulated-latency`` holds every answer back by that many seconds after the model ran, inside the
one-inference-at-a-time lock, as a slow GPU would (runtime/emulated_latency.py). No pickle anywhere: msgpack-numpy (vla_ros/runtime/msgpack_wire.py) only.

    vla-ros serve --checkpoint checkpoints/sim_demo [--port 8000] [--host 127.0.0.1] [--device cuda]
"""
from __future__ import annotations

import argparse
import asyncio
import hmac
import http
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

import numpy as np

from vla_ros.runtime import msgpack_wire as wire

PROTOCOL_VERSION = 1
IMAGE_KEY = "observation/images/{}"
STATE_KEY = "observation/state"
PROMPT_KEY = "prompt"
COMMITTED_KEY = "committed_actions"
DELAY_KEY = "inference_delay"
log = logging.getLogger("vla_ros.serve")


class RequestError(ValueError):
    """A request the server refuses; the text goes back to the client."""


def checkpoint_metadata(checkpoint: str, engine, max_image_side: int, max_prompt: int) -> dict:
    """What a client learns on connect: enough to check it fits the robot before it sends a frame."""
    cfg = engine.config
    data = {}
    path = Path(checkpoint) / "dataset_config.json" if checkpoint else None
    if path is not None and path.is_file():
        data = json.loads(path.read_text()).get("action", {})
    from vla_ros import __version__
    return {
        "server": "vla_ros", "protocol_version": PROTOCOL_VERSION, "vla_ros_version": __version__,
        "checkpoint": Path(checkpoint).name if checkpoint else "",
        "action_names": list(engine.action_names), "action_dim": engine.action_dim,
        "action_space": data.get("kind") or None, "chunk_size": engine.chunk_size,
        "period": data.get("control_period") or None,
        "cameras": list(engine.interface.camera_names),
        "image_keys": [IMAGE_KEY.format(c) for c in engine.interface.camera_names],
        "image_size": int(cfg.image_size), "image_layout": "HWC uint8 RGB", "max_image_side": max_image_side,
        "state_names": list(engine.state_names), "state_key": STATE_KEY if engine.state_names else None,
        "prompt_key": PROMPT_KEY, "instruction_free": False, "max_prompt_length": max_prompt,
        "device": engine.device,
        # Real-Time Chunking: how the model continues committed actions ("prefix", "guidance", both, or
        # "": it does not, the client keeps them itself) and the keys that carry them.
        "takes_committed": engine.takes_committed, "committed_key": COMMITTED_KEY, "delay_key": DELAY_KEY,
    }


def parse_committed(obs, meta: dict) -> tuple[np.ndarray | None, int]:
    """The optional committed actions and inference delay of a request, or RequestError."""
    c = obs.get(COMMITTED_KEY)
    if c is None:
        return None, 0
    D, H = meta["action_dim"], meta["chunk_size"]
    if not isinstance(c, np.ndarray) or c.dtype.kind not in "fiu" or c.ndim != 2 or c.shape[1] != D \
            or not 1 <= c.shape[0] <= H:
        raise RequestError(f"{COMMITTED_KEY!r} must be a numeric array of shape (n, {D}) with 1 <= n <= {H}, "
                           f"got {_describe(c)}")
    c = c.astype(np.float32)
    if not np.isfinite(c).all():
        raise RequestError(f"{COMMITTED_KEY!r} has non-finite values")
    d = obs.get(DELAY_KEY, 0)
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or not 0 <= int(d) <= c.shape[0]:
        raise RequestError(f"{DELAY_KEY!r} must be an integer in [0, {c.shape[0]}] (the committed actions), "
                           f"got {_describe(d)}")
    return c, int(d)


def parse_request(obs, meta: dict) -> tuple[list[np.ndarray], str, np.ndarray | None]:
    """Check one observation against the metadata; the images, prompt and state, or RequestError."""
    if not isinstance(obs, dict):
        raise RequestError(f"an observation must be a map, got {type(obs).__name__}")
    images = []
    side = meta["max_image_side"]
    for key in meta["image_keys"]:
        img = obs.get(key)
        if img is None:
            raise RequestError(f"missing key {key!r} (expected keys: {_expected(meta)})")
        if not isinstance(img, np.ndarray) or img.dtype != np.uint8 or img.ndim != 3 or img.shape[2] != 3:
            raise RequestError(f"{key!r} must be a uint8 H x W x 3 RGB array, got "
                               f"{_describe(img)}")
        if not (16 <= img.shape[0] <= side and 16 <= img.shape[1] <= side):
            raise RequestError(f"{key!r} is {img.shape[1]} x {img.shape[0]} pixels; each side must be in "
                               f"[16, {side}]")
        images.append(img)
    prompt = obs.get(PROMPT_KEY)
    if not isinstance(prompt, str) or not prompt.strip():
        raise RequestError(f"missing or empty {PROMPT_KEY!r} (a string), got {_describe(prompt)}")
    if len(prompt) > meta["max_prompt_length"]:
        raise RequestError(f"{PROMPT_KEY!r} has {len(prompt)} characters; at most {meta['max_prompt_length']}")
    state = None
    if meta["state_key"]:
        s = obs.get(STATE_KEY)
        n = len(meta["state_names"])
        if not isinstance(s, np.ndarray) or s.dtype.kind not in "fiu" or s.shape != (n,):
            raise RequestError(f"{STATE_KEY!r} must be a numeric array of shape ({n},) ({meta['state_names']}), "
                               f"got {_describe(s)}")
        state = s.astype(np.float32)
        if not np.isfinite(state).all():
            raise RequestError(f"{STATE_KEY!r} has non-finite values")
    return images, prompt, state


def _expected(meta) -> list[str]:
    return [*meta["image_keys"], *([meta["state_key"]] if meta["state_key"] else []), PROMPT_KEY]


def _describe(x) -> str:
    if isinstance(x, np.ndarray):
        return f"{x.dtype} array of shape {list(x.shape)}"
    return "nothing" if x is None else type(x).__name__


class PolicyServer:
    """An engine served over websockets: one inference at a time, any number of connections."""

    def __init__(self, engine, metadata: dict, host: str = "127.0.0.1", port: int = 8000,
                 token: str | None = None, max_message_bytes: int = 64 << 20, emulated=None):
        self.engine, self.metadata = engine, metadata
        self.emulated = emulated  # EmulatedLatency or None
        self.host, self.port, self.token = host, port, token
        self.max_message_bytes = max_message_bytes
        self.served = 0
        self.refused = 0
        self._lock: asyncio.Lock | None = None

    def _process_request(self, connection, request):
        if request.path == "/healthz":
            return connection.respond(http.HTTPStatus.OK, "OK\n")
        if self.token:
            got = request.headers.get("Authorization", "")
            if not hmac.compare_digest(got.encode(), f"Api-Key {self.token}".encode()):
                log.warning("refused a connection from %s: missing or wrong token", connection.remote_address)
                return connection.respond(http.HTTPStatus.UNAUTHORIZED, "missing or wrong Api-Key\n")
        return None

    async def _handler(self, ws):
        import websockets
        log.info("connection from %s", ws.remote_address)
        await ws.send(wire.packb(self.metadata))
        prev_total = None
        while True:
            try:
                message = await ws.recv()
            except websockets.ConnectionClosed:
                log.info("connection from %s closed", ws.remote_address)
                return
            t0 = time.monotonic()
            try:
                if isinstance(message, str):
                    raise RequestError("expected a binary msgpack message, got text")
                try:
                    obs = wire.unpackb(message, self.max_message_bytes)
                except wire.WireError as exc:
                    raise RequestError(str(exc)) from exc
                images, prompt, state = parse_request(obs, self.metadata)
                committed, delay = parse_committed(obs, self.metadata)
                t1 = time.monotonic()
                async with self._lock:  # one inference at a time, whatever the number of clients
                    chunk = await asyncio.to_thread(self.engine.infer, images, prompt, state, committed, delay)
                    if self.emulated is not None:  # a slow model, emulated: the GPU stays busy meanwhile
                        await asyncio.sleep(self.emulated.sample())
                t2 = time.monotonic()
            except RequestError as exc:
                self.refused += 1
                log.warning("refused a request from %s: %s", ws.remote_address, exc)
                if not await _send(ws, f"bad request: {exc}"):
                    return
                continue
            except Exception as exc:  # noqa: BLE001 - the engine failed on this input: say so, keep serving
                self.refused += 1
                log.error("inference failed: %s: %s", type(exc).__name__, exc)
                if not await _send(ws, f"inference failed: {type(exc).__name__}: {exc}"):
                    return
                continue
            timing = {"infer_ms": (t2 - t1) * 1e3, "decode_ms": (t1 - t0) * 1e3}
            if prev_total is not None:  # as openpi: the previous request's total, send included
                timing["prev_total_ms"] = prev_total * 1e3
            reply = {"actions": np.asarray(chunk.actions, np.float32), "server_timing": timing,
                     "policy_timing": dict(chunk.timings)}
            if not await _send(ws, wire.packb(reply)):
                return
            self.served += 1
            prev_total = time.monotonic() - t0

    async def run(self, started: threading.Event | None = None, stop: asyncio.Event | None = None):
        from websockets.asyncio.server import serve
        self._lock = asyncio.Lock()
        stop = stop or asyncio.Event()
        async with serve(self._handler, self.host, self.port, compression=None, max_size=self.max_message_bytes,
                         process_request=self._process_request) as server:
            self.port = server.sockets[0].getsockname()[1]
            if started is not None:
                started.set()
            await stop.wait()


async def _send(ws, data) -> bool:
    import websockets
    try:
        await ws.send(data)
        return True
    except websockets.ConnectionClosed:
        return False


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", default="", help="vla_ros checkpoint directory (empty: --preset, untrained)")
    p.add_argument("--preset", default="tiny", help="model preset when no checkpoint is given (smoke tests)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only). 0.0.0.0 serves every "
                        "network the machine is on: use it only on a network you trust, with --token-env")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default 8000, as openpi; 0: any free port)")
    p.add_argument("--token-env", default="",
                   help="name of an environment variable holding a shared token; clients must then send "
                        "'Authorization: Api-Key <token>' (openpi's api_key)")
    p.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda or cuda:N")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"),
                   help="inference precision (autocast on GPU)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model before serving")
    p.add_argument("--warmup", type=int, default=2, help="warm-up inferences before serving (default 2)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0, help="seed of sampling decoders (flow matching)")
    p.add_argument("--max-image-side", type=int, default=4096, help="largest image side accepted (pixels)")
    p.add_argument("--max-prompt-length", type=int, default=512, help="longest prompt accepted (characters)")
    p.add_argument("--max-message-mb", type=float, default=64.0,
                   help="largest request accepted (MiB); a larger one closes that connection (code 1009)")
    p.add_argument("--ready-file", default="", help="write the port here once serving (tests, scripts)")
    p.add_argument("--emulated-latency", type=float, default=0.0, metavar="S",
                   help="what-if: hold every answer back by S seconds after the model ran, as a slower model "
                        "would (e.g. 0.5 for pi0 served over a network); default 0: off")
    p.add_argument("--emulated-latency-p99", type=float, default=0.0, metavar="S",
                   help="with --emulated-latency: lognormal delays whose median is --emulated-latency and whose "
                        "99th percentile is S (GPU and network latency have tails); default 0: fixed")


def load_for_serving(args, log_fn=print):
    from vla_ros.runtime.policy_loader import load_engine_for_checkpoint
    if args.threads > 0:
        import torch
        torch.set_num_threads(args.threads)
    return load_engine_for_checkpoint(args.checkpoint, preset=args.preset, device=args.device, dtype=args.dtype,
                                      compile=args.compile, seed=args.seed, warmup=args.warmup, log=log_fn)


def run_serve_cli(args) -> int:
    from vla_ros.runtime.policy_loader import PolicyLoadError
    logging.basicConfig(level=logging.INFO, format="[vla-ros serve] %(levelname)s %(message)s")
    logging.getLogger("websockets").setLevel(logging.WARNING)
    token = None
    if args.token_env:
        token = os.environ.get(args.token_env, "")
        if not token:
            print(f"[vla-ros serve] --token-env {args.token_env}: that environment variable is empty or unset",
                  file=sys.stderr)
            return 2
    if args.host not in ("127.0.0.1", "localhost", "::1") and not token:
        log.warning("listening on %s without a token: anyone who reaches this port can drive the policy "
                    "(see README: Serving a policy over the network)", args.host)
    from vla_ros.runtime.emulated_latency import EmulatedLatency
    try:
        emulated = EmulatedLatency(args.emulated_latency, args.emulated_latency_p99, args.seed)
    except ValueError as exc:
        print(f"[vla-ros serve] --emulated-latency: {exc}", file=sys.stderr)
        return 2
    if emulated.enabled:
        log.warning("EMULATED LATENCY ON: every answer is held back (%s) to emulate a slower model; "
                    "this is a what-if tool, not for real use", emulated.describe())
    else:
        emulated = None
    t0 = time.perf_counter()
    try:
        engine = load_for_serving(args, lambda text: log.warning("%s", text))
    except PolicyLoadError as exc:
        print(f"[vla-ros serve] cannot load the policy: {exc}", file=sys.stderr)
        return 2
    meta = checkpoint_metadata(args.checkpoint, engine, args.max_image_side, args.max_prompt_length)
    server = PolicyServer(engine, meta, args.host, args.port, token, int(args.max_message_mb * (1 << 20)), emulated)

    async def main():
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        started = threading.Event()
        task = asyncio.create_task(server.run(started, stop))
        while not started.is_set() and not task.done():
            await asyncio.sleep(0.01)
        if task.done():
            await task  # raises the bind error
        log.info("serving %s (%s, chunk %d x %d, cameras %s) on ws://%s:%d (loaded in %.1f s); /healthz",
                 args.checkpoint or f"preset {args.preset}", engine.device, engine.chunk_size, engine.action_dim,
                 meta["cameras"], args.host, server.port, time.perf_counter() - t0)
        if args.ready_file:
            Path(args.ready_file).write_text(f"{server.port}\n")
        await task
        log.info("stopped after %d answers (%d refused)", server.served, server.refused)

    try:
        asyncio.run(main())
    except OSError as exc:
        print(f"[vla-ros serve] cannot listen on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="serve_policy", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_serve_arguments(p)
    return run_serve_cli(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
