"""Robots are data: each config/robots/<robot>.yaml sets only what differs from the policy node's
defaults, and the simulated Panda's files agree with the simulator's own joint model."""
from pathlib import Path

import numpy as np
import pytest

from vla_ros.robots import robot_joints, robot_parameters
from vla_ros.ros.policy_params import SPEC

ROOT = Path(__file__).resolve().parents[1]
ROBOT_FILES = sorted((ROOT / "config" / "robots").glob("*.yaml"))


@pytest.mark.parametrize("path", ROBOT_FILES, ids=lambda p: p.stem)
def test_robot_file_sets_only_parameters_that_differ_from_defaults(path):
    for name, value in robot_parameters(path).items():
        assert name in SPEC, f"{path.name}: {name} is not a parameter of the policy node"
        default = SPEC[name][1]
        same = list(value) == list(default) if isinstance(value, list) else value == default
        assert not same, f"{path.name}: {name}: {value!r} is the default; leave it out"


@pytest.mark.parametrize("path", ROBOT_FILES, ids=lambda p: p.stem)
def test_robot_file_names_its_joints_and_limits(path):
    joints = robot_joints(path)
    n = len(joints.names)
    assert n and all(len(a) == n for a in (joints.lower, joints.upper, joints.max_velocity, joints.max_acceleration))
    assert np.all(joints.lower < joints.upper) and np.all(joints.max_velocity > 0)


@pytest.mark.parametrize("robot", ["sim_panda", "sim_panda_joint"])
def test_simulated_panda_files_match_the_simulator(robot):
    from vla_ros.sim.panda import ARM_JOINTS, ARM_LOWER, ARM_MAX_VELOCITY, ARM_UPPER

    joints = robot_joints(robot)
    assert list(joints.names) == list(ARM_JOINTS)
    np.testing.assert_allclose(joints.lower, ARM_LOWER)
    np.testing.assert_allclose(joints.upper, ARM_UPPER)
    np.testing.assert_allclose(joints.max_velocity, ARM_MAX_VELOCITY)
