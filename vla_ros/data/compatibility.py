"""Whether episodes fit a model: the one check shared by training and evaluation."""

from __future__ import annotations

from typing import Sequence

from vla_ros.data.episode import Episode
from vla_ros.data.errors import DatasetError


def check_episodes_fit(episodes: Sequence[Episode], *, action_names: Sequence[str], camera_names: Sequence[str],
                       state_names: Sequence[str] | None, chunk_size: int, image_size: int,
                       what: str = "the model") -> None:
    """Raise DatasetError unless every episode has these action, camera and state names,
    chunk size and image size (``what`` names the model in the message).

    state_names: None for a policy that does not read the state (evaluation); training
    always checks it, since the state's normalization statistics come from the episodes.
    """
    expected = [("action_names", list(action_names)), ("camera_names", list(camera_names))]
    if state_names is not None:
        expected.append(("state_names", list(state_names)))
    for ep in episodes:
        for attr, want in expected:
            if getattr(ep, attr) != want:
                raise DatasetError(f"episode {ep.path} has {attr} {getattr(ep, attr)}, {what} expects {want}")
        if ep.actions.shape[1] != chunk_size or ep.images.shape[2] != image_size:
            raise DatasetError(f"episode {ep.path} has chunks of {ep.actions.shape[1]} and images of "
                               f"{ep.images.shape[2]} px, {what} expects {chunk_size} and {image_size}")
