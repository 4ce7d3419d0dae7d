"""LoRA adapters (vla_ros.model.lora, peft): what trains, adapted checkpoints, merging, base digest
refusal, the QLoRA refusal without CUDA, and `vla-ros train --init ... --lora` / `vla-ros merge`."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from model_fixtures import ROBOT, batch_stats, make_batch, one_thread, tiny_config  # noqa: F401 (fixture)
from vla_ros.cli import main as cli_main
from vla_ros.model import CheckpointError, build_policy, load_policy, save_policy
from vla_ros.model.compression import predict_batch
from vla_ros.model.lora import (ADAPTER_CONFIG_FILE, ADAPTER_FILE, LoraSettings, apply_lora, base_digest,
                                count_trainable, load_adapted, load_any_policy, lora_target_names, merge_checkpoint,
                                save_adapted)
from vla_ros.runtime.policy_loader import load_engine_for_checkpoint

os.environ.setdefault("HF_HUB_OFFLINE", "1")
pytestmark = pytest.mark.usefixtures("one_thread")


def _base(tmp_path, **cfg):
    torch.manual_seed(0)
    batch = make_batch(tiny_config(**cfg), batch_size=6)
    policy = build_policy(tiny_config(**cfg), ROBOT)
    policy.set_normalization_stats(batch_stats(batch))
    save_policy(policy, tmp_path / "base")
    return load_policy(tmp_path / "base"), batch


def _train_adapters(policy, batch, steps=5):
    """A few AdamW steps so that the adapters (B starts at zero) change the outputs."""
    policy.train()
    opt = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(steps):
        loss, _ = policy.loss(batch, generator=torch.Generator().manual_seed(0))
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval()


def _save(policy, settings, tmp_path, base):
    return save_adapted(policy, tmp_path / "adapted", settings, tmp_path / "base", base_digest(base),
                        len(base.state_dict()), base.num_parameters())


@pytest.mark.parametrize("vision,fusion", [("vit", "cross_attention"), ("cnn", "film")])
def test_only_adapters_and_head_train_and_their_count(tmp_path, vision, fusion):
    policy, _ = _base(tmp_path, vision_encoder=vision, fusion=fusion, action_head="continuous")
    settings = LoraSettings(rank=4, alpha=16)
    targets = lora_target_names(policy, settings)
    assert any(t.startswith("language.") for t in targets) and any(t.startswith("fusion.") for t in targets)
    assert not any(t.startswith("head.") for t in targets)
    assert any(t.startswith("vision.") for t in targets) == (vision == "vit")
    shapes = {t: policy.get_submodule(t).weight.shape for t in targets}
    head = sum(p.numel() for p in policy.head.parameters())
    apply_lora(policy, settings)
    # r * (in + out) per adapted Linear, plus the fully trained head, and nothing else.
    expected = sum(4 * (i + o) for o, i in shapes.values()) + head
    trainable, total = count_trainable(policy)
    assert trainable == expected < total
    names = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("head.") for n in names)
    frozen_head, _ = _base(tmp_path / "b", vision_encoder=vision, fusion=fusion)
    apply_lora(frozen_head, LoraSettings(rank=4, train_head=False))
    assert count_trainable(frozen_head)[0] == sum(4 * (i + o) for o, i in shapes.values())


def test_save_load_round_trip_merge_equals_adapted(tmp_path):
    base, batch = _base(tmp_path, vision_encoder="vit", fusion="cross_attention", action_head="continuous")
    policy = load_policy(tmp_path / "base")
    settings = LoraSettings(rank=4, alpha=8, dropout=0.1)
    apply_lora(policy, settings)
    _train_adapters(policy, batch)
    before = predict_batch(policy, batch)
    assert (before - predict_batch(base, batch)).abs().max() > 1e-3  # the adapters do something
    path = _save(policy, settings, tmp_path, base)
    stored = load_file(str(path / ADAPTER_FILE))
    assert stored and all("lora_" in k or k.startswith("head.") for k in stored)
    doc = json.loads((path / ADAPTER_CONFIG_FILE).read_text())
    assert doc["base"]["sha256"] == base_digest(base) and doc["lora"]["rank"] == 4
    assert not (path / "model.safetensors").exists()
    assert (path / ADAPTER_FILE).stat().st_mode == (path / "config.json").stat().st_mode  # not 0o600 (safetensors#782)

    adapted, tuner = load_adapted(path)  # unmerged: bit-exact round trip
    assert tuner is not None and torch.equal(predict_batch(adapted, batch), before)
    with pytest.raises(CheckpointError, match="adapted checkpoint"):
        load_policy(path)
    merged = load_any_policy(path)  # what the node and the server load: merged into plain Linear layers
    assert not any("lora_" in n for n, _ in merged.named_parameters())
    torch.testing.assert_close(predict_batch(merged, batch), before, atol=1e-5, rtol=1e-5)

    out = merge_checkpoint(path, tmp_path / "merged")
    assert (out / "model.safetensors").is_file() and not (out / ADAPTER_CONFIG_FILE).exists()
    torch.testing.assert_close(predict_batch(load_policy(out), batch), before, atol=1e-5, rtol=1e-5)
    engine = load_engine_for_checkpoint(str(path), warmup=0)
    assert engine.action_names == ROBOT.action_names


def test_base_with_other_weights_is_refused_with_both_digests(tmp_path):
    base, batch = _base(tmp_path, vision_encoder="vit")
    policy = load_policy(tmp_path / "base")
    settings = LoraSettings(rank=2)
    apply_lora(policy, settings)
    path = _save(policy, settings, tmp_path, base)
    recorded = base_digest(base)
    with torch.no_grad():
        base.fusion.ln_f.weight.add_(0.01)
    save_policy(base, tmp_path / "base")
    changed = base_digest(load_policy(tmp_path / "base"))
    with pytest.raises(CheckpointError) as err:
        load_any_policy(path)
    assert recorded in str(err.value) and changed in str(err.value)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_adapted(path, base=tmp_path / "nowhere")


def test_pretrained_siglip_tower_gets_adapters_and_merges_into_a_plain_checkpoint(tmp_path):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
              patch_size=8)
    transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**kw)).save_pretrained(tmp_path / "siglip")
    base, batch = _base(tmp_path, vision_encoder="pretrained", vision_tower_path=str(tmp_path / "siglip"))
    policy = load_policy(tmp_path / "base")
    settings = LoraSettings(rank=2, parts=["vision"])
    targets = lora_target_names(policy, settings)
    apply_lora(policy, settings)
    assert targets and all(t.startswith("vision.encoder.tower.") for t in targets)
    _train_adapters(policy, batch)
    assert any(p.grad is not None and "tower" in n for n, p in policy.named_parameters())
    before = predict_batch(policy, batch)
    path = _save(policy, settings, tmp_path, base)
    merged_dir = merge_checkpoint(path, tmp_path / "merged")
    # The merged tower is no longer the pretrained one: the plain checkpoint stores it itself.
    assert not (merged_dir / "external_weights.json").exists()
    torch.testing.assert_close(predict_batch(load_policy(merged_dir), batch), before, atol=1e-5, rtol=1e-5)


def test_qlora_without_cuda_fails_at_once_with_one_message(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA: the refusal is for machines without")
    rc = cli_main(["train", "--data", str(tmp_path / "no_bags"), "--out", str(tmp_path / "run"),
                   "--init", str(tmp_path / "base"), "--qlora"])
    out = capsys.readouterr().out.strip().splitlines()
    assert rc == 1 and len(out) == 1 and "--qlora needs a CUDA GPU" in out[0], out
    assert not (tmp_path / "run").exists()


def test_cli_train_lora_resume_and_merge(tmp_path, capsys):
    from test_training import learnable_bags

    bags = learnable_bags(tmp_path / "bags", n=3)
    common = ["--data", str(bags), "--image-size", "32", "--chunk-size", "4", "--batch-size", "4", "--threads", "1",
              "--val-fraction", "0", "--no-progress", "--seed", "0", "--cache-dir", str(tmp_path / "cache")]
    assert cli_main(["train", "--out", str(tmp_path / "base_run"), "--steps", "2", *common]) == 0
    base = tmp_path / "base_run" / "last"
    args = ["train", "--init", str(base), "--lora", "--lora-rank", "4", "--steps", "6", "--checkpoint-every", "3",
            "--log-every", "1", "--lr", "1e-2", *common]
    assert cli_main([*args, "--out", str(tmp_path / "lora")]) == 0
    last = tmp_path / "lora" / "last"
    assert (last / ADAPTER_FILE).is_file() and not (last / "model.safetensors").exists()
    doc = json.loads((last / ADAPTER_CONFIG_FILE).read_text())
    assert doc["base"]["sha256"] == base_digest(load_policy(base)) and doc["lora"]["rank"] == 4
    # Interrupted at step 3 and resumed: the same adapters as the uninterrupted run.
    from vla_ros.data.config import DatasetConfig
    from vla_ros.training import TrainConfig, train
    from vla_ros.training.checkpoint import load_training_state

    meta, _ = load_training_state(last)
    cfg = TrainConfig.from_dict(meta["train_config"])
    train(meta["data_paths"], tmp_path / "cut", dataset_config=DatasetConfig.load(last / "dataset_config.json"),
          train_config=cfg, stop_at_step=3, cache_dir=tmp_path / "cache")
    train(None, tmp_path / "cut", train_config=cfg, resume=True, cache_dir=tmp_path / "cache")
    a, b = load_file(str(last / ADAPTER_FILE)), load_file(str(tmp_path / "cut" / "last" / ADAPTER_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    capsys.readouterr()
    assert cli_main(["merge", "--checkpoint", str(last), "--out", str(tmp_path / "merged")]) == 0
    assert (tmp_path / "merged" / "model.safetensors").is_file()
    # Open-loop evaluation takes the adapted run (its best/ or last/) as it takes a plain one,
    # and predicts what the merged checkpoint predicts.
    for ckpt, out in ((tmp_path / "lora", "ol_adapted"), (tmp_path / "merged", "ol_merged")):
        assert cli_main(["eval-open-loop", "--checkpoint", str(ckpt), "--data", str(bags), "--out",
                         str(tmp_path / out), "--no-plots", "--threads", "1"]) == 0
    reports = [json.loads((tmp_path / out / "report.json").read_text()) for out in ("ol_adapted", "ol_merged")]
    assert reports[0]["num_frames"] == reports[1]["num_frames"] > 0
    for name, mae in reports[0]["first_action"]["mae"].items():
        assert mae == pytest.approx(reports[1]["first_action"]["mae"][name], abs=1e-5), name
    assert cli_main(["merge", "--checkpoint", str(base), "--out", str(tmp_path / "m2")]) == 1
    assert "not an adapted checkpoint" in capsys.readouterr().out
    assert cli_main(["train", "--lora", "--out", str(tmp_path / "no_init"), *common]) == 1
    assert "need init" in capsys.readouterr().out


@pytest.mark.parametrize("how", ["union", "init", "data"])
def test_full_fine_tuning_starts_from_the_init_weights_with_the_chosen_statistics(tmp_path, how):
    from test_training import learnable_bags

    bags = learnable_bags(tmp_path / "bags", n=3)
    common = ["--data", str(bags), "--image-size", "32", "--chunk-size", "4", "--batch-size", "4", "--threads", "1",
              "--val-fraction", "0", "--no-progress", "--seed", "0", "--cache-dir", str(tmp_path / "cache")]
    assert cli_main(["train", "--out", str(tmp_path / "base_run"), "--steps", "2", *common]) == 0
    base_dir = tmp_path / "base_run" / "last"
    more = learnable_bags(tmp_path / "more", n=2)
    ft_args = ["train", "--init", str(base_dir), "--out", str(tmp_path / "ft"), "--steps", "1", "--lr", "1e-9",
               *common[2:], "--data", str(more), "--init-normalization", how]
    assert cli_main(ft_args) == 0
    base, tuned = load_policy(base_dir), load_policy(tmp_path / "ft" / "last")
    from vla_ros.data.config import DatasetConfig
    from vla_ros.data.episodes import load_episodes
    from vla_ros.data.torch_dataset import compute_dataset_stats

    own = compute_dataset_stats(load_episodes([str(more)], DatasetConfig.load(base_dir / "dataset_config.json")))
    for key in ("action", "state"):
        b, o, t = base.normalization_stats[key], own[key], tuned.normalization_stats[key]
        assert o.to_dict() != b.to_dict()  # other data: the choice matters
        want = {"init": b, "data": o, "union": b.widened(o)}[how]
        for field, value in want.to_dict().items():
            np.testing.assert_allclose(getattr(t, field), value, rtol=1e-6, atol=1e-9, err_msg=f"{key}.{field}")
    a, b = base.state_dict(), tuned.state_dict()
    assert max((a[k].float() - b[k].float()).abs().max().item() for k in a) < 1e-5  # one step at lr 1e-9


def test_widened_statistics_cover_both_ranges_and_keep_the_init_units_where_the_data_fits():
    from vla_ros.model.normalization import FeatureNormalizer, FeatureStats

    init = FeatureStats(mean=[0.0, 0.0], std=[1.0, 1.0], min=[-0.02, -1.0], max=[0.02, 0.003],
                        q01=[-0.01, -0.9], q99=[0.01, 0.002], count=100)
    lift = FeatureStats(mean=[0.0, 0.01], std=[0.5, 0.01], min=[-0.005, -0.5], max=[0.005, 0.03],
                        q01=[-0.004, -0.4], q99=[0.004, 0.02], count=10)  # dim 1 goes up to 0.02: a lift
    wide = init.widened(lift)
    assert wide.q01 == [-0.01, -0.9] and wide.q99 == [0.01, 0.02] and wide.max == [0.02, 0.03]
    assert wide.mean == init.mean and wide.std == init.std and wide.count == init.count
    clipped, kept = (FeatureNormalizer(2, "quantile", stats=s) for s in (init, wide))
    up = torch.tensor([[0.005, 0.02]])
    assert clipped.unnormalize(clipped.normalize(up))[0, 1].item() == pytest.approx(0.002, abs=1e-6)  # the lift clipped away
    torch.testing.assert_close(kept.unnormalize(kept.normalize(up)), up)  # and kept
    with pytest.raises(ValueError, match="cannot widen statistics of 2 dimensions by 3"):
        init.widened(FeatureStats(*[[0.0] * 3] * 6))
