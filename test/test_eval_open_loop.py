"""Open-loop evaluation (vla_ros.evaluation.open_loop): report numbers, plots, CLI, on real bags."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from test_data_dataset import write_episode
from vla_ros.cli import main as cli_main
from vla_ros.data.config import DatasetConfig
from vla_ros.data.episodes import load_episodes
from vla_ros.evaluation.open_loop import evaluate_open_loop, predict_episode, resolve_checkpoint
from vla_ros.model import build_policy, load_policy, save_policy
from vla_ros.training import TrainConfig, resolve_model_config, robot_interface_of, train

torch.set_num_threads(1)
DCFG = DatasetConfig(image_size=32, chunk_size=4)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    for i in range(3):
        write_episode(root / "bags" / f"ep{i}", storage="sqlite3" if i == 1 else "mcap", n_ticks=10 + i,
                      twist_fn=lambda k, i=i: (0.1 * k - i, 0.05, -0.02 * k, 0.0, 0.1 * i, 0.0),
                      instruction=f"task {i}")
    cfg = TrainConfig(steps=3, batch_size=4, warmup_steps=1, val_fraction=0.34, val_every=3, checkpoint_every=3,
                      seed=0, threads=1, progress=False)
    train([root / "bags"], root / "run", "tiny", DCFG, cfg, cache_dir=root / "cache")
    return root


def test_report_numbers_and_plots(run, tmp_path):
    bags = [run / "bags" / "ep0", run / "bags" / "ep1"]
    report = evaluate_open_loop(run / "run", bags, tmp_path / "eval", cache_dir=run / "cache")
    assert report["checkpoint"] == str(run / "run" / "best")
    names = ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    assert report["action_names"] == names and report["num_episodes"] == 2
    on_disk = json.loads((tmp_path / "eval" / "report.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    # Recompute the numbers by hand from the policy's predictions.
    policy = load_policy(run / "run" / "best")
    episodes = load_episodes(bags, DCFG)
    preds = [predict_episode(policy, ep, seed=i) for i, ep in enumerate(episodes)]
    first_err = np.concatenate([p[:, 0] - e.actions[:, 0] for p, e in zip(preds, episodes)])
    chunk_err = np.concatenate([(p - e.actions)[~e.action_is_pad] for p, e in zip(preds, episodes)])
    assert report["num_frames"] == len(first_err) == sum(e.num_frames for e in episodes)
    for d, n in enumerate(names):
        assert report["first_action"]["mae"][n] == pytest.approx(np.abs(first_err[:, d]).mean(), rel=1e-5, abs=1e-7)
        assert report["first_action"]["rmse"][n] == pytest.approx(np.sqrt((first_err[:, d] ** 2).mean()), rel=1e-5,
                                                                   abs=1e-7)
        assert report["chunk"]["mae"][n] == pytest.approx(np.abs(chunk_err[:, d]).mean(), rel=1e-5, abs=1e-7)
        assert report["chunk"]["rmse"][n] == pytest.approx(np.sqrt((chunk_err[:, d] ** 2).mean()), rel=1e-5, abs=1e-7)
    assert report["chunk"]["count"] == len(chunk_err) and len(report["chunk"]["mae_by_step"]) == 4
    assert report["chunk"]["mae_by_step"][0] == pytest.approx(np.abs(first_err).mean(), rel=1e-5)
    # One PNG per episode; per-episode entries carry their own numbers.
    for i, entry in enumerate(report["episodes"]):
        png = tmp_path / "eval" / entry["plot"]
        assert png.read_bytes()[:8] == PNG_MAGIC and png.stat().st_size > 5000
        assert entry["frames"] == episodes[i].num_frames and entry["instruction"] == f"task {i}"
        err = preds[i][:, 0] - episodes[i].actions[:, 0]
        assert entry["first_action"]["mae"]["x"] == pytest.approx(np.abs(err[:, 0]).mean(), rel=1e-5, abs=1e-7)
    assert sorted(p.name for p in (tmp_path / "eval").glob("*.png")) == ["episode_000_ep0.png", "episode_001_ep1.png"]


def test_checkpoint_without_dataset_config_and_mismatch(run, tmp_path):
    policy = build_policy(resolve_model_config("tiny", DCFG), robot_interface_of(DCFG))
    ckpt = save_policy(policy, tmp_path / "plain")   # no dataset_config.json: topics derived from the policy
    report = evaluate_open_loop(ckpt, [run / "bags" / "ep2"], tmp_path / "out", plots=False)
    assert report["num_episodes"] == 1 and not list((tmp_path / "out").glob("*.png"))
    assert set(report["first_action"]["rmse"]) == set(DCFG.action_names)
    assert resolve_checkpoint(run / "run") == run / "run" / "best"
    with pytest.raises(FileNotFoundError):
        resolve_checkpoint(tmp_path)
    no_gripper = DatasetConfig(image_size=32, chunk_size=4, action={"gripper_topic": ""})
    other = build_policy(resolve_model_config("tiny", no_gripper), robot_interface_of(no_gripper))
    eps = load_episodes([run / "bags" / "ep2"], DCFG)
    with pytest.raises(ValueError, match="action_names"):
        evaluate_open_loop(save_policy(other, tmp_path / "other"), eps, tmp_path / "out2")


def test_cli(run, tmp_path, capsys):
    out = tmp_path / "cli"
    rc = cli_main(["eval-open-loop", "--checkpoint", str(run / "run" / "last"), "--data", str(run / "bags"),
                   "--out", str(out), "--cache-dir", str(run / "cache"), "--threads", "1"])
    text = capsys.readouterr().out
    assert rc == 0, text
    assert "3 episodes" in text and "gripper" in text and "report:" in text
    assert len(list(out.glob("*.png"))) == 3
    assert json.loads((out / "report.json").read_text())["num_episodes"] == 3
    assert cli_main(["eval-open-loop", "--checkpoint", str(tmp_path), "--data", str(run / "bags"),
                     "--out", str(out)]) == 1
