"""Closed-loop evaluation through the real ROS graph: sim_robot_node + policy_node.

Both nodes run as their own processes (as `ros2 launch vla_ros sim.launch.py` starts
them); this process only drives episodes, like a user would:

  1. ``/sim_robot_node/reset_episode`` (seed, family, phrasing; for the listening probe
     also the target object or the push direction) -> a new scene and its instruction;
  2. wait until the simulator reports ``task_success`` false for the new episode;
  3. send the instruction as an ExecuteInstruction goal to
     ``/policy_node/execute_instruction`` with a timeout in simulated seconds;
  4. the goal's outcome is the episode's result: SUCCEEDED means the simulator reported
     success (the policy node ends the goal on ``task_success``).

The episode plan, the records, the summary and report.json come from
:mod:`vla_ros.evaluation.closed_loop`; this module is the rclpy driver.
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.action import ActionClient
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import qos_profile_sensor_data
from geometry_msgs.msg import PoseStamped, TwistStamped
from sensor_msgs.msg import Image
from std_msgs.msg import Bool

from vla_ros.action import ExecuteInstruction
from vla_ros.evaluation.closed_loop import (DEFAULT_FAMILIES, DEFAULT_OUT_DIR, DEFAULT_SEED, contact_sheet,
                                           default_params_file, episode_plan, episode_record, motion_metrics,
                                           probe_plan, probe_variant, write_probe_report, write_report)
from vla_ros.ros.conversions import image_to_rgb
from vla_ros.srv import ResetEpisode

OUTCOMES = {v: k[len("OUTCOME_"):].lower() for k, v in vars(ExecuteInstruction.Result).items()
            if k.startswith("OUTCOME_")}


class Graph:
    """The sim robot and the policy node as child processes; stopped by pid with SIGINT."""

    def __init__(self, checkpoint: str, params_file: str, real_time_factor: float, log_dir: Path,
                 extra_policy_params: dict | None = None):
        log_dir.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []
        self.logs = []
        sim_cmd = [sys.executable, "-m", "vla_ros.ros.sim_robot_node", "--ros-args",
                   "-p", f"real_time_factor:={real_time_factor}"]
        policy_cmd = [sys.executable, "-m", "vla_ros.ros.policy_node", "--ros-args",
                      "--params-file", params_file, "-p", "use_sim_time:=true", "-p", "autostart:=true",
                      "-p", f"model.checkpoint:={checkpoint}"]
        for k, v in (extra_policy_params or {}).items():
            policy_cmd += ["-p", f"{k}:={v}"]
        for name, cmd in (("sim_robot_node", sim_cmd), ("policy_node", policy_cmd)):
            log = open(log_dir / f"{name}.log", "w")
            self.logs.append(log)
            self.procs.append(subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ)))

    def check_alive(self) -> None:
        for p, log in zip(self.procs, self.logs):
            if p.poll() is not None:
                raise RuntimeError(f"{p.args[2]} exited with code {p.returncode}; see {log.name}")

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for log in self.logs:
            log.close()


class EpisodeDriver(Node):
    def __init__(self, camera: str = "front", motion: bool = False):
        super().__init__("vla_ros_closed_loop_eval")
        self.motion = motion
        self.reset_client = self.create_client(ResetEpisode, "/sim_robot_node/reset_episode")
        self.goal_client = ActionClient(self, ExecuteInstruction, "/policy_node/execute_instruction")
        self.success_seen = threading.Event()
        self.create_subscription(Bool, "/task_success", self._on_success, 10)
        self.frames: list[np.ndarray] | None = None
        self.create_subscription(Image, f"/{camera}/image_raw", self._on_image, qos_profile_sensor_data)
        # Motion recording (latency benchmark): the simulated end-effector path and the twist commands.
        self.ee: list[tuple[float, float, float, float]] | None = None      # (sim s, x, y, z)
        self.commands: list[tuple[float, float, float, float]] | None = None  # (sim s, vx, vy, vz)
        if motion:
            self.create_subscription(PoseStamped, "/ee_pose", self._on_ee, 100)
            self.create_subscription(TwistStamped, "/twist", self._on_twist, 100)

    def _on_ee(self, msg: PoseStamped):
        if self.ee is not None:
            p, t = msg.pose.position, msg.header.stamp
            self.ee.append((t.sec + t.nanosec * 1e-9, p.x, p.y, p.z))

    def _on_twist(self, msg: TwistStamped):
        if self.commands is not None:
            v, t = msg.twist.linear, msg.header.stamp
            self.commands.append((t.sec + t.nanosec * 1e-9, v.x, v.y, v.z))

    def _on_success(self, msg: Bool):
        if not msg.data:
            self.success_seen.set()

    def _on_image(self, msg: Image):
        if self.frames is not None:
            self.frames.append(image_to_rgb(msg))


def _wait(future, deadline: float, what: str, graph: Graph):
    while not future.done():
        graph.check_alive()
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.01)
    return future.result()


def _call_with_retries(call, what: str, graph: Graph, attempt_timeout: float = 10.0, attempts: int = 3):
    """Send a request that is safe to repeat, again when its response does not come: right
    after discovery a reply can be lost while the server's writer has not yet matched this
    client's reader (Fast DDS), even though the service or action server was reported ready."""
    for attempt in range(attempts):
        try:
            return _wait(call(), time.monotonic() + attempt_timeout, what, graph)
        except TimeoutError:
            if attempt == attempts - 1:
                raise


def _run_episode(driver: EpisodeDriver, graph: Graph, family: str, ep_seed: int, phrasing: str, timeout: float,
                 real_time_factor: float, sheets_dir: Path | None, target: int = -1, direction: str = "",
                 period: float = 0.1) -> dict:
    """Reset the scene, send the instruction as a goal, wait for its outcome: the episode's record."""
    driver.success_seen.clear()
    request = ResetEpisode.Request(seed=ep_seed, family=family, phrasing=phrasing, target=target, direction=direction)
    reply = _call_with_retries(lambda: driver.reset_client.call_async(request), "reset_episode response", graph)
    if not reply.success:
        raise RuntimeError(f"reset_episode failed: {reply.message}")
    if not driver.success_seen.wait(timeout=30):
        raise TimeoutError("the sim robot never reported task_success false after a reset")
    driver.frames = [] if sheets_dir is not None else None
    recording = driver.motion
    if recording:
        driver.ee, driver.commands = [], []
    t0 = time.monotonic()
    goal = ExecuteInstruction.Goal(instruction=reply.instruction, timeout=float(timeout))
    wall_limit = timeout / max(real_time_factor, 0.05) * 4 + 60
    handle = None
    for _attempt in range(50):  # the node rejects goals until it is active
        # A new goal preempts an earlier one whose response was lost, so resending is safe.
        handle = _call_with_retries(lambda: driver.goal_client.send_goal_async(goal),
                                    "ExecuteInstruction goal response", graph)
        if handle.accepted:
            break
        time.sleep(0.2)
    if not handle.accepted:
        raise RuntimeError("policy_node rejected every ExecuteInstruction goal; is it active?")
    res = _wait(handle.get_result_async(), time.monotonic() + wall_limit, "ExecuteInstruction result", graph).result
    outcome = OUTCOMES.get(res.outcome, str(res.outcome))
    ep = episode_record(family, ep_seed, phrasing, reply.instruction, outcome, res.steps, res.elapsed,
                        time.monotonic() - t0)
    ep["target"], ep["direction"] = int(reply.target), reply.direction
    ep["held_steps"] = int(res.held_steps)
    if recording:
        ee, cmds = list(driver.ee), list(driver.commands)
        driver.ee = driver.commands = None
        ep["motion"] = motion_metrics(ee, cmds, period)
    if sheets_dir is not None and driver.frames:
        variant = f"_{target}" if target >= 0 else f"_{direction}" if direction else ""
        sheet = sheets_dir / f"{family}_{ep_seed}{variant}.png"
        sheet.parent.mkdir(exist_ok=True)
        contact_sheet(list(driver.frames), sheet)
        ep["contact_sheet"] = str(sheet)
    driver.frames = None
    return ep


@contextlib.contextmanager
def _session(checkpoint: str, params_file: str, real_time_factor: float, out: Path, server: str,
             server_mapping: str, log, policy_params: dict | None = None, motion: bool = False):
    """The graph up and an EpisodeDriver spinning, both ready; everything stopped on exit."""
    t_start = time.monotonic()
    extra = dict(policy_params or {})
    if server:
        extra.update({"model.server": server, "model.server_mapping": server_mapping})
    graph = Graph(str(Path(checkpoint).resolve()), params_file, real_time_factor, out / "logs", extra)
    rclpy.init()
    driver = EpisodeDriver(motion=motion)
    executor = SingleThreadedExecutor()
    executor.add_node(driver)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    try:
        deadline = time.monotonic() + 180.0  # model loading and discovery on a busy machine
        while not (driver.reset_client.service_is_ready() and driver.goal_client.server_is_ready()):
            graph.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError("the sim robot's reset service or the policy's action server never appeared; "
                                   f"see the logs in {out / 'logs'}")
            time.sleep(0.05)
        log(f"graph up in {time.monotonic() - t_start:.1f} s: sim_robot_node + policy_node "
            f"({f'remote server {server}' if server else checkpoint})")
        yield driver, graph
    finally:
        executor.shutdown()
        driver.destroy_node()
        rclpy.try_shutdown()
        graph.stop()


def evaluate(checkpoint: str, families=DEFAULT_FAMILIES, episodes: int = 50, seed: int = DEFAULT_SEED,
             phrasing: str = "train", timeout: float = 12.0, real_time_factor: float = 1.0,
             params_file: str | None = None, out_dir: str | None = None, contact_sheets: bool = False,
             log=print, server: str = "", server_mapping: str = "vla_ros", policy_params: dict | None = None,
             motion: bool = False) -> dict:
    """Run ``episodes`` closed-loop episodes per family; returns the report (also JSON in out_dir)."""
    return evaluate_phrasings(checkpoint, (phrasing,), families, episodes, seed, timeout, real_time_factor,
                              params_file, out_dir, contact_sheets, log, server, server_mapping,
                              subdirs=False, policy_params=policy_params, motion=motion)[phrasing]


def evaluate_phrasings(checkpoint: str, phrasings=("train",), families=DEFAULT_FAMILIES, episodes: int = 50,
                       seed: int = DEFAULT_SEED, timeout: float = 12.0, real_time_factor: float = 1.0,
                       params_file: str | None = None, out_dir: str | None = None, contact_sheets: bool = False,
                       log=print, server: str = "", server_mapping: str = "vla_ros",
                       subdirs: bool = True, policy_params: dict | None = None,
                       motion: bool = False) -> dict[str, dict]:
    """:func:`evaluate` for each phrasing set in turn on one running graph (the same scenes
    each time); the reports by phrasing, each in out_dir/<phrasing>/ (in out_dir itself
    when ``subdirs`` is false). ``policy_params``: extra policy node parameters (e.g.
    {"model.emulated_latency": 0.5}); ``motion``: record each episode's end-effector path and
    commands and add their smoothness to its record (evaluation.closed_loop.motion_metrics)."""
    params_file = params_file or str(default_params_file())
    out = Path(out_dir or DEFAULT_OUT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    reports = {}
    period = 1.0 / _control_rate(params_file, policy_params)
    with _session(checkpoint, params_file, real_time_factor, out, server, server_mapping, log, policy_params,
                  motion) as (driver, graph):
        for phrasing in phrasings:
            set_out = out / phrasing if subdirs else out
            set_out.mkdir(parents=True, exist_ok=True)
            results = []
            for family, ep_seed in episode_plan(families, episodes, seed):
                ep = _run_episode(driver, graph, family, ep_seed, phrasing, timeout, real_time_factor,
                                  set_out / "contact_sheets" if contact_sheets else None, period=period)
                results.append(ep)
                log(f"  {family:5s} seed {ep_seed}: {'success' if ep['success'] else ep['outcome']:9s} "
                    f"{ep['sim_seconds']:5.1f} s  '{ep['instruction']}'")
            reports[phrasing] = write_report(
                set_out, results, families, checkpoint=checkpoint, server=server, phrasing=phrasing, seed=seed,
                episodes=episodes, timeout=timeout, real_time_factor=real_time_factor, params_file=params_file,
                wall_seconds=time.monotonic() - t_start)
            t_start = time.monotonic()
    return reports


def _control_rate(params_file: str, policy_params: dict | None) -> float:
    """control.rate from the extra parameters or the parameters file (10 Hz for the sim Panda)."""
    import yaml
    if policy_params and "control.rate" in policy_params:
        return float(policy_params["control.rate"])
    data = yaml.safe_load(Path(params_file).read_text()) or {}
    control = data.get("policy_node", {}).get("ros__parameters", {}).get("control", {})
    return float(control.get("rate", 30.0))


def probe(checkpoint: str, families=DEFAULT_FAMILIES, scenes: int = 50, seed: int = DEFAULT_SEED,
          phrasing: str = "train", timeout: float = 12.0, real_time_factor: float = 1.0,
          params_file: str | None = None, out_dir: str | None = None, contact_sheets: bool = False,
          log=print, server: str = "", server_mapping: str = "vla_ros", policy_params: dict | None = None) -> dict:
    """The listening probe: every scene once per object (touch, pick) or per direction (push);
    returns the probe report (also probe.json in out_dir)."""
    params_file = params_file or str(default_params_file())
    out = Path(out_dir or DEFAULT_OUT_DIR)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.monotonic()
    results = []
    with _session(checkpoint, params_file, real_time_factor, out, server, server_mapping, log,
                  policy_params) as (driver, graph):
        for family, ep_seed, target, direction in probe_plan(families, scenes, seed):
            ep = _run_episode(driver, graph, family, ep_seed, phrasing, timeout, real_time_factor,
                              out / "contact_sheets" if contact_sheets else None, target, direction)
            results.append(ep)
            log(f"  {family:5s} seed {ep_seed} {probe_variant(ep):9s}: "
                f"{'success' if ep['success'] else ep['outcome']:9s} {ep['sim_seconds']:5.1f} s  '{ep['instruction']}'")
    return write_probe_report(out, results, families, checkpoint=checkpoint, server=server, phrasing=phrasing,
                              seed=seed, scenes=scenes, timeout=timeout, real_time_factor=real_time_factor,
                              params_file=params_file, wall_seconds=time.monotonic() - t_start)
