"""Training checkpoints: a policy checkpoint plus what is needed to continue the run exactly.

``last/`` holds the policy (model.safetensors, config.json, normalization.json), the
dataset config, ``training_state.safetensors`` (optimizer tensors, torch RNG states) and
``training_state.json`` (step, seeds, numpy/python RNG states, train config, data paths).
``best/`` holds the policy with the lowest validation loss and its metrics.json. Every
directory is written to a temporary name and swapped in, so a crash never leaves half of
one. Never pickle.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from vla_ros.data.config import DATASET_CONFIG_FILE, DatasetConfig
from vla_ros.model.checkpoint import save_policy, write_safetensors
from vla_ros.model.policy import VLAPolicy
from vla_ros.training.config import TrainingError

STATE_FORMAT = 1
TRAINING_STATE_TENSORS = "training_state.safetensors"
TRAINING_STATE_JSON = "training_state.json"
METRICS_FILE = "metrics.json"


def json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def write_dir_atomically(target: Path, fill: Callable[[Path], None]) -> None:
    """``fill`` a temporary directory, then swap it in for ``target``."""
    tmp = target.with_name(target.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    fill(tmp)
    old = target.with_name(target.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if target.exists():
        os.replace(target, old)
    os.replace(tmp, target)
    if old.exists():
        shutil.rmtree(old)


def save_training_checkpoint(path: Path, policy: VLAPolicy, optimizer: torch.optim.Optimizer,
                             dataset_config: DatasetConfig, meta: dict[str, Any],
                             rng_tensors: dict[str, torch.Tensor],
                             save_model: Callable[[VLAPolicy, Path], Any] = save_policy) -> None:
    """A policy checkpoint (``save_model``: a plain or an adapted one) plus everything needed to
    continue training, written atomically."""
    def fill(tmp: Path) -> None:
        save_model(policy, tmp)
        dataset_config.save(tmp / DATASET_CONFIG_FILE)
        opt = optimizer.state_dict()
        tensors: dict[str, torch.Tensor] = {}
        scalars: dict[str, Any] = {}
        for pid, st in opt["state"].items():
            for key, value in st.items():
                if isinstance(value, torch.Tensor):
                    tensors[f"optimizer.{pid}.{key}"] = value.detach().to("cpu").contiguous().clone()
                else:
                    scalars[f"{pid}.{key}"] = value
        for name, t in rng_tensors.items():
            tensors[f"rng.{name}"] = t.detach().to("cpu").contiguous().clone()
        write_safetensors(tensors, tmp / TRAINING_STATE_TENSORS, {"format": "vla_ros_training_state"})
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in opt["param_groups"]]
        state = dict(meta, format_version=STATE_FORMAT, optimizer_param_groups=groups, optimizer_scalars=scalars)
        (tmp / TRAINING_STATE_JSON).write_text(json.dumps(state, indent=1, default=json_default) + "\n",
                                               encoding="utf-8")

    write_dir_atomically(path, fill)


def save_best_checkpoint(path: Path, policy: VLAPolicy, dataset_config: DatasetConfig, step: int,
                         val_loss: float, save_model: Callable[[VLAPolicy, Path], Any] = save_policy) -> None:
    """The policy, its dataset config and metrics.json (step, validation loss), atomically."""
    def fill(tmp: Path) -> None:
        save_model(policy, tmp)
        dataset_config.save(tmp / DATASET_CONFIG_FILE)
        (tmp / METRICS_FILE).write_text(json.dumps({"step": step, "val_loss": val_loss}) + "\n")

    write_dir_atomically(path, fill)


def load_training_state(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(training_state.json contents, training_state.safetensors tensors) of a checkpoint."""
    from safetensors.torch import load_file

    js, st = path / TRAINING_STATE_JSON, path / TRAINING_STATE_TENSORS
    if not js.is_file() or not st.is_file():
        raise TrainingError(f"{path} is not a resumable training checkpoint (no {TRAINING_STATE_JSON} / "
                            f"{TRAINING_STATE_TENSORS})")
    meta = json.loads(js.read_text(encoding="utf-8"))
    if meta.get("format_version") != STATE_FORMAT:
        raise TrainingError(f"{js}: unsupported training state format {meta.get('format_version')!r}")
    return meta, load_file(str(st))


def restore_optimizer(optimizer: torch.optim.Optimizer, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
    """Load the optimizer state that save_training_checkpoint split into tensors and JSON."""
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        if name.startswith("optimizer."):
            _, pid, key = name.split(".", 2)
            state.setdefault(int(pid), {})[key] = t
    for name, v in meta.get("optimizer_scalars", {}).items():
        pid, key = name.split(".", 1)
        state.setdefault(int(pid), {})[key] = v
    groups = []
    for g in meta["optimizer_param_groups"]:
        g = dict(g)
        if "betas" in g:
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    optimizer.load_state_dict({"state": state, "param_groups": groups})
