"""One-way latency of camera images between two processes over Fast DDS.

A publisher process sends N images (default 640x480 rgb8) at 30 Hz with sensor-data QoS
(best effort, as camera drivers do); this process receives them and measures
receive time - header stamp (same machine clock) and lost frames. It runs once with the
shipped profile (config/fastdds_localhost.xml: 64 MiB shared-memory segment) and once with
Fast DDS's defaults, in the same run, so the two rows compare on the same machine load.

    python benchmarks/image_latency.py [--frames 300] [--width 640 --height 480] [--out FILE]
"""
import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(120 + os.getpid() % 100))


def publisher(args):
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("image_latency_publisher")
    pub = node.create_publisher(Image, "bench/image", qos_profile_sensor_data)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(args.height, args.width, 3), dtype=np.uint8).tobytes()
    msg = Image(height=args.height, width=args.width, encoding="rgb8", step=args.width * 3)
    msg.data = data
    # Wait for the receiver, then send warm-up frames followed by the measured ones.
    while pub.get_subscription_count() == 0:
        rclpy.spin_once(node, timeout_sec=0.05)
    period = 1.0 / args.rate
    next_t = time.monotonic()
    for seq in range(args.warmup + args.frames):
        msg.header.frame_id = str(seq)
        msg.header.stamp = node.get_clock().now().to_msg()
        pub.publish(msg)
        next_t += period
        time.sleep(max(0.0, next_t - time.monotonic()))  # the camera's frame rate
    node.destroy_node()
    rclpy.shutdown()


def measure(args, profile):
    """Start a publisher process with `profile` (None = defaults) and receive its frames."""
    env = dict(os.environ)
    for var in ("FASTDDS_DEFAULT_PROFILES_FILE", "FASTRTPS_DEFAULT_PROFILES_FILE"):
        env.pop(var, None)
        if profile:
            env[var] = str(profile)
    # The receiver must use the same transport setup: run it in a child process as well.
    cmd = [sys.executable, __file__, "--role", "receive", "--frames", str(args.frames),
           "--warmup", str(args.warmup), "--width", str(args.width), "--height", str(args.height),
           "--rate", str(args.rate)]
    recv = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    pub = subprocess.Popen([sys.executable, __file__, "--role", "publish", "--frames", str(args.frames),
                            "--warmup", str(args.warmup), "--width", str(args.width),
                            "--height", str(args.height), "--rate", str(args.rate)], env=env)
    out, _ = recv.communicate(timeout=600)
    pub.wait(timeout=60)
    return json.loads(out.strip().splitlines()[-1])


def receiver(args):
    import rclpy
    from rclpy.qos import qos_profile_sensor_data
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("image_latency_receiver")
    lat, seen = {}, set()
    last = args.warmup + args.frames - 1

    def on_image(msg):
        now = node.get_clock().now().nanoseconds
        seq = int(msg.header.frame_id)
        seen.add(seq)
        if seq >= args.warmup:
            stamp = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
            lat[seq] = (now - stamp) / 1e6

    node.create_subscription(Image, "bench/image", on_image, qos_profile_sensor_data)
    deadline = None
    while True:
        rclpy.spin_once(node, timeout_sec=0.1)
        if seen and deadline is None:
            # Expected end of the stream plus a margin for the last frames.
            deadline = time.monotonic() + (args.warmup + args.frames) / args.rate + 5.0
        if last in seen or (deadline and time.monotonic() > deadline):
            break
    values = np.array(sorted(lat.values()))
    print(json.dumps({
        "received": len(values), "sent": args.frames,
        "lost_pct": 100.0 * (1 - len(values) / args.frames),
        "p50_ms": float(np.percentile(values, 50)) if len(values) else None,
        "p99_ms": float(np.percentile(values, 99)) if len(values) else None,
        "mean_ms": float(values.mean()) if len(values) else None,
    }))
    node.destroy_node()
    rclpy.shutdown()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", choices=["bench", "publish", "receive"], default="bench")
    p.add_argument("--frames", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--rate", type=float, default=30.0)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "image_latency.json"))
    args = p.parse_args()
    if args.role == "publish":
        return publisher(args)
    if args.role == "receive":
        return receiver(args)

    rows = []
    for label, profile in (("shipped profile (64 MiB SHM)", ROOT / "config" / "fastdds_localhost.xml"),
                           ("Fast DDS defaults", None)):
        r = measure(args, profile)
        r["config"] = label
        rows.append(r)
    size = f"{args.width}x{args.height} rgb8 ({args.width * args.height * 3 / 1e6:.2f} MB) at {args.rate:g} Hz"
    print(f"\nOne-way image latency between two processes, {size}, {args.frames} frames, best effort")
    print(f"{'config':32s} {'p50 ms':>8s} {'p99 ms':>8s} {'mean ms':>8s} {'lost %':>7s}")
    for r in rows:
        fmt = lambda v: f"{v:8.2f}" if v is not None else "     n/a"
        print(f"{r['config']:32s} {fmt(r['p50_ms'])} {fmt(r['p99_ms'])} {fmt(r['mean_ms'])} {r['lost_pct']:7.1f}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"image": size, "frames": args.frames, "rows": rows}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
