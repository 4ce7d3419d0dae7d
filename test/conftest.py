"""Test-session isolation for ROS 2: loopback discovery, a private domain, cleanup.

Imported by pytest before any test module, so the environment below is in place before
any rclpy context exists in this process or in a subprocess a test starts.
"""
import glob
import os
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))  # test helpers (ros_testing.py)

# Discovery never leaves this machine (Jazzy and later ignore ROS_LOCALHOST_ONLY).
os.environ["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
# Each test session gets its own domain, so parallel sessions (or a running demo) never see
# each other's topics. Fast DDS ports limit usable domains to 0..232; stay within 120..219.
os.environ["ROS_DOMAIN_ID"] = os.environ.get("VLA_ROS_TEST_DOMAIN_ID", str(120 + os.getpid() % 100))
os.environ.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
os.environ.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", str(ROOT / "config" / "fastdds_localhost.xml"))
os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]
os.environ.setdefault("VLA_ROS_SHARE", str(ROOT))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("PYTHONHASHSEED", "0")

_SHM_GLOBS = ("/dev/shm/fastdds_*", "/dev/shm/sem.fastdds_*", "/dev/shm/fastrtps_*", "/dev/shm/sem.fastrtps_*")


def _shm_files():
    return {f for pattern in _SHM_GLOBS for f in glob.glob(pattern)}


def pytest_sessionstart(session):
    session.config._vla_ros_shm_before = _shm_files()


def _shm_in_use():
    """/dev/shm paths another live process has open or mapped (another session's nodes).

    This process is left out: Fast DDS keeps its shared-memory ports mapped until the
    process exits, and the session is ending.
    """
    used = set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/maps") as f:
                used.update(line.split(None, 5)[-1].strip() for line in f if "/dev/shm/" in line)
            for fd in os.listdir(f"/proc/{pid}/fd"):
                try:
                    target = os.readlink(f"/proc/{pid}/fd/{fd}")
                except OSError:
                    continue
                if target.startswith("/dev/shm/"):
                    used.add(target)
        except OSError:
            continue
    return used


def pytest_sessionfinish(session, exitstatus):
    """Remove the Fast DDS shared-memory files this session's processes left behind.

    Only files that appeared during the session and that no live process has open or
    mapped are removed: by now every process the tests started has been ended by its
    fixture, while another session's (or a demo's) nodes may still be using theirs.
    """
    before = getattr(session.config, "_vla_ros_shm_before", set())
    in_use = _shm_in_use()
    for f in _shm_files() - before - in_use:
        try:
            os.unlink(f)
        except OSError:
            pass

