"""End-to-end latency and control-rate stability of the policy node across processes, next to bare infer().

For each scenario this starts `policy_node` in its own process (forward_position output, so
every control tick publishes a command; the model in the node's policy server process unless
the scenario says in_process), publishes camera frames at 30 fps and joint states from this
process, and measures here, on the receiving side:
  * frame -> chunk: a frame is published (stamp t0) -> the ActionChunk computed from it
    (observation_stamp == t0) is received;
  * frame -> command: t0 -> the first command received after that chunk;
  * command period: intervals between consecutive commands (mean, std, abs(period - nominal) p99).
In the same run it times the bare model, `infer()` of the same preset with the same camera
count and frame size, in this process. Ratios within one run are what to compare: the
machine is shared.

    python benchmarks/node_latency.py [--seconds 20] [--scenarios default|quick|NAME ...] [--out FILE]
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
from diagnostic_msgs.msg import DiagnosticArray  # noqa: E402

from vla_ros.msg import ActionChunk  # noqa: E402

JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
HOME = [0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785]
# name: (control rate Hz, cameras, width, height, model.process)
SCENARIOS = {
    "30hz": (30.0, 1, 96, 96, "server"),
    "100hz": (100.0, 1, 96, 96, "server"),
    "100hz_in_process": (100.0, 1, 96, 96, "in_process"),
    "1cam_640": (30.0, 1, 640, 480, "server"),
    "4cam_640": (30.0, 4, 640, 480, "server"),
    "100hz_fifo": (100.0, 1, 96, 96, "server"),  # + control.realtime_priority 50 (SCHED_FIFO)
    "100hz_ensemble": (100.0, 1, 96, 96, "server"),  # + control.execution ensemble (before realtime execution)
}
GROUPS = {"default": list(SCENARIOS), "quick": ["30hz", "100hz"]}


def pct(values, q):
    return float(np.percentile(values, q)) if len(values) else float("nan")


def bare_infer(preset: str, threads: int, cams: int, width: int, height: int, n: int = 100):
    import torch

    from vla_ros.runtime.policy_loader import load_engine
    if threads:
        torch.set_num_threads(threads)
    names = [f"cam{i}" for i in range(cams)]
    eng = load_engine("", preset, JOINTS, 7, JOINTS, names, log=lambda *_: None)
    rng = np.random.default_rng(0)
    imgs = [rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8) for _ in names]
    state = np.array(HOME, dtype=np.float32)
    times = []
    for _ in range(n):
        t = time.perf_counter()
        eng.infer(imgs, "touch the red cube", state)
        times.append((time.perf_counter() - t) * 1e3)
    return times


def run_node(name: str, seconds: float, preset: str, threads: int):
    rate, cams, width, height, process = SCENARIOS[name]
    names = [f"cam{i}" for i in range(cams)]
    exe = Path(sys.prefix) / "lib" / "vla_ros" / "policy_node"
    cmd = [str(exe), "--ros-args", "--params-file", str(ROOT / "config/robots/sim_panda_joint.yaml"),
           "-p", "autostart:=true", "-p", "output.mode:=forward_position", "-p", f"control.rate:={rate}",
           "-p", f"model.preset:={preset}", "-p", "joints.max_step:=10.0", "-p", f"model.threads:={threads}",
           "-p", f"model.process:={process}", "-p", f"cameras.names:=[{','.join(names)}]"]
    if name.endswith("_fifo"):
        cmd += ["-p", "control.realtime_priority:=50"]
    if name.endswith("_ensemble"):
        cmd += ["-p", "control.execution:=ensemble"]
    log = open(ROOT / "benchmarks" / "results" / f"node_latency_{name}.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    node = rclpy.create_node(f"node_latency_bench_{name}")
    frames = {}          # stamp ns -> publish time (monotonic, s)
    chunk_arrivals = []  # (stamp ns, arrival s)
    commands = []        # arrival times (s)
    pending = []         # stamps whose chunk arrived and wait for the next command
    frame_to_command = []
    in_node = []         # (frame stamp -> chunk published by the node, request -> answer from the server), ms

    def on_chunk(msg):
        now = time.monotonic()
        ns = msg.observation_stamp.sec * 10**9 + msg.observation_stamp.nanosec
        chunk_arrivals.append((ns, now))
        pending.append(ns)
        pub_ns = msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec
        in_node.append(((pub_ns - ns) * 1e-6, msg.inference_latency * 1e3))

    def on_command(msg):
        now = time.monotonic()
        commands.append(now)
        while pending:
            ns = pending.pop()
            frame_to_command.append((now - frames[ns]) * 1e3 if ns in frames else float("nan"))

    received = []  # the node's count of frames received, from /diagnostics
    model = {}     # the model's own time inside the policy server during this run, from /diagnostics

    def on_diag(msg):
        for st in msg.status:
            for kv in st.values:
                if kv.key == "frames_received":
                    received.append((int(kv.value), len(frames)))  # (node's count, frame sets published by then)
                elif kv.key in ("model_p50_ms", "model_p99_ms", "control_period_mean_ms",
                                "control_period_abs_dev_p99_ms", "control_late_p99_ms"):
                    model[kv.key] = float(kv.value)

    node.create_subscription(DiagnosticArray, "/diagnostics", on_diag, 10)
    node.create_subscription(ActionChunk, "policy_node/action_chunk", on_chunk, 50)
    node.create_subscription(Float64MultiArray, "forward_position", on_command, 50)
    img_pubs = [node.create_publisher(Image, f"{c}/image_raw", qos_profile_sensor_data) for c in names]
    js_pub = node.create_publisher(JointState, "joint_states", qos_profile_sensor_data)
    latched = QoSProfile(depth=1, reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.TRANSIENT_LOCAL)
    instr_pub = node.create_publisher(String, "instruction", latched)
    rng = np.random.default_rng(0)
    images = [Image(height=height, width=width, encoding="rgb8", step=width * 3,
                    data=rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8).tobytes()) for _ in names]

    paused = [False]  # the camera pauses briefly at both ends of the window to count lost frames exactly

    def publish_frames():  # a 30 fps camera rig, all cameras triggered together
        if paused[0]:
            return
        stamp = node.get_clock().now()
        frames[stamp.nanoseconds] = time.monotonic()
        for pub, img in zip(img_pubs, images):
            img.header.stamp = stamp.to_msg()
            pub.publish(img)

    def publish_joints():
        js = JointState(name=JOINTS, position=HOME)
        js.header.stamp = node.get_clock().now().to_msg()
        js_pub.publish(js)

    node.create_timer(1 / 30, publish_frames)
    node.create_timer(1 / 100, publish_joints)
    instr_pub.publish(String(data="touch the red cube"))
    deadline = time.monotonic() + 120
    while len(commands) < 30 and time.monotonic() < deadline:  # model load, discovery, warm-up
        rclpy.spin_once(node, timeout_sec=0.05)

    def counts_after_a_pause():
        """(node's frames received, frame sets published) once every published frame has arrived: the
        camera pauses, and the node's next diagnostics message after 0.25 s of silence is taken."""
        paused[0] = True
        t = time.monotonic()
        while time.monotonic() < t + 0.25:
            rclpy.spin_once(node, timeout_sec=0.01)
        n = len(received)
        while len(received) == n and time.monotonic() < t + 10:
            rclpy.spin_once(node, timeout_sec=0.01)
        paused[0] = False
        return received[-1] if len(received) > n else None

    first_diag = counts_after_a_pause()
    start = time.monotonic()
    n_cmd0, n_chunk0, n_f2c0 = len(commands), len(chunk_arrivals), len(frame_to_command)
    n_frames0 = len(frames)
    while time.monotonic() < start + seconds:
        rclpy.spin_once(node, timeout_sec=0.01)
    commands_end = len(commands)  # the command stream is measured up to here (before the pause)
    last_diag = counts_after_a_pause()
    lost = None
    if first_diag is not None and last_diag is not None:
        lost = (last_diag[1] - first_diag[1]) * cams - (last_diag[0] - first_diag[0])
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=30)
    log.close()
    node.destroy_node()
    f2chunk = [(t - frames[ns]) * 1e3 for ns, t in chunk_arrivals[n_chunk0:] if ns in frames]
    f2cmd = [v for v in frame_to_command[n_f2c0:] if v == v]
    periods = np.diff(commands[n_cmd0:commands_end]) * 1e3
    return {
        "scenario": name, "rate_hz": rate, "cameras": cams, "width": width, "height": height, "process": process,
        "frames_published": len(frames) - n_frames0, "chunks": len(f2chunk), "commands": len(periods) + 1,
        "frame_to_chunk_p50_ms": pct(f2chunk, 50), "frame_to_chunk_p99_ms": pct(f2chunk, 99),
        "frame_to_command_p50_ms": pct(f2cmd, 50), "frame_to_command_p99_ms": pct(f2cmd, 99),
        "period_mean_ms": float(periods.mean()) if len(periods) else float("nan"),
        "period_std_ms": float(periods.std()) if len(periods) else float("nan"),
        "period_p99_abs_dev_ms": pct(np.abs(periods - 1e3 / rate), 99),
        "period_max_ms": float(periods.max()) if len(periods) else float("nan"),
        "frames_lost": lost,
        "model_in_server_p50_ms": model.get("model_p50_ms", float("nan")),
        "model_in_server_p99_ms": model.get("model_p99_ms", float("nan")),
        # The control loop's own timing (its last 1000 steps, measured in the node): the jitter above
        # is measured here, after DDS and this process's executor.
        "in_node_period_mean_ms": model.get("control_period_mean_ms", float("nan")),
        "in_node_period_abs_dev_p99_ms": model.get("control_period_abs_dev_p99_ms", float("nan")),
        "in_node_late_p99_ms": model.get("control_late_p99_ms", float("nan")),
        "stamp_to_chunk_publish_p50_ms": pct([a for a, _ in in_node[n_chunk0:]], 50),
        "request_to_answer_p50_ms": pct([b for _, b in in_node[n_chunk0:]], 50),
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--scenarios", nargs="+", default=["default"],
                   help=f"scenario names {list(SCENARIOS)} or groups {list(GROUPS)}")
    p.add_argument("--preset", default="tiny")
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads in the policy server and for the bare run (0: torch default). With 2 "
                        "threads on a loaded 2-core machine, OpenMP contention makes timings swing by 50x.")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "node_latency.json"))
    args = p.parse_args()
    names = [s for g in args.scenarios for s in GROUPS.get(g, [g])]
    unknown = [s for s in names if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenarios {unknown}; choose from {list(SCENARIOS)} or {list(GROUPS)}")
    (ROOT / "benchmarks" / "results").mkdir(parents=True, exist_ok=True)
    shapes = sorted({SCENARIOS[s][1:4] for s in names})
    bare = {shape: bare_infer(args.preset, args.threads, *shape) for shape in shapes}  # before the node runs
    rclpy.init()
    rows = [run_node(s, args.seconds, args.preset, args.threads) for s in names]
    rclpy.shutdown()
    for shape in shapes:  # and after: the machine is shared
        bare[shape] += bare_infer(args.preset, args.threads, *shape)
    load = os.getloadavg()
    for r in rows:
        b = bare[(r["cameras"], r["width"], r["height"])]
        r["bare_infer_p50_ms"], r["bare_infer_p99_ms"] = pct(b, 50), pct(b, 99)
    print(f"\npolicy_node end to end (preset {args.preset}, frames at 30 fps, CPU, {args.threads} torch thread(s); "
          f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f})")
    head = ("scenario", "bare p50/p99", "frame->chunk p50/p99", "frame->cmd p50/p99", "period mean/std",
            "|dev| p99", "max period", "frames lost")
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for r in rows:
        print(f"| {r['scenario']} ({r['rate_hz']:.0f} Hz, {r['cameras']}x{r['width']}x{r['height']}, {r['process']}) "
              f"| {r['bare_infer_p50_ms']:.1f} / {r['bare_infer_p99_ms']:.1f} "
              f"| {r['frame_to_chunk_p50_ms']:.1f} / {r['frame_to_chunk_p99_ms']:.1f} "
              f"| {r['frame_to_command_p50_ms']:.1f} / {r['frame_to_command_p99_ms']:.1f} "
              f"| {r['period_mean_ms']:.2f} / {r['period_std_ms']:.2f} | {r['period_p99_abs_dev_ms']:.2f} "
              f"| {r['period_max_ms']:.1f} | {r['frames_lost']} |")
    print("\nwhere the time goes (p50 ms): frame stamp -> ActionChunk published by the node | request -> answer "
          "from the policy server | the model's own time inside the server during the run; and the control loop "
          "as the node sees it: period mean, |period - nominal| p99, start after deadline p99 (ms)")
    for r in rows:
        print(f"  {r['scenario']}: {r['stamp_to_chunk_publish_p50_ms']:.1f} | {r['request_to_answer_p50_ms']:.1f} | "
              f"{r['model_in_server_p50_ms']:.1f};  loop {r['in_node_period_mean_ms']:.2f} | "
              f"{r['in_node_period_abs_dev_p99_ms']:.2f} | {r['in_node_late_p99_ms']:.2f}")
    out = Path(args.out)
    out.write_text(json.dumps({"preset": args.preset, "threads": args.threads, "seconds": args.seconds,
                               "loadavg": load, "rows": rows}, indent=2))
    print(f"written {out}")


if __name__ == "__main__":
    main()
