"""Where vla_ros' data files (config/, launch/, checkpoints/) live, installed or not."""
from __future__ import annotations

import os
from pathlib import Path


def share_dirs() -> list[Path]:
    """Directories that may hold config/ and checkpoints/, first match wins:

    1. ``$VLA_ROS_SHARE`` when set (e.g. ``install/vla_ros/share/vla_ros``);
    2. the source tree (the directory above this package);
    3. ``share/vla_ros`` of each ``AMENT_PREFIX_PATH`` entry (a colcon or dev-venv install).
    """
    dirs: list[Path] = []
    share = os.environ.get("VLA_ROS_SHARE")
    if share:
        dirs.append(Path(share))
    dirs.append(Path(__file__).resolve().parents[1])
    dirs += [Path(p) / "share" / "vla_ros" for p in os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep) if p]
    return dirs
