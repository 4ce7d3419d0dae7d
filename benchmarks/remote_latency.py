"""The remote policy seam over loopback next to the local one, in one run.

Both paths are measured where the policy node uses them (the `PolicyProcess` interface: submit an
observation, get the chunk on the reader thread), with the same saved checkpoint (the `tiny` preset)
and one torch thread:
  * local:  the node's policy server process runs the model (frames through shared memory);
  * remote: the node's policy server process is a websocket client of `vla-ros serve` (another
            process, 127.0.0.1), through config/remote/vla_ros.yaml.
frame -> chunk is submit -> on_result; the model's own time (the engine's timings, measured where
the model runs) is subtracted to get each path's overhead. Then: request payload sizes (msgpack-numpy,
as sent) and the requests per second `vla-ros serve` sustains with 1, 2 and 4 clients (openpi's own
WebsocketClientPolicy, back-to-back requests).

    python benchmarks/remote_latency.py [--requests 300] [--size 224] [--seconds 5] [--out FILE]
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore", message=r"connect\(\) must be used as a context manager")  # openpi-client 0.1.2


def pct(values, q):
    return float(np.percentile(values, q)) if len(values) else float("nan")


def run_seam(load: dict, size: int, n: int) -> dict:
    from vla_ros.runtime.controller import Observation
    from vla_ros.runtime.policy_client import PolicyProcess

    done = threading.Event()
    got = {}

    def on_result(obs, actions, latency):
        got["latency"] = latency
        done.set()

    def on_failure(obs, error):
        got["error"] = error
        done.set()

    proc = PolicyProcess(load, on_result, on_failure, lambda level, text: None)
    proc.start()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8) for _ in range(8)]
    state = np.zeros(len(proc.metadata["state_names"]), np.float32)
    lat, model = [], []
    try:
        for i in range(n + 10):
            done.clear()
            got.clear()
            obs = Observation(i + 1, [frames[i % len(frames)]], "pick up the red cube", state, 0.0, None, 0)
            assert proc.submit(obs)
            assert done.wait(60), "no answer within 60 s"
            if "error" in got:
                raise RuntimeError(got["error"])
            if i >= 10:  # warm-up
                lat.append(got["latency"] * 1e3)
                model.append(proc.model_ms[-1])
    finally:
        proc.close()
    lat, model = np.array(lat), np.array(model)
    over = lat - model
    return {"n": n, "p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "model_p50_ms": pct(model, 50),
            "overhead_p50_ms": pct(over, 50), "overhead_p99_ms": pct(over, 99)}


def payload_sizes() -> list[dict]:
    from vla_ros.runtime import msgpack_wire as wire
    from vla_ros.runtime.remote_mapping import Binding, load_mapping

    rows = []
    for name, cams, (h, w) in [("vla_ros", 1, (224, 224)), ("vla_ros", 1, (480, 640)), ("droid", 2, (480, 640)),
                               ("libero", 2, (480, 640))]:
        m = load_mapping(str(ROOT / "config" / "remote" / f"{name}.yaml"))
        cam_names = [im.camera for im in m.images]
        meta = {"server": "vla_ros", "protocol_version": 1, "state_names": [f"j{i}" for i in range(8)],
                "chunk_size": 8} if name == "vla_ros" else {}
        b = Binding(m, meta, camera_names=cam_names, action_names=None, action_dim=len(m.raw["actions"].get(
            "columns") or range(7)), period=0.1, action_space="ee_delta",
            joint_names=[f"fr3_joint{i}" for i in range(1, 8)])
        frames = [np.zeros((h, w, 3), np.uint8)] * len(cam_names)
        req = b.request(frames, "pick up the red cube", np.zeros(len(b.state_names), np.float32))
        shapes = sorted({tuple(v.shape) for v in req.values() if isinstance(v, np.ndarray) and v.ndim == 3})
        rows.append({"mapping": name, "cameras": cams, "camera_image": f"{w}x{h}", "sent_images": str(shapes),
                     "bytes": len(wire.packb(req))})
    return rows


def throughput(port: int, size: int, seconds: float, clients: int) -> float:
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    rng = np.random.default_rng(1)
    obs = {"observation/images/front": rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8),
           "observation/state": np.zeros(8, np.float32), "prompt": "pick up the red cube"}
    counts = [0] * clients
    start = threading.Barrier(clients + 1)
    end_at = [0.0]

    def worker(k):
        c = WebsocketClientPolicy("127.0.0.1", port)
        c.infer(obs)
        start.wait()
        while time.monotonic() < end_at[0]:
            c.infer(obs)
            counts[k] += 1
        c._ws.close()

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    for t in threads:
        t.start()
    end_at[0] = time.monotonic() + 1e9
    start.wait()
    t0 = time.monotonic()
    end_at[0] = t0 + seconds
    for t in threads:
        t.join()
    return sum(counts) / (time.monotonic() - t0)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--size", type=int, default=224, help="camera image side (pixels)")
    p.add_argument("--seconds", type=float, default=5.0, help="per throughput measurement")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "remote_latency.json"))
    args = p.parse_args()
    import torch

    from vla_ros.model.checkpoint import save_policy
    from vla_ros.model.config import load_preset
    from vla_ros.model.policy import build_policy
    from vla_ros.runtime.policy_loader import DEMO_INTERFACE

    load_before = os.getloadavg()
    tmp = Path(tempfile.mkdtemp(prefix="remote_bench_"))
    torch.manual_seed(0)
    save_policy(build_policy(load_preset("tiny"), DEMO_INTERFACE), tmp / "ckpt")
    port_file = tmp / "port"
    server = subprocess.Popen([sys.executable, "-m", "vla_ros.runtime.remote_server", "--checkpoint",
                               str(tmp / "ckpt"), "--port", "0", "--threads", "1", "--ready-file", str(port_file)],
                              stdout=open(tmp / "serve.log", "w"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        while not (port_file.exists() and port_file.read_text().strip()):
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vla-ros serve did not start: {(tmp / 'serve.log').read_text()[-2000:]}")
            time.sleep(0.05)
        port = int(port_file.read_text())
        base = dict(checkpoint=str(tmp / "ckpt"), preset="tiny", action_names=None, action_dim=7,
                    state_names=[f"joint_{i}" for i in range(1, 8)] + ["gripper"], camera_names=["front"],
                    device="cpu", threads=1, warmup=2)
        remote_cfg = dict(base, server=f"ws://127.0.0.1:{port}", mapping=str(ROOT / "config/remote/vla_ros.yaml"),
                          period=0.1, action_space="ee_delta", connect_timeout=10.0, request_timeout=30.0)
        seam = {"local": run_seam(base, args.size, args.requests), "remote": run_seam(remote_cfg, args.size,
                                                                                       args.requests)}
        rps = {c: throughput(port, args.size, args.seconds, c) for c in (1, 2, 4)}
    finally:
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    sizes = payload_sizes()
    load_after = os.getloadavg()

    extra = seam["remote"]["p50_ms"] - seam["local"]["p50_ms"]
    print(f"\nframe -> chunk through the node's seam, one {args.size}x{args.size} camera, tiny preset, 1 torch thread, "
          f"{args.requests} sequential requests")
    print("| path | p50 ms | p99 ms | model p50 ms | overhead p50 ms | overhead p99 ms |")
    print("|---|---:|---:|---:|---:|---:|")
    for k, r in seam.items():
        print(f"| {k} | {r['p50_ms']:.2f} | {r['p99_ms']:.2f} | {r['model_p50_ms']:.2f} | "
              f"{r['overhead_p50_ms']:.2f} | {r['overhead_p99_ms']:.2f} |")
    print(f"\nremote - local at p50: {extra:+.2f} ms (overhead difference "
          f"{seam['remote']['overhead_p50_ms'] - seam['local']['overhead_p50_ms']:+.2f} ms)")
    print("\n| request (mapping) | cameras | camera image | images sent | bytes |")
    print("|---|---:|---|---|---:|")
    for r in sizes:
        print(f"| {r['mapping']} | {r['cameras']} | {r['camera_image']} | {r['sent_images']} | {r['bytes']:,} |")
    print(f"\nvla-ros serve, tiny preset, {args.size}x{args.size}, 1 torch thread, openpi's WebsocketClientPolicy:")
    print("| clients | requests/s |")
    print("|---:|---:|")
    for c, v in rps.items():
        print(f"| {c} | {v:.0f} |")
    print(f"\nload average before {load_before[0]:.2f}, after {load_after[0]:.2f} / {load_after[1]:.2f} / "
          f"{load_after[2]:.2f} ({os.cpu_count()} CPUs)")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"size": args.size, "requests": args.requests, "seam": seam,
                               "remote_minus_local_p50_ms": extra, "payloads": sizes,
                               "requests_per_second": rps, "loadavg_before": load_before,
                               "loadavg_after": load_after}, indent=2) + "\n")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
