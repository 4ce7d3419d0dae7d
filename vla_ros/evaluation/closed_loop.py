"""Closed-loop evaluation without ROS: the episode plan, per-episode records, the summary per
task family, report.json and the table; contact sheets of an episode's frames; the listening
probe's plan, per-scene scoring, probe.json and its table.

The rclpy driver that runs the episodes through the ROS graph is
:mod:`vla_ros.ros.closed_loop` (`vla-ros eval`).

Episode seeds are ``seed + i``; data collection uses other seeds (1000 + i by default
with far fewer episodes than the evaluation offset), so evaluation scenes are unseen.

The listening probe runs every scene several times with one thing changed: touch and pick
name each object in turn, push asks for each direction in turn (same object). A scene
counts only when all its variants succeed, so a policy that goes for the likely object or
the usual direction whatever it is told cannot score.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from vla_ros.share import share_dirs
from vla_ros.sim.tasks import DIRECTIONS

DEFAULT_FAMILIES = ("touch", "push")
DEFAULT_SEED = 100_000
DEFAULT_OUT_DIR = "eval_closed_loop"
REPORT_FILE = "report.json"
PROBE_FILE = "probe.json"
# What the probe changes per family: the object the instruction names, or the push direction.
PROBE_VARIES = {"touch": "target", "pick": "target", "push": "direction"}
DEFAULT_OBJECTS = 3  # sim_robot_node's 'objects' default, which the evaluation graph runs with


def default_params_file() -> Path:
    """config/robots/sim_panda.yaml in the first of vla_ros.share.share_dirs() that has config/robots."""
    for d in share_dirs():
        if (d / "config" / "robots").is_dir():
            return d / "config" / "robots" / "sim_panda.yaml"
    raise FileNotFoundError("cannot find vla_ros' config/robots ($VLA_ROS_SHARE, source tree or share/vla_ros)")


def episode_plan(families: Sequence[str], episodes: int, seed: int) -> Iterator[tuple[str, int]]:
    """(family, scene seed) of every episode, family by family: seeds seed .. seed + episodes - 1."""
    for family in families:
        for i in range(episodes):
            yield family, seed + i


def episode_record(family: str, seed: int, phrasing: str, instruction: str, outcome: str, steps: int,
                   sim_seconds: float, wall_seconds: float) -> dict:
    """One episode's entry in report.json; success means the outcome "succeeded"."""
    return {"family": family, "seed": seed, "phrasing": phrasing, "instruction": instruction,
            "success": outcome == "succeeded", "outcome": outcome, "steps": int(steps),
            "sim_seconds": round(float(sim_seconds), 3), "wall_seconds": round(wall_seconds, 3)}


MOVING_SPEED = 0.02  # m/s: the end effector counts as moving above this speed (the expert moves at 0.2)


def motion_metrics(ee: Sequence[tuple], commands: Sequence[tuple], period: float,
                   moving_speed: float = MOVING_SPEED) -> dict:
    """How smoothly one episode moved, from the simulated end-effector path and the commands sent.

    ee: (sim s, x, y, z) samples of the end effector; commands: (sim s, vx, vy, vz) twist commands.
    The path is resampled at the control period and differenced: jerk is the third difference
    over period^3 (m/s^3), its RMS taken over the windows where the end effector moves (any of the
    window's speeds above ``moving_speed``), so a stop-and-go arm scores high and a still one does
    not count. ``max_command_jump`` is the largest change between consecutive commands (m/s): at
    a chunk switch that does not continue the previous chunk, or a stop.
    """
    out: dict = {"ee_samples": len(ee), "commands": len(commands), "jerk_rms": None, "max_command_jump": None}
    if len(ee) >= 5:
        a = np.asarray(ee, dtype=np.float64)
        a = a[np.argsort(a[:, 0], kind="stable")]
        t = a[:, 0]
        grid = np.arange(t[0], t[-1] + 1e-9, period)
        if len(grid) >= 5:
            pos = np.stack([np.interp(grid, t, a[:, i]) for i in (1, 2, 3)], axis=1)  # (n, 3)
            speed = np.linalg.norm(np.diff(pos, axis=0), axis=1) / period  # (n-1,)
            jerk = np.linalg.norm(np.diff(pos, n=3, axis=0), axis=1) / period ** 3  # (n-3,)
            moving = np.array([speed[k:k + 3].max() > moving_speed for k in range(len(jerk))])
            if moving.any():
                out["jerk_rms"] = round(float(np.sqrt(np.mean(jerk[moving] ** 2))), 4)
    if len(commands) >= 2:
        c = np.asarray(commands, dtype=np.float64)
        c = c[np.argsort(c[:, 0], kind="stable"), 1:]
        out["max_command_jump"] = round(float(np.linalg.norm(np.diff(c, axis=0), axis=1).max()), 4)
    return out


def summarize(results: list[dict], families: Sequence[str]) -> dict:
    """Per family: episodes, successes, success rate, mean simulated seconds of the successes."""
    summary = {}
    for family in families:
        eps = [e for e in results if e["family"] == family]
        ok = [e for e in eps if e["success"]]
        summary[family] = {"episodes": len(eps), "successes": len(ok),
                           "success_rate": round(len(ok) / len(eps), 4) if eps else None,
                           "mean_sim_seconds_success": round(float(np.mean([e["sim_seconds"] for e in ok])), 2)
                           if ok else None}
    return summary


def write_report(out: Path, results: list[dict], families: Sequence[str], *, checkpoint: str, server: str,
                 phrasing: str, seed: int, episodes: int, timeout: float, real_time_factor: float,
                 params_file: str, wall_seconds: float) -> dict:
    """Build the report (settings, summary, episodes), write it to out/report.json, return it."""
    report = {"checkpoint": str(checkpoint), "server": server or None, "phrasing": phrasing, "seed": seed,
              "episodes_per_family": episodes, "timeout_sim_seconds": timeout, "real_time_factor": real_time_factor,
              "params_file": params_file, "wall_seconds": round(wall_seconds, 1),
              "summary": summarize(results, families), "episodes": results}
    (out / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
    return report


def format_table(report: dict) -> str:
    lines = [f"closed-loop evaluation: {report['checkpoint']} ({report['phrasing']} phrasings, seeds from "
             f"{report['seed']})", "",
             "| task  | episodes | successes | success rate |", "|---|---|---|---|"]
    for family, s in report["summary"].items():
        rate = f"{100 * s['success_rate']:.0f}%" if s["success_rate"] is not None else "-"
        lines.append(f"| {family} | {s['episodes']} | {s['successes']} | {rate} |")
    lines.append("")
    lines.append(f"wall time {report['wall_seconds']:.0f} s")
    return "\n".join(lines)


def probe_plan(families: Sequence[str], scenes: int, seed: int,
               objects: int = DEFAULT_OBJECTS) -> Iterator[tuple[str, int, int, str]]:
    """(family, scene seed, target, direction) of every probe episode, scene by scene: touch and
    pick name object 0 .. objects-1 in turn (direction ""), push goes in each direction in turn
    (target -1: the object the seed picks)."""
    for family in families:
        if family not in PROBE_VARIES:
            raise ValueError(f"no listening probe for family {family!r}; expected one of {sorted(PROBE_VARIES)}")
        for i in range(scenes):
            if PROBE_VARIES[family] == "target":
                for target in range(objects):
                    yield family, seed + i, target, ""
            else:
                for direction in sorted(DIRECTIONS):
                    yield family, seed + i, -1, direction


def probe_variant(record: dict) -> str:
    """The name of what a probe episode changed: "object <index>" or the push direction."""
    if PROBE_VARIES[record["family"]] == "target":
        return f"object {record['target']}"
    return record["direction"]


def summarize_probe(results: list[dict], families: Sequence[str]) -> dict:
    """Per family: scenes, scenes whose every variant succeeded (per-scene rate), variant
    episodes and successes (per-variant rate), and the rate per variant name."""
    summary = {}
    for family in families:
        eps = [e for e in results if e["family"] == family]
        scenes: dict[int, list[bool]] = {}
        by_variant: dict[str, list[bool]] = {}
        for e in eps:
            scenes.setdefault(e["seed"], []).append(e["success"])
            by_variant.setdefault(probe_variant(e), []).append(e["success"])
        all_ok = sum(all(v) for v in scenes.values())
        ok = sum(e["success"] for e in eps)
        summary[family] = {
            "varies": PROBE_VARIES[family], "scenes": len(scenes), "scenes_all_succeeded": all_ok,
            "per_scene_rate": round(all_ok / len(scenes), 4) if scenes else None,
            "variants": len(eps), "variant_successes": ok,
            "per_variant_rate": round(ok / len(eps), 4) if eps else None,
            "by_variant": {k: {"episodes": len(v), "successes": sum(v), "success_rate": round(sum(v) / len(v), 4)}
                           for k, v in sorted(by_variant.items())}}
    return summary


def write_probe_report(out: Path, results: list[dict], families: Sequence[str], *, checkpoint: str, server: str,
                       phrasing: str, seed: int, scenes: int, timeout: float, real_time_factor: float,
                       params_file: str, wall_seconds: float) -> dict:
    """Build the probe report (settings, summary, episodes), write it to out/probe.json, return it."""
    report = {"probe": True, "checkpoint": str(checkpoint), "server": server or None, "phrasing": phrasing,
              "seed": seed, "scenes_per_family": scenes, "timeout_sim_seconds": timeout,
              "real_time_factor": real_time_factor, "params_file": params_file,
              "wall_seconds": round(wall_seconds, 1), "summary": summarize_probe(results, families),
              "episodes": results}
    (out / PROBE_FILE).write_text(json.dumps(report, indent=1) + "\n")
    return report


def format_probe_table(report: dict) -> str:
    def pct(x):
        return f"{100 * x:.0f}%" if x is not None else "-"

    lines = [f"listening probe: {report['checkpoint']} ({report['phrasing']} phrasings, seeds from "
             f"{report['seed']}; a scene counts when every variant succeeds)", "",
             "| task  | varies | scenes | all variants ok | per-scene rate | variants ok | per-variant rate |",
             "|---|---|---|---|---|---|---|"]
    for family, s in report["summary"].items():
        lines.append(f"| {family} | {s['varies']} | {s['scenes']} | {s['scenes_all_succeeded']} | "
                     f"{pct(s['per_scene_rate'])} | {s['variant_successes']}/{s['variants']} | "
                     f"{pct(s['per_variant_rate'])} |")
    lines.append("")
    for family, s in report["summary"].items():
        parts = [f"{k} {v['successes']}/{v['episodes']}" for k, v in s["by_variant"].items()]
        lines.append(f"{family} per variant: {', '.join(parts)}")
    lines.append(f"wall time {report['wall_seconds']:.0f} s")
    return "\n".join(lines)


def contact_sheet(frames: list[np.ndarray], path: Path, columns: int = 8, max_frames: int = 32) -> None:
    """A grid of up to ``max_frames`` evenly spaced frames, written as PNG (OpenCV)."""
    import cv2

    if not frames:
        return
    idx = np.linspace(0, len(frames) - 1, min(max_frames, len(frames))).round().astype(int)
    tiles = [frames[i] for i in idx]
    h, w = tiles[0].shape[:2]
    rows = (len(tiles) + columns - 1) // columns
    sheet = np.full((rows * h, columns * w, 3), 255, np.uint8)
    for k, t in enumerate(tiles):
        r, c = divmod(k, columns)
        sheet[r * h:(r + 1) * h, c * w:(c + 1) * w] = t
    cv2.imwrite(str(path), cv2.cvtColor(sheet, cv2.COLOR_RGB2BGR))
