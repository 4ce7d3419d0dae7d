"""Instruction augmentation (vla_ros/training/paraphrase.py) and the instruction-embedding noise."""
from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from test_training import DCFG, learnable_bags
from vla_ros.model import load_preset
from vla_ros.model.language import PretrainedTextEncoder
from vla_ros.sim.tasks import (COLORS, DIRECTION_WORDS, HELDOUT_TEMPLATES, NEWWORDS_DIRECTION_WORDS, NEWWORDS_NOUNS,
                                NEWWORDS_TEMPLATES, NOUNS, SHARED_FUNCTION_WORDS, TRAIN_TEMPLATES, sample_scene,
                                sample_task)
from vla_ros.training import TrainConfig, TrainingError, train
from vla_ros.training.paraphrase import ParaphrasePool, Paraphraser, ParaphraseTable, ParaphraseTableError

torch.set_num_threads(1)
SIM_TABLE = Path(__file__).resolve().parents[1] / "config" / "instructions" / "sim_tasks.json"


def _words(texts) -> set[str]:
    return {w for t in texts for w in re.findall(r"[a-z0-9'-]+", re.sub(r"\{\w+\}", " ", t.lower()))}


def _set_words(templates, nouns, directions) -> set[str]:
    return (_words(t for ts in templates.values() for t in ts) | _words(n for ns in nouns.values() for n in ns)
            | _words(d for ds in directions.values() for d in ds))


def test_sim_paraphrase_table_adds_no_word_that_only_the_heldout_or_newwords_sets_use():
    train_words = _set_words(TRAIN_TEMPLATES, NOUNS, DIRECTION_WORDS)
    heldout_only = _words(t for ts in HELDOUT_TEMPLATES.values() for t in ts) - train_words
    newwords_only = _set_words(NEWWORDS_TEMPLATES, NEWWORDS_NOUNS, NEWWORDS_DIRECTION_WORDS) - train_words
    table_words = ParaphraseTable.load(SIM_TABLE).words()
    leaked = table_words & (heldout_only | newwords_only) - SHARED_FUNCTION_WORDS
    assert not leaked, f"the paraphrase table uses words of the evaluation sets: {sorted(leaked)}"
    assert len(table_words - train_words) > 80  # it does bring many words of its own


def _sim_paraphraser(seed: int, **overrides) -> Paraphraser:
    data = json.loads(SIM_TABLE.read_text())
    data.update(overrides)
    return Paraphraser(ParaphraseTable(**data), np.random.default_rng(seed))


def test_paraphrases_of_sim_instructions_keep_the_task_the_colour_and_the_direction():
    para = _sim_paraphraser(0, probability=1.0, typo_probability=0.0, drop_article_probability=0.0)
    rng = np.random.default_rng(1)
    changed = 0
    for _ in range(400):
        objects = sample_scene(rng)
        task = sample_task(rng, objects, family=str(rng.choice(["touch", "push", "pick"])))
        out = para(task.instruction)
        changed += out != task.instruction.lower()
        groups = lambda s: Counter(para._group_of[m] for m in para._pattern.findall(s)  # noqa: E731
                                   if m not in para._keep)
        assert groups(out) == groups(task.instruction.lower()), (task.instruction, out)
        assert objects[task.target].color in out.split()
        if task.family == "push":
            assert groups(out)[task.direction] == 1, (task.instruction, out)
        for other in set(COLORS) - {objects[task.target].color}:
            assert other not in out.split()
    assert changed > 350


def test_paraphrase_pool_is_seeded_and_samples_rewrites_at_the_configured_share():
    table = ParaphraseTable.load(SIM_TABLE)
    recorded = ["push the red block to the left", "pick up the blue can", "touch the green cube"]
    a, b = ParaphrasePool(table, recorded, 16, seed=7), ParaphrasePool(table, recorded * 2, 16, seed=7)
    assert a.rewrites == b.rewrites and a.rewrites != ParaphrasePool(table, recorded, 16, seed=8).rewrites
    assert all(len(v) == 16 and len(set(v)) >= 12 for v in a.rewrites.values())
    assert set(a.strings()) == set(recorded) | {r for v in a.rewrites.values() for r in v}
    half = ParaphrasePool(ParaphraseTable(**{**json.loads(SIM_TABLE.read_text()), "probability": 0.5}),
                          recorded, 16, seed=7)
    batch = half.sample(recorded * 200, np.random.default_rng(0))
    assert batch == half.sample(recorded * 200, np.random.default_rng(0))
    kept = sum(x == t for x, t in zip(batch, recorded * 200))
    assert 240 <= kept <= 360  # about half kept as recorded (binomial, n=600: +-5 sigma)
    assert all(x == t or x in half.rewrites[t] for x, t in zip(batch, recorded * 200))
    assert half.sample(["an instruction the pool never saw"], np.random.default_rng(0)) == \
        ["an instruction the pool never saw"]


@pytest.mark.parametrize("content, match", [
    (None, "does not exist"),
    ("{not json", "not readable JSON"),
    ('["a"]', "top level must be an object"),
    ('{"groups": {"a": ["x", "y"]}, "colour": 1}', "unknown ParaphraseTable key"),
    ('{"probability": 0.5}', "'groups' is missing"),
    ('{"groups": {"a": ["x"]}}', "group 'a' must list at least two"),
    ('{"groups": {"a": ["x", "y"], "b": ["y", "z"]}}', "phrase 'y' is in groups 'a' and 'b'"),
    ('{"groups": {"a": ["x", "y"]}, "probability": 1.5}', "'probability' must be a number in \\[0, 1\\]"),
    ('{"groups": {"a": ["x", "y"]}, "prefixes": "please"}', "'prefixes' must be a list"),
])
def test_a_broken_paraphrase_table_is_refused_with_its_path_and_the_reason(tmp_path, content, match):
    path = tmp_path / "table.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(ParaphraseTableError, match=match) as err:
        ParaphraseTable.load(path)
    assert str(path) in str(err.value)


def test_a_paraphrase_table_is_found_by_name_in_the_share_directories(tmp_path, monkeypatch):
    assert ParaphraseTable.load("sim_tasks") == ParaphraseTable.load(SIM_TABLE)
    share = tmp_path / "share"
    (share / "config" / "instructions").mkdir(parents=True)
    (share / "config" / "instructions" / "mine.json").write_text('{"groups": {"cube": ["cube", "block"]}}')
    monkeypatch.setenv("VLA_ROS_SHARE", str(share))
    assert ParaphraseTable.load("mine").groups == {"cube": ["cube", "block"]}
    with pytest.raises(ParaphraseTableError, match="paraphrase table 'no_such_table' does not exist"):
        ParaphraseTable.load("no_such_table")


def test_embedding_noise_perturbs_training_forward_passes_only():
    enc = PretrainedTextEncoder("", out_dim=16)
    enc.embedding_noise, enc.noise_generator = 0.05, torch.Generator().manual_seed(0)
    enc.eval()
    clean = enc(["touch the red cube"])[2]
    assert torch.equal(clean, enc(["touch the red cube"])[2])
    enc.train()
    noisy_a, noisy_b = enc(["touch the red cube"])[2], enc(["touch the red cube"])[2]
    assert not torch.equal(noisy_a, noisy_b) and not torch.equal(noisy_a, clean)


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    return learnable_bags(tmp_path_factory.mktemp("bags"), n=4)


def test_training_with_paraphrases_and_embedding_noise_resumes_exactly(bags, tmp_path):
    table = tmp_path / "table.json"
    table.write_text(json.dumps({"groups": {"follow": ["follow", "track", "chase"],
                                            "square": ["red square", "crimson square", "red box"]},
                                 "prefixes": ["please"], "typo_probability": 0.5}))
    model = load_preset("tiny", language_encoder="pretrained")
    cfg = TrainConfig(steps=6, batch_size=4, lr=1e-3, warmup_steps=2, val_fraction=0.25, val_every=2,
                      checkpoint_every=3, log_every=1, seed=5, threads=1, progress=False,
                      instruction_augment=str(table), instruction_noise=0.03)
    full = train([bags], tmp_path / "full", model, DCFG, cfg, cache_dir=tmp_path / "cache")
    train([bags], tmp_path / "part", model, DCFG, cfg, cache_dir=tmp_path / "cache", stop_at_step=4)
    resumed = train(None, tmp_path / "part", resume=True)
    assert resumed.step == full.step == 6
    a = load_file(str(tmp_path / "full" / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "part" / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The paraphrases and the noise reach the model: the same run without them ends elsewhere.
    plain = TrainConfig(**{**cfg.to_dict(), "instruction_augment": "", "instruction_noise": 0.0})
    train([bags], tmp_path / "plain", model, DCFG, plain, cache_dir=tmp_path / "cache")
    c = load_file(str(tmp_path / "plain" / "last" / "model.safetensors"))
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_instruction_noise_needs_the_pretrained_language_encoder(bags, tmp_path):
    cfg = TrainConfig(steps=2, batch_size=4, val_fraction=0.25, seed=0, threads=1, progress=False,
                      instruction_noise=0.03)
    with pytest.raises(TrainingError, match="instruction_noise needs the pretrained language encoder"):
        train([bags], tmp_path / "run", load_preset("tiny", language_encoder="simple"), DCFG, cfg,
              cache_dir=tmp_path / "cache")
