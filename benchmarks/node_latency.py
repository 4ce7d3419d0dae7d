"""End-to-end latency of the policy node across processes, next to a bare predict().

For each control rate (30 Hz and 100 Hz by default), this starts `policy_node` in its own
process (forward_position output, so every control tick publishes a command), publishes
camera frames and joint states from this process, and measures:
  * frame -> chunk: a frame is published (stamp t0) -> the ActionChunk computed from it
    (observation_stamp == t0) is received here;
  * frame -> command: t0 -> the first command received after that chunk;
  * control period jitter: intervals between consecutive commands received here.
In the same run it times the bare model: `InferenceEngine.infer` on the same preset, in
this process. Ratios within one run are what to compare (the machine is shared).

    python benchmarks/node_latency.py [--seconds 20] [--rates 30 100] [--preset tiny] [--out FILE]
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(120 + os.getpid() % 100))

import rclpy  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import Float64MultiArray, String  # noqa: E402

from vla_ros.msg import ActionChunk  # noqa: E402

JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
HOME = [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785]


def pct(values, q):
    return float(np.percentile(values, q)) if len(values) else float("nan")


def bare_predict(preset: str, threads: int, n: int = 100):
    import torch

    from vla_ros.runtime.policy_loader import load_engine
    if threads:
        torch.set_num_threads(threads)
    eng = load_engine("", preset, JOINTS, 7, JOINTS, ["front"], log=lambda *_: None)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, size=(96, 96, 3), dtype=np.uint8)
    state = np.array(HOME, dtype=np.float32)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        eng.infer([img], "touch the red cube", state)
        times.append((time.perf_counter() - t) * 1e3)
    return times


def run_node(rate: float, seconds: float, preset: str, threads: int):
    exe = Path(sys.prefix) / "lib" / "vla_ros" / "policy_node"
    cmd = [str(exe), "--ros-args", "--params-file", str(ROOT / "config/robots/sim_panda_joint.yaml"),
           "-p", "autostart:=true", "-p", "output.mode:=forward_position", "-p", f"control.rate:={rate}",
           "-p", f"model.preset:={preset}", "-p", "joints.max_step:=10.0", "-p", f"model.threads:={threads}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    node = rclpy.create_node(f"node_latency_bench_{int(rate)}")
    frames = {}          # stamp ns -> publish time (monotonic, s)
    chunk_arrivals = []  # (stamp ns, arrival s)
    commands = []        # arrival times (s)
    pending = []         # stamps whose chunk arrived and wait for the next command

    def on_chunk(msg):
        now = time.monotonic()
        ns = msg.observation_stamp.sec * 10**9 + msg.observation_stamp.nanosec
        chunk_arrivals.append((ns, now))
        pending.append(ns)

    def on_command(msg):
        now = time.monotonic()
        commands.append(now)
        while pending:
            ns = pending.pop()
            frame_to_command.append((now - frames[ns]) * 1e3 if ns in frames else float("nan"))

    frame_to_command = []
    node.create_subscription(ActionChunk, "policy_node/action_chunk", on_chunk, 50)
    node.create_subscription(Float64MultiArray, "forward_position", on_command, 50)
    img_pub = node.create_publisher(Image, "front/image_raw", qos_profile_sensor_data)
    js_pub = node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    instr_pub = node.create_publisher(String, "instruction", latched)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(96, 96, 3), dtype=np.uint8).tobytes()

    def publish():
        stamp = node.get_clock().now()
        img = Image(height=96, width=96, encoding="rgb8", step=288, data=frame)
        img.header.stamp = stamp.to_msg()
        frames[stamp.nanoseconds] = time.monotonic()
        img_pub.publish(img)
        js = JointState(name=JOINTS, position=HOME)
        js.header.stamp = stamp.to_msg()
        js_pub.publish(js)

    node.create_timer(1 / 30, publish)  # a 30 fps camera
    instr_pub.publish(String(data="touch the red cube"))
    deadline = time.monotonic() + 120
    while not commands and time.monotonic() < deadline:  # model load and discovery
        rclpy.spin_once(node, timeout_sec=0.05)
    start = time.monotonic()
    n_cmd0, n_chunk0, n_f2c0 = len(commands), len(chunk_arrivals), len(frame_to_command)
    while time.monotonic() < start + seconds:
        rclpy.spin_once(node, timeout_sec=0.01)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    node.destroy_node()
    f2chunk = [(t - frames[ns]) * 1e3 for ns, t in chunk_arrivals[n_chunk0:] if ns in frames]
    f2cmd = [v for v in frame_to_command[n_f2c0:] if v == v]
    periods = np.diff(commands[n_cmd0:]) * 1e3
    return {
        "rate_hz": rate, "chunks": len(f2chunk), "commands": len(periods) + 1,
        "frame_to_chunk_p50_ms": pct(f2chunk, 50), "frame_to_chunk_p99_ms": pct(f2chunk, 99),
        "frame_to_command_p50_ms": pct(f2cmd, 50), "frame_to_command_p99_ms": pct(f2cmd, 99),
        "period_mean_ms": float(periods.mean()) if len(periods) else float("nan"),
        "period_std_ms": float(periods.std()) if len(periods) else float("nan"),
        "period_p99_abs_dev_ms": pct(np.abs(periods - 1e3 / rate), 99),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--rates", type=float, nargs="+", default=[30.0, 100.0])
    p.add_argument("--preset", default="tiny")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads in the node and for the bare run (0: torch default). With 2 threads "
                        "on a loaded 2-core machine, OpenMP contention makes timings swing by 50x.")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "node_latency.json"))
    args = p.parse_args()
    bare = bare_predict(args.preset, args.threads)  # before and after the node runs: the machine is shared
    rclpy.init()
    rows = [run_node(rate, args.seconds, args.preset, args.threads) for rate in args.rates]
    rclpy.shutdown()
    bare += bare_predict(args.preset, args.threads)
    b50, b99 = pct(bare, 50), pct(bare, 99)
    print(f"\npolicy_node end to end (preset {args.preset}, 96x96 rgb8 at 30 fps, CPU, {args.threads} thread(s)), "
          f"bare infer(): "
          f"p50 {b50:.1f} ms, p99 {b99:.1f} ms")
    print(f"{'rate':>6s} {'frame->chunk p50/p99 ms':>24s} {'frame->cmd p50/p99 ms':>22s} {'x bare p50':>10s} "
          f"{'period mean/std ms':>19s} {'|dev| p99 ms':>12s}")
    for r in rows:
        print(f"{r['rate_hz']:6.0f} {r['frame_to_chunk_p50_ms']:11.1f} / {r['frame_to_chunk_p99_ms']:8.1f}"
              f" {r['frame_to_command_p50_ms']:10.1f} / {r['frame_to_command_p99_ms']:7.1f}"
              f" {r['frame_to_command_p50_ms'] / b50:10.2f} {r['period_mean_ms']:9.2f} / {r['period_std_ms']:6.2f}"
              f" {r['period_p99_abs_dev_ms']:12.2f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"preset": args.preset, "bare_infer_p50_ms": b50, "bare_infer_p99_ms": b99,
                               "rows": rows}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
