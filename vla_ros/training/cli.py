"""`vla-ros train`: its options and the handler behind the subcommand."""

from __future__ import annotations

import argparse
import logging
import os
from pathlib import Path

from vla_ros.cli_fields import add_field_option
from vla_ros.data.cli import add_dataset_arguments, dataset_config_from_args
from vla_ros.model import load_preset
from vla_ros.data.config import DatasetConfig
from vla_ros.model.checkpoint import CONFIG_FILE, read_config
from vla_ros.model.lora import check_qlora_available
from vla_ros.training.checkpoint import load_training_state
from vla_ros.training.config import INIT_NORMALIZATION, TrainConfig
from vla_ros.training.loop import train


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
    f = p.add_argument_group("fine-tuning (LoRA / QLoRA adapters; README 'Fine-tuning')")
    add_field_option(f, TrainConfig, "init", metavar="CHECKPOINT")
    add_field_option(f, TrainConfig, "init_normalization", choices=INIT_NORMALIZATION)
    f.add_argument("--lora", action="store_true", help="train LoRA adapters over the --init checkpoint (peft); "
                   "checkpoints hold the adapters and the base's sha256")
    f.add_argument("--qlora", action="store_true", help="LoRA over a 4-bit NF4 base (bitsandbytes, bf16 compute); "
                   "CUDA only")
    for name in ("lora_rank", "lora_alpha", "lora_dropout"):
        add_field_option(f, TrainConfig, name)
    for name in ("lora_parts", "lora_target_modules"):
        add_field_option(f, TrainConfig, name, nargs="+", metavar="NAME")
    f.add_argument("--lora-frozen-head", action="store_true",
                   help="with --lora: keep the action head frozen (default: it trains fully)")


_TRAIN_ARG_FIELDS = ("steps", "batch_size", "lr", "weight_decay", "warmup_steps", "grad_clip", "instruction_augment",
                     "instruction_rewrites", "instruction_noise", "val_fraction", "val_every", "checkpoint_every",
                     "log_every", "seed", "threads", "device")
_FINETUNE_FIELDS = ("init", "init_normalization", "lora_rank", "lora_alpha", "lora_dropout", "lora_parts",
                    "lora_target_modules")


def run_train_cli(args) -> int:
    """`vla-ros train`: the handler behind the subcommand."""
    logging.basicConfig(level=logging.INFO, format="[%(name)s] %(levelname)s: %(message)s")
    out = Path(args.out)
    resuming = args.resume and (out / "last").is_dir()
    overrides = {k: getattr(args, k) for k in _TRAIN_ARG_FIELDS + _FINETUNE_FIELDS if getattr(args, k) is not None}
    if args.no_augment:
        overrides["augment"] = False
    if args.no_progress:
        overrides["progress"] = False
    for flag in ("lora", "qlora"):
        if getattr(args, flag):
            overrides[flag] = True
    if args.lora_frozen_head:
        overrides["lora_train_head"] = False
    try:
        if args.qlora:
            check_qlora_available(args.device or "cpu")
        if resuming:
            meta, _ = load_training_state(out / "last")
            base, model, dataset_config = meta["train_config"], "tiny", None
        else:
            if not args.data:
                raise SystemExit("vla-ros train: --data is required (unless --resume finds OUT/last)")
            base, model = {}, args.config
            model_cfg = read_config(Path(args.init) / CONFIG_FILE)[0] if args.init else load_preset(model)
            # A training checkpoint to fine-tune records its dataset config: the same topics and sizes.
            dataset_config = dataset_config_from_args(
                args, base=DatasetConfig.recorded_with(args.init) if args.init else None, model_cfg=model_cfg)
        base.update(overrides)
        result = train(args.data, out, model_config=model, dataset_config=dataset_config,
                       train_config=TrainConfig.from_dict(base),
                       cache_dir=None if args.no_cache else args.cache_dir, resume=args.resume)
    except (ValueError, FileNotFoundError) as e:
        print(f"vla-ros train: error: {e}")
        return 1
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun, rank 0 reports
        return 0
    best = f", best val loss {result.best_val_loss:.4f} -> {result.best_dir}" if result.best_dir else ""
    print(f"trained {result.step} steps on {result.num_train_episodes} episodes "
          f"({result.num_val_episodes} held out): {result.last_dir}{best}")
    return 0
