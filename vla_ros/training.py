"""Behaviour cloning of a VLA policy from episode bags (no rclpy).

    from vla_ros.training import TrainConfig, train
    result = train(["bags/"], "runs/pick", model_config="tiny",
                   dataset_config=DatasetConfig(chunk_size=8), train_config=TrainConfig(steps=2000))

What a run writes under ``out_dir``::

    last/                 the latest checkpoint: a policy checkpoint (model.safetensors,
                          config.json, normalization.json) + dataset_config.json +
                          training_state.safetensors (optimizer tensors, torch RNG states)
                          + training_state.json (step, seeds, numpy/python RNG states,
                          train config, data paths). Never pickle.
    best/                 the policy with the lowest validation loss so far (+ metrics.json)
    train_log.jsonl       one JSON object per logged step / validation

The policy's robot interface (action, state and camera names) comes from the episodes'
metadata; the model config (a preset name or JSON file) takes its chunk size and image size
from the dataset config. Normalization statistics come from the
training split. Training: AdamW (no weight decay on biases and norms), linear warmup then
cosine decay, gradient clipping, DrQ-style random-shift augmentation (replicate-pad, random
crop), batches sampled uniformly with replacement by a seeded generator.

``resume=True`` continues from ``out_dir/last``: weights, optimizer state, step and every
RNG are restored, so a resumed run ends with exactly the weights of an uninterrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import random
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from vla_ros.cli_fields import add_field_option
from vla_ros.data.dataset import DatasetConfig, Episode, EpisodeDataset, load_episodes, split_episodes
from vla_ros.model import (RobotInterface, VLAConfig, build_policy, load_policy, load_preset, make_generator,
                           resolve_device, save_policy)
from vla_ros.model.checkpoint import CONFIG_FILE, read_config
from vla_ros.model.policy import VLAPolicy

log = logging.getLogger("vla_ros.training")

STATE_FORMAT = 1
TRAINING_STATE_TENSORS = "training_state.safetensors"
TRAINING_STATE_JSON = "training_state.json"
DATASET_CONFIG_FILE = "dataset_config.json"
LOG_FILE = "train_log.jsonl"


class TrainingError(ValueError):
    """A run that cannot start or resume; the message says why."""


@dataclass
class TrainConfig:
    """Optimization and bookkeeping of one training run."""

    steps: int = 2000                 # optimizer steps
    batch_size: int = 32              # frames per batch
    lr: float = 3e-4                  # peak learning rate
    weight_decay: float = 1e-4        # AdamW weight decay (not on biases and norms)
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    # Linear warmup over this many steps, then cosine decay to lr * min_lr_ratio.
    # None: min(100, steps // 10).
    warmup_steps: int | None = None
    min_lr_ratio: float = 0.1
    grad_clip: float = 1.0            # max global gradient norm (0: no clipping)
    augment: bool = True              # DrQ random shift
    augment_pad: int = 4              # pixels of replicate padding before the random crop
    val_fraction: float = 0.1         # share of episodes held out (by episode)
    val_every: int = 200              # steps between validations
    val_max_batches: int = 20         # validation on at most this many batches (a fixed subset)
    checkpoint_every: int = 500       # steps between checkpoints (out_dir/last)
    log_every: int = 10               # steps between train_log.jsonl entries
    seed: int = 0                     # seed of python, numpy and torch RNGs
    threads: int = 0                  # torch intra-op threads (0: torch's default)
    device: str = "cpu"               # "cpu", "cuda", "cuda:N" or "auto"
    progress: bool = True             # tqdm progress bar

    def __post_init__(self) -> None:
        for n in ("steps", "batch_size", "val_every", "checkpoint_every", "log_every"):
            v = getattr(self, n)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TrainConfig.{n} must be a positive integer, got {v!r}")
        if self.warmup_steps is None:
            self.warmup_steps = min(100, self.steps // 10)
        for n in ("warmup_steps", "augment_pad", "threads", "seed", "val_max_batches"):
            v = getattr(self, n)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"TrainConfig.{n} must be a non-negative integer, got {v!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"TrainConfig.val_fraction must be in [0, 1), got {self.val_fraction!r}")
        self.betas = [float(b) for b in self.betas]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown TrainConfig key(s) {unknown}; valid keys are {sorted(known)}")
        return cls(**data)


@dataclass
class TrainResult:
    out_dir: Path
    step: int
    last_dir: Path
    best_dir: Path | None
    best_val_loss: float | None
    last_train_loss: float | None
    num_train_episodes: int
    num_val_episodes: int


# ----------------------------------------------------------------------------- helpers
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
        log.info("model config %s: %s taken from the dataset config", config if isinstance(config, str) else "",
                 ", ".join(f"{k} {getattr(base, k)} -> {v}" for k, v in changed.items()))
    return base.replace(**changed) if changed else base


def robot_interface_of(dataset: EpisodeDataset | DatasetConfig) -> RobotInterface:
    """The robot interface in a dataset's metadata: its action, state and camera names."""
    return RobotInterface(action_names=list(dataset.action_names), camera_names=list(dataset.camera_names),
                          state_names=list(dataset.state_names))


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warmup, then cosine."""
    if cfg.warmup_steps and step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    span = max(cfg.steps - cfg.warmup_steps, 1)
    progress = min(max(step - cfg.warmup_steps, 0) / span, 1.0)
    return cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def random_shift(images: torch.Tensor, pad: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """DrQ augmentation: replicate-pad every (B, V) image by ``pad`` pixels and crop it back
    at a random integer offset (independent per image)."""
    if pad <= 0:
        return images
    B, V, C, H, W = images.shape
    x = F.pad(images.reshape(B * V, C, H, W), (pad, pad, pad, pad), mode="replicate")
    offsets = torch.randint(0, 2 * pad + 1, (B * V, 2), generator=generator, device="cpu").tolist()
    out = torch.stack([x[i, :, dy:dy + H, dx:dx + W] for i, (dy, dx) in enumerate(offsets)])
    return out.reshape(B, V, C, H, W)


def _param_groups(policy: torch.nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for name, p in policy.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or name.endswith(".bias") else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


# ----------------------------------------------------------------------------- checkpoints
def _write_dir_atomically(target: Path, fill) -> None:
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
                             rng_tensors: dict[str, torch.Tensor]) -> None:
    """A policy checkpoint plus everything needed to continue training, written atomically."""
    from safetensors.torch import save_file

    def fill(tmp: Path) -> None:
        save_policy(policy, tmp)
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
        save_file(tensors, str(tmp / TRAINING_STATE_TENSORS), metadata={"format": "vla_ros_training_state"})
        groups = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in g.items()} for g in opt["param_groups"]]
        state = dict(meta, format_version=STATE_FORMAT, optimizer_param_groups=groups, optimizer_scalars=scalars)
        (tmp / TRAINING_STATE_JSON).write_text(json.dumps(state, indent=1, default=_json_default) + "\n",
                                               encoding="utf-8")

    _write_dir_atomically(path, fill)


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


def _restore_optimizer(optimizer: torch.optim.Optimizer, meta: dict, tensors: dict[str, torch.Tensor]) -> None:
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


def _truncate_log(path: Path, step: int) -> None:
    if not path.is_file():
        return
    keep = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("step", 0) <= step:
                keep.append(line)
        except json.JSONDecodeError:
            continue
    path.write_text("".join(line + "\n" for line in keep), encoding="utf-8")


# ----------------------------------------------------------------------------- training
@torch.no_grad()
def evaluate_loss(policy: VLAPolicy, dataset: EpisodeDataset, indices: np.ndarray, batch_size: int,
                  seed: int, device: torch.device) -> float:
    """Mean loss over ``indices`` (deterministic: the head's noise comes from ``seed``)."""
    was_training = policy.training
    policy.eval()
    gen = make_generator(seed, device)
    total, count = 0.0, 0
    try:
        for i in range(0, len(indices), batch_size):
            idx = indices[i:i + batch_size]
            loss, _ = policy.loss(_to_device(dataset.batch(idx), device), generator=gen)
            total += float(loss) * len(idx)
            count += len(idx)
    finally:
        policy.train(was_training)
    return total / max(count, 1)


def train(data: Sequence[str | os.PathLike] | Sequence[Episode] | None, out_dir: str | os.PathLike,
          model_config: str | os.PathLike | VLAConfig = "tiny", dataset_config: DatasetConfig | None = None,
          train_config: TrainConfig | None = None, cache_dir: str | os.PathLike | None = None,
          resume: bool = False, stop_at_step: int | None = None) -> TrainResult:
    """Train a policy by behaviour cloning on episode bags (or already loaded Episodes).

    resume: continue from ``out_dir/last`` (model and dataset configs, data paths when
    ``data`` is None, and the train config when ``train_config`` is None come from it).
    Without resume, an ``out_dir`` that already holds a run is an error.
    stop_at_step: stop after this step as if interrupted (the schedule still spans
    ``train_config.steps``); for tests and time-sliced training.
    """
    out = Path(out_dir)
    last_dir, best_dir, log_path = out / "last", out / "best", out / LOG_FILE
    meta: dict[str, Any] | None = None
    tensors: dict[str, torch.Tensor] = {}
    if resume and last_dir.is_dir():
        meta, tensors = load_training_state(last_dir)
        dataset_config = DatasetConfig.load(last_dir / DATASET_CONFIG_FILE)
        model_cfg, saved_interface = read_config(last_dir / CONFIG_FILE)
        if train_config is None:
            train_config = TrainConfig.from_dict(meta["train_config"])
        if data is None:
            data = meta.get("data_paths") or None
            if data is None:
                raise TrainingError(f"{last_dir} was trained on in-memory episodes: pass the data again")
        log.info("resuming %s from step %d", out, meta["step"])
    else:
        if resume:
            log.info("no checkpoint in %s: starting a new run", last_dir)
        elif last_dir.exists():
            raise TrainingError(f"{out} already holds a run ({last_dir} exists): pass resume=True (--resume) "
                                f"or choose another output directory")
        dataset_config = dataset_config or DatasetConfig()
        model_cfg, saved_interface = resolve_model_config(model_config, dataset_config), None
    cfg = train_config or TrainConfig()
    if data is None:
        raise TrainingError("no training data given")

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = resolve_device(cfg.device)

    # ---- data
    data_paths: list[str] | None = None
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    if data and all(isinstance(d, Episode) for d in data):
        episodes = list(data)
    else:
        data_paths = [str(Path(p).resolve()) for p in data]  # type: ignore[arg-type]
        episodes = load_episodes(data_paths, dataset_config, cache_dir=cache_dir)
    train_eps, val_eps = split_episodes(episodes, cfg.val_fraction, cfg.seed)
    train_ds = EpisodeDataset(train_eps)
    val_ds = EpisodeDataset(val_eps) if val_eps else None
    interface = robot_interface_of(train_ds)
    if (saved_interface is not None and interface != saved_interface) or \
            train_ds.chunk_size != model_cfg.chunk_size or train_ds.image_size != model_cfg.image_size:
        model_interface = saved_interface or interface
        raise TrainingError(
            f"episodes (actions {interface.action_names}, state {interface.state_names}, cameras "
            f"{interface.camera_names}, chunk {train_ds.chunk_size}, image {train_ds.image_size}) do not match the "
            f"model (actions {model_interface.action_names}, state {model_interface.state_names}, cameras "
            f"{model_interface.camera_names}, chunk {model_cfg.chunk_size}, image {model_cfg.image_size})")
    log.info("%d training episodes (%d frames), %d validation episodes (%d frames)", len(train_eps), len(train_ds),
             len(val_eps), len(val_ds) if val_ds else 0)
    if val_ds is None:
        log.warning("no validation episodes (val_fraction=%s, %d episodes): no best checkpoint",
                    cfg.val_fraction, len(episodes))

    # ---- model, optimizer, RNG
    random.seed(cfg.seed)
    np.random.seed(cfg.seed % 2**32)
    torch.manual_seed(cfg.seed)
    policy = build_policy(model_cfg, interface)
    policy.set_normalization_stats(train_ds.stats())
    policy.to(device).train()
    params = [p for p in policy.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(_param_groups(policy, cfg.weight_decay), lr=cfg.lr, betas=tuple(cfg.betas))
    data_rng = np.random.default_rng(cfg.seed)
    aug_gen = torch.Generator().manual_seed(cfg.seed + 1)
    loss_gen = make_generator(cfg.seed + 2, device)
    step, best_val, best_step = 0, None, None
    if meta is not None:
        # load_policy knows every checkpoint layout (e.g. frozen backbones stored by reference).
        policy.load_state_dict(load_policy(last_dir).state_dict(), strict=True)
        _restore_optimizer(optimizer, meta, tensors)
        step, best_val, best_step = int(meta["step"]), meta.get("best_val_loss"), meta.get("best_step")
        data_rng.bit_generator.state = meta["numpy_rng"]
        py = meta["python_rng"]
        random.setstate((py[0], tuple(py[1]), py[2]))
        torch.set_rng_state(tensors["rng.torch_cpu"])
        aug_gen.set_state(tensors["rng.augment"])
        loss_gen.set_state(tensors["rng.loss"])
        if device.type == "cuda" and "rng.torch_cuda" in tensors:
            torch.cuda.set_rng_state(tensors["rng.torch_cuda"], device)
        _truncate_log(log_path, step)
    out.mkdir(parents=True, exist_ok=True)
    val_indices = None
    if val_ds is not None:
        n_val = len(val_ds)
        cap = cfg.val_max_batches * cfg.batch_size if cfg.val_max_batches else n_val
        val_indices = np.arange(n_val) if n_val <= cap else np.sort(
            np.random.default_rng(cfg.seed).choice(n_val, cap, replace=False))

    def checkpoint_meta() -> dict[str, Any]:
        return {
            "step": step, "seed": cfg.seed, "train_config": cfg.to_dict(), "data_paths": data_paths,
            "model_config_source": str(model_config) if not isinstance(model_config, VLAConfig) else "VLAConfig",
            "best_val_loss": best_val, "best_step": best_step,
            "numpy_rng": data_rng.bit_generator.state, "python_rng": list(random.getstate()),
            "num_train_episodes": len(train_eps), "num_val_episodes": len(val_eps),
            "train_episodes": [e.path for e in train_eps], "val_episodes": [e.path for e in val_eps],
        }

    def rng_tensors() -> dict[str, torch.Tensor]:
        out_t = {"torch_cpu": torch.get_rng_state(), "augment": aug_gen.get_state(), "loss": loss_gen.get_state()}
        if device.type == "cuda":
            out_t["torch_cuda"] = torch.cuda.get_rng_state(device)
        return out_t

    def write_log(entry: dict[str, Any]) -> None:
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(entry, default=_json_default) + "\n")

    from tqdm import tqdm

    bar = tqdm(total=cfg.steps, initial=step, disable=not cfg.progress, desc="train", dynamic_ncols=True)
    last_loss: float | None = None
    t_start = time.perf_counter()
    try:
        while step < cfg.steps:
            idx = data_rng.integers(0, len(train_ds), size=cfg.batch_size)
            batch = train_ds.batch(idx)
            if cfg.augment:
                batch["images"] = random_shift(batch["images"], cfg.augment_pad, aug_gen)
            lr = lr_at(step, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss, metrics = policy.loss(_to_device(batch, device), generator=loss_gen)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
            optimizer.step()
            step += 1
            last_loss = float(loss.detach())
            bar.update(1)
            bar.set_postfix(loss=f"{last_loss:.4f}", lr=f"{lr:.2e}")
            if step % cfg.log_every == 0 or step == cfg.steps:
                write_log({"step": step, "loss": last_loss, "lr": lr, "grad_norm": float(grad_norm),
                           "elapsed_s": round(time.perf_counter() - t_start, 3),
                           **{f"train/{k}": v for k, v in metrics.items() if k != "loss"}})
            if val_ds is not None and (step % cfg.val_every == 0 or step == cfg.steps):
                val_loss = evaluate_loss(policy, val_ds, val_indices, cfg.batch_size, cfg.seed, device)
                improved = best_val is None or val_loss < best_val
                write_log({"step": step, "val_loss": val_loss, "best": improved})
                bar.write(f"step {step}: val_loss {val_loss:.4f}" + (" (best)" if improved else ""))
                if improved:
                    best_val, best_step = val_loss, step

                    def fill_best(tmp: Path) -> None:
                        save_policy(policy, tmp)
                        dataset_config.save(tmp / DATASET_CONFIG_FILE)
                        (tmp / "metrics.json").write_text(json.dumps({"step": step, "val_loss": val_loss}) + "\n")

                    _write_dir_atomically(best_dir, fill_best)
            if step % cfg.checkpoint_every == 0 or step == cfg.steps:
                save_training_checkpoint(last_dir, policy, optimizer, dataset_config, checkpoint_meta(), rng_tensors())
            if stop_at_step is not None and step >= stop_at_step:
                break
    finally:
        bar.close()
    return TrainResult(out_dir=out, step=step, last_dir=last_dir, best_dir=best_dir if best_dir.is_dir() else None,
                       best_val_loss=best_val, last_train_loss=last_loss, num_train_episodes=len(train_eps),
                       num_val_episodes=len(val_eps))


# ----------------------------------------------------------------------------- CLI
def default_cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vla_ros" / "episodes"


def add_dataset_arguments(p: argparse.ArgumentParser) -> None:
    """Dataset options shared by `train` and `eval-open-loop` (None: keep the default)."""
    g = p.add_argument_group("dataset")
    g.add_argument("--data", nargs="+", metavar="BAG_OR_DIR",
                   help="episode bag directories, or directories whose subdirectories are bags")
    g.add_argument("--dataset-config", metavar="JSON", help="DatasetConfig JSON (topics, joints, ...)")
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
    """A DatasetConfig from --dataset-config (or ``base``) with the command-line options applied."""
    d = (DatasetConfig.load(args.dataset_config) if getattr(args, "dataset_config", None)
         else (base or DatasetConfig())).to_dict()
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


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """The `vla-ros train` options."""
    p.add_argument("--config", default="tiny", help="model preset name or VLAConfig JSON file (default tiny)")
    p.add_argument("--out", required=True, help="output directory (checkpoints, train_log.jsonl)")
    p.add_argument("--resume", action="store_true",
                   help="continue from OUT/last if it exists (its model and dataset configs and, without --data, "
                        "its data; options given here override its training options)")
    add_dataset_arguments(p)
    g = p.add_argument_group("optimization (TrainConfig)")
    for name in _TRAIN_ARG_FIELDS:
        add_field_option(g, TrainConfig, name, **({"type": int} if name == "warmup_steps" else {}))
    g.add_argument("--no-augment", action="store_true", help="turn off the random-shift image augmentation")
    g.add_argument("--no-progress", action="store_true", help="no progress bar")


_TRAIN_ARG_FIELDS = ("steps", "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "val_fraction",
                     "val_every", "checkpoint_every", "log_every", "seed", "threads", "device")


def run_train_cli(args) -> int:
    """`vla-ros train`: the handler behind the subcommand."""
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(levelname)s: %(message)s")
    out = Path(args.out)
    resuming = args.resume and (out / "last").is_dir()
    overrides = {k: getattr(args, k) for k in _TRAIN_ARG_FIELDS if getattr(args, k) is not None}
    if args.no_augment:
        overrides["augment"] = False
    if args.no_progress:
        overrides["progress"] = False
    try:
        if resuming:
            meta, _ = load_training_state(out / "last")
            base, model, dataset_config = meta["train_config"], "tiny", None
        else:
            if not args.data:
                raise SystemExit("vla-ros train: --data is required (unless --resume finds OUT/last)")
            base, model = {}, args.config
            dataset_config = dataset_config_from_args(args, model_cfg=load_preset(model))
        base.update(overrides)
        result = train(args.data, out, model_config=model, dataset_config=dataset_config,
                       train_config=TrainConfig.from_dict(base),
                       cache_dir=None if args.no_cache else args.cache_dir, resume=args.resume)
    except (ValueError, FileNotFoundError) as e:
        print(f"vla-ros train: error: {e}")
        return 1
    best = f", best val loss {result.best_val_loss:.4f} -> {result.best_dir}" if result.best_dir else ""
    print(f"trained {result.step} steps on {result.num_train_episodes} episodes "
          f"({result.num_val_episodes} held out): {result.last_dir}{best}")
    return 0
