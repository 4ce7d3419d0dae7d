"""`vla-ros serve` (serve_policy) in its own process, driven by openpi's real client (openpi-client on PyPI).

The server serves a saved `tiny` preset (continuous head, simple text encoder: deterministic), so
its answers can be compared with the same checkpoint loaded in this process. It runs with a shared
token, as `--host 0.0.0.0` deployments should; everything listens on 127.0.0.1 only.
"""
import os
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest
import websockets.sync.client
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy

from ros_testing import ROOT, RosProcess, executable, wait_for

# openpi-client 0.1.2 opens its connection without a `with` block, which websockets 17.1+ warns about.
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")
TOKEN = "test-token-5f1c"
STATE_NAMES = [f"joint_{i}" for i in range(1, 8)] + ["gripper"]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from vla_ros.model.checkpoint import save_policy
    from vla_ros.model.config import load_preset
    from vla_ros.model.policy import build_policy
    from vla_ros.runtime.policy_loader import DEMO_INTERFACE

    import torch
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("serve")
    save_policy(build_policy(load_preset("tiny"), DEMO_INTERFACE), d / "ckpt")
    port_file = d / "port"
    env = dict(os.environ, VLA_ROS_TEST_TOKEN=TOKEN)
    proc = RosProcess(executable("serve_policy", "--checkpoint", str(d / "ckpt"), "--port", "0", "--threads", "1",
                                 "--ready-file", str(port_file), "--token-env", "VLA_ROS_TEST_TOKEN",
                                 "--max-image-side", "1024"), d / "serve.log", env=env)
    try:
        wait_for(lambda: port_file.exists() and port_file.read_text().strip(), what="serve_policy listening",
                 process=proc)
        yield {"port": int(port_file.read_text()), "ckpt": str(d / "ckpt"), "proc": proc}
    finally:
        assert proc.stop() == 0, proc.output()[-3000:]


def observation(seed=0, size=(120, 160)):
    rng = np.random.default_rng(seed)
    return {"observation/images/front": rng.integers(0, 256, size=(*size, 3), dtype=np.uint8),
            "observation/state": rng.uniform(-1, 1, 8).astype(np.float32), "prompt": "pick up the red cube"}


def client(server):
    return WebsocketClientPolicy("127.0.0.1", server["port"], api_key=TOKEN)


def test_openpi_client_gets_metadata_and_the_same_chunk_as_the_checkpoint_run_locally(server):
    from vla_ros.runtime.policy_loader import load_engine_for_checkpoint

    c = client(server)
    meta = c.get_server_metadata()
    assert meta["server"] == "vla_ros" and meta["protocol_version"] == 1
    assert meta["action_names"] == ["x", "y", "z", "roll", "pitch", "yaw", "gripper"] and meta["chunk_size"] == 8
    assert meta["cameras"] == ["front"] and meta["image_keys"] == ["observation/images/front"]
    assert meta["state_names"] == STATE_NAMES and meta["image_size"] == 64 and meta["instruction_free"] is False
    local = load_engine_for_checkpoint(server["ckpt"], device="cpu", warmup=0)
    for seed in range(3):
        obs = observation(seed)
        reply = c.infer(obs)
        want = local.infer([obs["observation/images/front"]], obs["prompt"], obs["observation/state"]).actions
        assert reply["actions"].dtype == np.float32 and reply["actions"].shape == (8, 7)
        np.testing.assert_allclose(reply["actions"], want, rtol=1e-5, atol=1e-5)
        assert reply["server_timing"]["infer_ms"] > 0 and "decode_ms" in reply["server_timing"]
        assert reply["policy_timing"]["total"] > 0
        if seed:
            assert reply["server_timing"]["prev_total_ms"] > 0


def _object_array() -> bytes:
    """An observation whose image claims an object dtype: what a pickle-based array would need."""
    obs = observation()
    obs["observation/images/front"] = {b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": "|O", b"shape": [1]}
    return msgpack.packb(obs, default=msgpack_numpy.pack_array)


BAD = {
    "missing_image": (lambda o: o.pop("observation/images/front"), "missing key 'observation/images/front'"),
    "missing_prompt": (lambda o: o.pop("prompt"), "missing or empty 'prompt'"),
    "image_float": (lambda o: o.update({"observation/images/front": np.zeros((64, 64, 3), np.float32)}),
                    "must be a uint8 H x W x 3 RGB array, got float32 array of shape [64, 64, 3]"),
    "image_chw": (lambda o: o.update({"observation/images/front": np.zeros((3, 64, 64), np.uint8)}),
                  "must be a uint8 H x W x 3 RGB array"),
    "image_oversized": (lambda o: o.update({"observation/images/front": np.zeros((2048, 32, 3), np.uint8)}),
                        "is 32 x 2048 pixels; each side must be in [16, 1024]"),
    "state_wrong_shape": (lambda o: o.update({"observation/state": np.zeros(3, np.float32)}),
                          "'observation/state' must be a numeric array of shape (8,)"),
    "state_nan": (lambda o: o.update({"observation/state": np.full(8, np.nan, np.float32)}), "non-finite"),
    "not_a_map": (lambda o: "a string observation", "an observation must be a map"),
}


@pytest.mark.parametrize("name", list(BAD))
def test_malformed_requests_get_an_error_reply_and_the_connection_keeps_serving(server, name):
    change, text = BAD[name]
    c = client(server)
    obs = observation()
    bad = change(obs)
    with pytest.raises(RuntimeError, match="Error in inference server") as err:
        c.infer(obs if name != "not_a_map" else bad)
    assert text in str(err.value)
    assert c.infer(observation(1))["actions"].shape == (8, 7)  # same connection, next request served


@pytest.mark.parametrize("payload, text", [
    (b"\xc1\x80\x00 not msgpack", "not a msgpack message"),
    (b"\x80\x04\x95 pickle protocol 4", "not a msgpack message"),
    (_object_array(), "dtype '|O' is not allowed"),
    ("a text frame", "expected a binary msgpack message"),
], ids=["garbage", "pickle_bytes", "object_dtype", "text_frame"])
def test_bytes_that_are_not_msgpack_numpy_are_refused_and_never_unpickled(server, payload, text):
    c = client(server)
    c._ws.send(payload)  # the client's own connection: raw bytes as a broken or hostile client sends them
    reply = c._ws.recv(timeout=30)
    assert isinstance(reply, str) and text in reply
    assert c.infer(observation(2))["actions"].shape == (8, 7)


def test_healthz_answers_and_a_connection_without_the_token_is_refused(server):
    port = server["port"]
    assert urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=30).read() == b"OK\n"
    with pytest.raises(websockets.InvalidStatus) as err:
        websockets.sync.client.connect(f"ws://127.0.0.1:{port}", open_timeout=30)
    assert err.value.response.status_code == 401
    with pytest.raises(websockets.InvalidStatus):
        WebsocketClientPolicy("127.0.0.1", port, api_key="wrong")
    assert client(server).infer(observation())["actions"].shape == (8, 7)


def test_committed_actions_come_back_as_the_chunks_frozen_start(server):
    """Real-Time Chunking over the wire: a request may carry the actions the robot has committed and
    how many run before the answer can; the chunk starts with exactly those. openpi's client sends them
    as plain extra keys; without them (above) nothing changes."""
    c = client(server)
    meta = c.get_server_metadata()
    assert meta["committed_key"] == "committed_actions" and meta["delay_key"] == "inference_delay"
    assert meta["takes_committed"] == ""  # the tiny preset was not trained with a prefix, nor is it a flow head
    committed = np.linspace(-0.01, 0.01, 5 * 7, dtype=np.float32).reshape(5, 7)
    obs = observation(3) | {"committed_actions": committed, "inference_delay": 3}
    actions = c.infer(obs)["actions"]
    np.testing.assert_array_equal(actions[:3], committed[:3])
    for bad, text in [({"committed_actions": np.zeros((9, 7), np.float32)}, "with 1 <= n <= 8"),
                      ({"committed_actions": np.zeros((2, 6), np.float32)}, "of shape (n, 7)"),
                      ({"committed_actions": committed, "inference_delay": 6}, "must be an integer in [0, 5]")]:
        with pytest.raises(RuntimeError, match="Error in inference server") as err:
            c.infer(observation(4) | bad)
        assert text in str(err.value)


def test_serve_with_emulated_latency_holds_every_answer_back(tmp_path):
    port_file = tmp_path / "port"
    proc = RosProcess(executable("serve_policy", "--preset", "tiny", "--port", "0", "--threads", "1",
                                 "--ready-file", str(port_file), "--emulated-latency", "0.3"), tmp_path / "serve.log")
    try:
        wait_for(lambda: port_file.exists() and port_file.read_text().strip(), what="serve_policy listening",
                 process=proc)
        c = WebsocketClientPolicy("127.0.0.1", int(port_file.read_text()))
        import time
        for seed in range(2):
            t0 = time.perf_counter()
            reply = c.infer(observation(seed))
            assert time.perf_counter() - t0 >= 0.3
            assert reply["server_timing"]["infer_ms"] >= 300  # held inside the server's one-at-a-time lock
    finally:
        assert proc.stop() == 0
    assert "EMULATED LATENCY ON" in proc.output()
