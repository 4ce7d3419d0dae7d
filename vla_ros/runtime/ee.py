"""End-effector action conversions: delta actions -> twists and target poses.

Many VLA policies (OpenVLA, Octo, RT-1 style datasets) output an end-effector *delta*
per step: a translation ``(dx, dy, dz)``, a rotation, and optionally a gripper value.
The rotation comes in one of three representations:

* ``"axis_angle"``: rotation vector ``r = axis * angle`` (3 numbers),
* ``"euler"``: static-axes ``sxyz`` roll, pitch, yaw (3 numbers) - the rotation
  ``Rz(yaw) @ Ry(pitch) @ Rx(roll)``,
* ``"quaternion"``: ``(w, x, y, z)`` (4 numbers, normalised here).

Quaternions in this module are always ``(w, x, y, z)`` (transforms3d's convention;
note ROS ``geometry_msgs/Quaternion`` fields are named x, y, z, w). All rotation maths
is delegated to transforms3d so there is no hand-written rotation code to get wrong.

Frames: a delta is expressed either in the robot *base* frame (spatial delta:
``p' = p + dp``, ``R' = dR @ R``) or in the current *ee* frame (body delta:
``p' = p + R @ dp``, ``R' = R @ dR``). Which one a policy uses is a property of its
training data and must come from its config.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from transforms3d import euler, quaternions

__all__ = [
    "ROTATION_SIZES",
    "EeDelta",
    "Twist",
    "compose_pose",
    "delta_to_twist",
    "quat_to_rotvec",
    "rotation_to_quat",
    "rotvec_to_quat",
    "split_delta_action",
]

ROTATION_SIZES = {"axis_angle": 3, "euler": 3, "quaternion": 4}
_FRAMES = ("base", "ee")


@dataclass(frozen=True)
class EeDelta:
    """A parsed delta action."""

    translation: np.ndarray  # (3,)
    rotation: np.ndarray  # (4,) unit quaternion w, x, y, z with w >= 0
    gripper: float | None


@dataclass(frozen=True)
class Twist:
    """Linear (m/s) and angular (rad/s) velocity, in the frame of the delta."""

    linear: np.ndarray  # (3,)
    angular: np.ndarray  # (3,)
    gripper: float | None = None


def _finite(values, size: int, what: str) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.shape != (size,):
        raise ValueError(f"{what} must have {size} entries, got {arr.shape[0]}")
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be finite, got {arr}")
    return arr


def _canonical(q: np.ndarray) -> np.ndarray:
    """Unit quaternion with w >= 0 (q and -q are the same rotation)."""
    n = quaternions.qnorm(q)
    if not n > 1e-12:
        raise ValueError(f"quaternion {q} has zero norm")
    q = q / n
    return -q if q[0] < 0 else q


def rotvec_to_quat(rotvec) -> np.ndarray:
    """Rotation vector (axis * angle, radians) -> unit quaternion (w, x, y, z)."""
    r = _finite(rotvec, 3, "rotation vector")
    angle = float(np.linalg.norm(r))
    if angle == 0.0:
        return np.array([1.0, 0.0, 0.0, 0.0])
    return _canonical(quaternions.axangle2quat(r / angle, angle, is_normalized=True))


def quat_to_rotvec(quat) -> np.ndarray:
    """Unit quaternion (w, x, y, z) -> rotation vector with angle in [0, pi]."""
    q = _canonical(_finite(quat, 4, "quaternion"))
    # w >= 0 makes transforms3d return the shortest rotation (theta <= pi).
    axis, angle = quaternions.quat2axangle(q)
    return np.asarray(axis, dtype=np.float64) * float(angle)


def rotation_to_quat(rotation, representation: str) -> np.ndarray:
    """Convert a rotation in ``representation`` to a unit quaternion (w, x, y, z), w >= 0."""
    if representation == "axis_angle":
        return rotvec_to_quat(rotation)
    if representation == "euler":
        rpy = _finite(rotation, 3, "euler angles")
        return _canonical(np.asarray(euler.euler2quat(rpy[0], rpy[1], rpy[2], axes="sxyz")))
    if representation == "quaternion":
        return _canonical(_finite(rotation, 4, "quaternion"))
    raise ValueError(f"unknown rotation representation {representation!r}; use one of {tuple(ROTATION_SIZES)}")


def split_delta_action(action, rotation: str = "axis_angle") -> EeDelta:
    """Split ``[dx, dy, dz, <rotation>, (gripper)]`` into its parts.

    The action has ``3 + ROTATION_SIZES[rotation]`` entries, plus one if it carries a
    gripper command (which is passed through unchanged).

    Raises:
        ValueError: wrong length, non-finite values, zero quaternion, unknown rotation.
    """
    if rotation not in ROTATION_SIZES:
        raise ValueError(f"unknown rotation representation {rotation!r}; use one of {tuple(ROTATION_SIZES)}")
    a = np.asarray(action, dtype=np.float64).reshape(-1)
    k = ROTATION_SIZES[rotation]
    if a.shape[0] not in (3 + k, 4 + k):
        raise ValueError(
            f"a delta action with {rotation} rotation has {3 + k} or {4 + k} (with gripper) entries, got {a.shape[0]}"
        )
    if not np.all(np.isfinite(a)):
        raise ValueError(f"delta action must be finite, got {a}")
    gripper = float(a[3 + k]) if a.shape[0] == 4 + k else None
    return EeDelta(translation=a[:3].copy(), rotation=rotation_to_quat(a[3 : 3 + k], rotation), gripper=gripper)


def delta_to_twist(action, dt: float, rotation: str = "axis_angle") -> Twist:
    """Convert a delta action applied over ``dt`` seconds into a constant twist.

    ``linear = dp / dt`` and ``angular = rotvec(dR) / dt``: a body rotating at constant
    angular velocity ``w`` for ``dt`` turns by ``exp(w * dt)``, so this is exact, not a
    small-angle approximation. The twist is expressed in the frame the delta is
    expressed in (base or ee).
    """
    dt = float(dt)
    if not np.isfinite(dt) or dt <= 0:
        raise ValueError(f"dt must be a positive finite number, got {dt}")
    d = split_delta_action(action, rotation)
    return Twist(linear=d.translation / dt, angular=quat_to_rotvec(d.rotation) / dt, gripper=d.gripper)


def compose_pose(
    position,
    orientation,
    action,
    rotation: str = "axis_angle",
    frame: str = "base",
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """Apply a delta action to the current pose.

    Args:
        position: current end-effector position (3,).
        orientation: current orientation quaternion (w, x, y, z).
        action: ``[dx, dy, dz, <rotation>, (gripper)]``.
        rotation: representation of the rotation part.
        frame: ``"base"`` (spatial delta) or ``"ee"`` (body delta), see module docstring.

    Returns:
        ``(target_position, target_quaternion_wxyz, gripper)``; the quaternion is unit
        norm with ``w >= 0``.
    """
    if frame not in _FRAMES:
        raise ValueError(f"frame must be one of {_FRAMES}, got {frame!r}")
    p = _finite(position, 3, "position")
    q = _canonical(_finite(orientation, 4, "orientation"))
    d = split_delta_action(action, rotation)
    if frame == "base":
        p_new = p + d.translation
        q_new = quaternions.qmult(d.rotation, q)
    else:
        p_new = p + quaternions.rotate_vector(d.translation, q)
        q_new = quaternions.qmult(q, d.rotation)
    return p_new, _canonical(np.asarray(q_new, dtype=np.float64)), d.gripper
