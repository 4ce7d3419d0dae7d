"""DatasetConfig: which topics of an episode bag hold what, and how samples are shaped.

Saved next to every training checkpoint as ``DATASET_CONFIG_FILE``, so that evaluation
reads episodes exactly as training did.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_ros.cli_fields import refuse_unknown_keys
from vla_ros.data.actions import ActionSpec
from vla_ros.data.errors import DatasetError

DATASET_CONFIG_FILE = "dataset_config.json"
PANDA_JOINTS = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1", "panda_finger_joint2"]
NS = 1_000_000_000


@dataclass
class CameraTopic:
    """One camera view of a dataset: its name (as in VLAConfig.camera_names) and its image topic."""

    name: str
    topic: str


@dataclass
class DatasetConfig:
    """How to turn episode bags into (images, instruction, state, action chunk) samples."""

    cameras: list[CameraTopic] = field(default_factory=lambda: [CameraTopic("front", "/front/image_raw")])
    state_topic: str = "/joint_states"
    state_joint_names: list[str] = field(default_factory=lambda: list(PANDA_JOINTS))
    action: ActionSpec = field(default_factory=ActionSpec)
    instruction_topic: str = "/instruction"
    # Used when a bag has no instruction message ("" : such a bag is an error).
    default_instruction: str = ""
    # std_msgs/Bool; the episode succeeded if any message is true. "": no success topic
    # (every episode counts as successful).
    success_topic: str = "/task_success"
    image_size: int = 64
    chunk_size: int = 8
    only_successful: bool = True
    # Seconds. None: control_period / 4.
    tick_tolerance: float | None = None
    # Seconds a frame may precede its first action tick. None: 1.5 * control_period.
    max_tick_delay: float | None = None
    # Seconds between a reference frame and the other cameras' frames. None: control_period / 2.
    camera_sync_tolerance: float | None = None
    # load_episodes: log and skip a bad bag (True) or raise (False).
    skip_bad_bags: bool = True

    def __post_init__(self) -> None:
        self.cameras = [c if isinstance(c, CameraTopic) else CameraTopic(**c) for c in self.cameras]
        if isinstance(self.action, dict):
            self.action = ActionSpec(**self.action)
        if not self.cameras:
            raise DatasetError("DatasetConfig.cameras must name at least one camera")
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise DatasetError(f"DatasetConfig.cameras has duplicate names {names}")
        if not self.state_joint_names or len(set(self.state_joint_names)) != len(self.state_joint_names):
            raise DatasetError(f"DatasetConfig.state_joint_names must be non-empty and unique, "
                               f"got {self.state_joint_names}")
        for n in ("image_size", "chunk_size"):
            v = getattr(self, n)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise DatasetError(f"DatasetConfig.{n} must be a positive integer, got {v!r}")
        if not self.action.control_period > 0:
            raise DatasetError(f"DatasetConfig.action.control_period must be > 0, got {self.action.control_period!r}")
        self.action.action_names()  # validates the kind

    # -------------------------------------------------------------- derived
    @property
    def camera_names(self) -> list[str]:
        return [c.name for c in self.cameras]

    @property
    def action_names(self) -> list[str]:
        return self.action.action_names()

    @property
    def state_names(self) -> list[str]:
        return list(self.state_joint_names)

    def tolerance_ns(self, name: str) -> int:
        period = self.action.control_period
        defaults = {"tick_tolerance": period / 4, "max_tick_delay": 1.5 * period, "camera_sync_tolerance": period / 2}
        value = getattr(self, name)
        return int(round((defaults[name] if value is None else value) * NS))

    # -------------------------------------------------------------- (de)serialization
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DatasetConfig":
        refuse_unknown_keys(cls, data, "DatasetConfig", DatasetError)
        if isinstance(data.get("action"), dict):
            refuse_unknown_keys(ActionSpec, data["action"], "DatasetConfig.action", DatasetError)
        return cls(**data)

    def save(self, path: str | os.PathLike) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "DatasetConfig":
        try:
            return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))
        except json.JSONDecodeError as e:
            raise DatasetError(f"{path}: invalid JSON: {e}") from None

    @classmethod
    def recorded_with(cls, checkpoint: str | os.PathLike) -> "DatasetConfig | None":
        """The dataset config training saved next to a checkpoint (DATASET_CONFIG_FILE), or None."""
        path = Path(checkpoint) / DATASET_CONFIG_FILE
        return cls.load(path) if path.is_file() else None

    def cache_key_dict(self) -> dict[str, Any]:
        """The fields that change an episode's arrays (not the filtering flags)."""
        d = self.to_dict()
        for k in ("only_successful", "skip_bad_bags"):
            d.pop(k)
        return d
