"""Errors shared by the local and remote inference paths (no torch import, so a remote client stays light)."""


class PolicyLoadError(ValueError):
    """The model could not be loaded or does not fit the robot; the message says why."""
