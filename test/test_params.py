"""Parameters read from a node's SPEC come back as typed, nested, frozen attributes."""
import dataclasses

import pytest
import rclpy
from rclpy.parameter import Parameter

from vla_ros.robots import robot_parameters
from vla_ros.ros import policy_params
from vla_ros.ros.params import ParameterError, declare


@pytest.fixture
def node_with(request):
    context = rclpy.Context()
    rclpy.init(context=context)
    nodes = []

    def make(overrides):
        params = [Parameter(k, value=v) for k, v in overrides.items()]
        node = rclpy.create_node("policy_params_test", context=context, parameter_overrides=params)
        declare(node, policy_params.SPEC)
        nodes.append(node)
        return node

    yield make
    for n in nodes:
        n.destroy_node()
    rclpy.shutdown(context=context)


def test_policy_parameters_read_as_typed_nested_frozen_attributes(node_with):
    p = policy_params.read(node_with(robot_parameters("sim_panda_joint")))
    assert isinstance(p, policy_params.PolicyNodeParams)
    assert p.control.rate == 30.0 and isinstance(p.control.rate, float)
    assert p.joints.names == tuple(f"panda_joint{i}" for i in range(1, 8))
    assert p.dry_run is False and p.output.mode == "follow_joint_trajectory"
    assert p.cameras.transports == ("raw",)
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.control.rate = 5.0
    # every parameter of the table is an attribute
    for name in policy_params.SPEC:
        obj = p
        for part in name.split("."):
            obj = getattr(obj, part)


def test_invalid_parameter_names_itself(node_with):
    params = robot_parameters("sim_panda_joint") | {"control.execution": "average"}
    with pytest.raises(ParameterError, match="parameter 'control.execution' is 'average'; expected one of"):
        policy_params.read(node_with(params))
