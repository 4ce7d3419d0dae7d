"""The remote seam's pieces without processes: our msgpack-numpy against openpi_client's, and the mappings.

The arithmetic of each shipped mapping is written out (DROID: joint velocities x period, gripper
1 = closed -> ours 1 = open; LIBERO: OSC_POSE limits, gripper -1/+1 -> 1/0).
"""
from pathlib import Path

import msgpack
import numpy as np
import pytest
from openpi_client import msgpack_numpy

from vla_ros.runtime import msgpack_wire as wire
from vla_ros.runtime.remote_mapping import Binding, MappingError, load_mapping, parse_mapping

ROOT = Path(__file__).resolve().parents[1]
REMOTE = ROOT / "config" / "remote"
FR3 = [f"fr3_joint{i}" for i in range(1, 8)]


@pytest.mark.parametrize("dtype", ["uint8", "float32", "float64", "int64", "bool"])
def test_arrays_round_trip_with_openpi_clients_msgpack_numpy_both_ways(dtype):
    rng = np.random.default_rng(0)
    a = (rng.uniform(-5, 5, size=(3, 4, 2)) * 10).astype(dtype)
    msg = {"actions": a, "nested": {"s": np.float32(1.5)}, "prompt": "hi"}
    theirs = msgpack_numpy.unpackb(wire.packb(msg))
    np.testing.assert_array_equal(theirs["actions"], a)
    assert theirs["actions"].dtype == a.dtype and theirs["prompt"] == "hi" and theirs["nested"]["s"] == 1.5
    ours = wire.unpackb(msgpack_numpy.packb(msg))
    np.testing.assert_array_equal(ours["actions"], a)
    assert ours["actions"].dtype == a.dtype and ours["nested"]["s"] == np.float32(1.5)


@pytest.mark.parametrize("array, reason", [
    ({b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}, "dtype '|O' is not allowed"),
    ({b"__ndarray__": True, b"data": b"\0" * 16, b"dtype": "<c16", b"shape": [1]}, "is not allowed"),
    ({b"__ndarray__": True, b"data": b"\0" * 7, b"dtype": "<f4", b"shape": [2]}, "has 7 bytes, not the 8"),
    ({b"__ndarray__": True, b"data": b"\0" * 4, b"dtype": "<f4", b"shape": [-1]}, "bad array shape"),
    ({b"__ndarray__": True, b"data": b"\0" * 4, b"dtype": "not-a-dtype", b"shape": [1]}, "bad dtype"),
], ids=["object", "complex", "short_data", "negative_shape", "bad_dtype"])
def test_arrays_a_pickle_would_need_or_that_lie_about_their_size_are_refused(array, reason):
    with pytest.raises(wire.WireError, match=reason.replace("(", r"\(").replace("|", r"\|")):
        wire.unpackb(msgpack.packb({"x": array}))


def test_non_msgpack_and_oversized_messages_are_refused():
    with pytest.raises(wire.WireError, match="not a msgpack message"):
        wire.unpackb(b"\x80\x04\x95pickle")
    with pytest.raises(wire.WireError, match="exceeds the limit of 10"):
        wire.unpackb(b"\x00" * 11, max_bytes=10)
    with pytest.raises(TypeError):
        wire.packb({"x": np.array([object()])})


def bind(name, **kw):
    m = load_mapping(str(REMOTE / f"{name}.yaml"))
    args = dict(camera_names=[im.camera for im in m.images], action_names=None, period=1 / 15,
                action_space="joint_delta", joint_names=FR3)
    args.update(kw)
    return Binding(m, kw.pop("meta", {}), **{k: v for k, v in args.items() if k != "meta"})


def test_droid_mapping_turns_joint_velocities_into_deltas_and_inverts_the_gripper():
    b = bind("droid", action_dim=8)
    assert b.state_names == FR3 + ["fr3_finger_joint1"] and b.chunk_size == 8
    state = np.array([0.1, 0.2, 0.3, -1.0, 0.0, 1.0, 0.5, 0.04], np.float32)  # finger 0.04 m: open
    req = b.request([np.zeros((480, 640, 3), np.uint8), np.zeros((480, 640, 3), np.uint8)], "wipe", state)
    assert req["observation/exterior_image_1_left"].shape == (224, 224, 3) and req["prompt"] == "wipe"
    np.testing.assert_allclose(req["observation/joint_position"], state[:7])
    np.testing.assert_allclose(req["observation/gripper_position"], [0.0], atol=1e-6)  # -25 * 0.04 + 1
    reply = {"actions": np.tile(np.array([1.5, 0, 0, 0, 0, 0, -0.3, 1.0]), (10, 1))}
    a = b.actions(reply)
    assert a.shape == (8, 8)
    np.testing.assert_allclose(a[0], [1.5 / 15, 0, 0, 0, 0, 0, -0.3 / 15, 0.0])  # rad/s x 1/15 s; closed -> 0


def test_libero_mapping_scales_end_effector_deltas_and_maps_the_gripper_to_open_closed():
    b = bind("libero", action_dim=7, action_space="ee_delta", period=0.05)
    assert b.state_names == [] and b.chunk_size == 5
    a = b.actions({"actions": np.tile(np.array([1.0, -1.0, 0.5, 0.2, 0, 0, -1.0]), (10, 1))})
    np.testing.assert_allclose(a[0], [0.05, -0.05, 0.025, 0.1, 0, 0, 1.0])  # -1 (open) -> 1 (ours: open)


def test_pad_keeps_the_aspect_ratio_like_openpi_resize_with_pad():
    from openpi_client.image_tools import resize_with_pad

    b = bind("droid", action_dim=8)
    img = np.full((480, 640, 3), 200, np.uint8)
    ours = b.request([img, img], "x", np.zeros(8, np.float32))["observation/exterior_image_1_left"]
    theirs = resize_with_pad(img[None], 224, 224)[0]
    assert ours.shape == theirs.shape
    np.testing.assert_array_equal(ours.mean(axis=(1, 2)) > 100, theirs.mean(axis=(1, 2)) > 100)  # same bars


def test_actions_that_are_not_finite_short_or_missing_are_refused_with_the_reason():
    b = bind("droid", action_dim=8)
    good = np.zeros((10, 8))
    with pytest.raises(ValueError, match="non-finite"):
        b.actions({"actions": np.where(np.arange(8) == 3, np.nan, good)})
    with pytest.raises(ValueError, match=r"shape \[4, 8\]; expected at least \[8, 8\]"):
        b.actions({"actions": good[:4]})
    with pytest.raises(ValueError, match="no numeric array 'actions'"):
        b.actions({"action": good})


def test_a_mapping_that_does_not_fit_names_the_field_or_the_camera():
    with pytest.raises(MappingError, match=r"observation.images\[0\].size"):
        parse_mapping({"observation": {"images": [{"key": "a", "camera": "c", "size": [5, 5]}]}})
    with pytest.raises(MappingError, match="unknown keys"):
        parse_mapping({"observation": {}, "bogus": 1})
    with pytest.raises(MappingError, match=r"camera 'exterior', which is not in cameras.names \['front'\]"):
        bind("droid", action_dim=8, camera_names=["front"])
    with pytest.raises(MappingError, match="robot's action space has 7"):
        bind("droid", action_dim=7)
