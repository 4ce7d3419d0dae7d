"""The policy node as a client of a remote policy server (model.server), across processes over loopback.

The server is a stand-in for an openpi server (test/openpi_standin_server.py: openpi_client's own
msgpack helpers, websockets, a stand-in policy) in its own process; the node runs as its own
process with the joint-space sim Panda parameters against the test-side robot stand-in. The
mapping is DROID-style (openpi's examples/droid keys, images padded to 224 x 224).
"""
import json
import signal
import sys
import time

import numpy as np
import pytest
from lifecycle_msgs.msg import Transition
from lifecycle_msgs.srv import ChangeState, GetState

from controller_standin import PANDA_HOME, RobotStandIn
from ros_testing import ROOT, RosProcess, call_service, wait_for, wait_future, wait_quiet
from test_policy_node import LOWER, MAX_STEP, UPPER, instruct, start_node, wait_active

MAPPING = """
name: droid_style_test
server:
  require: {}
observation:
  prompt: prompt
  images:
    - {key: observation/exterior_image_1_left, camera: front, size: [224, 224], resize: pad, layout: hwc}
  state:
    - {key: observation/joint_position, joints: robot}
    - {key: observation/gripper_position, value: [0.0]}
actions:
  key: actions
  chunk_size: 8
  columns: [0, 1, 2, 3, 4, 5, 6]
"""


@pytest.fixture
def robot():
    r = RobotStandIn()
    yield r
    r.close()


class StandInServer:
    def __init__(self, tmp_path, name="server", port=0, mode="ok", delay=0.0, metadata=None, horizon=10):
        self.port_file = tmp_path / f"{name}.port"
        self.record = tmp_path / f"{name}.jsonl"
        args = [sys.executable, str(ROOT / "test" / "openpi_standin_server.py"), "--port", str(port),
                "--port-file", str(self.port_file), "--mode", mode, "--delay", str(delay),
                "--record", str(self.record), "--horizon", str(horizon), "--metadata", json.dumps(metadata or {})]
        self.proc = RosProcess(args, tmp_path / f"{name}.log")
        wait_for(self.port_file.exists, what="stand-in server listening", process=self.proc)
        self.port = int(self.port_file.read_text())
        self.uri = f"ws://127.0.0.1:{self.port}"

    def seen(self) -> list[dict]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines() if line.strip()]

    def stop(self, sig=signal.SIGINT):
        return self.proc.stop(sig)


@pytest.fixture
def servers():
    started = []
    yield lambda *a, **k: started.append(StandInServer(*a, **k)) or started[-1]
    for s in started:
        s.stop(signal.SIGKILL)


def remote_node(tmp_path, uri, *overrides, mapping=MAPPING, name="policy_node"):
    path = tmp_path / "mapping.yaml"
    path.write_text(mapping)
    return start_node(tmp_path, f"model.server:={uri}", f"model.server_mapping:={path}",
                      "output.mode:=forward_position", "control.inference_timeout:=0.5", *overrides, name=name)


def test_node_drives_the_arm_from_an_openpi_style_server_through_the_mapping(robot, tmp_path, servers):
    server = servers(tmp_path)
    with remote_node(tmp_path, server.uri) as proc:
        wait_active(robot, proc)
        assert f"remote {server.uri}" in proc.output()
        instruct(robot, proc, "touch the red cube")
        wait_for(lambda: robot.counts()["fwd"] >= 20, what="20 forward_position commands", process=proc)
    seen = server.seen()
    assert seen, "the server got no observation"
    first = seen[0]
    assert first["keys"] == ["observation/exterior_image_1_left", "observation/gripper_position",
                             "observation/joint_position", "prompt"]
    assert first["observation/exterior_image_1_left"]["shape"] == [224, 224, 3]  # 64 x 64 camera, padded
    assert first["observation/exterior_image_1_left"]["dtype"] == "uint8"
    assert first["observation/joint_position"]["dtype"] == "float32"
    np.testing.assert_allclose(first["observation/joint_position"]["values"], PANDA_HOME, atol=1e-5)
    assert first["observation/gripper_position"]["values"] == [0.0] and first["prompt"] == "touch the red cube"
    cmds = np.array([m.data for m in robot.received("fwd")])
    assert np.all(np.isfinite(cmds)) and np.all(cmds >= LOWER - 1e-9) and np.all(cmds <= UPPER + 1e-9)
    assert np.all(np.abs(np.diff(cmds, axis=0)) <= MAX_STEP + 1e-9)
    assert cmds[-1][0] > PANDA_HOME[0] + 0.01  # the stand-in policy moves joint 1 forward
    np.testing.assert_allclose(cmds[-1][1:], PANDA_HOME[1:], atol=1e-6)


def test_unreachable_server_fails_configure_with_one_clear_line_and_the_node_stays_unconfigured(robot, tmp_path):
    uri = "ws://127.0.0.1:9"  # discard port: nothing listens there
    with remote_node(tmp_path, uri, "autostart:=false", "model.server_timeout:=2.0") as proc:
        change = robot.node.create_client(ChangeState, "policy_node/change_state")
        get = robot.node.create_client(GetState, "policy_node/get_state")
        assert change.wait_for_service(timeout_sec=60) and get.wait_for_service(timeout_sec=60)
        res = wait_future(change.call_async(ChangeState.Request(
            transition=Transition(id=Transition.TRANSITION_CONFIGURE))), 60.0, "configure answer")
        assert not res.success
        assert call_service(get, GetState.Request()).current_state.label == "unconfigured"
        wait_for(lambda: f"configure failed: cannot use the policy server at {uri}" in proc.output(),
                 what="the configure error", process=proc)
        assert proc.alive()


def test_metadata_that_does_not_fit_the_robot_is_refused_at_configure_naming_each_difference(robot, tmp_path,
                                                                                             servers):
    meta = {"server": "vla_ros", "protocol_version": 1, "action_names": ["x", "y", "z", "roll", "pitch", "yaw", "g"],
            "action_dim": 7, "action_space": "ee_delta", "chunk_size": 8, "period": 0.1,
            "image_keys": ["observation/images/front"], "state_names": ["panda_joint1"],
            "state_key": "observation/state", "prompt_key": "prompt"}
    server = servers(tmp_path, metadata=meta)
    mapping = (ROOT / "config" / "remote" / "vla_ros.yaml").read_text()
    with remote_node(tmp_path, server.uri, mapping=mapping) as proc:
        wait_for(lambda: not proc.alive(), what="the node to exit", process=None)
        out = proc.output()
    assert proc.proc.returncode == 2
    line = next(ln for ln in out.splitlines() if "configure failed" in ln)
    for text in ("action names (server vs robot): 'x' vs 'panda_joint1'",
                 "action space: server 'ee_delta', robot action_space 'joint_position'",
                 "control period: server 0.1 s, robot control.rate 30 Hz"):
        assert text in line, line
    assert not server.seen()  # refused before any observation was sent


def test_connection_lost_mid_goal_holds_the_arm_then_reconnects_and_resumes(robot, tmp_path, servers):
    server = servers(tmp_path)
    with remote_node(tmp_path, server.uri) as proc:
        wait_active(robot, proc)
        instruct(robot, proc, "touch the red cube")
        wait_for(lambda: robot.counts()["fwd"] >= 10, what="commands before the fault", process=proc)
        server.stop(signal.SIGKILL)
        wait_for(lambda: "connection lost from the policy server" in proc.output(), what="the lost connection",
                 process=proc)
        held = wait_quiet(lambda: robot.counts()["fwd"], quiet=1.0, what="the arm to hold")
        wait_for(lambda: "cannot reconnect" in proc.output(), what="reconnect attempts", process=proc)
        again = servers(tmp_path, name="server2", port=server.port)
        wait_for(lambda: "reconnected to the policy server" in proc.output(), what="the reconnect", process=proc)
        wait_for(lambda: robot.counts()["fwd"] >= held + 10, what="commands after the reconnect", process=proc)
        assert again.seen()
        out = proc.output()
    # one error line per fault (and the hold that names it), not one per request
    assert out.count("inference failed: ConnectionError: connection lost from the policy server") == 1
    # the server dying also never killed the node's own policy server process
    assert "policy server (pid" not in out.split("configured:")[1]


@pytest.mark.parametrize("mode, line", [
    ("nan", "the server returned non-finite actions (NaN/inf); refused"),
    ("short", "the server returned actions of shape [7, 7]; expected at least [8, 7]"),
])
def test_non_finite_or_short_chunks_are_refused_with_one_line_and_the_arm_holds(robot, tmp_path, servers, mode,
                                                                                 line):
    server = servers(tmp_path, mode=mode, horizon=8)  # "short": 7 rows where the mapping uses 8
    with remote_node(tmp_path, server.uri) as proc:
        wait_active(robot, proc)
        instruct(robot, proc, "touch the red cube")
        wait_for(lambda: len(server.seen()) >= 5, what="several requests answered", process=proc)
        out = proc.output()
    assert out.count(f"inference failed: ValueError: {line}") == 1, out[-3000:]  # the error line, once
    assert robot.counts()["fwd"] == 0


@pytest.mark.parametrize("execution", ["ensemble", "realtime"])
def test_a_server_slower_than_the_chunk_lasts_makes_the_arm_hold_and_is_reported(robot, tmp_path, servers,
                                                                                 execution):
    # 8 actions at 30 Hz last 0.27 s; the server takes 0.4 s per answer (under the 0.5 s inference timeout)
    server = servers(tmp_path, mode="slow", delay=0.4)
    with remote_node(tmp_path, server.uri, f"control.execution:={execution}") as proc:
        wait_active(robot, proc)
        instruct(robot, proc, "touch the red cube")
        wait_for(lambda: "longer than a chunk lasts (8 x 33 ms = 267 ms): the arm will hold between chunks"
                 in proc.output(), what="the slow-server warning", process=proc)
        wait_for(lambda: len(server.seen()) >= 4, what="more slow answers", process=proc)
        if execution == "realtime":
            wait_for(lambda: "holding the arm: action queue ran dry" in proc.output(), what="the queue-dry hold",
                     process=proc)
        out = proc.output()
    if execution == "ensemble":
        # every chunk is in the past by the time it arrives (placed by its frame's stamp): nothing is executed late
        assert robot.counts()["fwd"] == 0
    else:
        # realtime: a chunk computed while the arm held still runs from its first action (nothing in it is
        # stale), the arm then holds while the next one is late; the node never sends more than it was given
        assert 0 < robot.counts()["fwd"] <= 8 * len(server.seen())
    assert out.count("longer than a chunk lasts") == 1
