"""`vla-ros distill`: a small student policy imitates a trained teacher on episode bags
(model/compression.py's distill: KL on discrete heads' tokens, else the student's own loss
towards the teacher's sampled chunks).

The student is built from a preset (or VLAConfig JSON) with the teacher's robot interface,
chunk size and image size (both see the same frames), and adopts the teacher's normalization
statistics. Batches are sampled once, uniformly with replacement (seeded), from the episodes
and cycled; the student sees them with training's DrQ random shift (``--augment-pad``). Writes
the student as a plain checkpoint plus ``dataset_config.json`` and ``distill_metrics.json``
(compression.distill's metrics and the per-frame latency of both).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from vla_ros.data.compatibility import check_episodes_fit
from vla_ros.data.config import DATASET_CONFIG_FILE, DatasetConfig
from vla_ros.data.episodes import load_episodes
from vla_ros.data.torch_dataset import EpisodeDataset
from vla_ros.model import build_policy, load_preset, save_policy
from vla_ros.model.compression import distill, own_parameters, predict_batch
from vla_ros.model.lora import load_any_policy
from vla_ros.training.augment import random_shift
from vla_ros.training.config import TrainingError
from vla_ros.training.rng import seed_globals

log = logging.getLogger("vla_ros.training")
METRICS_FILE = "distill_metrics.json"


def distill_checkpoint(teacher: str | os.PathLike, student: str, data: Sequence[str | os.PathLike],
                       out: str | os.PathLike, dataset_config: DatasetConfig | None = None, steps: int = 500,
                       batch_size: int = 32, num_batches: int = 64, lr: float = 1e-3, temperature: float = 2.0,
                       alpha: float = 0.0, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                       augment_pad: int = 4, min_lr_ratio: float = 0.1) -> dict[str, Any]:
    """Distill the teacher checkpoint into a new ``student`` (preset name or VLAConfig JSON);
    returns the metrics written to ``out/distill_metrics.json``."""
    out = Path(out)
    if (out / "model.safetensors").exists():
        raise TrainingError(f"{out} already holds a checkpoint: choose another --out")
    for name, v in (("steps", steps), ("batch_size", batch_size), ("num_batches", num_batches)):
        if v < 1:
            raise TrainingError(f"{name} must be a positive integer, got {v}")
    if augment_pad < 0:
        raise TrainingError(f"augment_pad must be >= 0, got {augment_pad}")
    if not 0 < min_lr_ratio <= 1:
        raise TrainingError(f"min_lr_ratio must be in (0, 1], got {min_lr_ratio}")
    t = load_any_policy(teacher)
    if dataset_config is None:
        dataset_config = DatasetConfig.recorded_with(teacher) or DatasetConfig(
            image_size=t.config.image_size, chunk_size=t.config.chunk_size)
    episodes = load_episodes([str(Path(p).resolve()) for p in data], dataset_config, cache_dir=cache_dir)
    if not episodes:
        raise TrainingError(f"no episodes in {list(map(str, data))}")
    iface = t.interface
    try:
        check_episodes_fit(episodes, action_names=iface.action_names, camera_names=iface.camera_names,
                           state_names=iface.state_names, chunk_size=t.config.chunk_size,
                           image_size=t.config.image_size, what="the teacher")
    except ValueError as e:
        raise TrainingError(str(e)) from None
    ds = EpisodeDataset(episodes)
    rng = np.random.default_rng(seed)
    batches = [ds.batch(rng.integers(0, len(ds), size=batch_size)) for _ in range(num_batches)]
    cfg = load_preset(student).replace(chunk_size=t.config.chunk_size, image_size=t.config.image_size)
    if cfg.action_prefix:
        # Distillation matches the teacher's chunks from observations alone; a prefix module would stay untrained.
        raise TrainingError(f"student {student!r} has action_prefix {cfg.action_prefix}: distillation does not train "
                            "action-prefix conditioning; use a student preset with action_prefix 0 (the node still "
                            "keeps the committed actions itself)")
    seed_globals(seed)
    s = build_policy(cfg, t.interface)
    s.set_normalization_stats({k: v for k, v in t.normalization_stats.items() if v is not None})
    log.info("distilling %s (%d parameters) into %s (%d parameters; frozen pretrained towers not counted) on %d "
             "frames of %d episodes", teacher, own_parameters(t), student, own_parameters(s), len(ds), len(episodes))
    t0 = time.perf_counter()
    augment = (lambda images, gen: random_shift(images, augment_pad, gen)) if augment_pad else None
    metrics = distill(t, s, batches, steps=steps, temperature=temperature, lr=lr, alpha=alpha, seed=seed,
                      augment=augment, log_every=100, min_lr_ratio=min_lr_ratio)
    metrics["wall_s"] = round(time.perf_counter() - t0, 3)
    one = {k: v[:1] for k, v in batches[0].items()}
    metrics["teacher_ms_per_frame"] = _latency_ms(t, one)
    metrics["student_ms_per_frame"] = _latency_ms(s, one)
    metrics.update(teacher=str(teacher), student=str(student), num_frames=len(ds), num_episodes=len(episodes),
                   augment_pad=augment_pad)
    save_policy(s, out)
    dataset_config.save(out / DATASET_CONFIG_FILE)
    (out / METRICS_FILE).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    return metrics


def _latency_ms(policy, batch: dict[str, Any], repeats: int = 5) -> float:
    """Median wall time of one single-frame prediction (after one warm-up), in ms."""
    predict_batch(policy, batch)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        predict_batch(policy, batch)
        times.append((time.perf_counter() - t0) * 1000.0)
    return round(float(np.median(times)), 3)


def add_distill_arguments(p: argparse.ArgumentParser) -> None:
    from vla_ros.data.cli import add_dataset_arguments

    p.add_argument("--teacher", required=True, help="teacher checkpoint directory (plain or adapted)")
    p.add_argument("--student", default="tiny", help="student model preset name or VLAConfig JSON (default tiny)")
    p.add_argument("--out", required=True, help="directory of the student checkpoint")
    add_dataset_arguments(p)
    g = p.add_argument_group("distillation")
    g.add_argument("--steps", type=int, default=500, help="optimizer steps (default 500)")
    g.add_argument("--batch-size", type=int, default=32, help="frames per batch (default 32)")
    g.add_argument("--num-batches", type=int, default=64, help="batches sampled once and cycled (default 64)")
    g.add_argument("--lr", type=float, default=1e-3, help="AdamW learning rate at the first step (default 1e-3)")
    g.add_argument("--min-lr-ratio", type=float, default=0.1,
                   help="the learning rate decays along a cosine to lr times this at the last step, as in training "
                        "(1: constant; default 0.1)")
    g.add_argument("--temperature", type=float, default=2.0, help="softmax temperature of the KL (default 2)")
    g.add_argument("--alpha", type=float, default=0.0,
                   help="weight of the student's loss on the recorded actions, added to the distillation loss "
                        "(default 0)")
    g.add_argument("--augment-pad", type=int, default=4,
                   help="DrQ random shift of the student's images by up to this many pixels, as in training; the "
                        "teacher labels the unshifted frames (0: off; default 4)")
    g.add_argument("--seed", type=int, default=0,
                   help="seed of the batches, the student's init and the image shifts (default 0)")
    g.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0: torch's default)")


def run_distill_cli(args) -> int:
    from vla_ros.data.cli import dataset_config_from_args
    from vla_ros.model import CheckpointError
    from vla_ros.model.checkpoint import CONFIG_FILE, read_config

    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(levelname)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    if not args.data:
        print("vla-ros distill: error: --data is required")
        return 1
    try:
        base = DatasetConfig.recorded_with(args.teacher)
        teacher_cfg = read_config(Path(args.teacher) / CONFIG_FILE)[0]
        dataset_config = dataset_config_from_args(args, base=base, model_cfg=teacher_cfg)
        metrics = distill_checkpoint(args.teacher, args.student, args.data, args.out, dataset_config,
                                     steps=args.steps, batch_size=args.batch_size, num_batches=args.num_batches,
                                     lr=args.lr, temperature=args.temperature, alpha=args.alpha, seed=args.seed,
                                     cache_dir=None if args.no_cache else args.cache_dir,
                                     augment_pad=args.augment_pad, min_lr_ratio=args.min_lr_ratio)
    except (CheckpointError, ValueError, FileNotFoundError) as e:
        print(f"vla-ros distill: error: {e}")
        return 1
    frozen = f" besides {metrics['student_frozen_params']} of frozen pretrained towers" if metrics[
        "student_frozen_params"] else ""
    print(f"distilled into {args.out}: {metrics['student_params']} parameters{frozen} "
          f"({metrics['compression_ratio']:.1f}x fewer than the teacher's {metrics['teacher_params']}), L1 to the recorded actions teacher {metrics['teacher_l1']:.4f} "
          f"student {metrics['student_l1']:.4f}, "
          f"{metrics['teacher_ms_per_frame']:.1f} -> {metrics['student_ms_per_frame']:.1f} ms per frame")
    return 0
