"""The policy server process (policy_server.py), its client (PolicyProcess) and the wire (ipc.py).

Real subprocesses and real forward passes of the untrained `tiny` preset. Untrained weights are
drawn from torch's global RNG, so two processes never build the same ones: the equality tests
save one policy to a checkpoint and let both the server and this process load it.

No fixed sleeps: every wait is on a condition the callbacks set, with a generous deadline. The
only processes signalled are the servers these tests started, by pid.
"""
import glob
import itertools
import os
import re
import signal
import threading

import numpy as np
import pytest
import torch

from vla_ros.model import save_policy
from vla_ros.runtime.controller import Observation
from vla_ros.runtime.policy_client import SLOTS, PolicyProcess
from vla_ros.runtime.policy_loader import PolicyLoadError, load_engine

JOINTS = [f"panda_joint{i}" for i in range(1, 8)]
CAMS4 = ["front", "wrist", "left", "right"]
INSTRUCTION = "pick up the red cube"
DEADLINE = 60.0
_ids = itertools.count(1)


def load_cfg(**overrides) -> dict:
    cfg = dict(checkpoint="", preset="tiny", action_names=JOINTS, action_dim=7, state_names=JOINTS,
               camera_names=["front"], threads=1, device="cpu", warmup=1)
    cfg.update(overrides)
    return cfg


def observation(images, state=None, instruction=INSTRUCTION) -> Observation:
    if state is None:
        state = np.linspace(-1.0, 1.0, 7).astype(np.float32)
    return Observation(next(_ids), list(images), instruction, state, 0.0, None, 0)


class Recorder:
    """The client's callbacks; `wait(pred)` blocks until pred() holds (or fails the test)."""

    def __init__(self):
        self.cv = threading.Condition()
        self.reset()

    def reset(self):
        with self.cv:
            self.results: dict[int, np.ndarray] = {}
            self.failures: list[tuple[int | None, str]] = []
            self.logs: list[tuple[str, str]] = []

    def on_result(self, obs, actions, latency):
        assert latency >= 0
        with self.cv:
            self.results[obs.request_id] = actions
            self.cv.notify_all()

    def on_failure(self, obs, error):
        with self.cv:
            self.failures.append((None if obs is None else obs.request_id, error))
            self.cv.notify_all()

    def log(self, level, text):
        with self.cv:
            self.logs.append((level, text))
            self.cv.notify_all()

    def wait(self, pred, what: str):
        with self.cv:
            assert self.cv.wait_for(pred, timeout=DEADLINE), f"timed out waiting for {what}"

    def answer(self, obs) -> np.ndarray:
        self.wait(lambda: obs.request_id in self.results or any(i == obs.request_id for i, _ in self.failures),
                  f"an answer to request {obs.request_id}")
        with self.cv:
            assert obs.request_id in self.results, f"request failed: {self.failures}"
            return self.results[obs.request_id]

    def failure(self, obs) -> str:
        self.wait(lambda: obs.request_id in self.results or any(i == obs.request_id for i, _ in self.failures),
                  f"an answer to request {obs.request_id}")
        with self.cv:
            assert obs.request_id not in self.results, "the request succeeded"
            return next(e for i, e in self.failures if i == obs.request_id)


def memfd_links(pid) -> set[str]:
    """Targets of pid's descriptors that are vla_ros memory files."""
    out = set()
    d = f"/proc/{pid}/fd"
    for fd in os.listdir(d):
        try:
            target = os.readlink(f"{d}/{fd}")
        except OSError:
            continue
        if target.startswith("/memfd:vla_ros"):
            out.add(target)
    return out


def memfd_inodes(pid) -> set[int]:
    """The vla_ros memory files pid holds open (by inode: a mapping holds a second descriptor)."""
    out = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        path = f"/proc/{pid}/fd/{fd}"
        try:
            if os.readlink(path).startswith("/memfd:vla_ros"):
                out.add(os.stat(path).st_ino)
        except OSError:
            pass
    return out


def server_children() -> set[int]:
    """Pids of this process's children running the policy server."""
    me, out = os.getpid(), set()
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == me and b"vla_ros.runtime.policy_server" in cmd:
            out.add(int(pid))
    return out


@pytest.fixture(scope="module")
def torch_one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _save_checkpoint(path, cameras):
    torch.manual_seed(0)
    engine = load_engine("", "tiny", JOINTS, 7, JOINTS, cameras, device="cpu", warmup=0, log=lambda _t: None)
    save_policy(engine.engine.policy, path)
    return str(path)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory, torch_one_thread):
    return _save_checkpoint(tmp_path_factory.mktemp("ckpt1"), ["front"])


@pytest.fixture(scope="module")
def reference(ckpt):
    """The same checkpoint, in this process."""
    return load_engine(ckpt, "tiny", JOINTS, 7, JOINTS, ["front"], device="cpu", warmup=0, log=lambda _t: None)


@pytest.fixture(scope="module")
def served(ckpt):
    """One server for the tests that leave it serving; each test gets a fresh Recorder (see `rec`)."""
    rec = Recorder()
    proc = PolicyProcess(load_cfg(checkpoint=ckpt), rec.on_result, rec.on_failure, rec.log)
    meta = proc.start()
    yield proc, rec, meta
    proc.close()


@pytest.fixture
def server(served):
    proc, rec, _ = served
    rec.reset()
    assert proc.can_submit()
    return proc, rec


@pytest.fixture
def own_servers():
    """PolicyProcesses a test starts itself; closed afterwards (and SIGCONT first, in case one is stopped)."""
    started = []
    yield started
    for p in started:
        child = p._proc
        if child is not None and child.poll() is None:  # still our unreaped child: the pid is its
            os.kill(child.pid, signal.SIGCONT)
        p.close()


def rng_images(rng, *shapes, dtype=np.uint8):
    return [rng.integers(0, 256, size=s, dtype=dtype) for s in shapes]


# ----------------------------------------------------------------------------- results


def test_ready_metadata(served):
    _, _, meta = served
    assert meta["type"] == "ready"
    assert meta["action_names"] == JOINTS and meta["state_names"] == JOINTS
    assert meta["chunk_size"] == 8 and meta["action_dim"] == 7 and meta["device"] == "cpu"


def test_server_chunk_equals_in_process_engine(server, reference):
    proc, rec = server
    rng = np.random.default_rng(0)
    for instruction in (INSTRUCTION, "open the drawer"):
        img = rng_images(rng, (64, 64, 3))[0]
        state = rng.uniform(-1, 1, 7).astype(np.float32)
        obs = observation([img], state, instruction)
        assert proc.submit(obs)
        got = rec.answer(obs)
        want = reference.infer([img], instruction, state).actions
        assert got.shape == (8, 7) and got.dtype == np.float64
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    assert not rec.failures


def test_images_of_changing_sizes_grow_the_buffers(server, reference):
    proc, rec = server
    rng = np.random.default_rng(1)
    big = rng_images(rng, (480, 640, 3))[0]
    frames = [
        rng_images(rng, (64, 64, 3))[0],
        big,                                   # 14x the bytes: new buffers
        rng_images(rng, (48, 80, 3))[0],       # smaller again: the big buffer is reused
        big[::2, ::-3],                        # not contiguous (a view): copied in
        rng_images(rng, (72, 96))[0],          # grayscale
        rng_images(rng, (60, 60, 4))[0],       # rgba
        rng_images(rng, (50, 70, 3), dtype=np.uint16)[0] * 200,  # 16 bit
    ]
    state = np.full(7, 0.25, np.float32)
    for img in frames:
        obs = observation([img], state)
        assert proc.submit(obs)
        np.testing.assert_allclose(rec.answer(obs), reference.infer([img], INSTRUCTION, state).actions,
                                   rtol=0, atol=1e-5, err_msg=f"{img.shape} {img.dtype}")
    assert not rec.failures


def test_four_cameras_of_different_sizes(tmp_path, own_servers, torch_one_thread):
    ckpt4 = _save_checkpoint(tmp_path / "ckpt4", CAMS4)
    ref = load_engine(ckpt4, "tiny", JOINTS, 7, JOINTS, CAMS4, device="cpu", warmup=0, log=lambda _t: None)
    rec = Recorder()
    proc = PolicyProcess(load_cfg(checkpoint=ckpt4, camera_names=CAMS4), rec.on_result, rec.on_failure, rec.log)
    own_servers.append(proc)
    proc.start()
    rng = np.random.default_rng(2)
    state = np.zeros(7, np.float32)
    for shapes in (
        [(64, 64, 3)] * 4,
        [(480, 640, 3), (64, 64, 3), (240, 320, 3), (480, 640, 3)],
        [(32, 48, 3), (480, 640, 3), (480, 640, 3), (16, 16, 3)],
    ):
        images = rng_images(rng, *shapes)
        obs = observation(images, state)
        assert proc.submit(obs)
        np.testing.assert_allclose(rec.answer(obs), ref.infer(images, INSTRUCTION, state).actions,
                                   rtol=0, atol=1e-5, err_msg=str(shapes))
    assert not rec.failures


# ----------------------------------------------------------------------------- failures


@pytest.mark.parametrize("images, state, message", [
    ([np.zeros((64, 64, 5), np.uint8)], None, r"ValueError: expected an H x W.*got shape \(64, 64, 5\)"),
    ([np.zeros((64, 64, 3), np.uint8)], np.zeros(3, np.float32), r"ValueError: state must have shape \(1, 7\)"),
    ([np.zeros((64, 64, 3), np.uint8)] * 2, None, r"ValueError: expected 1 images"),
], ids=["five_channels", "short_state", "two_cameras"])
def test_bad_request_fails_and_the_server_keeps_serving(server, reference, images, state, message):
    proc, rec = server
    pid = proc.pid
    bad = observation(images, state)
    assert proc.submit(bad)
    error = rec.failure(bad)
    assert re.search(message, error), error
    img = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    good = observation([img])
    assert proc.submit(good)
    np.testing.assert_allclose(rec.answer(good), reference.infer([img], INSTRUCTION, good.state).actions, atol=1e-5)
    assert proc.pid == pid and proc.restarts == 0
    assert rec.failures == [(bad.request_id, error)]


@pytest.mark.parametrize("overrides, message", [
    (dict(checkpoint="/nonexistent/vla_ros_checkpoint"), "checkpoint directory '/nonexistent/vla_ros_checkpoint' "
                                                         "does not exist"),
    (dict(action_names=[f"j{i}" for i in range(7)]), "but the robot expects ['j0', 'j1'"),
], ids=["missing_checkpoint", "action_names_do_not_fit"])
def test_load_error_raises_policy_load_error(ckpt, overrides, message):
    cfg = load_cfg(checkpoint=ckpt)
    cfg.update(overrides)
    rec = Recorder()
    before = server_children()
    proc = PolicyProcess(cfg, rec.on_result, rec.on_failure, rec.log)
    with pytest.raises(PolicyLoadError) as err:
        proc.start()
    assert message in str(err.value)
    assert server_children() - before == set()   # the server exited and was reaped
    assert not proc.can_submit() and not proc.submit(observation([np.zeros((8, 8, 3), np.uint8)]))
    assert not rec.failures
    proc.close()


@pytest.fixture(scope="module")
def killed():
    """One server killed while a request is in flight, restarted, serving, then closed: what was seen."""
    rec = Recorder()
    before = memfd_inodes(os.getpid())
    proc = PolicyProcess(load_cfg(warmup=0), rec.on_result, rec.on_failure, rec.log)  # untrained preset
    facts = {"rec": rec}
    try:
        proc.start()
        img = np.random.default_rng(4).integers(0, 256, (120, 160, 3), dtype=np.uint8)
        first = observation([img])
        assert proc.submit(first)
        rec.answer(first)
        small = observation([np.zeros((32, 32, 3), np.uint8)])  # a buffer in the other slot too
        assert proc.submit(small)
        rec.answer(small)
        facts["buffers_before"] = memfd_inodes(os.getpid()) - before
        facts["pid1"] = pid1 = proc.pid

        os.kill(pid1, signal.SIGSTOP)          # it cannot answer: the next request stays in flight
        facts["lost"] = lost = observation([img])
        assert proc.submit(lost)
        os.kill(pid1, signal.SIGKILL)
        facts["error"] = rec.failure(lost)
        rec.wait(lambda: any(t.startswith("policy server running again") for _, t in rec.logs), "the restart")
        facts["pid2"] = proc.pid
        facts["restarts"] = proc.restarts
        facts["pid1_in_proc"] = os.path.exists(f"/proc/{pid1}")
        facts["can_submit"] = proc.can_submit()
        again = observation([img])
        facts["submitted_again"] = proc.submit(again)
        facts["again"] = rec.answer(again)
    finally:
        child = proc._proc
        if child is not None and child.poll() is None:
            os.kill(child.pid, signal.SIGCONT)
        proc.close()
    facts["buffers_after_close"] = memfd_inodes(os.getpid()) - before
    return facts


def test_killed_server_fails_the_request_in_flight_and_is_restarted(killed):
    rec, pid1 = killed["rec"], killed["pid1"]
    assert any("UNTRAINED" in text for _, text in rec.logs)   # the server's log reaches the node
    assert killed["error"] == f"the policy server (pid {pid1}) exited with code -9"
    assert [i for i, _ in rec.failures] == [killed["lost"].request_id]  # once, for the request in flight
    assert killed["pid2"] not in (None, pid1) and killed["restarts"] == 1
    assert not killed["pid1_in_proc"]          # reaped
    assert killed["can_submit"] and killed["submitted_again"]
    assert killed["again"].shape == (8, 7)     # the new server serves


# On a restart after the server died, the client must close the image buffers it shared with the
# dead server: dropped unclosed, their descriptors (and the memory behind them) would stay open in
# the node for good, out of close()'s reach.
def test_restart_releases_the_previous_servers_buffers(killed):
    assert len(killed["buffers_before"]) == 2  # one buffer in each slot before the kill
    assert killed["buffers_after_close"] == set()


def test_close_ends_the_server(ckpt, own_servers):
    rec = Recorder()
    proc = PolicyProcess(load_cfg(checkpoint=ckpt), rec.on_result, rec.on_failure, rec.log)
    own_servers.append(proc)
    proc.start()
    pid = proc.pid
    assert pid in server_children()
    obs = observation([np.zeros((64, 64, 3), np.uint8)])
    assert proc.submit(obs)
    rec.answer(obs)
    held = memfd_inodes(os.getpid())
    proc.close()
    assert not os.path.exists(f"/proc/{pid}")  # exited and reaped
    assert pid not in server_children()
    assert not rec.failures                    # an ordered close is not a failure
    assert proc.restarts == 0
    assert not proc.can_submit() and not proc.submit(observation([np.zeros((64, 64, 3), np.uint8)]))
    assert len(held - memfd_inodes(os.getpid())) == 1  # the client closed its one buffer (1 camera, 1 slot used)


def test_image_buffers_are_memfd_not_dev_shm(server):
    proc, rec = server
    shm_before = set(glob.glob("/dev/shm/vla_ros*"))
    rng = np.random.default_rng(5)
    for shape in ((64, 64, 3), (480, 640, 3)):
        obs = observation(rng_images(rng, shape))
        assert proc.submit(obs)
        rec.answer(obs)
    assert glob.glob("/dev/shm/vla_ros*") == [] and not shm_before
    # Positive evidence: both processes hold the buffers as anonymous memory files.
    assert memfd_links(os.getpid())
    assert memfd_links(proc.pid)
    assert all(t.startswith("/memfd:vla_ros_") for t in memfd_links(proc.pid))


def test_requests_queued_while_busy_answer_the_newest(server, reference):
    proc, rec = server
    rng = np.random.default_rng(6)
    imgs = rng_images(rng, (64, 64, 3), (64, 64, 3))
    os.kill(proc.pid, signal.SIGSTOP)          # busy: both requests queue up in its socket
    try:
        older, newer = observation([imgs[0]]), observation([imgs[1]])
        assert proc.submit(older) and proc.submit(newer)
        assert not proc.can_submit()           # both buffer slots are taken
        assert not proc.submit(observation([imgs[0]]))
    finally:
        os.kill(proc.pid, signal.SIGCONT)
    np.testing.assert_allclose(rec.answer(newer), reference.infer([imgs[1]], INSTRUCTION, newer.state).actions,
                               atol=1e-5)
    with rec.cv:
        assert older.request_id not in rec.results  # answered "skipped": no callback
        assert not rec.failures
    # The skipped request freed its slot: two more can be sent at once, twice (answers come in
    # order, so once the newer is answered the older was answered or skipped before it).
    assert SLOTS == 2
    for _ in range(2):
        a, b = observation([imgs[1]]), observation([imgs[0]])
        assert proc.submit(a) and proc.submit(b)
        rec.answer(b)


def test_two_requests_without_waiting_both_answered_or_skipped(server):
    proc, rec = server
    rng = np.random.default_rng(7)
    big, small = rng_images(rng, (480, 640, 3), (64, 64, 3))
    first, second = observation([big]), observation([small])
    assert proc.submit(first) and proc.submit(second)
    second_actions = rec.answer(second)        # the newest is always answered
    assert second_actions.shape == (8, 7)
    with rec.cv:
        assert not rec.failures
        assert len(rec.results) in (1, 2)      # the first: a result, or skipped (no callback)


# Regression: the client replaces a buffer that is too small by one with a new key, and the server
# kept every outgrown buffer mapped until it exited (fixed: a new buffer names the one it replaces).
def test_server_releases_outgrown_buffers(server):
    proc, rec = server
    before = len(memfd_inodes(proc.pid))       # earlier tests on this shared server may have used 2 cameras
    for k in range(6):                        # larger than any earlier image: each outgrows its slot's buffer
        obs = observation([np.zeros((490 + 10 * k, 650 + 10 * k, 3), np.uint8)])
        assert proc.submit(obs)
        rec.answer(obs)
    assert len(memfd_inodes(proc.pid)) <= max(before, SLOTS)  # at most one buffer per slot and camera


# ----------------------------------------------------------------------------- the wire


def test_ipc_message_with_descriptors_and_nonblocking_recv():
    from vla_ros.runtime import ipc

    a, b = ipc.socket_pair()
    try:
        assert ipc.recv(b, block=False) == (None, [])
        buf = ipc.SharedBuffer.create("unit", 64)
        img = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
        buf.write(img)
        ipc.send(a, {"type": "infer", "x": [1, 2]}, [buf.fd])
        msg, fds = ipc.recv(b)
        assert msg == {"type": "infer", "x": [1, 2]} and len(fds) == 1
        remote = ipc.SharedBuffer.attach("unit", fds[0], 64)
        np.testing.assert_array_equal(remote.array([4, 4, 3], "uint8"), img)
        with pytest.raises(ValueError, match="holds 64 bytes"):
            remote.array([8, 8, 3], "uint8")
        remote.close()
        buf.close()
        with pytest.raises(ValueError, match="exceeds"):
            ipc.send(a, {"type": "x", "pad": "y" * ipc.MAX_MESSAGE})
        a.close()
        with pytest.raises(ipc.ChannelClosed):
            ipc.recv(b)
    finally:
        a.close()
        b.close()
