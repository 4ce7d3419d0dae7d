"""The repository builds with colcon as a ROS 2 workspace package, and runs from the install."""
import os
import subprocess

from ros_testing import ROOT


def test_colcon_lists_builds_and_runs_vla_ros_from_the_install(tmp_path):
    proc = subprocess.run([str(ROOT / "scripts" / "colcon_check.sh"), str(tmp_path / "ws")],
                          capture_output=True, text=True, timeout=900, env=dict(os.environ))
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-6000:]
    assert "vla_ros\tsrc/vla_ros\t(ros.ament_cmake)" in out, out
    assert "import from" in out and "[colcon-check] OK" in out
    installed = tmp_path / "ws" / "install" / "vla_ros"
    assert (installed / "share" / "ament_index" / "resource_index" / "packages" / "vla_ros").exists()
    assert (installed / "lib" / "vla_ros" / "policy_node").exists()
    assert (installed / "share" / "vla_ros" / "config" / "fastdds_localhost.xml").exists()
