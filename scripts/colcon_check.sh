#!/usr/bin/env bash
# Build this repository the way a ROS 2 user does (a workspace whose src/ holds it, colcon
# build), against the dev venv, then run executables from the colcon install.
# Needs the dev environment sourced (make colcon-check does that).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WS="${1:-$ROOT/build/colcon_ws}"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
mkdir -p "$WS/src"
ln -sfn "$ROOT" "$WS/src/vla_ros"
cd "$WS"
echo "[colcon-check] colcon list:"
colcon list
echo "[colcon-check] colcon build:"
start=$(date +%s)
colcon build --event-handlers console_cohesion- --cmake-args -DPython3_EXECUTABLE="$(command -v python)" -DBUILD_TESTING=OFF
echo "[colcon-check] built in $(( $(date +%s) - start )) s"
# What install/setup.bash would do on a ROS install (the wheels ship no local_setup scripts).
PREFIX="$WS/install/vla_ros"
export AMENT_PREFIX_PATH="$PREFIX:$AMENT_PREFIX_PATH"
export PYTHONPATH="$PREFIX/lib/python3.11/site-packages${PYTHONPATH:+:$PYTHONPATH}"
export LD_LIBRARY_PATH="$PREFIX/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset _ROS_WHEELS_BOOTSTRAP_COMPLETE
"$PREFIX/lib/vla_ros/vla-ros" info | grep -E "vla_ros.msg|control_msgs"
python - "$PREFIX" <<'PY'
import sys, vla_ros, vla_ros.msg, vla_ros.ros
prefix = sys.argv[1]
assert vla_ros.__file__.startswith(prefix), f"vla_ros imported from {vla_ros.__file__}, not the colcon install"
assert vla_ros.msg.__file__.startswith(prefix), vla_ros.msg.__file__
print(f"[colcon-check] vla_ros and vla_ros.msg import from {prefix}")
PY
ls "$PREFIX/share/ament_index/resource_index/packages/vla_ros" "$PREFIX/share/vla_ros/config" >/dev/null
echo "[colcon-check] OK"
