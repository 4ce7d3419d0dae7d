"""The model config of a run: a preset or file, with the robot interface from the dataset."""

from __future__ import annotations

import os

from vla_ros.data.config import DatasetConfig
from vla_ros.model import VLAConfig, load_preset


def resolve_model_config(config: str | os.PathLike | VLAConfig | dict, dataset_config: DatasetConfig) -> VLAConfig:
    """A preset name / JSON path / VLAConfig with the robot interface taken from the dataset:
    action, state and camera names, chunk size and image size."""
    overrides = dict(action_names=dataset_config.action_names, action_dim=0,
                     state_names=dataset_config.state_names, state_dim=0,
                     camera_names=dataset_config.camera_names, chunk_size=dataset_config.chunk_size,
                     image_size=dataset_config.image_size)
    if isinstance(config, (VLAConfig, dict)):
        data = config.to_dict() if isinstance(config, VLAConfig) else dict(config)
        data.update(overrides)
        names = set(data["action_names"]) | set(data["state_names"])
        data["unnormalized_names"] = [n for n in data.get("unnormalized_names", []) if n in names]
        return VLAConfig.from_dict(data)
    return load_preset(str(config), **overrides)
