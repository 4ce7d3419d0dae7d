"""Safety layer: every command passes through here before it is sent to the robot.

The policy output is untrusted: it may contain NaN/inf, absurd values, or jumps that a
real arm must not follow. This module turns a *target* into a *command* that respects
the joint limits at the control rate, or refuses (``command is None``: hold).

Joint clamping semantics follow ros2_control's ``joint_limits`` package
(``joint_limits_helpers.cpp``: ``compute_position_limits`` / ``compute_velocity_limits``):

* limits are enforced per joint;
* the position reference for the velocity limit is the *previous command*, not the
  measured position (the measured state lags the command by a few cycles, so using it
  would cap the speed far below the limit);
* the admissible velocity is the intersection of ``[-v_max, v_max]``, the
  position-limit interval and the acceleration interval
  ``[v_prev - a_max*dt, v_prev + a_max*dt]``;
* a joint outside its position limits may only move back towards them.

In addition to ros2_control's limiter we bound the velocity by the braking distance:
the joint must always be able to stop inside its position limits while decelerating at
``a_max``. Without that, a sequence of individually-valid steps can run into a limit
faster than ``a_max`` allows it to stop, and the last step would then have to violate
either the position or the acceleration limit. With it, a state that starts at rest
inside the limits stays feasible forever (see ``test_runtime_safety.py``).

Nothing in this module raises on bad *inputs*: malformed, short or non-finite arrays
produce a rejected :class:`SafetyResult` with a reason. Bad *configuration* (limits,
period) raises ``ValueError`` at construction time.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = [
    "JointLimits",
    "SafetyFilter",
    "SafetyResult",
    "WorkspaceBox",
]


def _as_float_array(value, name: str) -> np.ndarray:
    arr = np.array(value, dtype=np.float64, copy=True).reshape(-1)
    arr.flags.writeable = False
    return arr


def _parse_vector(value, n: int, name: str) -> tuple[np.ndarray | None, str | None]:
    """Convert untrusted input to a float vector of length ``n``; never raises."""
    if value is None:
        return None, f"{name} is missing"
    try:
        arr = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError, OverflowError) as exc:
        return None, f"{name} is not numeric ({exc})"
    if arr.ndim != 1:
        arr = arr.reshape(-1) if arr.size == n and arr.ndim > 1 else arr
    if arr.ndim != 1 or arr.shape[0] != n:
        return None, f"{name} has shape {arr.shape}, expected ({n},)"
    if not np.all(np.isfinite(arr)):
        bad = np.flatnonzero(~np.isfinite(arr)).tolist()
        return None, f"{name} is not finite at index {bad}"
    return arr.copy(), None


def _any(mask) -> bool:
    # ndarray.any() skips the np.any dispatch overhead (this runs every control tick).
    return bool(np.asarray(mask).any())


def _safe_norm(v: np.ndarray) -> float:
    """Euclidean norm that does not overflow for entries near 1e308."""
    m = float(np.max(np.abs(v))) if v.size else 0.0
    if m == 0.0:
        return 0.0
    return m * float(np.linalg.norm(v / m))


@dataclass(frozen=True)
class JointLimits:
    """Per-joint limits, like a URDF ``<limit>`` plus ``joint_limits`` acceleration.

    ``lower``/``upper`` may be ``-inf``/``inf`` for continuous joints;
    ``max_velocity``/``max_acceleration`` may be ``inf`` for "no limit". Arrays are
    stored as read-only float64.
    """

    names: Sequence[str]
    lower: np.ndarray
    upper: np.ndarray
    max_velocity: np.ndarray
    max_acceleration: np.ndarray

    def __post_init__(self) -> None:
        names = tuple(str(n) for n in self.names)
        object.__setattr__(self, "names", names)
        n = len(names)
        for attr in ("lower", "upper", "max_velocity", "max_acceleration"):
            arr = _as_float_array(getattr(self, attr), attr)
            if arr.shape != (n,):
                raise ValueError(f"JointLimits.{attr} has {arr.shape[0]} entries, expected {n}")
            if _any(np.isnan(arr)):
                raise ValueError(f"JointLimits.{attr} contains NaN")
            object.__setattr__(self, attr, arr)
        if len(set(names)) != n:
            raise ValueError(f"JointLimits.names has duplicates: {names}")
        if _any(self.lower > self.upper):
            raise ValueError("JointLimits.lower must be <= upper")
        if _any(np.isinf(self.lower) & (self.lower > 0)) or _any(
            np.isinf(self.upper) & (self.upper < 0)
        ):
            raise ValueError("JointLimits: lower cannot be +inf and upper cannot be -inf")
        if _any(self.max_velocity <= 0) or _any(self.max_acceleration <= 0):
            raise ValueError("JointLimits.max_velocity and max_acceleration must be > 0")

    @property
    def size(self) -> int:
        return len(self.names)


@dataclass(frozen=True)
class WorkspaceBox:
    """Axis-aligned box, in ``frame``, that the end effector must stay inside."""

    frame: str
    min_xyz: np.ndarray
    max_xyz: np.ndarray

    def __post_init__(self) -> None:
        lo = _as_float_array(self.min_xyz, "min_xyz")
        hi = _as_float_array(self.max_xyz, "max_xyz")
        if lo.shape != (3,) or hi.shape != (3,):
            raise ValueError("WorkspaceBox min_xyz and max_xyz must have 3 entries")
        if _any(np.isnan(lo)) or _any(np.isnan(hi)) or _any(lo > hi):
            raise ValueError(f"WorkspaceBox needs min <= max, got {lo} and {hi}")
        object.__setattr__(self, "min_xyz", lo)
        object.__setattr__(self, "max_xyz", hi)

    def contains(self, xyz) -> bool:
        p = np.asarray(xyz, dtype=np.float64)
        return bool(np.all(np.isfinite(p)) and np.all(p >= self.min_xyz) and np.all(p <= self.max_xyz))


@dataclass
class SafetyResult:
    """Outcome of a filter call.

    Attributes:
        command: what may be sent, or ``None``: do not follow the target, hold (see
            :meth:`SafetyFilter.hold_command`).
        clamped: ``True`` if ``command`` differs from the requested target (or it was
            rejected).
        reasons: human-readable explanation of every clamp or the rejection.
        velocity: for joint commands, ``(command - reference) / control_period``;
            feed it back as ``previous_velocity`` on the next tick.
    """

    command: np.ndarray | None
    clamped: bool
    reasons: list[str] = field(default_factory=list)
    velocity: np.ndarray | None = None


def _reject(reason: str) -> SafetyResult:
    return SafetyResult(command=None, clamped=True, reasons=[reason])


class SafetyFilter:
    """Clamp joint / end-effector / twist targets to the configured limits.

    Args:
        limits: joint limits, in the order of the command vector.
        control_period: ``dt`` in seconds between two commands.
        max_step: optional extra bound on ``|command - previous command|`` per tick,
            scalar or per joint (it acts as a velocity limit of ``max_step / dt``).
        workspace: optional box for :meth:`filter_ee_target`.
    """

    def __init__(
        self,
        limits: JointLimits,
        control_period: float,
        max_step: float | Sequence[float] | np.ndarray | None = None,
        workspace: WorkspaceBox | None = None,
    ) -> None:
        if not isinstance(limits, JointLimits):
            raise TypeError("limits must be a JointLimits")
        dt = float(control_period)
        if not math.isfinite(dt) or dt <= 0:
            raise ValueError(f"control_period must be a positive finite number, got {control_period!r}")
        self.limits = limits
        self.control_period = dt
        self.workspace = workspace
        n = limits.size
        if max_step is None:
            step = np.full(n, np.inf)
        else:
            step = np.broadcast_to(np.asarray(max_step, dtype=np.float64), (n,)).copy()
            if _any(np.isnan(step)) or _any(step <= 0):
                raise ValueError(f"max_step must be > 0, got {max_step!r}")
        self.max_step = step
        # Effective velocity bound: the tighter of v_max and max_step / dt.
        self._vmax = np.minimum(limits.max_velocity, step / dt)
        # Largest velocity change per tick.
        self._dv = limits.max_acceleration * dt

    # ------------------------------------------------------------------ helpers
    def _brake_speed(self, distance: np.ndarray) -> np.ndarray:
        """Largest speed ``v >= 0`` for this tick such that, after moving ``v*dt``, the
        joint can still stop within ``distance`` decelerating by ``a_max*dt`` per tick.

        Discrete stop sequence: speeds ``v, v-c, v-2c, ...`` (``c = a_max*dt``) until
        ``<= 0``, each held for one tick, so the travelled distance is
        ``F(v) = dt * sum_{j>=0} max(v - j*c, 0)``. ``F`` is piecewise linear and
        increasing; for ``v`` in ``[K*c, (K+1)*c)``:
        ``F(v) = dt*(K+1)*v - c*dt*K*(K+1)/2``. We pick the largest ``K`` with
        ``F(K*c) = c*dt*K*(K+1)/2 <= d`` and solve the linear piece for ``v``.
        Negative ``distance`` (already beyond the limit) gives a negative speed
        ``distance/dt``: the joint must move back.
        """
        dt = self.control_period
        c = self._dv
        d = np.asarray(distance, dtype=np.float64)
        with np.errstate(all="ignore"):  # inf/0 cases are replaced below
            u = c * dt  # F(K*c) = u * K*(K+1)/2
            k = np.floor((np.sqrt(1.0 + 8.0 * d / u) - 1.0) / 2.0)
            # Guard the float rounding of the closed form by one step either way.
            k = np.where(u * k * (k + 1) / 2 > d, k - 1, k)
            k = np.where(u * (k + 1) * (k + 2) / 2 <= d, k + 1, k)
            k = np.maximum(k, 0.0)
            v = (d / dt + c * k * (k + 1) / 2) / (k + 1)
            # d/dt is exact when a_max is infinite (stop within one tick), for an
            # infinite distance, and for d <= 0.
            return np.where(np.isfinite(c) & np.isfinite(d) & (d > 0) & np.isfinite(v), v, d / dt)

    # ------------------------------------------------------------------ joints
    def filter_joint_target(
        self,
        target,
        current_position,
        previous_command=None,
        previous_velocity=None,
    ) -> SafetyResult:
        """Turn a joint position target into a command that respects every limit.

        Args:
            target: desired joint positions (length = number of joints).
            current_position: measured joint positions; must be finite (otherwise no
                safe command, not even a hold, can be computed).
            previous_command: the last command actually sent; the reference for the
                velocity limit. Defaults to ``current_position``.
            previous_velocity: the commanded velocity of the last tick (the
                ``velocity`` of the previous result); reference for the acceleration
                limit. Defaults to zero (start from rest).

        Returns:
            A :class:`SafetyResult`. ``command`` is ``None`` if the target or the
            current position is unusable. Otherwise, with ``ref`` the reference
            position and ``v = (command - ref) / dt``: ``lower <= command <= upper``
            (when ``ref`` was inside the limits), ``|v| <= min(v_max, max_step/dt)``,
            ``|v - previous_velocity| <= a_max*dt`` and the joint can stop inside its
            limits, unless the given previous state itself made that impossible, in
            which case the acceleration bound is the one relaxed (and a reason says so).
        """
        try:
            # Overflow with absurd inputs (1e308) is handled explicitly (non-finite
            # results are rejected or clipped); don't spam warnings at the control rate.
            with np.errstate(all="ignore"):
                return self._filter_joint_target(target, current_position, previous_command, previous_velocity)
        except Exception as exc:  # pragma: no cover - last line of defence, never raise
            return _reject(f"internal error in safety filter: {exc!r}")

    def _filter_joint_target(self, target, current_position, previous_command, previous_velocity):
        lim = self.limits
        n = lim.size
        dt = self.control_period
        reasons: list[str] = []

        tgt_in, why = _parse_vector(target, n, "target")
        if why:
            return _reject(f"rejected target: {why}")
        cur, why = _parse_vector(current_position, n, "current_position")
        if why:
            return _reject(f"cannot compute a safe command: {why}")

        ref = cur
        if previous_command is not None:
            prev, why = _parse_vector(previous_command, n, "previous_command")
            if why:
                reasons.append(f"ignored {why}; using current_position as reference")
            else:
                ref = prev
        v_prev = np.zeros(n)
        if previous_velocity is not None:
            pv, why = _parse_vector(previous_velocity, n, "previous_velocity")
            if why:
                reasons.append(f"ignored {why}; assuming rest")
            else:
                v_prev = pv

        # 1. Position limits on the target.
        tgt = np.clip(tgt_in, lim.lower, lim.upper)
        self._note(reasons, tgt != tgt_in, "position limit", tgt_in, tgt)

        # 2. Admissible velocity interval for this tick, per joint.
        with np.errstate(over="ignore", invalid="ignore"):
            v_des = (tgt - ref) / dt
        vmax = self._vmax
        lo_v, hi_v = -vmax, vmax
        lo_a, hi_a = v_prev - self._dv, v_prev + self._dv
        hi_b, lo_b = self._brake_speed(np.stack([lim.upper - ref, ref - lim.lower]))
        lo_b = -lo_b

        lo = np.maximum.reduce([lo_v, lo_a, lo_b])
        hi = np.minimum.reduce([hi_v, hi_a, hi_b])
        # While braking at the limit, the braking bound equals v_prev - a_max*dt exactly
        # in real arithmetic; rounding (of positions accumulated over many ticks, then
        # divided by dt) may leave lo slightly above hi. That is not an inconsistent
        # state, so close the gap instead of relaxing a limit. The tolerance is
        # 1e-12 relative in velocity plus 1e-12 * (1 + |ref|) in position per tick.
        inside = (ref >= lim.lower) & (ref <= lim.upper)
        with np.errstate(all="ignore"):
            scale = np.maximum(1.0, np.maximum(np.abs(lo), np.abs(hi)))
            gap_tol = 1e-12 * scale + 1e-12 * (1.0 + np.abs(ref)) / dt
            # Only a reference inside the limits can be on the braking boundary; for an
            # absurd reference (1e306) this tolerance would be absurd too.
            rounding = inside & (lo > hi) & (lo - hi <= gap_tol)
        if _any(rounding):
            mid = 0.5 * (lo + hi)
            lo = np.where(rounding, mid, lo)
            hi = np.where(rounding, mid, hi)

        # Relax in order of least harm. Acceleration first: an inconsistent previous
        # state (|v_prev| > v_max, or too fast to stop) cannot be honoured anyway.
        bad = lo > hi
        if _any(bad):
            lo2 = np.maximum(lo_v, lo_b)
            hi2 = np.minimum(hi_v, hi_b)
            lo = np.where(bad, lo2, lo)
            hi = np.where(bad, hi2, hi)
            names = [lim.names[i] for i in np.flatnonzero(bad & (lo <= hi))]
            if names:
                reasons.append(
                    f"acceleration limit cannot be met from the previous state for {names}; "
                    "keeping position and velocity limits"
                )
        # Still empty: the reference is outside the position limits by more than one
        # max-velocity step. Like ros2_control, only allow motion back towards the range.
        outside = lo > hi
        if _any(outside):
            back_lo = np.where(ref > lim.upper, -vmax, 0.0)
            back_hi = np.where(ref < lim.lower, vmax, 0.0)
            lo = np.where(outside, back_lo, lo)
            hi = np.where(outside, back_hi, hi)
            names = [lim.names[i] for i in np.flatnonzero(outside)]
            reasons.append(f"joints {names} are outside their position limits; only moving back")

        v = np.clip(v_des, lo, hi)
        relaxed = bad | outside
        if _any(relaxed):
            # Where the acceleration bound had to go, violate it as little as possible:
            # the velocity in the remaining interval closest to the acceleration interval.
            v = np.where(relaxed, np.clip(np.clip(v_des, lo_a, hi_a), lo, hi), v)
        v = np.clip(v, -vmax, vmax)  # the velocity limit is never relaxed
        limited = v != v_des
        if _any(limited):
            which = []
            for label, lb, ub in (
                ("velocity", lo_v, hi_v),
                ("acceleration", lo_a, hi_a),
                ("braking distance", lo_b, hi_b),
            ):
                hit = limited & (((v_des > v) & (v >= ub)) | ((v_des < v) & (v <= lb)))
                if _any(hit):
                    which.append(f"{label} {[lim.names[i] for i in np.flatnonzero(hit)]}")
            reasons.append("step limited by " + (", ".join(which) if which else "limits"))

        # Joints that were not limited get the target exactly (no rounding through
        # (tgt - ref)/dt*dt), so "unchanged" commands compare equal to their target.
        cmd = np.where(limited, ref + v * dt, tgt)
        # Remove rounding excursions past the limit (a few ulp), only where the
        # reference was inside; elsewhere clipping would be a jump.
        cmd = np.where(inside, np.clip(cmd, lim.lower, lim.upper), cmd)
        if not np.all(np.isfinite(cmd)):
            return _reject("rejected target: command would not be finite (unbounded limits)")
        with np.errstate(all="ignore"):
            velocity = (cmd - ref) / dt
        if not np.all(np.isfinite(velocity)):  # pragma: no cover - needs |ref| ~ 1e308
            return _reject("cannot compute a safe command: positions too large to difference")
        clamped = bool(_any(cmd != tgt_in))
        return SafetyResult(command=cmd, clamped=clamped, reasons=reasons, velocity=velocity)

    def _note(self, reasons, mask, label, before, after) -> None:
        if _any(mask):
            parts = [
                f"{self.limits.names[i]} {before[i]:.6g}->{after[i]:.6g}" for i in np.flatnonzero(mask)
            ]
            reasons.append(f"{label}: " + ", ".join(parts))

    def hold_command(self, current_position, previous_command=None, previous_velocity=None) -> np.ndarray | None:
        """Command that holds the arm, or ``None`` if no finite reference is known.

        Without a previous command this is ``current_position`` (stop here). With
        ``previous_command`` and ``previous_velocity`` it is one tick of maximal
        deceleration from the last command, so a moving arm stops without exceeding
        ``a_max`` (the braking-distance bound in :meth:`filter_joint_target`
        guarantees the stop fits inside the position limits). Call it every tick
        while holding, feeding back ``(cmd - previous_command) / dt`` as velocity.
        """
        try:
            n = self.limits.size
            cur, _ = _parse_vector(current_position, n, "current_position")
            prev, _ = (None, None) if previous_command is None else _parse_vector(previous_command, n, "p")
            if prev is None:
                return cur
            vel, _ = (None, None) if previous_velocity is None else _parse_vector(previous_velocity, n, "v")
            if vel is None:
                return prev
            with np.errstate(all="ignore"):
                v = np.sign(vel) * np.maximum(np.abs(vel) - self._dv, 0.0)
                v = np.clip(v, -self._vmax, self._vmax)
                cmd = prev + v * self.control_period
            if not np.all(np.isfinite(cmd)):
                return prev
            inside = (prev >= self.limits.lower) & (prev <= self.limits.upper)
            return np.where(inside, np.clip(cmd, self.limits.lower, self.limits.upper), prev)
        except Exception:  # pragma: no cover - never raise
            return None

    # ------------------------------------------------------------------ end effector
    def filter_ee_target(self, position, orientation=None, frame: str | None = None) -> SafetyResult:
        """Clamp an end-effector position target into the workspace box.

        Args:
            position: target xyz in the workspace frame.
            orientation: optional quaternion (w, x, y, z); it is normalised and
                returned after the position (command has 7 entries then).
            frame: frame of ``position``; if given it must equal the workspace frame
                (transforming between frames needs TF, which is the node's job).

        Returns:
            ``SafetyResult`` whose command is xyz (3,) or xyz + wxyz (7,).
        """
        try:
            pos, why = _parse_vector(position, 3, "position")
            if why:
                return _reject(f"rejected end-effector target: {why}")
            reasons: list[str] = []
            quat = None
            if orientation is not None:
                quat, why = _parse_vector(orientation, 4, "orientation")
                if why:
                    return _reject(f"rejected end-effector target: {why}")
                norm = _safe_norm(quat)
                if not norm > 1e-9:
                    return _reject("rejected end-effector target: orientation quaternion has zero norm")
                quat = quat / norm
            box = self.workspace
            clamped = False
            if box is not None:
                if frame is not None and frame != box.frame:
                    return _reject(
                        f"rejected end-effector target: frame {frame!r} is not the workspace frame {box.frame!r}"
                    )
                clipped = np.clip(pos, box.min_xyz, box.max_xyz)
                if _any(clipped != pos):
                    clamped = True
                    reasons.append(
                        f"workspace box ({box.frame}): {np.array2string(pos, precision=4)} -> "
                        f"{np.array2string(clipped, precision=4)}"
                    )
                pos = clipped
            cmd = pos if quat is None else np.concatenate([pos, quat])
            return SafetyResult(command=cmd, clamped=clamped, reasons=reasons)
        except Exception as exc:  # pragma: no cover - never raise
            return _reject(f"internal error in safety filter: {exc!r}")

    @staticmethod
    def filter_twist(linear, angular, max_linear: float, max_angular: float) -> SafetyResult:
        """Scale a twist down so that ``|linear| <= max_linear`` and ``|angular| <= max_angular``.

        Both parts are scaled by the *same* factor so the direction of the screw motion
        (the path the gripper follows) is preserved; only its speed changes.

        Returns:
            ``SafetyResult`` whose command is ``[vx, vy, vz, wx, wy, wz]``.
        """
        try:
            lin, why = _parse_vector(linear, 3, "linear")
            if why:
                return _reject(f"rejected twist: {why}")
            ang, why = _parse_vector(angular, 3, "angular")
            if why:
                return _reject(f"rejected twist: {why}")
            try:
                max_lin, max_ang = float(max_linear), float(max_angular)
            except (TypeError, ValueError):
                return _reject("rejected twist: limits are not numbers")
            if not (max_lin >= 0 and max_ang >= 0):  # also catches NaN
                return _reject(f"rejected twist: invalid limits {max_linear!r}, {max_angular!r}")
            n_lin, n_ang = _safe_norm(lin), _safe_norm(ang)
            scale = 1.0
            if n_lin > max_lin:
                scale = min(scale, max_lin / n_lin)
            if n_ang > max_ang:
                scale = min(scale, max_ang / n_ang)
            cmd = np.concatenate([lin, ang]) * scale
            reasons = []
            if scale < 1.0:
                reasons.append(
                    f"twist scaled by {scale:.6g} (|linear| {n_lin:.6g} > {max_lin:.6g} or "
                    f"|angular| {n_ang:.6g} > {max_ang:.6g})"
                )
            return SafetyResult(command=cmd, clamped=scale < 1.0, reasons=reasons)
        except Exception as exc:  # pragma: no cover - never raise
            return _reject(f"internal error in safety filter: {exc!r}")
