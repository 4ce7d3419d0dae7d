"""Helpers for tests that run real ROS 2 nodes: processes, spinning, waiting on conditions.

Tests wait on conditions (discovery, first message, goal accepted) with generous deadlines,
never on fixed sleeps.
"""
import glob
import os
import signal
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import rclpy
from rclpy.executors import SingleThreadedExecutor

ROOT = Path(__file__).resolve().parents[1]
DEADLINE = float(os.environ.get("VLA_ROS_TEST_DEADLINE", "60"))


class RosProcess:
    """A node (or any command) in its own process, with its output captured to a file."""

    def __init__(self, args, log_path: Path, env=None):
        self.log_path = Path(log_path)
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(
            args, stdout=self._log, stderr=subprocess.STDOUT, env=env or dict(os.environ),
            cwd=str(ROOT), start_new_session=True)

    def output(self) -> str:
        if not self._log.closed:  # still readable after stop()
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, sig=signal.SIGINT, timeout=15.0) -> int:
        """End the process we started (by its pid), politely first."""
        if self.proc.poll() is None:
            try:
                self.proc.send_signal(sig)
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=timeout)
        self._log.close()
        return self.proc.returncode


def python_script(path, *args: str):
    """The command line that runs a Python file with this interpreter."""
    return [sys.executable, str(path), *args]


def executable(name: str, *args: str):
    """The command line of an installed node executable (lib/vla_ros, as ros2 run finds it)."""
    prefix = Path(sys.prefix)
    path = prefix / "lib" / "vla_ros" / name
    if not path.exists():
        raise FileNotFoundError(f"{path} not installed: run make setup")
    return [str(path), *args]


@contextmanager
def ros_process(args, log_path, env=None):
    p = RosProcess(args, log_path, env)
    try:
        yield p
    finally:
        p.stop()


class SpinningNode:
    """An rclpy node in its own context, spun by a background thread."""

    def __init__(self, name: str):
        self.context = rclpy.context.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node(name, context=self.context)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self):
        while self.context.ok():
            try:
                self.executor.spin_once(timeout_sec=0.05)
            except Exception:  # context shut down under us
                if self.context.ok():
                    raise

    def close(self):
        self.executor.shutdown(timeout_sec=2.0)
        # Action servers and clients first: Node.destroy_node() leaves them (they hold the node's
        # handle), so their participant and goal services would outlive the test, and a later node
        # would count a second FollowJointTrajectory server.
        for waitable in list(self.node.waitables):
            destroy = getattr(waitable, "destroy", None)
            if destroy is not None:
                destroy()
        self.node.destroy_node()
        rclpy.shutdown(context=self.context)
        self._thread.join(timeout=5.0)


@contextmanager
def spinning_node(name: str):
    n = SpinningNode(name)
    try:
        yield n
    finally:
        n.close()


def wait_for(predicate, timeout: float = DEADLINE, what: str = "condition", process: RosProcess = None):
    """Poll predicate until it is truthy or the deadline passes (then fail with context)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if process is not None and not process.alive():
            raise AssertionError(f"process exited ({process.proc.returncode}) while waiting for {what}:\n"
                                 f"{process.output()[-4000:]}")
        time.sleep(0.01)
    extra = f"\nprocess output:\n{process.output()[-4000:]}" if process is not None else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}{extra}")


def wait_quiet(count, quiet: float = 0.5, timeout: float = DEADLINE, what: str = "commands to stop"):
    """Wait until count() has not changed for `quiet` seconds (the sender went silent); return it.

    Fails if the deadline passes first, i.e. if messages keep coming.
    """
    last, since = count(), time.monotonic()

    def settled():
        nonlocal last, since
        now_count = count()
        if now_count != last:
            last, since = now_count, time.monotonic()
        return time.monotonic() - since >= quiet

    wait_for(settled, timeout, what)
    return last


def wait_future(future, timeout: float = DEADLINE, what: str = "future"):
    wait_for(future.done, timeout, what)
    return future.result()


def call_service(client, request, what: str = "service response", attempt_timeout: float = 10.0,
                 timeout: float = DEADLINE):
    """Call a service and return its response, sending the request again when no response
    came within attempt_timeout: right after discovery the server's reply can be lost while
    its response writer has not yet matched the client's reader (Fast DDS), even though
    wait_for_service already succeeded. Only for requests that are safe to repeat."""
    end = time.monotonic() + timeout
    while True:
        future = client.call_async(request)
        try:
            return wait_future(future, min(attempt_timeout, max(0.0, end - time.monotonic())), what)
        except AssertionError:
            if time.monotonic() >= end:
                raise


def send_goal(action_client, goal, feedback_callback=None, what: str = "goal response",
              attempt_timeout: float = 10.0, timeout: float = DEADLINE):
    """Send a goal and return its handle, sending it again (a new goal id) when no response came
    within attempt_timeout: the goal response can be lost right after discovery, like a service
    reply (ros2/rclpy#1123). Only for goals that are safe to repeat."""
    end = time.monotonic() + timeout
    while True:
        future = action_client.send_goal_async(goal, feedback_callback=feedback_callback)
        try:
            return wait_future(future, min(attempt_timeout, max(0.0, end - time.monotonic())), what)
        except AssertionError:
            if time.monotonic() >= end:
                raise


SHM_GLOBS = ("/dev/shm/fastdds_*", "/dev/shm/sem.fastdds_*", "/dev/shm/fastrtps_*", "/dev/shm/sem.fastrtps_*")


def shm_files() -> set[str]:
    """Fast DDS shared-memory files (segments, ports, their semaphores) now in /dev/shm."""
    return {f for pattern in SHM_GLOBS for f in glob.glob(pattern)}


def shm_in_use() -> set[str]:
    """/dev/shm paths another live process has open or mapped (this process left out: Fast DDS
    keeps its own ports mapped until the process exits)."""
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


def remove_stale_shm(before: set[str]) -> None:
    """Remove the Fast DDS files that appeared since `before` and that no live process uses."""
    for f in shm_files() - before - shm_in_use():
        try:
            os.unlink(f)
        except OSError:
            pass


class RawCollector:
    """Raw (serialized) subscriptions in a spinning node: topic -> [(receive time, bytes)]."""

    def __init__(self, node, topics_qos):
        self.lock = threading.Lock()
        self.got = {t: [] for t in topics_qos}
        self.subs = [node.create_subscription(cls, topic, lambda d, t=topic: self._on(t, d), q, raw=True)
                     for topic, (cls, q) in topics_qos.items()]

    def _on(self, topic, data):
        with self.lock:
            self.got[topic].append((time.monotonic(), bytes(data)))

    def count(self, topic):
        with self.lock:
            return len(self.got[topic])

    def data(self, topic):
        with self.lock:
            return [d for _, d in self.got[topic]]

    def times(self, topic):
        with self.lock:
            return [t for t, _ in self.got[topic]]
