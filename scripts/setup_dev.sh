#!/usr/bin/env bash
# Create or update the dev environment in .venv: ROS 2 Jazzy from PyPI wheels, torch, the
# project's Python dependencies, our interfaces (and control_msgs' where no real one is
# importable) generated with cmake into the venv, the package installed editable, and
# .venv/setup.bash to source. Idempotent: when nothing it depends on changed since the last
# successful run, it returns in about a second and changes nothing.
#
# Usage: scripts/setup_dev.sh [--force]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VLA_ROS_VENV:-$ROOT/.venv}"
PY_BOOT="${PYTHON:-python3}"
STAMP="$VENV/.vla_ros_setup_stamp"
BUILD="$ROOT/build/dev"
# Discovery never leaves this machine, not even during setup's import checks.
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST

log() { printf '[setup] %s\n' "$*"; }

inputs_hash() {
  # Everything the environment is made from (launch/ and config/ are installed into
  # .venv/share/vla_ros): change one and setup runs again.
  (cd "$ROOT" && cat requirements/*.txt scripts/setup_dev.sh scripts/executables.txt \
      scripts/executable.py.in CMakeLists.txt package.xml setup.py msg/* srv/* action/* \
      test/control_msgs/CMakeLists.txt test/control_msgs/package.xml test/control_msgs/msg/* \
      test/control_msgs/action/* launch/* config/*.xml config/*/* checkpoints/*/* && "$PY_BOOT" --version) | sha256sum | cut -d' ' -f1
}

HASH="$(inputs_hash)"
if [[ "${1:-}" != "--force" && -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" && -f "$VENV/setup.bash" ]]; then
  log "dev environment in $VENV is up to date (scripts/setup_dev.sh --force rebuilds it)"
  exit 0
fi

START=$(date +%s)
if [[ ! -x "$VENV/bin/python" ]]; then
  log "creating $VENV"
  "$PY_BOOT" -m venv "$VENV"
fi
PY="$VENV/bin/python"
PIP=("$PY" -m pip --disable-pip-version-check)

log "installing Python packages (requirements/dev.txt)"
"${PIP[@]}" install -q --upgrade pip 2>&1 | grep -v "is ignored" || true
"${PIP[@]}" install -q -r "$ROOT/requirements/dev.txt" 2>&1 | grep -vE "is ignored|^$" || true
"${PIP[@]}" install -q -r "$ROOT/requirements/dev.txt" >/dev/null 2>&1 || {
  "${PIP[@]}" install -r "$ROOT/requirements/dev.txt"; exit 1; }
# Packages whose declared requirements conflict with ours (see the file for why each is safe).
"${PIP[@]}" install -q --no-deps -r "$ROOT/requirements/no-deps.txt"

SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"

# The wheels' exported CMake files name the include directories of the machine that built
# them (/opt/python/cp311-cp311/include/python3.11 and its numpy); cmake refuses imported
# targets with non-existent paths, so point them at this interpreter's.
log "rewriting build-machine paths in the wheels' CMake files"
"$PY" - "$VENV" <<'EOF'
import pathlib, re, sys, sysconfig
import numpy
venv = pathlib.Path(sys.argv[1])
py_inc = sysconfig.get_paths()["include"]
np_inc = numpy.get_include()
pat_np = re.compile(r"/opt/python/cp\d+-cp\d+/lib/python3\.\d+/site-packages/numpy/(?:_core|core)/include")
pat_py = re.compile(r"/opt/python/cp\d+-cp\d+/include/python3\.\d+")
changed = 0
for f in (venv / "share").rglob("*.cmake"):
    text = f.read_text(errors="surrogateescape")
    new = pat_py.sub(py_inc, pat_np.sub(np_inc, text))
    if new != text:
        f.write_text(new, errors="surrogateescape")
        changed += 1
print(f"[setup] rewrote {changed} CMake files")
EOF

CMAKE_ARGS=(-DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV"
  -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release)
# Generated Python modules of our own package go to a directory of their own (put on
# sys.path by a .pth file below): the editable pip install owns vla_ros/ itself.
GEN_DIR_REL="lib/vla_ros_interfaces"
cmake_install() {  # <source dir> <build dir> [extra cmake args...]
  local src="$1" bld="$2"; shift 2
  cmake -S "$src" -B "$bld" "${CMAKE_ARGS[@]}" "$@" >"$bld.configure.log" 2>&1 || {
    cat "$bld.configure.log"; log "cmake configure of $src failed"; exit 1; }
  cmake --build "$bld" -j"$(nproc)" >"$bld.build.log" 2>&1 || {
    tail -50 "$bld.build.log"; log "cmake build of $src failed"; exit 1; }
  cmake --install "$bld" >"$bld.install.log" 2>&1 || {
    cat "$bld.install.log"; log "cmake install of $src failed"; exit 1; }
}
mkdir -p "$BUILD"

# control_msgs: the real one when it imports (a ROS install on the path), otherwise our
# copy of its definitions, built into this venv only.
if env -u PYTHONPATH AMENT_PREFIX_PATH="$VENV" "$PY" -c "import control_msgs.action" 2>/dev/null \
   && [[ ! -f "$VENV/share/control_msgs/vla_ros_dev_copy" ]]; then
  log "control_msgs is importable: using it"
else
  log "building control_msgs interface definitions (test/control_msgs) into $VENV"
  cmake_install "$ROOT/test/control_msgs" "$BUILD/control_msgs"
  touch "$VENV/share/control_msgs/vla_ros_dev_copy"
fi

log "generating vla_ros interfaces into $VENV"
cmake_install "$ROOT" "$BUILD/vla_ros" -DVLA_ROS_INSTALL_PYTHON_PACKAGE=OFF -DPYTHON_INSTALL_DIR="$GEN_DIR_REL"
# rosidl writes vla_ros/__init__.py there; remove it so that directory is a namespace
# portion that vla_ros/__init__.py (pkgutil.extend_path) joins, never a second vla_ros.
rm -f "$VENV/$GEN_DIR_REL/vla_ros/__init__.py"
rm -rf "$VENV/$GEN_DIR_REL"/vla_ros-*.egg-info
echo "$VENV/$GEN_DIR_REL" > "$SITE/vla_ros_interfaces.pth"

log "installing vla_ros (editable)"
# compat mode puts the checkout on sys.path (a .pth), so the path finder sees our regular
# package before it would settle for the generated namespace portion.
"${PIP[@]}" install -q --no-deps --no-build-isolation --config-settings editable_mode=compat -e "$ROOT" 2>&1 | grep -vE "is ignored|^$" || true

# Fast DDS 2.x (Jazzy) reads only FASTRTPS_DEFAULT_PROFILES_FILE; 3.x (Kilted) reads FASTDDS_...
# and warns in every process that FASTRTPS_... is deprecated: set the old name only for 2.x.
FASTRTPS_LINE=""
if "$VENV/bin/python" -c "import sys; from importlib import metadata as m; sys.exit(int(m.version('ros-fastrtps').split('.')[0]) >= 3)" 2>/dev/null; then
  FASTRTPS_LINE='export FASTRTPS_DEFAULT_PROFILES_FILE="$FASTDDS_DEFAULT_PROFILES_FILE"'
fi

log "writing $VENV/setup.bash"
cat > "$VENV/setup.bash" <<EOF
# Source this file for a shell with the vla_ros dev environment (written by scripts/setup_dev.sh).
source "$VENV/bin/activate"
export AMENT_PREFIX_PATH="$VENV\${AMENT_PREFIX_PATH:+:\$AMENT_PREFIX_PATH}"
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
# ROS 2 discovery stays on this machine (Jazzy and later ignore ROS_LOCALHOST_ONLY).
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
# A domain of our own unless the caller chose one.
export ROS_DOMAIN_ID="\${ROS_DOMAIN_ID:-42}"
# Shared-memory segment big enough for a 1280x720 rgb8 image, UDP on loopback only.
export FASTDDS_DEFAULT_PROFILES_FILE="\${FASTDDS_DEFAULT_PROFILES_FILE:-$ROOT/config/fastdds_localhost.xml}"
$FASTRTPS_LINE
export VLA_ROS_SHARE="$ROOT"
# Models ship offline; never reach for a model hub at run time.
export HF_HUB_OFFLINE=1
export TRANSFORMERS_OFFLINE=1
EOF

log "checking the environment"
( source "$VENV/setup.bash"
  python -c "import rclpy, vla_ros, vla_ros.msg, os; \
assert vla_ros.__file__ and vla_ros.__file__.startswith('$ROOT'), vla_ros.__path__; \
import vla_ros.msg, vla_ros.action, control_msgs.action; \
from vla_ros.msg import ActionChunk, PolicyStatus; from vla_ros.action import ExecuteInstruction; \
from vla_ros.srv import ResetEpisode; \
rclpy.init(); n = rclpy.create_node('vla_ros_setup_check'); n.create_publisher(ActionChunk, 'x', 1); \
n.destroy_node(); rclpy.shutdown(); print('[setup] rclpy, vla_ros and its interfaces import and work')" )

echo "$HASH" > "$STAMP"
log "done in $(( $(date +%s) - START )) s; venv size $(du -sh "$VENV" | cut -f1). Next: source $VENV/setup.bash"
