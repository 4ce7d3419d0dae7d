"""Training on several processes (torchrun): PyTorch DistributedDataParallel, gloo on CPU, NCCL
on GPUs, multi-node through torchrun's rendezvous.

Every process draws the same global batch indices from the run's seeded sampler and trains
on its own contiguous slice of ``batch_size / world_size`` frames (its shard of the batch).
Each process's loss is weighted by its share of the batch's valid (non-padded) chunk steps, so
that DDP's average of the gradients is the gradient of the global batch's masked mean: the
loss curve is that of one process with the same global batch, up to float summation order.
The per-sample random streams (image shifts, paraphrases, the flow head's noise) are reseeded
at every step from (seed, step, rank): a resumed run draws what an uninterrupted one would
without storing every process's generator states. Rank 0 validates and writes checkpoints and
the train log.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    """This process's place in the run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # this run created the process group (and destroys it)

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def sum(self, value: torch.Tensor) -> torch.Tensor:
        """All-reduced sum of a tensor (a copy; itself without several processes)."""
        value = value.detach().clone()
        if self.enabled:
            dist.all_reduce(value, op=dist.ReduceOp.SUM)
        return value

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def init_distributed(device: str) -> Distributed:
    """Join the process group that torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR,
    MASTER_PORT in the environment); a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    owns = not dist.is_initialized()
    if owns:
        backend = "nccl" if str(device).startswith("cuda") else "gloo"
        dist.init_process_group(backend=backend)
    return Distributed(rank=rank, world_size=world, local_rank=local_rank, owns_group=owns)


def process_device(device: torch.device, ddp: Distributed) -> torch.device:
    """One GPU per process on a node: cuda:LOCAL_RANK."""
    if ddp.enabled and device.type == "cuda":
        torch.cuda.set_device(ddp.local_rank)
        return torch.device("cuda", ddp.local_rank)
    return device


def step_seed(seed: int, step: int, rank: int, stream: int) -> int:
    """Seed of a per-process random stream at one step."""
    import numpy as np

    return int(np.random.SeedSequence([seed, step, rank, stream]).generate_state(1, dtype=np.uint64)[0] >> 1)


class LossModule(torch.nn.Module):
    """``policy.loss`` as a forward, for DistributedDataParallel (it syncs gradients of forward)."""

    def __init__(self, policy: torch.nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, batch, generator):
        return self.policy.loss(batch, generator=generator)


def valid_steps(batch: dict) -> torch.Tensor:
    """Number of non-padded chunk steps in a batch: the denominator of the heads' masked mean."""
    is_pad = batch.get("action_is_pad")
    if is_pad is None:
        actions = batch["actions"]
        return torch.tensor(float(actions.shape[0] * actions.shape[1]))
    return (~torch.as_tensor(is_pad, dtype=torch.bool)).sum().float().cpu()
