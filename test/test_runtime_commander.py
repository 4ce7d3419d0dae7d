"""No command the policy pipeline emits ever violates the robot's limits, whatever the model outputs."""
import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from vla_ros.robots import robot_joints
from vla_ros.runtime.commander import JointCommander
from vla_ros.runtime.safety import JointLimits, SafetyFilter

# The simulated Panda's limits (config/robots/sim_panda_joint.yaml), 30 Hz, max_step 0.05 rad.
PANDA = robot_joints("sim_panda_joint")
LOWER, UPPER, VMAX, AMAX = PANDA.lower, PANDA.upper, PANDA.max_velocity, PANDA.max_acceleration
DT = 1 / 30
HOME = np.array([0.0, -0.785, 0.0, -2.356, 0.0, 1.571, 0.785])
EPS = 1e-9

model_value = st.one_of(st.floats(-5, 5), st.floats(allow_nan=True, allow_infinity=True),
                        st.sampled_from([np.nan, np.inf, -np.inf, 1e30, -1e30, 0.0]))
action = st.lists(model_value, min_size=8, max_size=8)  # 7 joints + a gripper dimension
SEEDED = settings(derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def make(space):
    limits = JointLimits([f"j{i}" for i in range(7)], LOWER, UPPER, VMAX, AMAX)
    return JointCommander(SafetyFilter(limits, DT, max_step=0.05), space)


def check_sequence(cmds, start):
    prev, prev_v = start, np.zeros(7)
    for c in cmds:
        assert np.all(np.isfinite(c))
        assert np.all(c >= LOWER - EPS) and np.all(c <= UPPER + EPS)
        v = (c - prev) / DT
        assert np.all(np.abs(v) <= np.minimum(VMAX, 0.05 / DT) + 1e-6)
        assert np.all(np.abs(v - prev_v) <= AMAX * DT + 1e-6)
        prev, prev_v = c, v


@settings(SEEDED, max_examples=100)
@given(st.sampled_from(["joint_position", "joint_delta"]), st.lists(action, min_size=20, max_size=60),
       st.lists(action, min_size=0, max_size=8))
def test_every_command_and_every_trajectory_point_respects_the_limits(space, actions, ahead):
    """100 scenarios x 20-60 ticks (~4,000 actions) of random model output (NaN, inf, 1e30 included), plus previews."""
    cmd_sink = make(space)
    sent = []
    for a in actions:
        res = cmd_sink.step(a, HOME)
        if res.command is None:
            assert res.reasons  # a rejected action is explained, and nothing is sent
            continue
        sent.append(res.command)
    check_sequence(sent, HOME)
    if sent:  # a trajectory sent ahead continues the command stream from its last command
        check_sequence(sent + cmd_sink.preview(sent[-1], ahead, HOME)[1:], HOME)


def test_non_finite_actions_are_rejected_with_a_reason():
    c = make("joint_position")
    assert c.step([np.nan] * 8, HOME).command is None
    assert c.step([np.inf] + [0.0] * 7, HOME).command is None


def test_brake_comes_to_rest_within_the_acceleration_limit():
    c = make("joint_delta")
    for _ in range(30):
        c.step([0.05] * 7 + [0.0], HOME)  # accelerate
    moving, last = c.prev_vel.copy(), c.prev_cmd.copy()
    assert np.any(np.abs(moving) > 0.5)
    points = c.brake(HOME)
    assert points
    vels = np.diff(np.vstack([last, *points]), axis=0) / DT
    assert np.all(np.abs(np.diff(np.vstack([moving, vels]), axis=0)) <= AMAX * DT + 1e-6)
    assert np.allclose(vels[-1], 0.0, atol=1e-9)
