"""Tests for vla_ros.runtime.ee (delta actions, twists, pose composition)."""

import math

import numpy as np
import pytest
from transforms3d.quaternions import quat2mat

from vla_ros.runtime.ee import (
    compose_pose,
    delta_to_twist,
    quat_to_rotvec,
    rotation_to_quat,
    rotvec_to_quat,
    split_delta_action,
)

S = math.sqrt(0.5)  # cos(45 deg) = sin(45 deg)
QZ90 = np.array([S, 0, 0, S])  # 90 deg about z: x -> y, y -> -x
RZ90 = np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]], float)
RX90 = np.array([[1, 0, 0], [0, 0, -1], [0, 1, 0]], float)  # y -> z, z -> -y


def test_axis_angle_to_twist():
    # 0.1 m along x and a quarter turn about z in 0.5 s: 0.2 m/s, pi rad/s about z.
    tw = delta_to_twist([0.1, 0, 0, 0, 0, math.pi / 2, 1.0], dt=0.5, rotation="axis_angle")
    np.testing.assert_allclose(tw.linear, [0.2, 0, 0])
    np.testing.assert_allclose(tw.angular, [0, 0, math.pi], atol=1e-12)
    assert tw.gripper == 1.0
    np.testing.assert_allclose(np.concatenate([tw.linear, tw.angular]), [0.2, 0, 0, 0, 0, math.pi], atol=1e-12)


def test_euler_to_twist_and_quat():
    # sxyz yaw of 90 deg = rotation about z by 90 deg.
    np.testing.assert_allclose(rotation_to_quat([0, 0, math.pi / 2], "euler"), QZ90, atol=1e-12)
    tw = delta_to_twist([0, 0, 0.05, 0, 0, -math.pi / 2], dt=0.1, rotation="euler")
    np.testing.assert_allclose(tw.linear, [0, 0, 0.5])
    np.testing.assert_allclose(tw.angular, [0, 0, -5 * math.pi], atol=1e-12)
    assert tw.gripper is None


def test_euler_sxyz_order():
    # sxyz (roll, pitch, yaw) = (90, 0, 90 deg) is Rz(90) @ Rx(90): y -> z (Rx), z stays (Rz).
    q = rotation_to_quat([math.pi / 2, 0, math.pi / 2], "euler")
    R = quat2mat(q)
    np.testing.assert_allclose(R, RZ90 @ RX90, atol=1e-12)
    np.testing.assert_allclose(R @ [0, 1, 0], [0, 0, 1], atol=1e-12)
    np.testing.assert_allclose(R @ [1, 0, 0], [0, 1, 0], atol=1e-12)


def test_quaternion_input_is_normalised_and_canonical():
    np.testing.assert_allclose(rotation_to_quat([2, 0, 0, 0], "quaternion"), [1, 0, 0, 0])
    # -q is the same rotation; canonical form has w >= 0.
    np.testing.assert_allclose(rotation_to_quat(-2 * QZ90, "quaternion"), QZ90, atol=1e-12)
    tw = delta_to_twist([0, 0, 0, S, 0, 0, S, 0.0], dt=1.0, rotation="quaternion")
    np.testing.assert_allclose(tw.angular, [0, 0, math.pi / 2], atol=1e-12)
    assert tw.gripper == 0.0


def test_rotation_more_than_half_turn_gives_shortest_twist():
    # 270 deg about +z is -90 deg about z.
    tw = delta_to_twist([0, 0, 0, 0, 0, 1.5 * math.pi], dt=1.0)
    np.testing.assert_allclose(tw.angular, [0, 0, -math.pi / 2], atol=1e-12)


def test_rotvec_round_trip_including_tiny_and_zero():
    for r in ([0.0, 0.0, 0.0], [1e-12, 0, 0], [0.3, -0.2, 0.1], [0, math.pi - 1e-9, 0]):
        np.testing.assert_allclose(quat_to_rotvec(rotvec_to_quat(r)), r, atol=1e-12)
    np.testing.assert_array_equal(rotvec_to_quat([0, 0, 0]), [1, 0, 0, 0])


def test_compose_pose_base_frame():
    # Current: at (1, 0, 0), rotated 90 deg about z. Delta: +0.1 x, 90 deg about x, in base frame.
    p, q, g = compose_pose([1, 0, 0], QZ90, [0.1, 0, 0, math.pi / 2, 0, 0, 0.5], frame="base")
    np.testing.assert_allclose(p, [1.1, 0, 0])
    np.testing.assert_allclose(quat2mat(q), RX90 @ RZ90, atol=1e-12)  # R' = dR @ R
    assert g == 0.5
    assert q[0] >= 0 and np.linalg.norm(q) == pytest.approx(1.0)


def test_compose_pose_ee_frame():
    # Same delta in the gripper frame: x of the gripper is base y after the z turn.
    p, q, g = compose_pose([1, 0, 0], QZ90, [0.1, 0, 0, math.pi / 2, 0, 0], frame="ee")
    np.testing.assert_allclose(p, [1.0, 0.1, 0], atol=1e-12)  # p + R @ dp
    np.testing.assert_allclose(quat2mat(q), RZ90 @ RX90, atol=1e-12)  # R' = R @ dR
    assert g is None


def test_compose_identity_delta_and_unnormalised_current():
    p, q, _ = compose_pose([0.3, 0.2, 0.1], 3 * QZ90, [0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(p, [0.3, 0.2, 0.1])
    np.testing.assert_allclose(q, QZ90, atol=1e-12)


def test_twist_integrates_back_to_delta():
    # Constant twist for dt reproduces the delta exactly (exp map, not small-angle).
    action = [0.02, -0.01, 0.03, 0.4, -0.3, 0.9]
    tw = delta_to_twist(action, dt=0.2)
    np.testing.assert_allclose(rotvec_to_quat(tw.angular * 0.2), rotvec_to_quat(action[3:]), atol=1e-12)
    np.testing.assert_allclose(tw.linear * 0.2, action[:3], atol=1e-15)


def test_split_delta_action():
    d = split_delta_action([1, 2, 3, 0, 0, 0, -1], "euler")
    np.testing.assert_array_equal(d.translation, [1, 2, 3])
    np.testing.assert_array_equal(d.rotation, [1, 0, 0, 0])
    assert d.gripper == -1.0


@pytest.mark.parametrize(
    "call,match",
    [
        (lambda: split_delta_action([0, 0, 0, 0, 0], "axis_angle"), "6 or 7"),
        (lambda: split_delta_action([0, 0, 0, 0, 0, 0, 0, 0, 0], "quaternion"), "7 or 8"),
        (lambda: split_delta_action([0, 0, np.nan, 0, 0, 0], "euler"), "finite"),
        (lambda: split_delta_action([0, 0, 0, 0, 0, 0, 0], "quaternion"), "zero norm"),
        (lambda: split_delta_action([0, 0, 0, 0, 0, 0], "rpy"), "unknown rotation"),
        (lambda: delta_to_twist([0, 0, 0, 0, 0, 0], dt=0.0), "dt"),
        (lambda: compose_pose([0, 0, 0], [1, 0, 0, 0], [0] * 6, frame="world"), "frame"),
        (lambda: compose_pose([0, 0, np.inf], [1, 0, 0, 0], [0] * 6), "finite"),
        (lambda: compose_pose([0, 0, 0], [0, 0, 0, 0], [0] * 6), "zero norm"),
    ],
)
def test_errors(call, match):
    with pytest.raises(ValueError, match=match):
        call()
