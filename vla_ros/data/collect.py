"""Collect expert demonstrations in the simulated Panda, one rosbag2 (MCAP) bag per episode.

Each episode: a seeded scene and task, the scripted expert (vla_ros/sim/expert.py) acting
at the control rate, Gaussian noise added to the EXECUTED velocity while the clean expert
action is recorded as the label (DART, Laskey et al. 2017), and the episode ends a tick
after the simulator reports success (or fails at ``max_ticks``; failed episodes are
discarded unless ``keep_failed``). The gripper gets the same treatment: ``open_start`` of the
episodes start with it open, and on the way to the first waypoint the executed gripper
command is at times the opposite of the label for a few ticks, so that the finger state
never gives the gripper label away (a policy that copies the fingers' state never opens
them for a pick). The bag holds the same topics and message types as
the live simulated robot (sim_robot_node) publishes, so the dataset code and
``ros2 bag play`` treat both alike:

=================  =============================  =========================================
topic              type                           content
=================  =============================  =========================================
/front/image_raw   sensor_msgs/msg/Image          rgb8 camera frame of the tick
/joint_states      sensor_msgs/msg/JointState     7 arm joints + 2 finger joints
/twist             geometry_msgs/msg/TwistStamped the executed (noisy) velocity command
/expert/twist      geometry_msgs/msg/TwistStamped the clean expert velocity (the label)
/expert/gripper    std_msgs/msg/Float64           expert gripper command: 1 open, 0 closed
/instruction       std_msgs/msg/String            the task's instruction (first tick)
/task_success      std_msgs/msg/Bool              the simulator's success check of the tick
=================  =============================  =========================================

All stamps are simulation time. This runs the simulator in-process (no ROS graph) so that
collection runs as fast as the CPU allows and in parallel worker processes; the recorder
node records the same topics from the live graph on a real robot.
"""
from __future__ import annotations

import dataclasses
import json
import multiprocessing
import time
from pathlib import Path

import numpy as np

from vla_ros.data.bags import BagWriter, typestore_for

TOPICS = {
    "/front/image_raw": "sensor_msgs/msg/Image",
    "/joint_states": "sensor_msgs/msg/JointState",
    "/twist": "geometry_msgs/msg/TwistStamped",
    "/expert/twist": "geometry_msgs/msg/TwistStamped",
    "/expert/gripper": "std_msgs/msg/Float64",
    "/instruction": "std_msgs/msg/String",
    "/task_success": "std_msgs/msg/Bool",
}
BASE_FRAME = "panda_link0"


@dataclasses.dataclass
class CollectConfig:
    out_dir: str                  # empty directory the episode bags are written to
    episodes: int = 600           # episodes to simulate
    # task families, cycled: episode i gets families[i % n] (2 touch, 3 push, 2 pick in 7)
    families: tuple = ("touch", "push", "pick", "push", "touch", "push", "pick")
    seed: int = 1000              # episode i uses scene seed seed + i
    control_rate: float = 10.0    # Hz: expert actions and camera frames
    image_size: int = 96          # camera image side, pixels
    noise: float = 0.06           # m/s, std of the noise added to each executed velocity axis
    open_start: float = 0.5       # share of episodes that start with the gripper open (else closed)
    # per-tick chance, on the way to the first waypoint, of executing the opposite gripper command
    # for 2-4 ticks (the label stays the expert's)
    gripper_flip: float = 0.06
    max_ticks: int = 60           # control ticks before an episode fails
    keep_failed: bool = False     # also write the bags of failed episodes
    workers: int = 2              # parallel simulator processes
    storage: str = "mcap"         # bag storage, "mcap" or "sqlite3"


class Messages:
    """Builds and CDR-serializes the collected message types with rosbags' Jazzy typestore."""

    def __init__(self):
        self.store = typestore_for(TOPICS.values())
        t = self.store.types
        self.Time, self.Header = t["builtin_interfaces/msg/Time"], t["std_msgs/msg/Header"]
        self.t = t

    def _header(self, stamp_ns: int, frame: str):
        return self.Header(stamp=self.Time(sec=stamp_ns // 10**9, nanosec=stamp_ns % 10**9), frame_id=frame)

    def ser(self, msg, typename):
        return bytes(self.store.serialize_cdr(msg, typename))

    def image(self, stamp_ns, rgb: np.ndarray, frame="front_camera"):
        h, w = rgb.shape[:2]
        msg = self.t["sensor_msgs/msg/Image"](header=self._header(stamp_ns, frame), height=h, width=w,
                                              encoding="rgb8", is_bigendian=0, step=w * 3,
                                              data=np.ascontiguousarray(rgb, dtype=np.uint8).reshape(-1))
        return self.ser(msg, "sensor_msgs/msg/Image")

    def joint_state(self, stamp_ns, names, position, velocity):
        msg = self.t["sensor_msgs/msg/JointState"](header=self._header(stamp_ns, ""), name=list(names),
                                                   position=np.asarray(position, dtype=np.float64),
                                                   velocity=np.asarray(velocity, dtype=np.float64),
                                                   effort=np.zeros(0, dtype=np.float64))
        return self.ser(msg, "sensor_msgs/msg/JointState")

    def twist(self, stamp_ns, linear, angular, frame=BASE_FRAME):
        V = self.t["geometry_msgs/msg/Vector3"]
        tw = self.t["geometry_msgs/msg/Twist"](linear=V(*map(float, linear)), angular=V(*map(float, angular)))
        msg = self.t["geometry_msgs/msg/TwistStamped"](header=self._header(stamp_ns, frame), twist=tw)
        return self.ser(msg, "geometry_msgs/msg/TwistStamped")

    def float64(self, value):
        return self.ser(self.t["std_msgs/msg/Float64"](data=float(value)), "std_msgs/msg/Float64")

    def string(self, value):
        return self.ser(self.t["std_msgs/msg/String"](data=str(value)), "std_msgs/msg/String")

    def boolean(self, value):
        return self.ser(self.t["std_msgs/msg/Bool"](data=bool(value)), "std_msgs/msg/Bool")


def run_episode(sim, expert, msgs: Messages, cfg: CollectConfig, index: int):
    """Simulate one episode; returns (task, success, ticks, [(topic, t_ns, cdr)])."""
    from vla_ros.sim.panda import FINGER_MAX, JOINT_NAMES

    family = cfg.families[index % len(cfg.families)]
    seed = cfg.seed + index
    rng = np.random.default_rng(seed + 7_000_003)
    task = sim.reset(seed, family, gripper_opening=FINGER_MAX if rng.random() < cfg.open_start else 0.0)
    expert.reset()
    period = 1.0 / cfg.control_rate
    out = []
    success = False
    ticks = 0
    flipped = 0  # ticks left of an executed gripper command opposite to the label
    for tick in range(cfg.max_ticks):
        t_ns = int(round(sim.time * 1e9))
        if tick == 0:
            out.append(("/instruction", t_ns, msgs.string(task.instruction)))
        out.append(("/front/image_raw", t_ns, msgs.image(t_ns, sim.render("front"))))
        out.append(("/joint_states", t_ns, msgs.joint_state(t_ns, JOINT_NAMES, sim.joint_positions(),
                                                            sim.joint_velocities())))
        out.append(("/task_success", t_ns, msgs.boolean(success)))
        ticks = tick + 1
        if success:
            break  # one tick showing success, then the episode ends
        linear, angular, gripper = expert.act(sim, period)
        executed = linear + rng.normal(0.0, cfg.noise, 3)
        out.append(("/expert/twist", t_ns, msgs.twist(t_ns, linear, angular)))
        out.append(("/expert/gripper", t_ns, msgs.float64(gripper)))
        out.append(("/twist", t_ns, msgs.twist(t_ns, executed, angular)))
        sim.command_twist(executed, angular)
        if flipped == 0 and expert.approaching and rng.random() < cfg.gripper_flip:
            flipped = int(rng.integers(2, 5))
        executed_open = (gripper > 0.5) != (flipped > 0)
        flipped = max(0, flipped - 1)
        sim.command_gripper(FINGER_MAX if executed_open else 0.0)
        sim.step(period)
        success = sim.success()
    return task, success, ticks, out


def _worker(args):
    cfg, indices = args
    from vla_ros.sim.expert import ScriptedExpert
    from vla_ros.sim.panda import CameraSpec, PandaSim

    sim = PandaSim([CameraSpec(width=cfg.image_size, height=cfg.image_size)])
    expert, msgs = ScriptedExpert(), Messages()
    results = []
    for i in indices:
        task, success, ticks, messages = run_episode(sim, expert, msgs, cfg, i)
        path = None
        if success or cfg.keep_failed:
            path = Path(cfg.out_dir) / f"episode_{i:06d}"
            with BagWriter(path, cfg.storage, typestore=msgs.store) as bag:
                for topic, msgtype in TOPICS.items():
                    rel = "best_effort" if topic in ("/front/image_raw", "/joint_states") else "reliable"
                    dur = "transient_local" if topic == "/instruction" else "volatile"
                    bag.add_topic(topic, msgtype, reliability=rel, durability=dur)
                for topic, t_ns, data in messages:
                    bag.write(topic, t_ns, data)
        results.append({"index": i, "seed": cfg.seed + i, "family": task.family, "instruction": task.instruction,
                        "success": bool(success), "ticks": ticks, "bag": str(path) if path else None})
    sim.close()
    return results


def collect(cfg: CollectConfig, log=print) -> dict:
    """Collect ``cfg.episodes`` episodes into ``cfg.out_dir``; returns (and writes) a summary."""
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    existing = sorted(p.name for p in out.glob("episode_*"))
    if existing:
        raise FileExistsError(f"{out} already holds {len(existing)} episode bags; collect into an empty directory")
    t0 = time.perf_counter()
    workers = max(1, min(cfg.workers, cfg.episodes))
    chunks = [(cfg, list(range(w, cfg.episodes, workers))) for w in range(workers)]
    if workers == 1:
        results = _worker(chunks[0])
    else:
        # spawn: a clean interpreter per worker (no forked pybullet or torch state)
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            results = [r for part in pool.map(_worker, chunks) for r in part]
    results.sort(key=lambda r: r["index"])
    elapsed = time.perf_counter() - t0
    per_family = {}
    for r in results:
        f = per_family.setdefault(r["family"], {"episodes": 0, "succeeded": 0})
        f["episodes"] += 1
        f["succeeded"] += r["success"]
    summary = {"config": dataclasses.asdict(cfg), "seconds": round(elapsed, 1),
               "kept": sum(r["bag"] is not None for r in results), "per_family": per_family, "episodes": results}
    (out / "collect_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    log(f"collected {summary['kept']} episode bags of {cfg.episodes} in {elapsed:.1f} s into {out} "
        f"(expert success: " + ", ".join(f"{k} {v['succeeded']}/{v['episodes']}" for k, v in per_family.items()) + ")")
    return summary
