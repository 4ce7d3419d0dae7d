"""The shipped demo checkpoint closes the loop through the real ROS graph.

`vla-ros eval` starts sim_robot_node and policy_node (config/robots/sim_panda.yaml, the
node set sim.launch.py starts) as their own processes and drives seeded episodes through
/sim_robot_node/reset_episode and the policy's ExecuteInstruction action.
"""
import json
import subprocess
from pathlib import Path

from ros_testing import ROOT, executable

from vla_ros.model.checkpoint import load_policy

CHECKPOINT = ROOT / "checkpoints" / "sim_demo"


def test_shipped_demo_checkpoint_is_small_safetensors_and_fits_the_sim_robot():
    size = sum(p.stat().st_size for p in CHECKPOINT.rglob("*") if p.is_file())
    assert size <= 10 * 2**20, f"{size / 2**20:.1f} MiB"
    assert not [p for p in CHECKPOINT.rglob("*") if p.suffix in (".pt", ".pth", ".bin", ".pkl", ".ckpt")]
    policy = load_policy(CHECKPOINT)
    robot = policy.interface
    assert robot.action_names == ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]  # ee_delta + gripper
    assert robot.camera_names == ["front"] and policy.config.image_size == 96
    assert all(n.startswith("panda_") for n in robot.state_names)


def test_demo_checkpoint_succeeds_in_closed_loop_episodes_through_the_ros_graph(tmp_path):
    out, report_file = tmp_path / "eval", tmp_path / "report.json"
    cmd = executable("vla-ros", "eval", "--checkpoint", str(CHECKPOINT), "--episodes", "3", "--families", "touch",
                     "--timeout", "10", "--out", str(out), "--json", str(report_file))
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert [e["seed"] for e in report["episodes"]] == [100000, 100001, 100002]
    # Unseen scenes; the checkpoint reaches >= 80% on touch over 50 episodes, so at least
    # one of three succeeding is a check that the loop works, not a coin toss.
    assert report["summary"]["touch"]["successes"] >= 1, report["episodes"]
    for ep in report["episodes"]:
        assert ep["outcome"] in ("succeeded", "timeout"), ep
        if ep["success"]:
            assert 0.5 < ep["sim_seconds"] < 10.0, ep
    policy_log = (out / "logs" / "policy_node.log").read_text()
    assert "action space ee_delta, output twist" in policy_log
    assert "| touch | 3 |" in run.stdout


def test_closed_loop_report_summarizes_per_family_without_ros(tmp_path):
    import sys

    from vla_ros.evaluation.closed_loop import episode_plan, episode_record, format_table, write_report
    code = "import sys, vla_ros.evaluation.closed_loop; sys.exit('rclpy' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0
    plan = list(episode_plan(["touch", "push"], 2, 100_000))
    assert plan == [("touch", 100000), ("touch", 100001), ("push", 100000), ("push", 100001)]
    outcomes = ["succeeded", "timeout", "succeeded", "succeeded"]
    results = [episode_record(f, s, "train", "touch the red cube", o, 12, 1.5 + i, 2.0)
               for i, ((f, s), o) in enumerate(zip(plan, outcomes))]
    report = write_report(tmp_path, results, ["touch", "push"], checkpoint="ckpt", server="", phrasing="train",
                          seed=100_000, episodes=2, timeout=10.0, real_time_factor=1.0, params_file="p.yaml",
                          wall_seconds=12.34)
    assert json.loads((tmp_path / "report.json").read_text()) == report
    assert report["summary"]["touch"] == {"episodes": 2, "successes": 1, "success_rate": 0.5,
                                          "mean_sim_seconds_success": 1.5}
    assert report["summary"]["push"]["success_rate"] == 1.0 and report["server"] is None
    table = format_table(report)
    assert "| touch | 2 | 1 | 50% |" in table and "| push | 2 | 2 | 100% |" in table


def test_listening_probe_plan_and_per_scene_scoring_without_ros(tmp_path):
    from vla_ros.evaluation.closed_loop import (episode_record, format_probe_table, probe_plan, summarize_probe,
                                               write_probe_report)
    plan = list(probe_plan(["touch", "push"], 2, 100_000))
    assert plan[:3] == [("touch", 100000, 0, ""), ("touch", 100000, 1, ""), ("touch", 100000, 2, "")]
    assert plan[6:9] == [("push", 100000, -1, "forward"), ("push", 100000, -1, "left"), ("push", 100000, -1, "right")]
    assert len(plan) == 12
    # touch: scene 100000 all three objects, scene 100001 only two of three -> 1 of 2 scenes.
    # push: a policy that always pushes left succeeds once per scene -> 0 scenes, 2 of 6 variants.
    ok = {("touch", 100001, 2, ""), ("push", 100000, -1, "forward"), ("push", 100000, -1, "right"),
          ("push", 100001, -1, "forward"), ("push", 100001, -1, "right")}
    results = []
    for family, seed, target, direction in plan:
        ep = episode_record(family, seed, "train", "x", "timeout" if (family, seed, target, direction) in ok
                            else "succeeded", 10, 2.0, 2.0)
        ep["target"], ep["direction"] = (target if target >= 0 else 1), direction
        results.append(ep)
    summary = summarize_probe(results, ["touch", "push"])
    assert summary["touch"]["scenes"] == 2 and summary["touch"]["scenes_all_succeeded"] == 1
    assert summary["touch"]["per_scene_rate"] == 0.5 and summary["touch"]["per_variant_rate"] == round(5 / 6, 4)
    assert summary["touch"]["by_variant"]["object 2"] == {"episodes": 2, "successes": 1, "success_rate": 0.5}
    assert summary["push"]["per_scene_rate"] == 0.0 and summary["push"]["variant_successes"] == 2
    assert summary["push"]["by_variant"]["left"]["success_rate"] == 1.0
    assert summary["push"]["by_variant"]["right"]["success_rate"] == 0.0
    report = write_probe_report(tmp_path, results, ["touch", "push"], checkpoint="ckpt", server="", phrasing="train",
                                seed=100_000, scenes=2, timeout=10.0, real_time_factor=1.0, params_file="p.yaml",
                                wall_seconds=3.0)
    assert json.loads((tmp_path / "probe.json").read_text()) == report
    table = format_probe_table(report)
    assert "| touch | target | 2 | 1 | 50% | 5/6 | 83% |" in table
    assert "| push | direction | 2 | 0 | 0% | 2/6 | 33% |" in table
    assert "push per variant: forward 0/2, left 2/2, right 0/2" in table


def test_listening_probe_runs_each_object_and_direction_on_one_scene_through_the_ros_graph(tmp_path):
    out, report_file = tmp_path / "probe", tmp_path / "probe.json"
    cmd = executable("vla-ros", "eval", "--probe", "--checkpoint", str(CHECKPOINT), "--episodes", "1",
                     "--families", "touch", "push", "--phrasing", "newwords", "--timeout", "8", "--out", str(out),
                     "--json", str(report_file))
    run = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=str(ROOT))
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(report_file.read_text())
    assert report == json.loads((out / "probe.json").read_text()) and report["phrasing"] == "newwords"
    touch = [e for e in report["episodes"] if e["family"] == "touch"]
    push = [e for e in report["episodes"] if e["family"] == "push"]
    assert [e["target"] for e in touch] == [0, 1, 2] and {e["seed"] for e in report["episodes"]} == {100000}
    assert len({e["instruction"] for e in touch}) == 3  # a different colour named each time
    assert [e["direction"] for e in push] == ["forward", "left", "right"] and len({e["target"] for e in push}) == 1
    for ep in report["episodes"]:
        assert ep["outcome"] in ("succeeded", "timeout"), ep
    assert report["summary"]["touch"]["variants"] == 3 and report["summary"]["push"]["scenes"] == 1
    assert "| touch | target | 1 |" in run.stdout and "push per variant:" in run.stdout
