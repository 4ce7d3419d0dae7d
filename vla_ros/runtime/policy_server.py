"""The local policy server: the model in its own process, so it never holds the control loop's interpreter.

The policy node starts it (`PolicyProcess` in policy_client.py) with one end of a socket pair
and supervises it. The conversation (JSON messages, see ipc.py):

    node -> server  {"type": "load", checkpoint, preset, action_names, action_dim, state_names,
                     camera_names, device, dtype, compile, seed, threads, warmup}
    server -> node  {"type": "log", "level", "text"}                 (any number, while loading)
                    {"type": "ready", action_names, state_names, chunk_size, action_dim, device, warmup_ms,
                     takes_committed, emulated_latency}
                 or {"type": "error", "message"} and exit 2          (the model cannot be used)
    node -> server  {"type": "infer", "id", "slot", "instruction", "state",
                     "images": [{"key", "shape", "dtype"}], "buffers": [{"key", "size"}],
                     "committed": [[...]] or null, "inference_delay"}   (Real-Time Chunking, controller.py)
                    (the descriptors of new image buffers travel with the message, in "buffers" order;
                     a new buffer's "replaces" names the outgrown one it supersedes)
    server -> node  {"type": "result", "id", "actions": [[...]], "timings"}
                 or {"type": "failed", "id", "error"}
                 or {"type": "skipped", "id"}                        (a newer request was already waiting)

With "emulated_latency" in the load message ({"latency", "p99", "seed"}: model.emulated_latency),
every answer is held back by that many seconds after the model ran (runtime/emulated_latency.py): a
slow model, emulated here and never in the node's control loop.

It serves one request at a time; requests that queued up while it was busy are answered
"skipped" except the newest. It ignores SIGINT (a Ctrl-C in the terminal reaches the whole
process group; the node decides when it ends) and exits when the node closes the socket.

    python -m vla_ros.runtime.policy_server --fd N
"""
from __future__ import annotations

import argparse
import signal
import socket
import sys
import time

import numpy as np

from vla_ros.runtime import ipc


def _load(sock, cfg: dict):
    from vla_ros.runtime.errors import PolicyLoadError

    from vla_ros.runtime.emulated_latency import EmulatedLatency
    try:
        emulated = EmulatedLatency.from_config(cfg)
    except ValueError as exc:
        ipc.send(sock, {"type": "error", "message": str(exc)})
        return None
    if cfg.get("threads", 0) > 0 and not cfg.get("server"):
        import torch
        torch.set_num_threads(int(cfg["threads"]))
    t0 = time.perf_counter()
    if cfg.get("server"):  # a remote policy server: this process is its websocket client
        from vla_ros.runtime.remote_client import RemoteEngine
        try:
            engine = RemoteEngine(cfg, lambda level, text: ipc.send(sock, {"type": "log", "level": level, "text": text}))
        except PolicyLoadError as exc:
            ipc.send(sock, {"type": "error", "message": str(exc)})
            return None
        ipc.send(sock, {"type": "ready", "action_names": engine.action_names, "state_names": engine.state_names,
                        "chunk_size": engine.chunk_size, "action_dim": engine.action_dim, "device": engine.device,
                        "load_s": time.perf_counter() - t0, "server_metadata": _plain(engine.metadata),
                        "takes_committed": engine.takes_committed, "emulated_latency": _describe(emulated)})
        engine.emulated = emulated
        return engine
    from vla_ros.runtime.policy_loader import load_engine
    try:
        engine = load_engine(
            checkpoint=cfg["checkpoint"], preset=cfg["preset"], action_names=cfg["action_names"],
            action_dim=cfg["action_dim"], state_names=cfg["state_names"], camera_names=cfg["camera_names"],
            device=cfg.get("device", "auto"), dtype=cfg.get("dtype", "float32"), compile=cfg.get("compile", False),
            seed=cfg.get("seed", 0), warmup=cfg.get("warmup", 2),
            log=lambda text: ipc.send(sock, {"type": "log", "level": "warning", "text": text}))
    except PolicyLoadError as exc:
        ipc.send(sock, {"type": "error", "message": str(exc)})
        return None
    ipc.send(sock, {"type": "ready", "action_names": engine.action_names, "state_names": engine.state_names,
                    "chunk_size": engine.chunk_size, "action_dim": engine.action_dim, "device": engine.device,
                    "load_s": time.perf_counter() - t0, "takes_committed": engine.takes_committed,
                    "emulated_latency": _describe(emulated)})
    engine.emulated = emulated
    return engine


def _describe(emulated) -> str:
    return emulated.describe() if emulated is not None else ""


def _plain(meta: dict) -> dict:
    """The server's metadata as JSON can carry it (arrays as lists, other values as text)."""
    out = {}
    for k, v in meta.items():
        if isinstance(v, np.ndarray):
            v = v.tolist()
        out[str(k)] = v if isinstance(v, (str, int, float, bool, list, dict, type(None))) else repr(v)
    return out


def serve(sock: socket.socket) -> int:
    msg, _ = ipc.recv(sock)
    if msg.get("type") != "load":
        ipc.send(sock, {"type": "error", "message": f"expected a load message, got {msg.get('type')!r}"})
        return 2
    engine = _load(sock, msg)
    if engine is None:
        return 2
    try:
        return _serve_requests(sock, engine)
    finally:
        close = getattr(engine, "close", None)
        if close is not None:
            close()


def _serve_requests(sock, engine) -> int:
    buffers: dict[str, ipc.SharedBuffer] = {}
    while True:
        try:
            batch = [ipc.recv(sock)]
            while True:  # take everything that queued up while we were busy
                more = ipc.recv(sock, block=False)
                if more[0] is None:
                    break
                batch.append(more)
        except ipc.ChannelClosed:
            return 0
        requests = []
        for m, fds in batch:
            for spec, fd in zip(m.get("buffers", []), fds):
                for key in (spec["key"], spec.get("replaces")):  # an outgrown buffer is not needed again
                    old = buffers.pop(key, None)
                    if old is not None:
                        old.close()
                buffers[spec["key"]] = ipc.SharedBuffer.attach(spec["key"], fd, int(spec["size"]))
            if m.get("type") == "infer":
                requests.append(m)
        for m in requests[:-1]:
            ipc.send(sock, {"type": "skipped", "id": m["id"]})
        if not requests:
            continue
        req = requests[-1]
        try:
            images = [buffers[im["key"]].array(im["shape"], im["dtype"]) for im in req["images"]]
            state = None if req.get("state") is None else np.asarray(req["state"], dtype=np.float32)
            committed = req.get("committed")
            committed = None if committed is None else np.asarray(committed, dtype=np.float32)
            chunk = engine.infer(images, req["instruction"], state, committed=committed,
                                 inference_delay=int(req.get("inference_delay") or 0))
            timings = dict(chunk.timings)
            if engine.emulated is not None:  # a slow model, emulated: the answer leaves late
                timings["emulated"] = engine.emulated.wait() * 1e3
            reply = {"type": "result", "id": req["id"], "actions": np.asarray(chunk.actions, np.float64).tolist(),
                     "timings": timings}
        except Exception as exc:  # noqa: BLE001 - any failure is reported to the node, which holds the arm
            reply = {"type": "failed", "id": req["id"], "error": f"{type(exc).__name__}: {exc}"}
        images = None  # no view into a buffer may outlive the request: an outgrown buffer is unmapped
        try:
            ipc.send(sock, reply)
        except ipc.ChannelClosed:
            return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="vla_ros local policy server (started by policy_node)")
    p.add_argument("--fd", type=int, required=True, help="inherited socket descriptor")
    args = p.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sock = socket.socket(fileno=args.fd)
    try:
        return serve(sock)
    except ipc.ChannelClosed:
        return 0
    finally:
        sock.close()


if __name__ == "__main__":
    sys.exit(main())
