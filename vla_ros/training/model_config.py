"""The model of a run: an architecture (a preset or file) with the chunk and image size the
dataset was cut to, and the robot interface the episodes record."""

from __future__ import annotations

import logging
import os

from vla_ros.data.config import DatasetConfig
from vla_ros.data.torch_dataset import EpisodeDataset
from vla_ros.model import RobotInterface, VLAConfig, load_preset

log = logging.getLogger("vla_ros.training")


def resolve_model_config(config: str | os.PathLike | VLAConfig | dict, dataset_config: DatasetConfig) -> VLAConfig:
    """A preset name / JSON path / VLAConfig (or its dict) with the chunk size and image size
    of the dataset config, which cut and resized the training samples."""
    if isinstance(config, VLAConfig):
        base = config
    elif isinstance(config, dict):
        base = VLAConfig.from_dict(config)
    else:
        base = load_preset(str(config))
    changed = {k: getattr(dataset_config, k) for k in ("chunk_size", "image_size")
               if getattr(base, k) != getattr(dataset_config, k)}
    if changed:
        log.info("model config: %s taken from the dataset config",
                 ", ".join(f"{k} {getattr(base, k)} -> {v}" for k, v in changed.items()))
    return base.replace(**changed) if changed else base


def robot_interface_of(dataset: EpisodeDataset | DatasetConfig) -> RobotInterface:
    """The robot interface in a dataset's metadata: its action, state and camera names."""
    return RobotInterface(action_names=list(dataset.action_names), camera_names=list(dataset.camera_names),
                          state_names=list(dataset.state_names))
