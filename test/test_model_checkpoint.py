"""Checkpoints: bit-identical round trips, and every bad checkpoint refused with a clear message."""
from __future__ import annotations

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest_model import batch_stats, make_batch, one_thread, seed_all, tiny_config  # noqa: F401
from vla_ros.model import CheckpointError, Observation, build_policy, load_policy, make_generator

pytestmark = pytest.mark.usefixtures("one_thread")


def _outputs(policy, batch, seed=3):
    with torch.no_grad():
        return policy(batch["images"], batch["instructions"], batch["state"], generator=make_generator(seed))


@pytest.mark.parametrize(
    "vision,fusion,head",
    [("cnn", f, h) for f in ("film", "cross_attention", "prefix") for h in ("discrete", "continuous", "flow")]
    + [("vit", "prefix", "flow")],
)
def test_save_load_bit_identical(tmp_path, vision, fusion, head):
    seed_all(0)
    cfg = tiny_config(vision_encoder=vision, fusion=fusion, action_head=head, camera_names=["front", "wrist"])
    policy = build_policy(cfg).eval()
    batch = make_batch(cfg, batch_size=2)
    policy.set_normalization_stats(batch_stats(batch))
    policy.save(tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json", "model.safetensors", "normalization.json"]

    torch.manual_seed(999)  # loading must not depend on the RNG state
    loaded = load_policy(tmp_path / "ckpt")
    assert loaded.config == cfg and not loaded.training
    assert loaded.normalization_stats == policy.normalization_stats
    for (k, v), (k2, v2) in zip(policy.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert torch.equal(_outputs(policy, batch), _outputs(loaded, batch))
    obs = Observation([np.full((48, 64, 3), 90, np.uint8)] * 2, "open the drawer", np.array([0.3, 1.0]))
    assert np.array_equal(policy.predict(obs, seed=1).actions, loaded.predict(obs, seed=1).actions)


@pytest.fixture
def ckpt(tmp_path):
    seed_all(0)
    cfg = tiny_config(action_head="continuous")
    policy = build_policy(cfg)
    policy.set_normalization_stats(batch_stats(make_batch(cfg)))
    return policy.save(tmp_path / "ckpt")


@pytest.fixture
def no_unpickling(monkeypatch):
    """Fail the test if anything tries to unpickle."""
    def boom(*a, **k):
        raise AssertionError("unpickling attempted")

    monkeypatch.setattr(torch, "load", boom)
    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)


@pytest.mark.parametrize("name", ["model.safetensors", "config.json", "normalization.json"])
def test_missing_file(ckpt, name):
    (ckpt / name).unlink()
    with pytest.raises(CheckpointError, match=f"missing file '{name}'"):
        load_policy(ckpt)


def test_missing_directory(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_policy(tmp_path / "nowhere")


def test_shape_mismatch_names_tensor_and_shapes(ckpt):
    state = load_file(str(ckpt / "model.safetensors"))
    state["head.out.weight"] = torch.zeros(5, 32)
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(
        CheckpointError,
        match=r"shape mismatch for tensor 'head.out.weight': checkpoint has \(5, 32\), .* expects \(3, 32\)",
    ):
        load_policy(ckpt)


def test_config_that_no_longer_matches_weights(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["chunk_size"] = 6  # query embeddings change shape
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"shape mismatch for tensor 'fusion\.queries'.*\(1, 4, 32\).*\(1, 6, 32\)"):
        load_policy(ckpt)


def test_missing_and_unexpected_tensors(ckpt):
    state = load_file(str(ckpt / "model.safetensors"))
    w = state.pop("head.out.bias")
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) \['head.out.bias'\]"):
        load_policy(ckpt)
    state["head.out.bias"] = w
    state["head.extra"] = torch.zeros(1)
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) \['head.extra'\]"):
        load_policy(ckpt)


def test_unknown_config_key(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["magic_boost"] = True
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"unknown VLAConfig key\(s\) \['magic_boost'\]"):
        load_policy(ckpt)


def test_invalid_config_value_and_json(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["fusion"] = "concat"
    (ckpt / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="fusion must be one of .* got 'concat'"):
        load_policy(ckpt)
    (ckpt / "config.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        load_policy(ckpt)


def test_normalization_that_does_not_fit(ckpt):
    norm = json.loads((ckpt / "normalization.json").read_text())
    norm["stats"]["action"]["mean"] = [0.0]
    (ckpt / "normalization.json").write_text(json.dumps(norm))
    with pytest.raises(CheckpointError, match="bad action statistics"):
        load_policy(ckpt)


def test_pickle_given_directly_is_refused(tmp_path, no_unpickling):
    for name, blob in (
        ("model.pt", pickle.dumps({"w": [1, 2, 3]}, protocol=2)),
        ("weights.bin", pickle.dumps({"w": 1}, protocol=4)),
        ("old.pkl", pickle.dumps({"w": 1}, protocol=0)),  # protocol 0 has no \x80: caught by suffix
    ):
        (tmp_path / name).write_bytes(blob)
        with pytest.raises(CheckpointError, match="refusing to load .*Unpickling can execute arbitrary code"):
            load_policy(tmp_path / name)


def test_pickle_instead_of_safetensors_in_directory(ckpt, no_unpickling):
    (ckpt / "model.safetensors").unlink()
    (ckpt / "pytorch_model.bin").write_bytes(pickle.dumps({"w": 1}, protocol=2))
    with pytest.raises(CheckpointError, match=r"holds pickle file\(s\) \['pytorch_model.bin'\]: refusing to unpickle"):
        load_policy(ckpt)


def test_pickle_disguised_as_safetensors(ckpt, no_unpickling):
    (ckpt / "model.safetensors").write_bytes(pickle.dumps({"w": 1}, protocol=2))
    with pytest.raises(CheckpointError, match="it is a pickle file"):
        load_policy(ckpt)


def test_torch_zip_archive_disguised_as_safetensors(ckpt, monkeypatch):
    torch.save({"w": torch.zeros(2)}, ckpt / "model.safetensors")  # zip archive, 'PK' magic
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load called"))
    with pytest.raises(CheckpointError, match="torch zip archive"):
        load_policy(ckpt)


def test_garbage_weights_file(ckpt):
    (ckpt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00garbage!")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_policy(ckpt)


def test_checkpoint_error_is_a_value_error(ckpt):
    shutil.rmtree(ckpt)
    with pytest.raises(ValueError):
        load_policy(ckpt)


def test_no_unpickling_call_anywhere_in_the_model_code():
    """No call to torch.load / pickle.load(s) in vla_ros/model or the engine (checked on the AST)."""
    import ast
    from pathlib import Path

    import vla_ros.model as pkg

    files = list(Path(pkg.__file__).parent.glob("*.py"))
    files.append(Path(pkg.__file__).parents[1] / "runtime" / "engine.py")
    for f in files:
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                base = node.func.value
                name = f"{getattr(base, 'id', '?')}.{node.func.attr}"
                assert name not in ("torch.load", "pickle.load", "pickle.loads"), f"{f.name} calls {name}"
