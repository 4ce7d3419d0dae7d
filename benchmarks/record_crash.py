"""A recorder killed mid-recording: how much of the bag survives `vla-ros bag reindex`?

The issue's case: `recorder_node` records one 640x480 rgb8 camera at 30 Hz (reliable, as
image_transport publishes by default) from a publisher in another process; 10 s in, it is killed
with SIGKILL (the OOM killer, a power cut): no MCAP summary, no metadata.yaml, no last commit. Then
`vla-ros bag reindex <bag>` runs as a user would, and the bag is read back with our reader and
with the rosbags library. Reported per storage: frames published, frames recovered, the span of
recovered frames (first to last publish time), the frames published more than 1 s before the kill
that are missing (must be 0), whether the recovered frames are the stream's prefix without gaps,
and the reindex time.

    python benchmarks/record_crash.py [--seconds 10] [--storage mcap sqlite3] [--out FILE]
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "test"))  # ros_testing helpers
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_localhost.xml"))

RESULTS = ROOT / "benchmarks" / "results"
WIDTH, HEIGHT, RATE = 640, 480, 30.0


def publish(seconds: float, ready_file: Path, times_file: Path) -> int:
    """--role pub: wait for the recorder's subscription, publish frames f0, f1, ... at 30 Hz until
    killed or `seconds` + 5 s have passed; append each publish time (monotonic) to times_file."""
    import numpy as np
    import rclpy
    from rclpy.qos import QoSProfile
    from sensor_msgs.msg import Image

    rclpy.init()
    node = rclpy.create_node("crash_camera")
    pub = node.create_publisher(Image, "/cam/image_raw", QoSProfile(depth=10))
    while pub.get_subscription_count() < 1:
        rclpy.spin_once(node, timeout_sec=0.05)
    pixels = np.random.default_rng(0).integers(0, 256, WIDTH * HEIGHT * 3, dtype=np.uint8).tobytes()
    ready_file.write_text("ready")
    start = time.monotonic()
    due, i = start, 0
    with open(times_file, "w") as out:
        while time.monotonic() - start < seconds + 5.0:
            now = time.monotonic()
            if now >= due:
                img = Image(height=HEIGHT, width=WIDTH, encoding="rgb8", step=WIDTH * 3, data=pixels)
                img.header.frame_id = f"f{i}"
                img.header.stamp = node.get_clock().now().to_msg()
                pub.publish(img)
                out.write(f"{time.monotonic()}\n")
                out.flush()
                i += 1
                due += 1.0 / RATE
            time.sleep(0.002)
    node.destroy_node()
    rclpy.shutdown()
    return 0


def run(storage: str, seconds: float, work: Path) -> dict:
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader as RosbagsReader
    from sensor_msgs.msg import Image

    from ros_testing import RosProcess, executable, wait_for
    from vla_ros.data.bags import BagReader

    work.mkdir(parents=True, exist_ok=True)
    bag = work / f"killed_{storage}"
    ready, times = work / f"ready_{storage}", work / f"times_{storage}"
    rec = RosProcess(executable("recorder_node", "--ros-args", "-p", "topics:=[/cam/image_raw]",
                                "-p", f"output_dir:={work}", "-p", f"bag_name:={bag.name}",
                                "-p", f"storage:={storage}"), work / f"recorder_{storage}.log")
    pub = RosProcess([sys.executable, __file__, "--role", "pub", "--seconds", str(seconds),
                      "--ready", str(ready), "--times", str(times)], work / f"publisher_{storage}.log")
    try:
        wait_for(ready.exists, timeout=60, what="the camera matched with the recorder", process=pub)
        t_ready = time.monotonic()
        time.sleep(seconds)  # the recording runs for `seconds`: the kill is the point of the benchmark
        killed_at = time.monotonic()
        rec.proc.send_signal(signal.SIGKILL)  # by pid: the recorder we started
        rec.proc.wait(timeout=30)
    finally:
        pub.stop(signal.SIGKILL)  # nothing stray keeps publishing
        rec.stop()
    published = [float(x) for x in times.read_text().split()]
    published = [t for t in published if t <= killed_at]
    had_metadata = (bag / "metadata.yaml").exists()
    t0 = time.monotonic()
    out = subprocess.run([str(Path(sys.prefix) / "lib" / "vla_ros" / "vla-ros"), "bag", "reindex", str(bag)],
                         capture_output=True, text=True, timeout=600)
    reindex_s = time.monotonic() - t0
    row = {"storage": storage, "seconds": seconds, "published": len(published), "metadata_before": had_metadata,
           "reindex_rc": out.returncode, "reindex_s": round(reindex_s, 2), "reindex_out": out.stdout[-500:] + out.stderr[-500:]}
    if out.returncode != 0:
        return row
    with BagReader(bag) as r:
        frames = [deserialize_message(m.data, Image).header.frame_id for m in r.messages(["/cam/image_raw"])]
        row["reader_warnings"] = list(r.warnings)
    with RosbagsReader(bag) as r:
        row["rosbags_count"] = sum(1 for _ in r.messages())
    index = [int(f[1:]) for f in frames]
    row["recovered"] = len(frames)
    row["prefix_without_gaps"] = index == list(range(len(index)))
    row["span_s"] = round(published[index[-1]] - published[0], 2) if index else 0.0
    before_last_second = sum(1 for t in published if t < killed_at - 1.0)
    row["missing_older_than_1s"] = max(0, before_last_second - len(frames))
    row["lost_last_s"] = round(killed_at - published[index[-1]], 2) if index else None
    row["recording_s"] = round(killed_at - t_ready, 2)
    return row


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--role", default="bench", choices=["bench", "pub"])
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--storage", nargs="+", default=["mcap", "sqlite3"])
    p.add_argument("--ready")
    p.add_argument("--times")
    p.add_argument("--out", default=str(RESULTS / "record_crash.json"))
    args = p.parse_args()
    if args.role == "pub":
        return publish(args.seconds, Path(args.ready), Path(args.times))
    import tempfile
    rows = []
    with tempfile.TemporaryDirectory(prefix="vla_ros_crash_") as tmp:
        for storage in args.storage:
            rows.append(run(storage, args.seconds, Path(tmp) / storage))
            print(f"  {storage}: {rows[-1].get('recovered')} of {rows[-1]['published']} frames", flush=True)
    load = os.getloadavg()
    print(f"\nrecorder SIGKILLed {args.seconds:g} s into a 640x480 rgb8 30 Hz recording, then `vla-ros bag reindex` "
          f"(load average {load[0]:.2f})")
    print("| storage | published | recovered | span of recovered frames | lost at the end | missing older than 1 s "
          "| prefix without gaps | rosbags reads | reindex |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['storage']} | {r['published']} | {r.get('recovered')} | {r.get('span_s')} s | {r.get('lost_last_s')} s "
              f"| {r.get('missing_older_than_1s')} | {'yes' if r.get('prefix_without_gaps') else 'NO'} "
              f"| {r.get('rosbags_count')} | {r['reindex_s']} s |")
    RESULTS.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w") as f:
        json.dump({"rows": rows, "load_average": load}, f, indent=1)
    ok = all(r.get("missing_older_than_1s") == 0 and r.get("prefix_without_gaps") and r.get("span_s", 0) >= args.seconds - 1
             for r in rows)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
