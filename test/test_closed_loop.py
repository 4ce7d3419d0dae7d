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
