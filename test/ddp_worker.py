"""One process of a `torchrun` training run for test_training_ddp.py (train() reads the process
group from torchrun's environment): python -m torch.distributed.run ... ddp_worker.py ARGS_JSON."""
import json
import sys

import torch

from vla_ros.data.config import DatasetConfig
from vla_ros.training import TrainConfig, train

if __name__ == "__main__":
    args = json.loads(sys.argv[1])
    torch.set_num_threads(1)
    train([args["bags"]], args["out"], "tiny", DatasetConfig(**args["dataset"]), TrainConfig(**args["train"]),
          cache_dir=args["cache"], resume=args.get("resume", False), stop_at_step=args.get("stop_at_step"))
