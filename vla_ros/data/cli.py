"""Dataset command-line options, shared by `vla-ros train` and `vla-ros eval-open-loop`."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TYPE_CHECKING

from vla_ros.data.config import DatasetConfig
from vla_ros.data.errors import DatasetError
from vla_ros.data.lerobot import DEFAULT_MAPPING, is_lerobot_dataset, load_mapping

if TYPE_CHECKING:
    from vla_ros.model import VLAConfig


def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vla_ros" / "episodes"


def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    """Dataset options (None: keep the default)."""
    g = p.add_argument_group("dataset")
    g.add_argument("--data", nargs="+", metavar="BAG_OR_DIR",
                   help="episode bag directories, directories whose subdirectories are bags, quoted patterns of "
                        "those ('bags/episode_00*'), or LeRobotDataset v3.0 directories (meta/info.json)")
    g.add_argument("--dataset-config", metavar="JSON", help="DatasetConfig JSON (topics, joints, ...)")
    g.add_argument("--lerobot-mapping", metavar="YAML",
                   help="the cameras, joints and action of the data from a LeRobot mapping (config/lerobot/<name>.yaml "
                        "or a file; default, for LeRobot datasets in --data: sim_panda)")
    g.add_argument("--camera", action="append", metavar="NAME=TOPIC",
                   help="a camera and its image topic (repeat for several; default front=/front/image_raw)")
    g.add_argument("--state-topic", help="sensor_msgs/JointState topic (default /joint_states)")
    g.add_argument("--state-joints", nargs="+", metavar="JOINT", help="joints forming the state, in order")
    g.add_argument("--action-topic", help="TwistStamped topic of the end-effector command (default /expert/twist)")
    g.add_argument("--gripper-topic", help="std_msgs/Float64 gripper command topic ('' for none; default "
                                           "/expert/gripper)")
    g.add_argument("--control-period", type=float, help="seconds per control tick (default 0.1)")
    g.add_argument("--instruction-topic", help="std_msgs/String topic (default /instruction)")
    g.add_argument("--success-topic", help="std_msgs/Bool topic ('' for none; default /task_success)")
    g.add_argument("--include-failed", action="store_true", help="also use unsuccessful episodes")
    g.add_argument("--image-size", type=int, help="image side in pixels (default: the model config's)")
    g.add_argument("--chunk-size", type=int, help="actions per chunk (default: the model config's)")
    g.add_argument("--cache-dir", default=str(default_cache_dir()),
                   help="episode cache directory (default: %(default)s)")
    g.add_argument("--no-cache", action="store_true", help="do not read or write the episode cache")


def dataset_config_from_args(args, base: DatasetConfig | None = None,
                             model_cfg: VLAConfig | None = None) -> DatasetConfig:
    """A DatasetConfig from --dataset-config, --lerobot-mapping (given, or the default when --data names a
    LeRobot dataset and there is no ``base``) or ``base``, with the command-line options applied."""
    mapping = getattr(args, "lerobot_mapping", None)
    if mapping is None and base is None and not getattr(args, "dataset_config", None) and any(
            is_lerobot_dataset(p) for p in args.data or []):
        mapping = DEFAULT_MAPPING
    if mapping is not None and getattr(args, "dataset_config", None):
        raise DatasetError("give --dataset-config or --lerobot-mapping, not both")
    if getattr(args, "dataset_config", None):
        d = DatasetConfig.load(args.dataset_config).to_dict()
    elif mapping is not None:
        d = load_mapping(mapping).dataset_config().to_dict()
        if base is not None:  # a checkpoint's: its image and chunk sizes stay
            d["image_size"], d["chunk_size"] = base.image_size, base.chunk_size
    else:
        d = (base or DatasetConfig()).to_dict()
    if args.camera:
        cams = []
        for spec in args.camera:
            name, sep, topic = spec.partition("=")
            if not sep or not name or not topic:
                raise SystemExit(f"--camera expects NAME=TOPIC, got {spec!r}")
            cams.append({"name": name, "topic": topic})
        d["cameras"] = cams
    for arg, key in (("state_topic", "state_topic"), ("instruction_topic", "instruction_topic"),
                     ("success_topic", "success_topic")):
        if getattr(args, arg) is not None:
            d[key] = getattr(args, arg)
    if args.state_joints:
        d["state_joint_names"] = list(args.state_joints)
    if args.action_topic is not None:
        d["action"]["topic"] = args.action_topic
    if args.gripper_topic is not None:
        d["action"]["gripper_topic"] = args.gripper_topic
    if args.control_period is not None:
        d["action"]["control_period"] = args.control_period
    if args.include_failed:
        d["only_successful"] = False
    if model_cfg is not None and not getattr(args, "dataset_config", None) and base is None:
        d["image_size"], d["chunk_size"] = model_cfg.image_size, model_cfg.chunk_size
    if args.image_size is not None:
        d["image_size"] = args.image_size
    if args.chunk_size is not None:
        d["chunk_size"] = args.chunk_size
    return DatasetConfig.from_dict(d)
