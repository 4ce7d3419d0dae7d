"""Does the recorder keep up? Messages published vs messages in the bag, across processes.

For each storage (mcap, sqlite3) this starts the real `recorder_node` executable in its own
process, as a user would, and three publisher processes (this file with --role pub):
  * /joint_states  sensor_msgs/JointState, 7 joints, 1 kHz, RELIABLE KEEP_LAST 10 (rclpy's
                   default depth, what a joint state broadcaster offers);
  * /cam0/image_raw, /cam1/image_raw  sensor_msgs/Image 640x480 rgb8 at 30 Hz each,
                   BEST_EFFORT KEEP_LAST 5 (qos_profile_sensor_data, as camera drivers offer;
                   --camera-qos reliable for RELIABLE KEEP_LAST 10);
  * /burst         std_msgs/String, 10,000 messages as fast as one Python publisher can, a third
                   of the way into the run, RELIABLE KEEP_LAST 10,000 (a depth that covers the
                   burst: what a publisher must offer to expect none lost).
Each publisher counts what it published; reliable publishers wait until the subscribers
acknowledged everything (wait_for_all_acked) before exiting. The bag is then counted with
vla_ros's BagReader, and cross-checked with rosbags' reader and (MCAP) the mcap library.
The burst's payloads carry their index, so a count of distinct indexes catches duplicates.

For reference the same streams also go to a plain rclpy subscriber (raw=True, KEEP_LAST 10,000,
a SingleThreadedExecutor that only counts) in its own process, in a pass of its own.

    python benchmarks/record_throughput.py [--seconds 10] [--storage mcap sqlite3] [--quick]
                                           [--no-reference] [--camera-qos best_effort|reliable] [--out FILE]

Prints a markdown table (storage | topic | published | recorded | lost | lost %) with the load
average, and writes JSON to benchmarks/results/record_throughput.json.
"""
import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
os.environ.setdefault("ROS_DOMAIN_ID", str(150 + os.getpid() % 50))
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_localhost.xml"))
os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]

JOINT_HZ = 1000.0
CAMERA_HZ = 30.0
WIDTH, HEIGHT = 640, 480
BURST = 10000
TOPICS = {"/joint_states": "sensor_msgs/msg/JointState", "/cam0/image_raw": "sensor_msgs/msg/Image",
          "/cam1/image_raw": "sensor_msgs/msg/Image", "/burst": "std_msgs/msg/String"}
STREAMS = {"joint": ["/joint_states"], "cams": ["/cam0/image_raw", "/cam1/image_raw"], "burst": ["/burst"]}
DEADLINE = 120.0


# ------------------------------------------------------------------------ child processes
def _qos(kind: str, depth: int):
    from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE if kind == "reliable" else ReliabilityPolicy.BEST_EFFORT)


def role_pub(args) -> int:
    """Publish one stream group once `args.subscribers` subscribers matched; write counts to args.result."""
    import numpy as np
    import rclpy
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    rclpy.init()
    node = rclpy.create_node(f"throughput_pub_{args.stream}")
    if args.stream == "joint":
        pubs = {"/joint_states": node.create_publisher(JointState, "/joint_states", _qos("reliable", 10))}
    elif args.stream == "cams":
        depth = 5 if args.camera_qos == "best_effort" else 10
        pubs = {t: node.create_publisher(Image, t, _qos(args.camera_qos, depth)) for t in STREAMS["cams"]}
    else:
        pubs = {"/burst": node.create_publisher(String, "/burst", _qos("reliable", BURST))}
    counts = {t: 0 for t in pubs}
    end = time.monotonic() + DEADLINE
    while any(p.get_subscription_count() < args.subscribers for p in pubs.values()):
        if time.monotonic() > end:
            print(f"no subscriber matched {list(pubs)}", file=sys.stderr)
            return 1
        time.sleep(0.01)
    start = time.monotonic()
    stop = start + args.seconds
    if args.stream == "joint":
        pub = pubs["/joint_states"]
        msg = JointState(name=[f"panda_joint{i}" for i in range(1, 8)], position=[0.0] * 7, velocity=[0.0] * 7)
        period, due = 1.0 / JOINT_HZ, start
        while due < stop:
            now = time.monotonic()
            if now < due:
                time.sleep(min(due - now, 0.0005))
                continue
            i = counts["/joint_states"]
            msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(i, 1000)
            msg.header.stamp.nanosec *= 1000000
            msg.position[0] = float(i)
            pub.publish(msg)
            counts["/joint_states"] = i + 1
            due += period
    elif args.stream == "cams":
        rng = np.random.default_rng(0)
        pixels = rng.integers(0, 256, WIDTH * HEIGHT * 3, dtype=np.uint8).tobytes()
        msgs = {t: Image(height=HEIGHT, width=WIDTH, encoding="rgb8", step=WIDTH * 3, data=pixels) for t in pubs}
        period, due = 1.0 / CAMERA_HZ, start
        while due < stop:
            now = time.monotonic()
            if now < due:
                time.sleep(due - now)
                continue
            for t, pub in pubs.items():
                msgs[t].header.frame_id = f"f{counts[t]}"
                pub.publish(msgs[t])
                counts[t] += 1
            due += period
    else:
        pub = pubs["/burst"]
        time.sleep(max(0.0, start + args.seconds / 3 - time.monotonic()))
        t0 = time.monotonic()
        msg = String()
        for i in range(BURST):
            msg.data = f"burst {i}"
            pub.publish(msg)
        counts["/burst"] = BURST
        print(f"burst of {BURST} published in {time.monotonic() - t0:.2f} s", flush=True)
    acked = {}
    for t, pub in pubs.items():
        if pub.qos_profile.reliability == _qos("reliable", 1).reliability:
            from rclpy.duration import Duration
            acked[t] = bool(pub.wait_for_all_acked(Duration(seconds=60)))
    Path(args.result + ".tmp").write_text(json.dumps({"published": counts, "acked": acked}))
    os.replace(args.result + ".tmp", args.result)
    # Stay until the orchestrator has seen everything arrive: a best-effort sample still in
    # flight (shared memory) when its publisher's participant goes away is lost.
    end = time.monotonic() + DEADLINE
    while not Path(args.result + ".release").exists() and time.monotonic() < end:
        time.sleep(0.05)
    node.destroy_node()
    rclpy.shutdown()
    return 0


def role_ref(args) -> int:
    """A plain rclpy subscriber: raw=True, KEEP_LAST 10,000, counts only; prints counts every 0.2 s."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image, JointState
    from std_msgs.msg import String

    classes = {"sensor_msgs/msg/JointState": JointState, "sensor_msgs/msg/Image": Image, "std_msgs/msg/String": String}
    rclpy.init()
    node = rclpy.create_node("throughput_reference")
    counts = {t: 0 for t in TOPICS}
    burst = set()

    def on(topic, data):
        counts[topic] += 1
        if topic == "/burst":
            burst.add(bytes(data))

    qos = {t: _qos("best_effort" if "image" in t and args.camera_qos == "best_effort" else "reliable", 10000)
           for t in TOPICS}
    subs = [node.create_subscription(classes[ty], t, lambda d, t=t: on(t, d), qos[t], raw=True)  # noqa: F841
            for t, ty in TOPICS.items()]
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    stopping = []
    signal.signal(signal.SIGINT, lambda *_: stopping.append(1))
    print("reference subscribed", flush=True)
    last = 0.0
    while not stopping:
        executor.spin_once(timeout_sec=0.05)
        if time.monotonic() - last > 0.2:
            last = time.monotonic()
            print("recorded: " + ", ".join(f"{t} {n}" for t, n in counts.items()), flush=True)
    Path(args.result).write_text(json.dumps({"counts": counts, "burst_distinct": len(burst)}))
    node.destroy_node()
    rclpy.shutdown()
    return 0


# ------------------------------------------------------------------------ the orchestrator
class Proc:
    def __init__(self, cmd, log: Path):
        self.log_path = log
        self._log = open(log, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True,
                                     cwd=str(ROOT))

    def output(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self, sig=signal.SIGINT, timeout=60.0):
        if self.proc.poll() is None:   # only the process we started, by its pid
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()
        return self.proc.returncode


def _wait(pred, what, timeout=DEADLINE, procs=()):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if pred():
            return
        for p in procs:
            if p.proc.poll() is not None and p.proc.returncode != 0:
                raise RuntimeError(f"{what}: {p.log_path.name} exited {p.proc.returncode}:\n{p.output()[-3000:]}")
        time.sleep(0.05)
    raise RuntimeError(f"timed out waiting for {what}")


def _last_counts(text: str) -> dict:
    lines = [ln for ln in text.splitlines() if "recorded: " in ln]
    if not lines:
        return {}
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"(/\S+) (\d+)", lines[-1].split("recorded: ", 1)[1])}


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def _peak_rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError):
        pass
    return float("nan")


def count_bag(bag: Path, storage: str) -> dict:
    """Per topic: our reader, rosbags' reader, the mcap library; distinct burst payloads."""
    from rosbags.rosbag2 import Reader as RosbagsReader

    from vla_ros.data.bags import BagReader
    from rosbags.typesys import Stores, get_typestore
    store = get_typestore(Stores.ROS2_JAZZY)
    ours, burst, index = {}, set(), {t: [] for t in TOPICS}
    with BagReader(bag) as r:
        warnings = list(r.warnings)
        for m in r.messages():
            ours[m.topic] = ours.get(m.topic, 0) + 1
            if m.topic == "/burst":
                burst.add(bytes(m.data))
                index[m.topic].append(int(bytes(m.data)[8:].rstrip(b"\0").split(b" ")[1]))
            elif m.topic == "/joint_states":
                index[m.topic].append(int(store.deserialize_cdr(bytes(m.data), TOPICS[m.topic]).position[0]))
            else:
                index[m.topic].append(int(store.deserialize_cdr(bytes(m.data), TOPICS[m.topic]).header.frame_id[1:]))
    rosbags = {}
    with RosbagsReader(bag) as r:
        for conn, _, _ in r.messages():
            rosbags[conn.topic] = rosbags.get(conn.topic, 0) + 1
    mcap = None
    if storage == "mcap":
        from mcap.reader import make_reader
        mcap = {}
        for f in sorted(bag.glob("*.mcap")):
            with f.open("rb") as fh:
                for _, channel, _ in make_reader(fh).iter_messages():
                    mcap[channel.topic] = mcap.get(channel.topic, 0) + 1
    return {"ours": ours, "rosbags": rosbags, "mcap": mcap, "burst_distinct": len(burst), "warnings": warnings,
            "missing": {t: _missing(ix) for t, ix in index.items()}}


def _missing(indexes: list) -> dict:
    """Which of a stream's messages (by the index each carries) are not in the bag: at the start,
    and as gaps after the first recorded one (runs of consecutive indexes)."""
    got = sorted(set(indexes))
    if not got:
        return {"first_recorded": None, "gaps": []}
    gaps = [(a + 1, b - a - 1) for a, b in zip(got, got[1:]) if b - a > 1]
    return {"first_recorded": got[0], "gaps": len(gaps), "missing_after_first": sum(n for _, n in gaps),
            "largest_gap": max((n for _, n in gaps), default=0), "out_of_order": indexes != sorted(indexes),
            "gap_starts": [g for g, _ in gaps[:20]], "last_recorded": got[-1]}


def run_pass(kind: str, args, work: Path) -> dict:
    """kind: a storage (mcap, sqlite3) or "reference"; returns the pass's measurements."""
    logs = ROOT / "benchmarks" / "results"
    me = [sys.executable, str(Path(__file__).resolve())]
    topics = list(TOPICS)
    if kind == "reference":
        sub = Proc(me + ["--role", "ref", "--result", str(work / "ref.json"), "--camera-qos", args.camera_qos],
                   logs / "record_throughput_reference.log")
        _wait(lambda: "reference subscribed" in sub.output(), "the reference subscriber", procs=[sub])
    else:
        exe = Path(sys.prefix) / "lib" / "vla_ros" / "recorder_node"
        sub = Proc([str(exe), "--ros-args", "-p", f"topics:=[{', '.join(topics)}]", "-p", f"output_dir:={work}",
                    "-p", f"bag_name:={kind}", "-p", f"storage:={kind}", "-p", "status_period:=0.2"],
                   logs / f"record_throughput_recorder_{kind}.log")
    pubs = {s: Proc(me + ["--role", "pub", "--stream", s, "--seconds", str(args.seconds), "--subscribers", "1",
                          "--camera-qos", args.camera_qos, "--result", str(work / f"pub_{kind}_{s}.json")],
                    logs / f"record_throughput_pub_{s}.log") for s in STREAMS}
    try:
        if kind != "reference":
            for t in topics:
                _wait(lambda t=t: f"recording {t} (" in sub.output(), f"the recorder subscribing {t}",
                      procs=[sub, *pubs.values()])
        cpu0, t0 = _cpu_seconds(sub.proc.pid), time.monotonic()
        published, acked = {}, {}
        for name, p in pubs.items():
            result = work / f"pub_{kind}_{name}.json"
            _wait(result.exists, f"publisher {name} to finish", timeout=args.seconds + DEADLINE,
                  procs=[sub, *pubs.values()])
            r = json.loads(result.read_text())
            published.update(r["published"])
            acked.update(r["acked"])
        # Everything published is now in the subscriber's hands (reliable: acknowledged); wait
        # until its counts stop changing (or reach what was published) before stopping it.
        state = {"last": None, "since": time.monotonic()}

        def settled():
            c = _last_counts(sub.output())
            if c != state["last"]:
                state["last"], state["since"] = c, time.monotonic()
            return c and (all(c.get(t, 0) >= published[t] for t in topics) or time.monotonic() - state["since"] > 2.0)
        _wait(settled, "the subscriber's counts to settle", procs=[sub])
        for name, p in pubs.items():
            Path(work / f"pub_{kind}_{name}.json.release").touch()
        for name, p in pubs.items():
            _wait(lambda p=p: p.proc.poll() is not None, f"publisher {name} to exit", procs=[sub, *pubs.values()])
            if p.stop() != 0:
                raise RuntimeError(f"publisher {name} failed:\n{p.output()[-3000:]}")
        cpu = (_cpu_seconds(sub.proc.pid) - cpu0) / (time.monotonic() - t0)
        peak_rss_mb = _peak_rss_mb(sub.proc.pid)
        stopped = time.monotonic()
        rc = sub.stop()
        close_s = time.monotonic() - stopped
        if rc != 0:
            raise RuntimeError(f"{kind}: subscriber exited {rc}:\n{sub.output()[-3000:]}")
    finally:
        for p in [*pubs.values(), sub]:
            p.stop(signal.SIGKILL if p.proc.poll() is None else signal.SIGINT)
    out = {"kind": kind, "published": published, "acked": acked, "cpu_fraction": cpu, "stop_to_exit_s": close_s,
           "peak_rss_mb": peak_rss_mb}
    text = sub.output()
    out["log_drops"] = [ln for ln in text.splitlines() if "dropped" in ln.lower() and "none dropped" not in ln]
    if kind == "reference":
        r = json.loads((work / "ref.json").read_text())
        out["recorded"] = r["counts"]
        out["burst_distinct"] = r["burst_distinct"]
    else:
        bag = work / kind
        counted = count_bag(bag, kind)
        out["recorded"] = {t: counted["ours"].get(t, 0) for t in topics}
        out["rosbags"] = {t: counted["rosbags"].get(t, 0) for t in topics}
        out["mcap"] = None if counted["mcap"] is None else {t: counted["mcap"].get(t, 0) for t in topics}
        out["burst_distinct"] = counted["burst_distinct"]
        out["missing"] = counted["missing"]
        out["reader_warnings"] = counted["warnings"]
        out["bag_bytes"] = sum(f.stat().st_size for f in bag.iterdir())
        out["summary"] = [ln for ln in text.splitlines() if "bag closed" in ln]
        shutil.rmtree(bag, ignore_errors=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=10.0, help="how long the 1 kHz and camera streams run")
    p.add_argument("--storage", nargs="+", choices=("mcap", "sqlite3"), default=["mcap", "sqlite3"])
    p.add_argument("--quick", action="store_true", help="3 s streams, mcap only, no reference pass")
    p.add_argument("--no-reference", action="store_true", help="skip the plain rclpy subscriber pass")
    p.add_argument("--camera-qos", choices=("best_effort", "reliable"), default="best_effort")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "record_throughput.json"))
    # internal: the child processes
    p.add_argument("--role", choices=("main", "pub", "ref"), default="main", help=argparse.SUPPRESS)
    p.add_argument("--stream", choices=list(STREAMS), help=argparse.SUPPRESS)
    p.add_argument("--subscribers", type=int, default=1, help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.role == "pub":
        return role_pub(args)
    if args.role == "ref":
        return role_ref(args)
    if args.quick:
        args.seconds, args.storage, args.no_reference = 3.0, ["mcap"], True
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    load_before = os.getloadavg()
    kinds = list(args.storage) + ([] if args.no_reference else ["reference"])
    passes = []
    with tempfile.TemporaryDirectory(prefix="record_throughput_") as tmp:
        for kind in kinds:
            passes.append(run_pass(kind, args, Path(tmp)))
    load = os.getloadavg()
    print(f"\nrecord throughput: {args.seconds:.0f} s of 1 kHz JointState (reliable, depth 10) + 2 x {WIDTH}x{HEIGHT} "
          f"rgb8 at {CAMERA_HZ:.0f} Hz ({args.camera_qos}) + a burst of {BURST} String (reliable, KEEP_LAST {BURST}); "
          f"{os.cpu_count()} CPUs, load average before {load_before[0]:.2f}, after {load[0]:.2f} {load[1]:.2f} "
          f"{load[2]:.2f}")
    print("\n| storage | topic | published | recorded | lost | lost % |")
    print("|---|---|---:|---:|---:|---:|")
    total_lost = 0
    for r in passes:
        name = "rclpy subscriber (reference)" if r["kind"] == "reference" else r["kind"]
        for t in TOPICS:
            pub, rec = r["published"][t], r["recorded"][t]
            lost = pub - rec
            if r["kind"] != "reference":
                total_lost += max(lost, 0)
            print(f"| {name} | {t} | {pub} | {rec} | {lost} | {100.0 * lost / pub if pub else 0:.2f} |")
    print()
    for r in passes:
        checks = []
        if r["kind"] != "reference":
            checks.append("rosbags counts " + ("agree" if r["rosbags"] == r["recorded"] else f"DIFFER {r['rosbags']}"))
            if r["mcap"] is not None:
                checks.append("mcap counts " + ("agree" if r["mcap"] == r["recorded"] else f"DIFFER {r['mcap']}"))
        checks.append(f"burst distinct {r['burst_distinct']}")
        checks.append(f"CPU {100 * r['cpu_fraction']:.0f} % of a core, peak RSS {r['peak_rss_mb']:.0f} MB")
        checks.append(f"SIGINT to exit {r['stop_to_exit_s']:.2f} s")
        for t, m in r.get("missing", {}).items():
            if m["first_recorded"] or m.get("gaps"):
                checks.append(f"{t}: first recorded #{m['first_recorded']}, {m['missing_after_first']} missing in "
                              f"{m['gaps']} gaps after it (largest {m['largest_gap']}, starting at {m['gap_starts'][:6]})")
        if r["log_drops"]:
            checks.append(f"drop lines: {r['log_drops']}")
        print(f"  {r['kind']}: " + "; ".join(checks))
    out = Path(args.out)
    out.write_text(json.dumps({"seconds": args.seconds, "camera_qos": args.camera_qos, "burst": BURST,
                               "loadavg_before": load_before, "loadavg": load, "cpus": os.cpu_count(),
                               "passes": passes}, indent=2))
    print(f"written {out}")
    return 0 if total_lost == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
