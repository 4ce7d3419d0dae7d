"""Discretization, normalization, flow determinism, config validation and presets."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from model_fixtures import ROBOT, batch_stats, make_batch, one_thread, seed_all, tiny_config  # noqa: F401
from vla_ros.model import (
    FeatureStats, Observation, RobotInterface, VLAConfig, build_policy, build_processors, compute_stats,
    list_presets, load_preset, make_generator,
)
from vla_ros.model.config import preset_dirs
from vla_ros.model.discretization import ActionTokenizer
from vla_ros.model.normalization import FeatureNormalizer

pytestmark = pytest.mark.usefixtures("one_thread")


# ------------------------------------------------------------------------------ tokenizer
@settings(max_examples=200, deadline=None, derandomize=True)
@given(arrays(np.float32, st.integers(1, 64), elements=st.floats(-1.0, 1.0, width=32)))
def test_tokenizer_round_trip_within_half_a_bin(x):
    tok = ActionTokenizer(256)
    ids = tok.encode(torch.from_numpy(x))
    assert ids.min() >= 0 and ids.max() <= 255
    err = np.abs(tok.decode(ids).numpy() - x)
    assert err.max() <= tok.bin_width / 2 + 1e-6


@settings(max_examples=50, deadline=None, derandomize=True)
@given(st.floats(-100, 100, allow_nan=False))
def test_tokenizer_clips_out_of_range(v):
    tok = ActionTokenizer(256)
    i = int(tok.encode(torch.tensor([v]))[0])
    assert 0 <= i <= 255
    if v >= 1.0:
        assert i == 255
    if v <= -1.0:
        assert i == 0


def test_tokenizer_uniform_bins():
    tok = ActionTokenizer(256)
    centres = tok.decode(torch.arange(256))
    assert centres[0].item() == pytest.approx(-1 + 1 / 256) and centres[-1].item() == pytest.approx(1 - 1 / 256)
    assert torch.allclose(centres.diff(), torch.full((255,), 2 / 256))
    with pytest.raises(ValueError, match="num_bins"):
        ActionTokenizer(1)


# ------------------------------------------------------------------------------ normalization
def test_compute_stats_matches_numpy():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(50, 8, 3)) * [1, 10, 0.1] + [0, 5, -1]
    s = compute_stats(a)
    flat = a.reshape(-1, 3)
    assert s.dim == 3 and s.count == 400
    np.testing.assert_allclose(s.mean, flat.mean(0))
    np.testing.assert_allclose(s.std, flat.std(0))
    np.testing.assert_allclose(s.min, flat.min(0))
    np.testing.assert_allclose(s.max, flat.max(0))
    np.testing.assert_allclose(s.q01, np.quantile(flat, 0.01, axis=0))
    np.testing.assert_allclose(s.q99, np.quantile(flat, 0.99, axis=0))
    assert FeatureStats.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    with pytest.raises(ValueError, match="non-finite"):
        compute_stats(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="no samples"):
        compute_stats(np.zeros((0, 3)))


@pytest.mark.parametrize("mode", ["quantile", "mean_std", "min_max"])
def test_normalization_round_trip(mode):
    rng = np.random.default_rng(1)
    data = rng.normal(size=(1000, 3)) * [0.2, 3.0, 1.0] + [0.5, -2.0, 0.0]
    data[:, 2] = rng.integers(0, 2, 1000)  # gripper 0/1
    pre, post = build_processors(mode, ["x", "y", "gripper"], [], ["gripper"], {"action": compute_stats(data)})
    stats = pre.action.stats
    x = torch.tensor(data, dtype=torch.float32)
    if mode == "quantile":  # clipping outside [q01, q99] is intended: test inside the range
        keep = ((data[:, :2] >= stats.q01[:2]) & (data[:, :2] <= stats.q99[:2])).all(1)
        x = x[torch.from_numpy(keep)]
    _, xn = pre(actions=x)
    if mode != "mean_std":
        assert xn[:, :2].abs().max() <= 1.0
    else:
        assert xn[:, :2].mean(0).abs().max() < 0.1 and (xn[:, :2].std(0) - 1).abs().max() < 0.1
    back = post(xn)
    torch.testing.assert_close(back, x, atol=1e-5, rtol=1e-5)
    # The masked gripper dim is untouched, bit for bit, in both directions.
    assert torch.equal(xn[:, 2], x[:, 2]) and torch.equal(back[:, 2], x[:, 2])
    # Mirror images: pre(post(y)) == y on the normalized range.
    y = torch.rand(64, 3) * 2 - 1
    _, y2 = pre(actions=post(y))
    torch.testing.assert_close(y2, y, atol=1e-5, rtol=1e-5)


def test_quantile_mode_maps_q01_q99_to_unit_range_and_clips():
    data = np.linspace(0, 100, 1001)[:, None]
    norm = FeatureNormalizer(1, "quantile", stats=compute_stats(data))
    q01, q99 = norm.stats.q01[0], norm.stats.q99[0]
    out = norm.normalize(torch.tensor([[q01], [q99], [(q01 + q99) / 2], [1e6], [-1e6]], dtype=torch.float32))
    torch.testing.assert_close(out.flatten(), torch.tensor([-1.0, 1.0, 0.0, 1.0, -1.0]), atol=1e-5, rtol=0)


def test_normalizer_without_stats_is_identity_and_constant_dims_are_safe():
    norm = FeatureNormalizer(2, "quantile")
    x = torch.randn(5, 2)
    assert torch.equal(norm.normalize(x), x) and torch.equal(norm.unnormalize(x), x)
    norm.set_stats(compute_stats(np.ones((10, 2))))  # zero range: no division by zero
    assert torch.isfinite(norm.normalize(x)).all()
    with pytest.raises(ValueError, match="3 dimensions, expected 2"):
        norm.set_stats(compute_stats(np.ones((10, 3))))


def test_policy_applies_normalization_inside():
    """Predictions come back in robot units; targets are normalized inside loss()."""
    seed_all(0)
    cfg = tiny_config(action_head="continuous")
    policy = build_policy(cfg, ROBOT)
    batch = make_batch(cfg)
    policy.set_normalization_stats(batch_stats(batch))
    st_ = policy.normalization_stats["action"]
    mid = (np.array(st_.q01) + np.array(st_.q99)) / 2
    out = policy.postprocess(torch.zeros(1, cfg.chunk_size, 3))
    np.testing.assert_allclose(out[0, 0, :2].numpy(), mid[:2], rtol=1e-6, atol=1e-6)
    assert out[0, 0, 2].item() == 0.0  # gripper passes through
    with pytest.raises(ValueError, match="unknown normalization feature"):
        policy.set_normalization_stats({"actions": st_})
    with pytest.raises(ValueError, match="action statistics"):
        policy.set_normalization_stats({"action": compute_stats(np.zeros((4, 5)))})


# ------------------------------------------------------------------------------ flow determinism
def test_flow_sampling_is_deterministic_given_a_seed():
    seed_all(0)
    cfg = tiny_config(action_head="flow", fusion="prefix", flow_steps=4)
    policy = build_policy(cfg, ROBOT).eval()
    batch = make_batch(cfg, batch_size=2)
    with torch.no_grad():
        a = policy(batch["images"], batch["instructions"], batch["state"], generator=make_generator(123))
        b = policy(batch["images"], batch["instructions"], batch["state"], generator=make_generator(123))
        c = policy(batch["images"], batch["instructions"], batch["state"], generator=make_generator(124))
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)
    obs = Observation(batch["images"][:1], "open the drawer", batch["state"][0].numpy())
    assert np.array_equal(policy.predict(obs, seed=5).actions, policy.predict(obs, seed=5).actions)
    # Different Euler step counts are a config choice, not a source of randomness.
    fused = policy.encode(batch["images"], batch["instructions"], policy.normalize_state(batch["state"]))
    noise = torch.randn(2, cfg.chunk_size, 3, generator=make_generator(0))
    with torch.no_grad():
        one = policy.head.predict(fused, steps=1, noise=noise)
        one_again = policy.head.predict(fused, steps=1, noise=noise)
    assert torch.equal(one, one_again)


def test_flow_cached_context_kv_matches_plain_euler_loop():
    seed_all(0)
    cfg = tiny_config(action_head="flow", fusion="cross_attention", flow_steps=3, flow_expert_depth=2)
    policy = build_policy(cfg, ROBOT).eval()
    batch = make_batch(cfg, batch_size=2)
    with torch.no_grad():
        fused = policy.encode(batch["images"], batch["instructions"], policy.normalize_state(batch["state"]))
        noise = torch.randn(2, cfg.chunk_size, 3, generator=make_generator(0))
        x = noise.clone()
        for i in range(3):  # no key/value cache
            x = x + (1 / 3) * policy.head.velocity(x, torch.full((2,), i / 3), fused)
        torch.testing.assert_close(policy.head.predict(fused, noise=noise), x, atol=1e-6, rtol=1e-6)


def test_flow_time_sampling_beta_favours_noisy_inputs():
    cfg = tiny_config(action_head="flow")
    head = build_policy(cfg, ROBOT).head
    t = head.sample_time(20000, "cpu", make_generator(0))
    assert 0.0 <= t.min() and t.max() <= 0.999
    assert (t < 0.5).float().mean() > 0.6  # pi0's Beta(1.5, 1) on (s - t) / s


# ------------------------------------------------------------------------------ config
def test_config_validation_quotes_bad_values():
    with pytest.raises(ValueError, match=r"chunk_size must be a positive integer, got 0"):
        tiny_config(chunk_size=0)
    with pytest.raises(ValueError, match=r"fusion must be one of .* got 'concat'"):
        tiny_config(fusion="concat")
    with pytest.raises(ValueError, match=r"d_model must be divisible by num_heads=3, got 32"):
        tiny_config(num_heads=3)
    with pytest.raises(ValueError, match=r"image_size must be a multiple of vit_patch_size=8, got 30"):
        tiny_config(vision_encoder="vit", image_size=30)
    with pytest.raises(ValueError, match=r"dropout must be a number in \[0, 1\), got 1.5"):
        tiny_config(dropout=1.5)
    with pytest.raises(ValueError, match=r"vision_tower_path must name"):
        tiny_config(vision_encoder="pretrained")


def test_config_from_dict_rejects_unknown_keys_and_round_trips(tmp_path):
    cfg = tiny_config()
    with pytest.raises(ValueError, match=r"unknown VLAConfig key\(s\) \['chunk', 'colour'\]"):
        VLAConfig.from_dict({**cfg.to_dict(), "chunk": 3, "colour": "red"})
    cfg.save(tmp_path / "c.json")
    assert VLAConfig.from_json(tmp_path / "c.json") == cfg
    assert json.loads(cfg.to_json())["chunk_size"] == 4
    assert cfg.replace(chunk_size=9).chunk_size == 9
    with pytest.raises(ValueError, match="unknown VLAConfig key"):
        cfg.replace(chunks=9)


def test_robot_interface_validates_and_round_trips():
    assert ROBOT.action_dim == 3 and ROBOT.state_dim == 2 and ROBOT.num_cameras == 1
    assert RobotInterface.from_dict(ROBOT.to_dict()) == ROBOT
    assert RobotInterface(action_names=("a",), camera_names=("c",)).state_names == []
    with pytest.raises(ValueError, match=r"unknown RobotInterface key\(s\) \['action_dim'\]"):
        RobotInterface.from_dict({**ROBOT.to_dict(), "action_dim": 3})
    with pytest.raises(ValueError, match=r"missing key\(s\) \['camera_names'\]"):
        RobotInterface.from_dict({"action_names": ["a"]})
    with pytest.raises(ValueError, match="action_names must name at least one"):
        RobotInterface(action_names=[], camera_names=["front"])
    with pytest.raises(ValueError, match="state_names must not contain duplicates"):
        RobotInterface(action_names=["a"], camera_names=["front"], state_names=["j", "j"])


def test_interface_without_state_turns_the_state_input_off():
    policy = build_policy(tiny_config(), RobotInterface(action_names=["j1", "j2"], camera_names=["front"]))
    assert policy.config.use_state is False and policy.fusion.state_encoder is None
    # Mask names the robot does not have are ignored: the gripper is not among j1, j2.
    assert policy.config.unnormalized_names == ["gripper"] and policy.postprocessor is not None


def test_config_fields_are_documented():
    """Each field has a comment line right above it in config.py (the field reference)."""
    import inspect

    import vla_ros.model.config as mod

    lines = inspect.getsource(mod.VLAConfig).splitlines()
    for name in (f.name for f in dataclasses.fields(VLAConfig)):
        i = next(i for i, ln in enumerate(lines) if ln.strip().startswith(f"{name}:"))
        assert lines[i - 1].strip().startswith("#"), f"field {name} has no comment"


def test_presets_load_and_tiny_is_small(monkeypatch, tmp_path):
    assert {"tiny", "small", "base", "large", "sim_demo", "sim_demo_student"} <= set(list_presets())
    defaults = VLAConfig().to_dict()
    for name in list_presets():  # every shipped preset is valid and lists only overrides of the defaults
        data = json.loads(next(d / f"{name}.json" for d in preset_dirs() if (d / f"{name}.json").is_file()).read_text())
        assert all(defaults[k] != v for k, v in data.items()), name
        load_preset(name)
    tiny = build_policy("tiny", ROBOT)
    assert tiny.num_parameters() < 1_000_000
    assert load_preset("large").vit_width >= 768
    demo = load_preset("sim_demo")  # the built-in simulated Panda demo
    assert demo.cnn_film and demo.vision_encoder == "cnn" and demo.language_encoder == "pretrained"
    assert demo.unnormalized_names == ["gripper"] and demo.image_size == 96
    student = load_preset("sim_demo_student")  # the demo's distillation student: same inputs, a smaller network
    assert (student.image_size, student.vision_encoder, student.language_encoder) == (96, "cnn", "pretrained")
    assert student.d_model < demo.d_model and student.fusion_depth < demo.fusion_depth
    assert not any(load_preset(n).cnn_film for n in ("tiny", "small", "base", "large"))
    assert load_preset("tiny", chunk_size=12).chunk_size == 12
    # An installed share dir ($VLA_ROS_SHARE/config/models) is searched first.
    (tmp_path / "config" / "models").mkdir(parents=True)
    (tmp_path / "config" / "models" / "mine.json").write_text(tiny_config(chunk_size=7).to_json())
    monkeypatch.setenv("VLA_ROS_SHARE", str(tmp_path))
    assert load_preset("mine").chunk_size == 7
    with pytest.raises(FileNotFoundError, match="no model preset 'nope'"):
        load_preset("nope")
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({**tiny_config().to_dict(), "extra": 1}))
    with pytest.raises(ValueError, match=r"unknown VLAConfig key\(s\) \['extra'\]"):
        load_preset(str(bad))
