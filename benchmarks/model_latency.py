#!/usr/bin/env python3
"""Latency, size and memory of the model presets, through the same InferenceEngine the node uses.

For each preset (``--presets tiny,small,base``; ``large`` is selectable but slow on CPU)
and each device (CPU always, CUDA when present, where bf16 autocast is measured too):

* parameter count (all / trainable: pretrained towers are frozen);
* latency p50 / p99 of ``engine.infer`` (OpenCV preprocessing of 480x640 frames,
  encoders, fusion, action head, un-normalization) and of the bare model forward on an
  already preprocessed tensor, plus the mean time of each engine stage;
* memory: the size of the weights (state dict; int8 weights count one byte) and the peak:
  on GPU ``torch.cuda.max_memory_allocated``; on CPU the growth of the process's peak RSS
  (``resource.getrusage().ru_maxrss``) from just before the policy is built (each preset
  runs in its own subprocess, so numbers do not leak between presets; the int8 row's peak
  includes the fp32 policy it was converted from, which stays loaded);
* on CPU, int8 dynamic quantization vs fp32: latency and the max / mean absolute
  difference of the action chunks (robot units, same inputs and noise seed).

Weights are random (the presets' architectures, untrained) with synthetic normalization
statistics: latency does not depend on the weights' values. The instruction embedding of
a frozen text encoder is cached after the first call, as on the robot; the uncached cost
is reported separately (``text_uncached_ms``).

    .venv/bin/python benchmarks/model_latency.py                       # tiny,small,base
    .venv/bin/python benchmarks/model_latency.py --presets large --iters 5 --out /tmp/l.json
    .venv/bin/python benchmarks/model_latency.py --checkpoints checkpoints/sim_demo,student --threads 1 \
        --out /tmp/distill_latency.json   # trained policies: a teacher and its distilled student

With ``--checkpoints`` the rows are trained checkpoints (plain or adapted) instead of presets,
with their own weights and normalization statistics; "trainable" is the policy's own
parameters, without the frozen pretrained towers every policy built on them carries.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # runs from a source checkout without installation
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

INSTRUCTION = "pick up the red cube and put it in the bowl"


def _percentile(xs: list[float], q: float) -> float:
    import numpy as np

    return float(np.percentile(np.asarray(xs), q))


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _weights_mb(module) -> float:
    """Bytes of every tensor in the state dict (int8 packed weights count 1 byte each)."""
    import torch

    def nbytes(v) -> int:
        if isinstance(v, torch.Tensor):
            return v.numel() * v.element_size()
        if isinstance(v, (tuple, list)):
            return sum(nbytes(x) for x in v)
        return 0

    return sum(nbytes(v) for v in module.state_dict().values()) / 2**20


def _timed_loop(fn, iters: int, budget_s: float, min_iters: int = 5) -> list[float]:
    """Call fn() up to ``iters`` times (at least ``min_iters``, within ``budget_s``), ms each."""
    out: list[float] = []
    start = time.perf_counter()
    while len(out) < iters and (len(out) < min_iters or time.perf_counter() - start < budget_s):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1e3)
    return out


def _quiet_transformers() -> None:
    try:
        import transformers

        transformers.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def bench_preset(name: str, iters: int, warmup: int, budget_s: float, devices: list[str]) -> list[dict]:
    """A preset's architecture with random weights and synthetic normalization statistics."""
    import numpy as np
    import torch

    from vla_ros.model import build_policy, compute_stats, load_preset
    from vla_ros.runtime.policy_loader import DEMO_INTERFACE

    _quiet_transformers()
    rss_before = _maxrss_mb()
    cfg = load_preset(name)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    policy = build_policy(cfg, DEMO_INTERFACE).eval()
    robot = policy.interface
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    policy.set_normalization_stats({
        "action": compute_stats(rng.uniform(-1, 1, (1000, robot.action_dim)) * 0.05),
        "state": compute_stats(rng.uniform(-2, 2, (1000, robot.state_dim))),
    })
    return bench_policy(name, policy, rss_before, build_s, iters, warmup, budget_s, devices)


def bench_checkpoint(path: str, iters: int, warmup: int, budget_s: float, devices: list[str]) -> list[dict]:
    """A trained checkpoint (plain or adapted), e.g. a teacher and the student distilled from it."""
    from vla_ros.model.lora import load_any_policy

    _quiet_transformers()
    rss_before = _maxrss_mb()
    t0 = time.perf_counter()
    policy = load_any_policy(path).eval()
    return bench_policy(path, policy, rss_before, time.perf_counter() - t0, iters, warmup, budget_s, devices)


def bench_policy(name: str, policy, rss_before: float, build_s: float, iters: int, warmup: int, budget_s: float,
                 devices: list[str]) -> list[dict]:
    import numpy as np
    import torch

    from vla_ros.model import make_generator
    from vla_ros.model.compression import quantize_dynamic_int8
    from vla_ros.runtime.engine import InferenceEngine
    from vla_ros.imaging.preprocess import preprocess_images

    cfg, robot = policy.config, policy.interface
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in robot.camera_names]
    state = np.zeros(robot.state_dim, np.float32) if cfg.use_state else None
    n_params, n_train = policy.num_parameters(), policy.num_parameters(trainable_only=True)
    rows: list[dict] = []

    def run(engine: InferenceEngine, device: str, precision: str, rss0: float) -> dict:
        if device == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        engine.warmup(warmup)
        timings: list[dict] = []
        lat = _timed_loop(lambda: timings.append(engine.infer(frames, INSTRUCTION, state).timings), iters, budget_s)
        p = engine.policy
        x = torch.from_numpy(preprocess_images(frames, cfg.image_size))[None].to(engine.device)
        gen = make_generator(0, engine.device)

        def forward():
            with torch.inference_mode(), engine._autocast():
                p(x, [INSTRUCTION], state, generator=gen)
            engine._sync()

        fwd = _timed_loop(forward, iters, budget_s)
        text_uncached = None
        if hasattr(p.language, "clear_cache"):
            p.language.clear_cache()
            with torch.inference_mode():
                t = time.perf_counter()
                p.language(["an instruction the cache has never seen"])
                engine._sync()
                text_uncached = (time.perf_counter() - t) * 1e3
        if device == "cuda":
            peak = torch.cuda.max_memory_allocated() / 2**20
            mem_kind = "cuda_max_memory_allocated"
        else:
            peak = _maxrss_mb() - rss0
            mem_kind = "ru_maxrss_delta"
        return {
            "preset": name, "device": device, "precision": precision,
            "device_name": torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu",
            "params": n_params, "trainable_params": n_train,
            "image_size": cfg.image_size, "cameras": robot.num_cameras, "chunk_size": cfg.chunk_size,
            "action_head": cfg.action_head, "fusion": cfg.fusion, "vision": cfg.vision_encoder,
            "language": cfg.language_encoder,
            "infer_ms_p50": _percentile(lat, 50), "infer_ms_p99": _percentile(lat, 99),
            "forward_ms_p50": _percentile(fwd, 50), "forward_ms_p99": _percentile(fwd, 99),
            "stage_ms_mean": {k: float(np.mean([t[k] for t in timings])) for k in timings[0]},
            "iters": len(lat), "peak_mem_mb": peak, "peak_mem_kind": mem_kind, "weights_mb": _weights_mb(p),
            "text_uncached_ms": text_uncached, "build_s": build_s,
        }

    if "cpu" in devices:
        fp32 = InferenceEngine(policy, device="cpu", dtype="float32", seed=0)
        rows.append(run(fp32, "cpu", "fp32", rss_before))
        q = InferenceEngine(quantize_dynamic_int8(policy), device="cpu", dtype="float32", seed=0)
        row = run(q, "cpu", "int8", rss_before)
        row["quantization_backend"] = q.policy.quantization
        diffs = []
        for i in range(5):
            inp = [np.roll(f, 37 * i, axis=1) for f in frames]
            a = fp32.infer(inp, INSTRUCTION, state, seed=i).actions
            b = q.infer(inp, INSTRUCTION, state, seed=i).actions
            diffs.append(np.abs(a - b))
        d = np.stack(diffs)
        row["int8_vs_fp32_max_abs_diff"] = float(d.max())
        row["int8_vs_fp32_mean_abs_diff"] = float(d.mean())
        row["int8_speedup_p50"] = rows[-1]["infer_ms_p50"] / row["infer_ms_p50"]
        rows.append(row)
    if "cuda" in devices and torch.cuda.is_available():
        gpu_policy = policy.to("cuda")
        ref = InferenceEngine(gpu_policy, device="cuda", dtype="float32", seed=0)
        rows.append(run(ref, "cuda", "fp32", 0.0))
        bf16 = InferenceEngine(gpu_policy, device="cuda", dtype="bfloat16", seed=0)
        row = run(bf16, "cuda", "bf16", 0.0)
        a = ref.infer(frames, INSTRUCTION, state, seed=0).actions
        b = bf16.infer(frames, INSTRUCTION, state, seed=0).actions
        row["bf16_vs_fp32_max_abs_diff"] = float(np.abs(a - b).max())
        row["bf16_vs_fp32_mean_abs_diff"] = float(np.abs(a - b).mean())
        rows.append(row)
    return rows


def format_table(rows: list[dict]) -> str:
    head = ["preset", "params", "trainable", "device", "prec", "infer p50", "infer p99", "fwd p50", "fwd p99", "weights MB",
            "peak MB", "max|d|", "mean|d|"]
    lines = []
    for r in rows:
        dmax = r.get("int8_vs_fp32_max_abs_diff", r.get("bf16_vs_fp32_max_abs_diff"))
        dmean = r.get("int8_vs_fp32_mean_abs_diff", r.get("bf16_vs_fp32_mean_abs_diff"))
        lines.append([
            r["preset"], f"{r['params'] / 1e6:.2f}M", f"{r['trainable_params'] / 1e6:.3f}M", r["device"], r["precision"],
            f"{r['infer_ms_p50']:.1f}", f"{r['infer_ms_p99']:.1f}", f"{r['forward_ms_p50']:.1f}",
            f"{r['forward_ms_p99']:.1f}", f"{r['weights_mb']:.1f}", f"{r['peak_mem_mb']:.0f}",
            "-" if dmax is None else f"{dmax:.2e}", "-" if dmean is None else f"{dmean:.2e}",
        ])
    widths = [max(len(h), *(len(l[i]) for l in lines)) for i, h in enumerate(head)] if lines else [len(h) for h in head]
    fmt = lambda cells: "| " + " | ".join(c.rjust(w) for c, w in zip(cells, widths)) + " |"  # noqa: E731
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([fmt(head), sep] + [fmt(l) for l in lines])


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--presets", default="tiny,small,base", help="comma-separated preset names")
    ap.add_argument("--checkpoints", default="",
                    help="comma-separated checkpoint directories (trained policies, e.g. a teacher and its distilled "
                         "student), measured instead of the presets")
    ap.add_argument("--devices", default="auto", help="auto (cpu + cuda if present), cpu, cuda, or cpu,cuda")
    ap.add_argument("--iters", type=int, default=20, help="timed calls per measurement (at most)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--budget", type=float, default=30.0, help="seconds per measurement before stopping early")
    ap.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch default)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "model_latency.json"))
    ap.add_argument("--no-isolate", action="store_true", help="run all presets in this process")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    devices = ["cpu", "cuda"] if args.devices == "auto" else args.devices.split(",")
    kind = "checkpoints" if args.checkpoints else "presets"
    presets = [p.strip() for p in (args.checkpoints or args.presets).split(",") if p.strip()]
    bench = bench_checkpoint if args.checkpoints else bench_preset
    if args.child:  # one preset or checkpoint, rows as JSON on stdout
        print(json.dumps(bench(presets[0], args.iters, args.warmup, args.budget, devices)))
        return 0

    rows: list[dict] = []
    for name in presets:
        print(f"[model_latency] {name} ...", file=sys.stderr, flush=True)
        if args.no_isolate:
            rows += bench(name, args.iters, args.warmup, args.budget, devices)
            continue
        cmd = [sys.executable, __file__, "--child", f"--{kind}", name, "--devices", ",".join(devices),
               "--iters", str(args.iters), "--warmup", str(args.warmup), "--budget", str(args.budget),
               "--threads", str(args.threads)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            raise SystemExit(f"benchmark of preset {name!r} failed")
        rows += json.loads(proc.stdout.strip().splitlines()[-1])

    meta = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__, "python": platform.python_version(), "platform": platform.platform(),
        "cpu_count": os.cpu_count(), "torch_threads": args.threads or torch.get_num_threads(),
        "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
        "instruction": INSTRUCTION, "frame": "480x640x3 uint8 per camera",
        "units": {"latency": "ms", "memory": "MiB", "diff": "robot units (action chunk)"},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    print(format_table(rows))
    print(f"\nwrote {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
