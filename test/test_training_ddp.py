"""Training on several processes (vla_ros/training/distributed.py) with torchrun on the CPU (gloo,
loopback only): the loss curve of 2 processes equals 1 process with the same global batch, rank 0
alone writes the log and checkpoints, and an interrupted 2-process run resumes exactly."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_training import learnable_bags
from vla_ros.data.config import DatasetConfig
from vla_ros.training import TrainConfig, train

torch.set_num_threads(1)
WORKER = Path(__file__).with_name("ddp_worker.py")
DATASET = dict(image_size=32, chunk_size=4)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _torchrun(args: dict, nproc: int = 2) -> None:
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), str(WORKER), json.dumps(args)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]


def _losses(run: Path) -> list[float]:
    entries = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    return [e["loss"] for e in entries if "loss" in e]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    return learnable_bags(root / "bags", n=3), root / "cache"


def _train_cfg(**kw) -> dict:
    cfg = dict(steps=6, batch_size=8, lr=3e-3, warmup_steps=1, val_fraction=0.34, val_every=3, checkpoint_every=3,
               log_every=1, seed=0, threads=1, progress=False, augment=False)
    cfg.update(kw)
    return cfg


def test_two_processes_follow_the_loss_curve_of_one_with_the_same_global_batch(setup, tmp_path):
    bags, cache = setup
    one = train([bags], tmp_path / "one", "tiny", DatasetConfig(**DATASET), TrainConfig(**_train_cfg()),
                cache_dir=cache)
    _torchrun({"bags": str(bags), "out": str(tmp_path / "two"), "dataset": DATASET, "train": _train_cfg(),
               "cache": str(cache)})
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert len(a) == len(b) == 6  # rank 0 alone writes the log
    assert a[-1] < a[0]
    np.testing.assert_allclose(b, a, rtol=2e-4)
    meta = json.loads((tmp_path / "two" / "last" / "training_state.json").read_text())
    assert meta["world_size"] == 2 and meta["step"] == 6
    w1, w2 = load_file(str(one.last_dir / "model.safetensors")), load_file(str(tmp_path / "two/last/model.safetensors"))
    assert max((w1[k] - w2[k]).abs().max().item() for k in w1) < 1e-4


def test_interrupted_two_process_run_resumes_exactly(setup, tmp_path):
    bags, cache = setup
    base = {"bags": str(bags), "dataset": DATASET, "train": _train_cfg(augment=True), "cache": str(cache)}
    _torchrun({**base, "out": str(tmp_path / "full")})
    _torchrun({**base, "out": str(tmp_path / "cut"), "stop_at_step": 3})
    _torchrun({**base, "out": str(tmp_path / "cut"), "resume": True})
    assert _losses(tmp_path / "cut") == _losses(tmp_path / "full")
    a, b = (load_file(str(tmp_path / d / "last" / "model.safetensors")) for d in ("full", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)
