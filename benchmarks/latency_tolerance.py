"""How a slow VLA drives the simulated robot: closed-loop success and smoothness against inference latency.

Each row runs `vla-ros eval`'s closed loop (sim_robot_node + policy_node in their own processes,
ExecuteInstruction goals, the same unseen scenes for every row) with `model.emulated_latency` added
to every inference in the node's policy server process, under one execution strategy:

  realtime            control.execution realtime (the default): back-to-back requests carrying the
                      committed actions; the policy continues them when it was trained to
  realtime_no_prefix  the same, control.send_committed false: the node keeps the committed actions
                      and switches after them, the policy never sees them
  realtime_latest     realtime with control.realtime_merge latest: a new chunk replaces the older ones
                      after its frozen actions (the RTC paper's execution)
  realtime_ensemble   realtime with control.realtime_merge ensemble (the default): averaged with them
  ensemble            control.execution ensemble, refill_threshold 7: ACT temporal ensembling with a
                      request whenever 7 or fewer actions are left (the node's behaviour before
                      issue 25, with config/robots/sim_panda.yaml's old setting)
  latest              control.execution latest, refill_threshold 7

Per row: success per family; ticks held (control ticks the arm held because the queue ran dry after
the first chunk, over all ticks after it: ExecuteInstruction's held_steps); end-effector jerk (RMS of
the third difference of the simulated end-effector position at the control period, while moving);
the largest jump between consecutive twist commands (m/s; chunk switches that do not continue, and
stops); mean time to success (simulated s). Rows are keyed by (checkpoint label, strategy, latency)
and kept in the JSON across runs (--append), so a long sweep can be run in parts; the table and the
plot are made from every row in the JSON.

    python benchmarks/latency_tolerance.py [--checkpoint label=path ...] [--strategies realtime ensemble]
        [--latencies 0 0.1 0.25 0.5 1.0 2.0] [--episodes 20] [--append]

With --via-server each row starts `vla-ros serve --checkpoint PATH --emulated-latency L` on loopback
and the node drives the robot through it (model.server, the default vla_ros mapping): the latency
is then added in the remote server, behind the websocket, as a GPU box on the network would add it.

The simulation runs at real time (real_time_factor 1): emulated latency is wall-clock time in the
policy server, so the robot must live on the same clock. Run it on a quiet machine.
"""
import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(120 + os.getpid() % 100))

STRATEGIES = {
    "realtime": {"control.execution": "realtime", "control.send_committed": True},
    "realtime_no_prefix": {"control.execution": "realtime", "control.send_committed": False},
    "realtime_latest": {"control.execution": "realtime", "control.realtime_merge": "latest"},
    "realtime_ensemble": {"control.execution": "realtime", "control.realtime_merge": "ensemble"},
    "ensemble": {"control.execution": "ensemble", "control.refill_threshold": 7},
    "latest": {"control.execution": "latest", "control.refill_threshold": 7},
}
FAMILIES = ("touch", "push", "pick")
RESULTS = ROOT / "benchmarks" / "results"


def row_params(strategy: str, latency: float, p99: float) -> dict:
    params = dict(STRATEGIES[strategy])
    if latency > 0:
        params["model.emulated_latency"] = latency
        params["model.emulated_latency_p99"] = p99
    # A request slower than control.inference_timeout makes the node hold the arm (2 s by default);
    # a user of a 2 s model raises it the same way.
    params["control.inference_timeout"] = max(2.0, 2.0 * max(latency, p99))
    return params


class Server:
    """`vla-ros serve` on loopback for one row (--via-server), stopped by pid."""

    def __init__(self, checkpoint: str, latency: float, p99: float, log_path: Path):
        import subprocess
        log_path.parent.mkdir(parents=True, exist_ok=True)
        self.ready = log_path.with_suffix(".port")
        self.ready.unlink(missing_ok=True)
        cmd = [sys.executable, "-m", "vla_ros.cli", "serve", "--checkpoint", checkpoint, "--port", "0",
               "--threads", "1", "--ready-file", str(self.ready), "--emulated-latency", str(latency),
               "--emulated-latency-p99", str(p99)]
        self.log = open(log_path, "w")
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while not (self.ready.exists() and self.ready.read_text().strip()):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vla-ros serve did not start; see {log_path}")
            time.sleep(0.1)
        self.uri = f"ws://127.0.0.1:{int(self.ready.read_text())}"

    def stop(self):
        import signal
        import subprocess
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()


def summarize_row(report: dict, label: str, checkpoint: str, strategy: str, latency: float, p99: float) -> dict:
    eps = report["episodes"]
    steps = sum(e["steps"] for e in eps)
    held = sum(e["held_steps"] for e in eps)
    jerk = [e["motion"]["jerk_rms"] for e in eps if e["motion"]["jerk_rms"] is not None]
    jumps = [e["motion"]["max_command_jump"] for e in eps if e["motion"]["max_command_jump"] is not None]
    ok = [e for e in eps if e["success"]]
    return {
        "label": label, "checkpoint": checkpoint, "strategy": strategy, "latency": latency, "latency_p99": p99,
        "episodes_per_family": report["episodes_per_family"],
        "success": {f: s["successes"] for f, s in report["summary"].items()},
        "success_rate": {f: s["success_rate"] for f, s in report["summary"].items()},
        "ticks_held": held / max(1, steps + held),
        "jerk_rms": float(np.mean(jerk)) if jerk else None,
        "max_command_jump": float(np.max(jumps)) if jumps else None,
        "median_command_jump": float(np.median(jumps)) if jumps else None,
        "time_to_success": float(np.mean([e["sim_seconds"] for e in ok])) if ok else None,
        "wall_seconds": report["wall_seconds"],
    }


def fmt(v, spec="{:.2f}"):
    return "-" if v is None else spec.format(v)


def table(rows: list[dict]) -> str:
    lines = ["| checkpoint | strategy | latency s | touch | push | pick | ticks held | EE jerk RMS m/s^3 | "
             "max cmd jump m/s | time to success s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(rows, key=lambda r: (r["label"], r["strategy"], r["latency"], r["latency_p99"])):
        n = r["episodes_per_family"]
        lat = f"{r['latency']:g}" + (f" (p99 {r['latency_p99']:g})" if r["latency_p99"] else "")
        fam = [f"{r['success'].get(f, '-')}/{n}" if f in r["success"] else "-" for f in FAMILIES]
        lines.append(f"| {r['label']} | {r['strategy']} | {lat} | " + " | ".join(fam) +
                     f" | {100 * r['ticks_held']:.1f} % | {fmt(r['jerk_rms'])} | {fmt(r['max_command_jump'])} | "
                     f"{fmt(r['time_to_success'], '{:.1f}')} |")
    return "\n".join(lines)


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    groups: dict[tuple, list] = {}
    for r in rows:
        if not r["latency_p99"]:
            groups.setdefault((r["label"], r["strategy"]), []).append(r)
    for (label, strategy), rs in sorted(groups.items()):
        rs.sort(key=lambda r: r["latency"])
        x = [r["latency"] for r in rs]
        success = [100 * np.mean([v for v in r["success_rate"].values() if v is not None]) for r in rs]
        a.plot(x, success, marker="o", label=f"{label} / {strategy}")
        b.plot(x, [r["jerk_rms"] if r["jerk_rms"] is not None else np.nan for r in rs], marker="o",
               label=f"{label} / {strategy}")
    a.set(xlabel="emulated inference latency (s)", ylabel="success, mean over families (%)", ylim=(-5, 105))
    b.set(xlabel="emulated inference latency (s)", ylabel="end-effector jerk RMS (m/s^3)")
    for ax in (a, b):
        ax.grid(alpha=0.3)
    a.legend(fontsize=8)
    fig.suptitle("Closed-loop success and smoothness against inference latency (simulated Panda, 10 Hz)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--checkpoint", nargs="+", default=["sim_demo=checkpoints/sim_demo"], metavar="LABEL=PATH",
                   help="checkpoints to evaluate (default sim_demo=checkpoints/sim_demo)")
    p.add_argument("--strategies", nargs="+", default=["realtime", "ensemble"], choices=list(STRATEGIES))
    p.add_argument("--latencies", nargs="+", type=float, default=[0.0, 0.1, 0.25, 0.5, 1.0, 2.0])
    p.add_argument("--p99", type=float, default=0.0, help="lognormal jitter: the latency's p99 (0: fixed)")
    p.add_argument("--episodes", type=int, default=20, help="unseen scenes per family (default 20)")
    p.add_argument("--families", nargs="+", default=list(FAMILIES))
    p.add_argument("--seed", type=int, default=100_000, help="scene seeds seed .. seed + episodes - 1")
    p.add_argument("--timeout", type=float, default=12.0, help="simulated seconds per episode (default 12)")
    p.add_argument("--out", default=str(RESULTS / "latency_tolerance.json"))
    p.add_argument("--plot", default=str(RESULTS / "latency_tolerance.png"))
    p.add_argument("--append", action="store_true", help="keep the rows already in --out (replacing same keys)")
    p.add_argument("--via-server", action="store_true",
                   help="serve each checkpoint with vla-ros serve (the latency emulated there) and drive the robot "
                        "through it (model.server); rows are labelled '<label> via serve'")
    args = p.parse_args(argv)
    from vla_ros.ros.closed_loop import evaluate

    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows = json.loads(out.read_text())["rows"] if args.append and out.is_file() else []
    runs = Path(os.environ.get("TMPDIR", "/tmp")) / f"latency_tolerance_{os.getpid()}"
    t0 = time.monotonic()
    for spec in args.checkpoint:
        label, _, path = spec.partition("=")
        path = path or label
        for strategy in args.strategies:
            for latency in args.latencies:
                p99 = args.p99 if latency > 0 else 0.0
                print(f"[latency_tolerance] {label} / {strategy} / {latency:g} s"
                      + (f" (p99 {p99:g} s)" if p99 else "") + f": {args.episodes} scenes per family", flush=True)
                run_dir = runs / f"{label}_{strategy}_{latency:g}"
                params, server, row_label = row_params(strategy, latency, p99), None, label
                if args.via_server:
                    server = Server(path, latency, p99, run_dir / "serve.log")
                    params.pop("model.emulated_latency", None)
                    params.pop("model.emulated_latency_p99", None)
                    row_label = f"{label} via serve"
                try:
                    report = evaluate(path, families=tuple(args.families), episodes=args.episodes, seed=args.seed,
                                      timeout=args.timeout, out_dir=str(run_dir), policy_params=params, motion=True,
                                      log=lambda line: None, server=server.uri if server else "")
                finally:
                    if server is not None:
                        server.stop()
                row = summarize_row(report, row_label, path, strategy, latency, p99)
                label_key = row_label
                rows = [r for r in rows if (r["label"], r["strategy"], r["latency"], r["latency_p99"])
                        != (label_key, strategy, latency, p99)] + [row]
                print(f"  success {row['success']}, ticks held {100 * row['ticks_held']:.1f} %, jerk "
                      f"{fmt(row['jerk_rms'])}, max jump {fmt(row['max_command_jump'])} ({row['wall_seconds']:.0f} s)",
                      flush=True)
                out.write_text(json.dumps({"load_average": os.getloadavg(), "rows": rows}, indent=1) + "\n")
    print()
    print(table(rows))
    print(f"\n{time.monotonic() - t0:.0f} s; load average {' '.join(f'{x:.2f}' for x in os.getloadavg())}; "
          f"JSON {out}")
    try:
        plot(rows, Path(args.plot))
        print(f"plot {args.plot}")
    except ImportError as exc:  # matplotlib is in requirements/dev.txt; a bare install may lack it
        print(f"no plot ({exc})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
