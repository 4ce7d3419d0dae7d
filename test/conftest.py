"""Test-session isolation for ROS 2: loopback discovery, a private domain, cleanup.

Imported by pytest before any test module, so the environment below is in place before
any rclpy context exists in this process or in a subprocess a test starts.
"""
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


def _fastrtps_2() -> bool:
    """Fast DDS 2.x (Jazzy, package fastrtps) reads only FASTRTPS_DEFAULT_PROFILES_FILE; 3.x
    (Kilted, package fastdds) reads FASTDDS_... and warns in every process that FASTRTPS_... is
    deprecated, so the old name is set only where it is needed."""
    from importlib import metadata
    try:
        return int(metadata.version("ros-fastrtps").split(".")[0]) < 3
    except (metadata.PackageNotFoundError, ValueError):
        return False


if _fastrtps_2():
    os.environ["FASTRTPS_DEFAULT_PROFILES_FILE"] = os.environ["FASTDDS_DEFAULT_PROFILES_FILE"]
else:
    os.environ.pop("FASTRTPS_DEFAULT_PROFILES_FILE", None)
os.environ.setdefault("VLA_ROS_SHARE", str(ROOT))
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ.setdefault("PYTHONHASHSEED", "0")

def pytest_sessionstart(session):
    from ros_testing import shm_files  # imported here: rclpy only after the environment above is set

    session.config._vla_ros_shm_before = shm_files()


def pytest_sessionfinish(session, exitstatus):
    """Remove the Fast DDS shared-memory files this session's processes left behind.

    Only files that appeared during the session and that no live process has open or
    mapped are removed: by now every process the tests started has been ended by its
    fixture, while another session's (or a demo's) nodes may still be using theirs.
    """
    from ros_testing import remove_stale_shm

    remove_stale_shm(getattr(session.config, "_vla_ros_shm_before", set()))

