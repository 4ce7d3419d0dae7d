"""The short bad-input and fault campaign (benchmarks/robustness.py --quick) passes every kind:
the real node in its own process stays up, says what is wrong in one line, holds, recovers, and
never commands outside the robot's limits; then a 20 s soak with a deliberately wild policy sends
only commands within the position, velocity and acceleration limits. The full campaign (80 kinds
and a 10-minute soak): python benchmarks/robustness.py."""
import json
import subprocess
import sys

from ros_testing import ROOT


def test_quick_campaign_every_kind_survived_with_a_clear_line_and_a_wild_policy_stays_within_limits(tmp_path):
    out = tmp_path / "robustness.json"
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "robustness.py"), "--quick", "--out", str(out)],
                         cwd=str(ROOT), capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    report = json.loads(out.read_text())
    failed = [k for k in report["kinds"] if not k["pass"]]
    assert len(report["kinds"]) >= 12 and report["passed"] == len(report["kinds"]), (failed, run.stdout[-3000:])
    soak = report["soak"]
    limits = soak["limits"]
    # the wild policy drove the arm continuously (30 Hz for 20 s), at the limits, never past them
    assert soak["pass"] and limits["commands"] >= 300 and limits["violations"] == 0, (soak, run.stdout[-3000:])
    assert limits["max_velocity_used"] > 0.9  # it did ask for more than the limits allow
