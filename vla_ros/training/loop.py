"""train(): behaviour cloning of a policy on episode bags, start to end or resumed.

A run: load the episodes and split them by episode (seeded); build the policy with
normalization statistics from the training split; then, each step, sample a batch
uniformly with replacement (seeded), augment its images (and, with a paraphrase table, its
instructions; vla_ros/training/paraphrase.py), set the scheduled learning rate,
take an AdamW step with gradient clipping; every ``log_every`` steps append to the train
log, every ``val_every`` steps compute the validation loss (a better one writes ``best/``),
every ``checkpoint_every`` steps write ``last/``.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from vla_ros.data.compatibility import check_episodes_fit
from vla_ros.data.config import DATASET_CONFIG_FILE, DatasetConfig
from vla_ros.data.episode import Episode
from vla_ros.data.episodes import load_episodes, split_episodes
from vla_ros.data.torch_dataset import EpisodeDataset
from vla_ros.model import RobotInterface, VLAConfig, build_policy, load_policy
from vla_ros.model.checkpoint import CONFIG_FILE, read_config, save_policy
from vla_ros.model.normalization import FeatureStats
from vla_ros.model.policy import VLAPolicy
from vla_ros.model.lora import (apply_lora, base_digest, check_qlora_available, count_trainable,
                                load_adapter_weights, load_any_policy, lora_target_names, quantize_targets_nf4,
                                read_adapter_config, save_adapted)
from vla_ros.model.device import resolve_device
from vla_ros.model.language import PretrainedTextEncoder
from vla_ros.training.augment import random_shift
from vla_ros.training.checkpoint import (load_training_state, restore_optimizer, save_best_checkpoint,
                                         save_training_checkpoint)
from vla_ros.training.config import TrainConfig, TrainingError, TrainResult
from vla_ros.training.distributed import (Distributed, LossModule, init_distributed, process_device,
                                          valid_steps)
from vla_ros.training.model_config import resolve_model_config, robot_interface_of
from vla_ros.training.optim import lr_at, make_optimizer, set_lr
from vla_ros.training.paraphrase import ParaphrasePool, ParaphraseTable
from vla_ros.training.rng import TrainingRNG, seed_globals
from vla_ros.training.train_log import LOG_FILE, TrainLog
from vla_ros.training.validation import evaluate_loss, to_device, validation_indices

log = logging.getLogger("vla_ros.training")


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
    plan = _plan(out, data, model_config, dataset_config, train_config, resume)
    cfg = plan.train_config
    if cfg.qlora:  # before minutes of decoding episodes
        check_qlora_available(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ddp = init_distributed(cfg.device)
    try:
        return _train(plan, out, cfg, ddp, model_config, cache_dir, stop_at_step)
    finally:
        ddp.close()


def _train(plan: "_Plan", out: Path, cfg: TrainConfig, ddp: Distributed, model_config, cache_dir,
           stop_at_step: int | None) -> TrainResult:
    if ddp.enabled and cfg.batch_size % ddp.world_size:
        raise TrainingError(f"batch_size {cfg.batch_size} (the global batch) must be a multiple of the "
                            f"{ddp.world_size} processes")
    device = process_device(resolve_device(cfg.device), ddp)
    # A broken paraphrase table fails here, before minutes of decoding episodes.
    paraphrases = ParaphraseTable.load(cfg.instruction_augment) if cfg.instruction_augment else None
    # Rank 0 decodes and caches the episodes first; the others then read its cache.
    if not ddp.is_main:
        ddp.barrier()
    data_paths, episodes = _episodes(plan.data, plan.dataset_config, cache_dir)
    if ddp.is_main:
        ddp.barrier()
    train_eps, val_eps = split_episodes(episodes, cfg.val_fraction, cfg.seed)
    train_ds = EpisodeDataset(train_eps)
    val_ds = EpisodeDataset(val_eps) if val_eps else None
    if plan.interface is None:  # a new run: the robot interface the episodes record
        plan.interface = robot_interface_of(train_ds)
    model_cfg, robot = plan.model_config, plan.interface
    try:
        check_episodes_fit(train_eps + val_eps, action_names=robot.action_names,
                           camera_names=robot.camera_names, state_names=robot.state_names,
                           chunk_size=model_cfg.chunk_size, image_size=model_cfg.image_size,
                           what="the model")
    except ValueError as e:
        raise TrainingError(str(e)) from None
    log.info("%d training episodes (%d frames), %d validation episodes (%d frames)", len(train_eps), len(train_ds),
             len(val_eps), len(val_ds) if val_ds else 0)
    if val_ds is None:
        log.warning("no validation episodes (val_fraction=%s, %d episodes): no best checkpoint",
                    cfg.val_fraction, len(episodes))
    run = _Run(cfg, plan, out, device, train_ds, val_ds, data_paths, model_config, paraphrases, ddp)
    if plan.meta is not None:
        run.restore(plan.meta, plan.tensors)
    out.mkdir(parents=True, exist_ok=True)
    run.loop(stop_at_step)
    return TrainResult(out_dir=out, step=run.step, last_dir=run.last_dir,
                       best_dir=run.best_dir if run.best_dir.is_dir() else None, best_val_loss=run.best_val,
                       last_train_loss=run.last_loss, num_train_episodes=len(train_eps),
                       num_val_episodes=len(val_eps))


@dataclass
class _Plan:
    """What a run starts from: a new run's arguments, or what out_dir/last holds."""

    train_config: TrainConfig
    dataset_config: DatasetConfig
    model_config: VLAConfig
    interface: RobotInterface | None  # None: a new run, taken from the episodes
    data: Any
    meta: dict[str, Any] | None = None
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)


def _plan(out: Path, data, model_config, dataset_config: DatasetConfig | None,
          train_config: TrainConfig | None, resume: bool) -> _Plan:
    last_dir = out / "last"
    if resume and last_dir.is_dir():
        meta, tensors = load_training_state(last_dir)
        dataset_config = DatasetConfig.load(last_dir / DATASET_CONFIG_FILE)
        model_cfg, interface = read_config(last_dir / CONFIG_FILE)
        if train_config is None:
            train_config = TrainConfig.from_dict(meta["train_config"])
        if data is None:
            data = meta.get("data_paths") or None
            if data is None:
                raise TrainingError(f"{last_dir} was trained on in-memory episodes: pass the data again")
        log.info("resuming %s from step %d", out, meta["step"])
    else:
        meta, tensors = None, {}
        if resume:
            log.info("no checkpoint in %s: starting a new run", last_dir)
        elif last_dir.exists():
            raise TrainingError(f"{out} already holds a run ({last_dir} exists): pass resume=True (--resume) "
                                f"or choose another output directory")
        dataset_config = dataset_config or DatasetConfig()
        if train_config is not None and train_config.init:
            # Fine-tuning: the architecture and robot interface are the init checkpoint's.
            model_cfg, interface = read_config(Path(train_config.init) / CONFIG_FILE)
        else:
            model_cfg, interface = resolve_model_config(model_config, dataset_config), None
    if data is None:
        raise TrainingError("no training data given")
    return _Plan(train_config or TrainConfig(), dataset_config, model_cfg, interface, data, meta, tensors)


def _episodes(data, dataset_config: DatasetConfig, cache_dir) -> tuple[list[str] | None, list[Episode]]:
    """(resolved data paths, or None for in-memory episodes; the episodes)."""
    if isinstance(data, (str, os.PathLike)):
        data = [data]
    if data and all(isinstance(d, Episode) for d in data):
        return None, list(data)
    data_paths = [str(Path(p).resolve()) for p in data]
    return data_paths, load_episodes(data_paths, dataset_config, cache_dir=cache_dir)


def init_normalization(policy: VLAPolicy, data: dict[str, FeatureStats | None],
                       how: str) -> dict[str, FeatureStats | None]:
    """The statistics a policy fine-tuned from ``policy`` on data with statistics ``data`` uses
    (TrainConfig.init_normalization), logging the dimensions where the data leaves the init's range."""
    init = policy.normalization_stats
    names = {"action": policy.interface.action_names, "state": policy.interface.state_names}
    out: dict[str, FeatureStats | None] = {}
    skip = set(policy.config.unnormalized_names)  # used as recorded: their ranges do not matter
    for key, base in init.items():
        new = data.get(key)
        if base is None or new is None or how == "data":
            out[key] = base if new is None else new
            continue
        beyond = {n: _beyond(base, new, i) for i, n in enumerate(names[key]) if n not in skip}
        outside = [f"{n} ({b:+.0%} of its range)" for n, b in beyond.items() if b > 1e-6]
        if how == "union":
            out[key] = base.widened(new)
            if outside:
                log.info("fine-tuning: the data's %s goes beyond the init's range on %s: widened there "
                         "(--init-normalization union)", key, ", ".join(outside))
        else:
            out[key] = base
            if outside:
                log.warning("fine-tuning: the data's %s goes beyond the init's range on %s, where the init's "
                            "statistics clip it (--init-normalization init; union widens them)", key, ", ".join(outside))
    return out


def _beyond(base: FeatureStats, new: FeatureStats, i: int) -> float:
    """How far the new data's [q01, q99] on dimension i reaches past the base's, as a share of its width."""
    return max(base.q01[i] - new.q01[i], new.q99[i] - base.q99[i], 0.0) / max(base.q99[i] - base.q01[i], 1e-6)


class _Run:
    """One run's policy, optimizer, random streams, step and best validation loss."""

    def __init__(self, cfg: TrainConfig, plan: _Plan, out: Path, device: torch.device, train_ds: EpisodeDataset,
                 val_ds: EpisodeDataset | None, data_paths: list[str] | None, model_config_source,
                 paraphrases: ParaphraseTable | None = None, ddp: Distributed | None = None):
        self.cfg, self.device = cfg, device
        self.ddp = ddp or Distributed()
        self.dataset_config = plan.dataset_config
        self.train_ds, self.val_ds = train_ds, val_ds
        self.data_paths = data_paths
        self.model_config_source = (str(model_config_source) if not isinstance(model_config_source, VLAConfig)
                                    else "VLAConfig")
        self.last_dir, self.best_dir = out / "last", out / "best"
        self.train_log = TrainLog(out / LOG_FILE)
        seed_globals(cfg.seed)
        self.lora = cfg.lora_settings() if (cfg.lora or cfg.qlora) else None
        self.base: dict[str, Any] | None = None
        if cfg.init:
            self.policy = load_any_policy(cfg.init)
            self.base = {"base_path": cfg.init, "base_sha256": base_digest(self.policy),
                         "base_num_tensors": len(self.policy.state_dict()),
                         "base_num_parameters": self.policy.num_parameters()}
            # A function of the init and the training split: a resumed run computes the same.
            self.policy.set_normalization_stats(
                init_normalization(self.policy, train_ds.stats(), cfg.init_normalization))
        else:
            self.policy = build_policy(plan.model_config, plan.interface)
            self.policy.set_normalization_stats(train_ds.stats())
        if self.lora is not None:
            if cfg.qlora:
                quantize_targets_nf4(self.policy, lora_target_names(self.policy, self.lora), device)
            apply_lora(self.policy, self.lora)
            trainable, total = count_trainable(self.policy)
            log.info("LoRA r=%d alpha=%g: %d trainable parameters of %d (%.2f%%)", self.lora.rank, self.lora.alpha,
                     trainable, total, 100.0 * trainable / total)
        self.policy.to(device).train()
        self.params = [p for p in self.policy.parameters() if p.requires_grad]
        self.ddp_model = None
        if self.ddp.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # static_graph: the same weights take part in every step, and any a configuration
            # leaves out of the loss are found once instead of at every step.
            self.ddp_model = DistributedDataParallel(
                LossModule(self.policy), device_ids=[device.index] if device.type == "cuda" else None,
                static_graph=True)
        self.optimizer = make_optimizer(self.policy, cfg)
        self.rng = TrainingRNG(cfg.seed, device)
        self.paraphrases = (ParaphrasePool(paraphrases, [e.instruction for e in train_ds.episodes],
                                           cfg.instruction_rewrites, cfg.seed + 4) if paraphrases is not None else None)
        self._encode_instructions_once()
        if cfg.instruction_noise > 0:
            if not isinstance(self.policy.language, PretrainedTextEncoder):
                raise TrainingError("instruction_noise needs the pretrained language encoder "
                                    f"(language_encoder is {plan.model_config.language_encoder!r})")
            self.policy.language.embedding_noise = cfg.instruction_noise
            self.policy.language.noise_generator = self.rng.augment
        self.step: int = 0
        self.best_val: float | None = None
        self.best_step: int | None = None
        self.last_loss: float | None = None
        self.val_indices = (validation_indices(len(val_ds), cfg.batch_size, cfg.val_max_batches, cfg.seed)
                            if val_ds is not None else None)

    def _encode_instructions_once(self) -> None:
        """Fill a frozen text encoder's cache with every instruction a batch can hold, in fixed
        chunks: each is encoded once, and with the same numerics in a resumed run (a string's
        embedding depends slightly on the padding of the batch it was encoded in)."""
        language = self.policy.language
        if not isinstance(language, PretrainedTextEncoder):
            return
        strings = self.paraphrases.strings() if self.paraphrases is not None else []
        episodes = self.train_ds.episodes + (self.val_ds.episodes if self.val_ds is not None else [])
        t0 = time.perf_counter()
        n = language.preencode(strings + [e.instruction for e in episodes])
        log.info("encoded %d distinct instructions%s with the frozen text encoder in %.1f s", n,
                 f" ({len(self.paraphrases.rewrites)} recorded, with their rewrites)" if self.paraphrases else "",
                 time.perf_counter() - t0)

    def restore(self, meta: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
        """Continue from a training checkpoint (out_dir/last)."""
        if self.lora is not None:
            # The base was loaded again from --init (and quantized for QLoRA): it must be the one
            # the adapters were saved over; then only the adapters and trained modules load.
            recorded = read_adapter_config(self.last_dir)[0]["base"]["sha256"]
            if recorded != self.base["base_sha256"]:
                raise TrainingError(f"{self.last_dir} was trained over a base with sha256 {recorded}, but "
                                    f"{self.cfg.init} has sha256 {self.base['base_sha256']}")
            load_adapter_weights(self.policy, self.last_dir, self.lora)
        else:
            # load_policy knows every checkpoint layout (e.g. frozen backbones stored by reference).
            self.policy.load_state_dict(load_policy(self.last_dir).state_dict(), strict=True)
        restore_optimizer(self.optimizer, meta, tensors)
        self.step, self.best_val, self.best_step = int(meta["step"]), meta.get("best_val_loss"), meta.get("best_step")
        self.rng.restore(meta, tensors)
        if self.ddp.is_main:
            self.train_log.truncate(self.step)

    def loop(self, stop_at_step: int | None) -> None:
        from tqdm import tqdm

        cfg = self.cfg
        bar = tqdm(total=cfg.steps, initial=self.step, disable=not cfg.progress or not self.ddp.is_main, desc="train",
                   dynamic_ncols=True)
        t_start = time.perf_counter()
        try:
            while self.step < cfg.steps:
                lr, grad_norm, metrics = self.train_step()
                bar.update(1)
                bar.set_postfix(loss=f"{self.last_loss:.4f}", lr=f"{lr:.2e}")
                step = self.step
                if self.ddp.is_main and (step % cfg.log_every == 0 or step == cfg.steps):
                    self.train_log.write({"step": step, "loss": self.last_loss, "lr": lr, "grad_norm": float(grad_norm),
                                    "elapsed_s": round(time.perf_counter() - t_start, 3),
                                    **{f"train/{k}": v for k, v in metrics.items() if k != "loss"}})
                if self.ddp.is_main and self.val_ds is not None and (step % cfg.val_every == 0 or step == cfg.steps):
                    self.validate(bar.write)
                if self.ddp.is_main and (step % cfg.checkpoint_every == 0 or step == cfg.steps):
                    self.save_last()
                if stop_at_step is not None and step >= stop_at_step:
                    break
        finally:
            bar.close()

    def train_step(self) -> tuple[float, torch.Tensor, dict[str, Any]]:
        """One optimizer step on a sampled batch: (learning rate, gradient norm, loss metrics)."""
        cfg, ddp = self.cfg, self.ddp
        idx = self.rng.data.integers(0, len(self.train_ds), size=cfg.batch_size)
        if ddp.enabled:  # this process's slice of the global batch; its own streams for this step
            share = cfg.batch_size // ddp.world_size
            idx = idx[ddp.rank * share:(ddp.rank + 1) * share]
            self.rng.reseed_for_step(cfg.seed, self.step, ddp.rank)
        batch = self.train_ds.batch(idx)
        if cfg.augment:
            batch["images"] = random_shift(batch["images"], cfg.augment_pad, self.rng.augment)
        if self.paraphrases is not None:
            batch["instructions"] = self.paraphrases.sample(batch["instructions"], self.rng.text)
        lr = lr_at(self.step, cfg)
        set_lr(self.optimizer, lr)
        batch = to_device(batch, self.device)
        if ddp.enabled:
            # DDP averages gradients over processes: weighting each by its share of the valid
            # chunk steps makes the average the gradient of the global batch's masked mean.
            valid = valid_steps(batch)
            total = ddp.sum(valid)
            loss, metrics = self.ddp_model(batch, self.rng.loss)
            weight = float(valid * ddp.world_size / total)
            objective = loss * weight
            loss = ddp.sum(loss.detach().cpu() * valid) / total  # the global batch's loss, for the log
        else:
            loss, metrics = self.policy.loss(batch, generator=self.rng.loss)
            objective = loss
        self.optimizer.zero_grad(set_to_none=True)
        objective.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        self.optimizer.step()
        self.step += 1
        self.last_loss = float(loss.detach())
        return lr, grad_norm, metrics

    def validate(self, say) -> None:
        """Validation loss into the log; a new best writes best/."""
        cfg = self.cfg
        val_loss = evaluate_loss(self.policy, self.val_ds, self.val_indices, cfg.batch_size, cfg.seed, self.device)
        improved = self.best_val is None or val_loss < self.best_val
        self.train_log.write({"step": self.step, "val_loss": val_loss, "best": improved})
        say(f"step {self.step}: val_loss {val_loss:.4f}" + (" (best)" if improved else ""))
        if improved:
            self.best_val, self.best_step = val_loss, self.step
            save_best_checkpoint(self.best_dir, self.policy, self.dataset_config, self.step, val_loss,
                                 save_model=self.save_model)

    def save_last(self) -> None:
        save_training_checkpoint(self.last_dir, self.policy, self.optimizer, self.dataset_config,
                                 self.checkpoint_meta(), self.rng.tensors(), save_model=self.save_model)

    def save_model(self, policy, path: Path) -> None:
        """A plain checkpoint, or with LoRA the adapters and the base's digest."""
        if self.lora is None:
            save_policy(policy, path)
        else:
            save_adapted(policy, path, self.lora, **self.base)

    def checkpoint_meta(self) -> dict[str, Any]:
        train_eps, val_eps = self.train_ds.episodes, self.val_ds.episodes if self.val_ds is not None else []
        rng = self.rng.json_state()
        return {
            "step": self.step, "seed": self.cfg.seed, "train_config": self.cfg.to_dict(),
            "data_paths": self.data_paths, "model_config_source": self.model_config_source,
            "best_val_loss": self.best_val, "best_step": self.best_step,
            "numpy_rng": rng["numpy_rng"], "text_rng": rng["text_rng"], "python_rng": rng["python_rng"],
            "num_train_episodes": len(train_eps), "num_val_episodes": len(val_eps),
            "world_size": self.ddp.world_size,
            "train_episodes": [e.path for e in train_eps], "val_episodes": [e.path for e in val_eps],
        }
