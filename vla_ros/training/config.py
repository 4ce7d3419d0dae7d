"""TrainConfig (optimization and bookkeeping of a run), TrainResult and TrainingError."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vla_ros.cli_fields import refuse_unknown_keys


class TrainingError(ValueError):
    """A run that cannot start or resume; the message says why."""


INIT_NORMALIZATION = ("union", "init", "data")


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
    # Paraphrase table (a JSON file, or a name in config/instructions/ such as sim_tasks) that
    # rewrites training instructions with interchangeable phrases; empty: instructions as recorded.
    instruction_augment: str = ""
    instruction_rewrites: int = 16    # rewrites made (once) per recorded instruction for augmentation
    # Std of Gaussian noise added to the frozen encoder's sentence embedding (unit norm) during
    # training, then renormalized; 0: none. Needs the pretrained language encoder.
    instruction_noise: float = 0.0
    val_fraction: float = 0.1         # share of episodes held out (by episode)
    val_every: int = 200              # steps between validations
    val_max_batches: int = 20         # validation on at most this many batches (a fixed subset)
    checkpoint_every: int = 500       # steps between checkpoints (out_dir/last)
    log_every: int = 10               # steps between train_log.jsonl entries
    seed: int = 0                     # seed of python, numpy and torch RNGs
    threads: int = 0                  # torch intra-op threads (0: torch's default)
    device: str = "cpu"               # "cpu", "cuda", "cuda:N" or "auto"
    progress: bool = True             # tqdm progress bar
    # Policy checkpoint to start from (fine-tuning): its architecture, robot interface and
    # weights (statistics: init_normalization); empty: a new policy from the model config.
    init: str = ""
    # With init, the fine-tuned policy's normalization statistics. union: the init's, with the
    # ranges widened on each dimension where the new data goes beyond them (elsewhere the init's
    # units stay; an action the init never made, e.g. a lift, is not clipped away); init: the
    # init's unchanged; data: the new data's alone.
    init_normalization: str = "union"
    # Train LoRA adapters (model/lora.py) on top of the init checkpoint instead of every weight.
    lora: bool = False
    lora_rank: int = 8                # LoRA rank r
    lora_alpha: float = 32.0          # LoRA alpha: the update is scaled by alpha / rank
    lora_dropout: float = 0.05        # dropout on the adapters' input
    # Parts whose attention and MLP projections get adapters (vision, language, fusion).
    lora_parts: list[str] = field(default_factory=lambda: ["vision", "language", "fusion"])
    # Linear layer names (last name component) that get adapters inside those parts.
    lora_target_modules: list[str] = field(default_factory=lambda: ["q", "kv", "proj", "fc1", "fc2", "q_proj",
                                                                    "k_proj", "v_proj", "out_proj"])
    lora_train_head: bool = True      # with LoRA: train the action head fully (else frozen)
    # QLoRA: LoRA over a base whose adapted Linear layers are 4-bit NF4 (bitsandbytes, bf16
    # compute); needs CUDA.
    qlora: bool = False

    def __post_init__(self) -> None:
        for n in ("steps", "batch_size", "val_every", "checkpoint_every", "log_every", "instruction_rewrites"):
            v = getattr(self, n)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TrainConfig.{n} must be a positive integer, got {v!r}")
        if self.warmup_steps is None:
            self.warmup_steps = min(100, self.steps // 10)
        for n in ("warmup_steps", "augment_pad", "threads", "seed", "val_max_batches"):
            v = getattr(self, n)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ValueError(f"TrainConfig.{n} must be a non-negative integer, got {v!r}")
        if isinstance(self.instruction_noise, bool) or not (isinstance(self.instruction_noise, (int, float))
                                                            and 0.0 <= self.instruction_noise <= 1.0):
            raise ValueError(f"TrainConfig.instruction_noise must be in [0, 1], got {self.instruction_noise!r}")
        if not self.lr > 0:
            raise ValueError(f"TrainConfig.lr must be > 0, got {self.lr!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"TrainConfig.val_fraction must be in [0, 1), got {self.val_fraction!r}")
        self.betas = [float(b) for b in self.betas]
        if self.init_normalization not in INIT_NORMALIZATION:
            raise ValueError(f"TrainConfig.init_normalization must be one of {list(INIT_NORMALIZATION)}, "
                             f"got {self.init_normalization!r}")
        if (self.lora or self.qlora) and not self.init:
            raise ValueError("TrainConfig.lora / qlora need init: the checkpoint the adapters fine-tune (--init)")
        if self.lora or self.qlora:
            self.lora_settings()  # validates the lora_* fields

    def lora_settings(self):
        """The LoraSettings of the lora_* fields."""
        from vla_ros.model.lora import LoraSettings

        return LoraSettings(rank=self.lora_rank, alpha=self.lora_alpha, dropout=self.lora_dropout,
                            parts=self.lora_parts, target_modules=self.lora_target_modules,
                            train_head=self.lora_train_head)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        refuse_unknown_keys(cls, data, "TrainConfig")
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
