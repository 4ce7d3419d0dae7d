"""Whether episodes fit a model: the one check shared by training and evaluation."""

from __future__ import annotations

from typing import Sequence

from vla_ros.data.episode import Episode
from vla_ros.data.errors import DatasetError


def check_episodes_fit(episodes: Sequence[Episode], config, interface, what: str = "the model config",
                       check_state: bool = True) -> None:
    """Raise DatasetError unless every episode has ``interface``'s (a RobotInterface's) action,
    camera and (with ``check_state``) state names, and ``config``'s (a VLAConfig's) chunk
    size and image size.

    check_state: false for a policy that does not read the state (evaluation); training
    always checks it, since the state's normalization statistics come from the episodes.
    """
    for ep in episodes:
        expected = [("action_names", ep.action_names, list(interface.action_names)),
                    ("camera_names", ep.camera_names, list(interface.camera_names))]
        if check_state:
            expected.append(("state_names", ep.state_names, list(interface.state_names)))
        for attr, have, want in expected:
            if have != want:
                raise DatasetError(f"episode {ep.path} has {attr} {have}, {what} expects {want}")
        if ep.actions.shape[1] != config.chunk_size or ep.images.shape[2] != config.image_size:
            raise DatasetError(f"episode {ep.path} has chunks of {ep.actions.shape[1]} and images of "
                               f"{ep.images.shape[2]} px, {what} expects {config.chunk_size} and "
                               f"{config.image_size}")
