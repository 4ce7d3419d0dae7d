"""The main demo: the simulated Panda follows instructions with the shipped checkpoint.

Starts sim_robot_node (PyBullet) and policy_node (checkpoints/sim_demo) in their own
processes, as `ros2 launch vla_ros sim.launch.py` does, gives the policy one instruction
per seeded episode on scenes it never saw in training, and prints the success rate per
task family for each phrasing set: seen (the training phrasings), held-out (new sentence
frames) and new words (verbs, nouns, direction words absent from training), the same
scenes for each (vla-ros eval underneath, one graph for all three):

    python scripts/demo.py [--episodes 8] [--families touch push pick] [--phrasing train heldout newwords]
                           [--json out.json]

`--smoke` instead starts only policy_node (joint-space sim config, tiny untrained model,
dry run), feeds it synthetic frames from this process and prints what it publishes.
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
os.environ.setdefault("ROS_DOMAIN_ID", "42")

import rclpy  # noqa: E402
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data  # noqa: E402
from sensor_msgs.msg import Image, JointState  # noqa: E402
from std_msgs.msg import String  # noqa: E402

from vla_ros.msg import ActionChunk, PolicyStatus  # noqa: E402

JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
HOME = [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785]


def smoke(args) -> int:
    exe = Path(sys.prefix) / "lib" / "vla_ros" / "policy_node"
    cmd = [str(exe), "--ros-args", "--params-file", str(ROOT / "config/robots/sim_panda_joint.yaml"),
           "-p", "autostart:=true", "-p", "dry_run:=true"]
    print(f"[demo] starting: {' '.join(cmd)}")
    node_proc = subprocess.Popen(cmd, start_new_session=True)
    rclpy.init()
    node = rclpy.create_node("vla_ros_demo")
    chunks, statuses = [], []
    node.create_subscription(ActionChunk, "policy_node/action_chunk", chunks.append, 10)
    node.create_subscription(PolicyStatus, "policy_node/status", statuses.append, 10)
    img_pub = node.create_publisher(Image, "front/image_raw", qos_profile_sensor_data)
    js_pub = node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    instr_pub = node.create_publisher(String, "instruction", latched)
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, size=(96, 96, 3), dtype=np.uint8)

    def publish_inputs():
        now = node.get_clock().now().to_msg()
        img = Image(height=96, width=96, encoding="rgb8", step=96 * 3, data=frame.tobytes())
        img.header.stamp = now
        img_pub.publish(img)
        js = JointState(name=JOINTS, position=HOME)
        js.header.stamp = now
        js_pub.publish(js)

    node.create_timer(1 / 15, publish_inputs)
    instr_pub.publish(String(data="touch the red cube"))
    end = time.monotonic() + args.seconds + 60  # model load allowance
    started = None
    try:
        while time.monotonic() < end and node_proc.poll() is None:
            rclpy.spin_once(node, timeout_sec=0.1)
            if chunks and started is None:
                started = time.monotonic()
                end = started + args.seconds
    finally:
        node_proc.send_signal(signal.SIGINT)
        node_proc.wait(timeout=20)
        node.destroy_node()
        rclpy.shutdown()
    if not chunks:
        print("[demo] FAILED: no ActionChunk received from policy_node")
        return 1
    lat = np.array([c.inference_latency for c in chunks]) * 1e3
    last = chunks[-1]
    print(f"\n[demo] policy_node answered over DDS: {len(chunks)} action chunks in {args.seconds:g} s")
    print(f"  instruction       : {last.instruction}")
    print(f"  chunk             : {last.horizon} x {last.dims} ({', '.join(last.names)})")
    print(f"  first action (rad): {np.round(np.array(last.actions[:last.dims]), 3).tolist()}")
    print(f"  inference latency : p50 {np.percentile(lat, 50):.1f} ms, p99 {np.percentile(lat, 99):.1f} ms")
    if statuses:
        s = statuses[-1]
        print(f"  status            : {s.state_label}, dry_run={s.dry_run}, queue {s.queue_depth}, "
              f"dropped frames {s.dropped_frames}")
    print("  (tiny model with untrained weights, dry run: nothing was commanded)")
    if args.json:
        Path(args.json).write_text(json.dumps({"chunks": len(chunks), "latency_p50_ms": float(np.percentile(lat, 50)),
                                               "latency_p99_ms": float(np.percentile(lat, 99))}, indent=2))
    return 0


PHRASING_TITLES = {"train": "seen", "heldout": "held-out", "newwords": "new words"}


def sim_demo(args) -> int:
    from vla_ros.evaluation.closed_loop import format_table
    from vla_ros.ros.closed_loop import evaluate_phrasings

    checkpoint = ROOT / "checkpoints" / "sim_demo"
    print(f"[demo] simulated Panda + policy node ({checkpoint.relative_to(ROOT)}): {args.episodes} episodes per "
          f"task family {args.families} and phrasing set {args.phrasing}, unseen scenes (seeds from {args.seed})",
          flush=True)
    if args.server:
        print(f"[demo] the policy node is the client of the policy server at {args.server}", flush=True)
    reports = evaluate_phrasings(str(checkpoint), tuple(args.phrasing), tuple(args.families), args.episodes,
                                 args.seed, out_dir=args.out, server=args.server,
                                 log=lambda line: print(line, flush=True))
    for report in reports.values():
        print()
        print(format_table(report))
    print()
    print("| task | " + " | ".join(PHRASING_TITLES[p] for p in reports) + " |")
    print("|---|" + "---|" * len(reports))
    for family in args.families:
        cells = []
        for report in reports.values():
            s = report["summary"][family]
            cells.append(f"{s['successes']}/{s['episodes']} ({100 * s['success_rate']:.0f}%)")
        print(f"| {family} | " + " | ".join(cells) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"phrasings": reports}, indent=1) + "\n")
        print(f"report written to {args.json}")
    return 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="policy node smoke run instead (synthetic inputs)")
    p.add_argument("--seconds", type=float, default=10.0, help="--smoke: seconds to run")
    p.add_argument("--episodes", type=int, default=8,
                   help="episodes per task family and phrasing set (default 8: make demo stays within "
                        "10 minutes from a fresh clone with the three sets)")
    p.add_argument("--families", nargs="+", default=["touch", "push", "pick"],
                   help="task families (default touch push pick)")
    p.add_argument("--phrasing", nargs="+", choices=tuple(PHRASING_TITLES), default=list(PHRASING_TITLES),
                   help="instruction phrasing sets, each on the same scenes (default: train heldout newwords)")
    p.add_argument("--seed", type=int, default=100_000, help="first episode seed (training used 1000..1599)")
    p.add_argument("--out", default=str(ROOT / "build" / "demo"), help="directory for logs and report.json")
    p.add_argument("--json", help="write the report (or the smoke summary) to this file")
    p.add_argument("--server", default="", help="use a running policy server (e.g. `vla-ros serve --checkpoint "
                   "checkpoints/sim_demo` -> ws://127.0.0.1:8000) instead of loading the checkpoint in the node")
    args = p.parse_args()
    return smoke(args) if args.smoke else sim_demo(args)


if __name__ == "__main__":
    sys.exit(main())
