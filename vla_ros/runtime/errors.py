"""Errors the node handles, in a module of their own so that importing them never imports torch
(the node's interpreter runs the control loop; the model lives in the policy server process, and a
remote client needs no model at all)."""


class PolicyLoadError(ValueError):
    """The model could not be loaded or does not fit the robot; the message says why."""
