"""Behaviour cloning (vla_ros.training) on real episode bags: learning, checkpoints, exact resume, CLI."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_data_dataset import write_episode
from vla_ros.cli import main as cli_main
from vla_ros.data.config import DatasetConfig
from vla_ros.data.episodes import load_episodes
from vla_ros.data.torch_dataset import compute_dataset_stats
from vla_ros.model import load_policy, load_preset
from vla_ros.training import TrainConfig, TrainingError, resolve_model_config, robot_interface_of, train
from vla_ros.training.augment import random_shift
from vla_ros.training.optim import lr_at

torch.set_num_threads(1)
PERIOD_NS = 100_000_000
LOG = "train_log.jsonl"


def learnable_bags(root, n=6):
    """Episodes whose actions follow the joint state (and a red square's position): learnable."""
    for i in range(n):
        v = 1.1 * i

        def phase(k, v=v):
            return 0.4 * k + v

        def image(k, cam, v=v):
            im = np.full((48, 48, 3), 30, np.uint8)
            c = int(round((np.sin(phase(k)) + 1) / 2 * 36)) + 2
            im[18:28, c:c + 8] = (250, 60, 60)
            return im

        write_episode(root / f"ep{i}", storage="sqlite3" if i % 2 else "mcap", n_ticks=20, image_fn=image,
                      twist_fn=lambda k, phase=phase: (np.sin(phase(k)), 0.5 * np.cos(phase(k)), 0.1, 0.0, 0.0,
                                                       0.2 * np.sin(phase(k))),
                      gripper_fn=lambda k, phase=phase: float(np.sin(phase(k)) > 0),
                      state_fn=lambda t, v=v: [np.sin(0.4 * (t - 100e9) / PERIOD_NS + v + 0.3 * j) for j in range(9)],
                      instruction="follow the red square")
    return root


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    return learnable_bags(tmp_path_factory.mktemp("bags"))


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


DCFG = DatasetConfig(image_size=32, chunk_size=4)


def _read_log(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_loss_goes_down_and_outputs(bags, cache, tmp_path):
    cfg = TrainConfig(steps=60, batch_size=16, lr=3e-3, warmup_steps=5, val_fraction=0.2, val_every=20,
                      checkpoint_every=30, log_every=1, seed=0, threads=1, progress=False)
    result = train([bags], tmp_path / "run", "tiny", DCFG, cfg, cache_dir=cache)
    assert result.step == 60 and result.num_train_episodes == 5 and result.num_val_episodes == 1
    entries = _read_log(tmp_path / "run" / "train_log.jsonl")
    losses = [e["loss"] for e in entries if "loss" in e]
    vals = [e["val_loss"] for e in entries if "val_loss" in e]
    assert len(losses) == 60 and len(vals) == 3
    assert np.mean(losses[-10:]) < 0.6 * np.mean(losses[:10]), losses
    assert vals[-1] < 0.7 * vals[0], vals
    assert result.best_val_loss == min(vals)
    # last/ and best/ load as policies; normalization stats are the training split's.
    state = json.loads((tmp_path / "run" / "last" / "training_state.json").read_text())
    assert state["step"] == 60 and len(state["val_episodes"]) == 1
    assert not set(state["train_episodes"]) & set(state["val_episodes"])
    train_eps = [e for e in load_episodes(bags, DCFG, cache_dir=cache) if e.path in state["train_episodes"]]
    policy = load_policy(tmp_path / "run" / "last")
    assert policy.normalization_stats["action"] == compute_dataset_stats(train_eps)["action"]
    assert policy.interface == robot_interface_of(DCFG) and policy.config.chunk_size == 4
    best = load_policy(tmp_path / "run" / "best")
    metrics = json.loads((tmp_path / "run" / "best" / "metrics.json").read_text())
    assert metrics["val_loss"] == min(vals)
    assert (tmp_path / "run" / "best" / "dataset_config.json").is_file()
    assert best.config == policy.config
    assert not list((tmp_path / "run").rglob("*.pt")) and not list((tmp_path / "run").rglob("*.pkl"))
    with pytest.raises(TrainingError, match="already holds a run"):
        train([bags], tmp_path / "run", "tiny", DCFG, cfg, cache_dir=cache)


def test_resume_reproduces_uninterrupted_run(bags, cache, tmp_path):
    # Flow head and dropout: the loss noise, dropout masks, augmentation and sampling all
    # draw from RNGs that a resume must restore.
    model = load_preset("tiny", action_head="flow", dropout=0.1)
    cfg = TrainConfig(steps=6, batch_size=4, lr=1e-3, warmup_steps=2, val_fraction=0.2, val_every=2,
                      checkpoint_every=3, log_every=1, seed=3, threads=1, progress=False)
    full = train([bags], tmp_path / "full", model, DCFG, cfg, cache_dir=cache)
    part = train([bags], tmp_path / "part", model, DCFG, cfg, cache_dir=cache, stop_at_step=4)
    assert part.step == 4   # interrupted after step 4: its last checkpoint is step 3
    assert json.loads((tmp_path / "part" / "last" / "training_state.json").read_text())["step"] == 3
    resumed = train(None, tmp_path / "part", resume=True)
    assert resumed.step == full.step == 6
    for name in ("model.safetensors", "training_state.safetensors"):
        a, b = load_file(str(tmp_path / "full" / "last" / name)), load_file(str(tmp_path / "part" / "last" / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}: {k} differs"
    a, b = load_file(str(tmp_path / "full" / "best" / "model.safetensors")), \
        load_file(str(tmp_path / "part" / "best" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    strip = lambda es: [{k: v for k, v in e.items() if k != "elapsed_s"} for e in es]  # noqa: E731
    full_log, part_log = _read_log(tmp_path / "full" / LOG), _read_log(tmp_path / "part" / LOG)
    assert strip(full_log) == strip(part_log)
    # Resuming a finished run does nothing more.
    again = train(None, tmp_path / "part", resume=True)
    assert again.step == 6


def test_lr_schedule_and_random_shift():
    cfg = TrainConfig(steps=110, lr=1.0, warmup_steps=10, min_lr_ratio=0.1)
    assert lr_at(0, cfg) == pytest.approx(0.1) and lr_at(9, cfg) == pytest.approx(1.0)
    assert lr_at(10, cfg) == pytest.approx(1.0) and lr_at(60, cfg) == pytest.approx(0.55)
    assert lr_at(110, cfg) == pytest.approx(0.1) and all(lr_at(s, cfg) >= lr_at(s + 1, cfg) for s in range(10, 110))
    x = torch.rand(3, 2, 3, 16, 16)
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    y1, y2 = random_shift(x, 4, g1), random_shift(x, 4, g2)
    assert y1.shape == x.shape and torch.equal(y1, y2)
    assert not torch.equal(y1, x)
    padded = torch.nn.functional.pad(x.reshape(6, 3, 16, 16), (4, 4, 4, 4), mode="replicate")
    for i in range(6):  # every image is a 16x16 crop of its replicate-padded self
        crops = [padded[i, :, dy:dy + 16, dx:dx + 16] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(y1.reshape(6, 3, 16, 16)[i], c) for c in crops)
    assert torch.equal(random_shift(x, 0), x)


def test_model_config_and_interface_follow_dataset():
    dcfg = DatasetConfig(image_size=48, chunk_size=5, action={"gripper_topic": ""},
                         cameras=[{"name": "top", "topic": "/top/image_raw"}], state_joint_names=["a", "b"])
    cfg = resolve_model_config("tiny", dcfg)
    assert (cfg.chunk_size, cfg.image_size) == (5, 48)
    assert resolve_model_config(load_preset("tiny"), dcfg) == cfg
    robot = robot_interface_of(dcfg)
    assert robot.action_names == ["x", "y", "z", "roll", "pitch", "yaw"]
    assert (robot.state_names, robot.camera_names) == (["a", "b"], ["top"])


def test_cli_train_resume_and_errors(bags, cache, tmp_path, capsys):
    out = tmp_path / "cli_run"
    args = ["train", "--data", str(bags), "--config", "tiny", "--out", str(out), "--steps", "2", "--batch-size", "4",
            "--image-size", "32", "--chunk-size", "4", "--val-fraction", "0.2", "--val-every", "1",
            "--checkpoint-every", "1", "--threads", "1", "--cache-dir", str(cache), "--no-progress", "--seed", "1"]
    assert cli_main(args) == 0
    assert "trained 2 steps on 5 episodes (1 held out)" in capsys.readouterr().out
    assert cli_main(args) == 1
    assert "already holds a run" in capsys.readouterr().out
    # --resume with more steps; data, model and dataset config come from the checkpoint.
    assert cli_main(["train", "--out", str(out), "--resume", "--steps", "3", "--no-progress"]) == 0
    assert "trained 3 steps" in capsys.readouterr().out
    state = json.loads((out / "last" / "training_state.json").read_text())
    assert state["train_config"]["steps"] == 3 and state["train_config"]["batch_size"] == 4
    assert cli_main(["train", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "x"), "--no-progress"]) == 1
    assert "does not exist" in capsys.readouterr().out
    assert math.isfinite(json.loads((out / "best" / "metrics.json").read_text())["val_loss"])
