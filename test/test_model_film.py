"""cnn_film: the instruction FiLM-modulates every CNN stage (RT-1 style), identity at init."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model_fixtures import ROBOT, batch_stats, make_batch, one_thread, seed_all, tiny_config, tiny_robot  # noqa: F401
from vla_ros.model import Observation, VLAConfig, build_policy, load_policy, make_generator, save_policy
from vla_ros.model.fusion import LanguageFeatures
from vla_ros.runtime.engine import InferenceEngine

pytestmark = pytest.mark.usefixtures("one_thread")


def _film_policy(camera_names=("front",), **overrides):
    seed_all(0)
    kw = dict(cnn_film=True, fusion="film", action_head="continuous")
    kw.update(overrides)
    cfg = tiny_config(**kw)
    robot = tiny_robot(list(camera_names))
    policy = build_policy(cfg, robot)
    batch = make_batch(cfg, batch_size=2, robot=robot)
    policy.set_normalization_stats(batch_stats(batch))
    return policy.eval(), batch


def _randomize_film(policy, seed=5):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for gen in policy.vision.encoder.film:
            # Large: at init the pooled instruction embedding is small (|x| < 0.1).
            gen.weight.copy_(torch.randn(gen.weight.shape, generator=g) * 3.0)
            gen.bias.copy_(torch.randn(gen.bias.shape, generator=g) * 0.1)


def test_config_field_validated_and_round_trips(tmp_path):
    assert VLAConfig().cnn_film is False
    with pytest.raises(ValueError, match=r"cnn_film must be true or false, got 'yes'"):
        tiny_config(cnn_film="yes")
    cfg = tiny_config(cnn_film=True)
    cfg.save(tmp_path / "c.json")
    assert VLAConfig.from_json(tmp_path / "c.json") == cfg and VLAConfig.from_json(tmp_path / "c.json").cnn_film
    # Without FiLM the CNN has no generators and no extra state_dict keys.
    plain = build_policy(tiny_config(), ROBOT)
    assert plain.vision.encoder.film is None and not plain.vision.conditioned
    assert not any(".film." in k for k in plain.vision.state_dict())
    # Non-CNN encoders ignore the flag.
    assert not build_policy(tiny_config(vision_encoder="vit", cnn_film=True), ROBOT).vision.conditioned


def test_identity_init_equals_plain_cnn_with_same_weights():
    film, batch = _film_policy(camera_names=["front", "wrist"])
    enc = film.vision.encoder
    assert len(enc.film) == len(film.config.cnn_channels)
    for gen, ch in zip(enc.film, film.config.cnn_channels):
        assert gen.weight.shape == (2 * ch, film.config.d_model) and not gen.weight.any() and not gen.bias.any()
    plain = build_policy(film.config.replace(cnn_film=False), film.interface).eval()
    result = plain.load_state_dict(film.state_dict(), strict=False)
    assert not result.missing_keys and all(".film." in k for k in result.unexpected_keys) and result.unexpected_keys
    cond = torch.randn(2, film.config.d_model)
    with torch.no_grad():
        a = film.vision(batch["images"], cond)
        b = plain.vision(batch["images"])
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])  # gamma = 1, beta = 0: exactly the plain CNN


def test_instruction_changes_vision_features_and_actions_through_the_cnn():
    policy, batch = _film_policy()
    images = batch["images"][:1]
    state_n = policy.normalize_state(batch["state"][:1])
    with torch.no_grad():
        lang_a = LanguageFeatures(*policy.language(["pick up the red cube"]))
        lang_b = LanguageFeatures(*policy.language(["push the button"]))
        assert not torch.allclose(lang_a.pooled, lang_b.pooled)
        # Identity at init: the CNN ignores the instruction.
        assert torch.equal(policy.vision(images, lang_a.pooled)[0], policy.vision(images, lang_b.pooled)[0])
        _randomize_film(policy)
        tok_a, pool_a = policy.vision(images, lang_a.pooled)
        tok_b, pool_b = policy.vision(images, lang_b.pooled)
        tok_c, pool_c = policy.vision(batch["images"][1:], lang_a.pooled)  # another image, same instruction
        # The instruction moves the CNN features at least a third as much as a new image does.
        assert (tok_a - tok_b).abs().max() > 0.3 * (tok_a - tok_c).abs().max() > 0
        assert (pool_a - pool_b).abs().max() > 0.3 * (pool_a - pool_c).abs().max() > 0
        # Same fusion / head input from language, only the CNN's conditioning differs: actions differ.
        # (Untrained, every output is small: compare with the effect of another image.)
        out_a = policy.head.predict(policy.fusion(tok_a, pool_a, lang_a, state_n))
        out_b = policy.head.predict(policy.fusion(tok_b, pool_b, lang_a, state_n))
        out_c = policy.head.predict(policy.fusion(tok_c, pool_c, lang_a, state_n))
        assert (out_a - out_b).abs().max() > 0.1 * (out_a - out_c).abs().max() > 0
        # And the full policy routes the instruction into the CNN.
        full_a = policy(images, "pick up the red cube", batch["state"][:1])
        full_b = policy(images, "push the button", batch["state"][:1])
        assert torch.equal(full_a, policy.postprocess(out_a))
        assert not torch.equal(full_a, full_b)


def test_views_share_the_instruction_and_batches_do_not_mix():
    policy, batch = _film_policy(camera_names=["front", "wrist", "side"])
    _randomize_film(policy)
    cfg = policy.config
    b2 = make_batch(cfg, batch_size=3, seed=4, robot=policy.interface)
    with torch.no_grad():
        cond = LanguageFeatures(*policy.language(b2["instructions"])).pooled  # 3 different instructions
        tokens, pooled = policy.vision(b2["images"], cond)
        for i in range(3):  # batch of 3 x 3 views == each sample alone
            t_i, p_i = policy.vision(b2["images"][i : i + 1], cond[i : i + 1])
            torch.testing.assert_close(tokens[i : i + 1], t_i, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(pooled[i : i + 1], p_i, rtol=1e-5, atol=1e-6)


def test_conditioning_errors_are_clear():
    policy, batch = _film_policy()
    with pytest.raises(ValueError, match=r"FiLM-conditioned \(cnn_film\)"):
        policy.vision(batch["images"])
    plain = build_policy(tiny_config(), ROBOT)
    with pytest.raises(ValueError, match="takes no conditioning"):
        plain.vision(batch["images"], torch.zeros(2, 32))
    with pytest.raises(ValueError, match=r"cond must have shape \(2, C\)"):
        policy.vision.encoder(batch["images"][:, 0], torch.zeros(3, 32))


def test_gradients_reach_film_generators_and_it_overfits():
    seed_all(0)
    cfg = tiny_config(cnn_film=True, fusion="cross_attention", action_head="continuous")
    policy = build_policy(cfg, ROBOT).train()
    batch = make_batch(cfg, batch_size=4)
    policy.set_normalization_stats(batch_stats(batch))
    loss, _ = policy.loss(batch)
    loss.backward()
    for gen in policy.vision.encoder.film:
        assert gen.weight.grad is not None and gen.weight.grad.abs().sum() > 0
    # Cross-attention fusion reads instruction tokens, not the pooled embedding: only the
    # CNN's FiLM uses language.pool_proj (zero gradient while the generators are zero).
    pool_before = policy.language.pool_proj.weight.detach().clone()
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3, weight_decay=0.0)
    initial = loss.item()
    for _ in range(300):
        loss, _ = policy.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if loss.item() <= 0.1 * initial:
            break
    assert loss.item() <= 0.1 * initial
    assert all(gen.weight.abs().max() > 0 for gen in policy.vision.encoder.film)
    assert not torch.equal(policy.language.pool_proj.weight, pool_before)  # trained through the CNN


def test_checkpoint_round_trip_bit_identical(tmp_path):
    policy, batch = _film_policy(camera_names=["front", "wrist"])
    _randomize_film(policy)
    cfg = policy.config
    batch = make_batch(cfg, batch_size=2, robot=policy.interface)
    save_policy(policy, tmp_path / "ckpt")
    loaded = load_policy(tmp_path / "ckpt")
    assert loaded.config == cfg and loaded.config.cnn_film
    for (k, v), (k2, v2) in zip(policy.state_dict().items(), loaded.state_dict().items()):
        assert k == k2 and torch.equal(v, v2), k
    with torch.no_grad():
        a = policy(batch["images"], batch["instructions"], batch["state"])
        b = loaded(batch["images"], batch["instructions"], batch["state"])
    assert torch.equal(a, b)


def test_inference_engine_runs_film_policy():
    policy, _ = _film_policy(action_head="flow", camera_names=["front", "wrist"])
    _randomize_film(policy)
    engine = InferenceEngine(policy, device="cpu", seed=0)
    engine.warmup(1)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(2)]
    state = np.array([0.5, 1.0], np.float32)
    chunk = engine.infer(frames, "pick up the red cube", state, seed=3)
    assert chunk.actions.shape == (4, 3) and np.isfinite(chunk.actions).all()
    ref = policy.predict(Observation(frames, "pick up the red cube", state), seed=3).actions
    assert np.array_equal(chunk.actions, ref)
    other = engine.infer(frames, "push the button", state, seed=3).actions
    assert not np.array_equal(chunk.actions, other)
    with torch.no_grad():  # the instruction reaches the CNN in the encode stage of the pipeline the engine runs
        x = policy.images_tensor(frames, "rgb")
        f1 = policy.encode(x, ["pick up the red cube"], policy.normalize_state(torch.from_numpy(state)[None]))
        gen = make_generator(0)
        assert torch.isfinite(policy.decode(f1, gen)).all()
