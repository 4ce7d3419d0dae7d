"""Real-Time Chunking in the model: RTC guidance of the flow head (model/rtc.py) and action-prefix
conditioning, its training-time form, for every head (model/prefix.py)."""
import math

import numpy as np
import pytest
import torch

from model_fixtures import ROBOT, batch_stats, make_batch, tiny_config
from vla_ros.model import RobotInterface, compute_stats
from vla_ros.model.policy import VLAPolicy, build_policy
from vla_ros.model.prefix import prefix_inputs
from vla_ros.model.rtc import RTCSettings, prefix_weights
from vla_ros.model.types import Observation


def test_prefix_weights_follow_the_papers_schedules():
    # delay 2 frozen, leftover ends at 6, chunk of 8: c_i = (6 - i) / (6 - 2 + 1) for i = 2..5
    c = np.array([4, 3, 2, 1]) / 5
    np.testing.assert_allclose(prefix_weights(2, 6, 8, "linear"), [1, 1, *c, 0, 0], atol=1e-6)
    np.testing.assert_allclose(prefix_weights(2, 6, 8, "exp"), [1, 1, *(c * np.expm1(c) / math.expm1(1)), 0, 0],
                               atol=1e-6)
    np.testing.assert_allclose(prefix_weights(2, 6, 8, "ones"), [1, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_allclose(prefix_weights(2, 6, 8, "zeros"), [1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_allclose(prefix_weights(9, 20, 8, "linear"), np.ones(8))  # clipped to the chunk
    with pytest.raises(ValueError, match="schedule must be one of"):
        prefix_weights(1, 2, 8, "cosine")


def _flow_policy(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = tiny_config(action_head="flow", chunk_size=8, flow_steps=8, **overrides)
    batch = make_batch(cfg)
    return build_policy(cfg, ROBOT, stats=batch_stats(batch)).eval(), batch


def test_rtc_guidance_returns_the_frozen_actions_exactly_and_pulls_the_rest_toward_the_leftover():
    policy, batch = _flow_policy()
    leftover = batch["actions"][0, :6].numpy()  # robot units: the previous chunk's rest, 6 actions
    images = batch["images"][:1]
    state = batch["state"][0].numpy()
    obs = Observation(images, "pick up the red cube", state, committed=leftover, inference_delay=2)
    guided = policy.predict(obs, seed=3, rtc=RTCSettings(max_guidance_weight=5.0, schedule="ones")).actions
    free = policy.predict(obs, seed=3, rtc=None).actions
    np.testing.assert_array_equal(guided[:2], leftover[:2])  # frozen: exactly the committed actions
    np.testing.assert_array_equal(free[:2], leftover[:2])    # returned exactly even without guidance
    # The guided region (the rest of the leftover) follows it far more closely than free sampling.
    err_guided = np.abs(guided[2:6, :2] - leftover[2:6, :2]).mean()
    err_free = np.abs(free[2:6, :2] - leftover[2:6, :2]).mean()
    assert err_guided < 0.5 * err_free, (err_guided, err_free)
    # Beyond the leftover (weight 0) nothing pulls: guidance changes those steps only through the
    # shared noise path, not toward any target.
    assert guided.shape == (8, 3)


def test_rtc_is_a_no_op_without_committed_actions():
    policy, batch = _flow_policy()
    obs = Observation(batch["images"][:1], "push the button", batch["state"][0].numpy())
    a = policy.predict(obs, seed=5, rtc=RTCSettings()).actions
    b = policy.predict(obs, seed=5, rtc=None).actions
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("head", ["continuous", "discrete", "flow"])
def test_prefix_conditioning_sees_the_same_layout_in_training_and_inference(head):
    """The committed actions a request carries reach the model exactly as a training sample's own first
    d actions do: normalized, zero past d, masked: the same conditioned features, the same chunk."""
    torch.manual_seed(0)
    cfg = tiny_config(action_head=head, chunk_size=8, action_prefix=5)
    batch = make_batch(cfg, batch_size=1)
    policy = build_policy(cfg, ROBOT, stats=batch_stats(batch)).eval()
    d = 3
    with torch.inference_mode():
        # training's layout: the sample's own actions, normalized, the first d given
        state_n, actions_n = policy.preprocessor(batch["state"], batch["actions"])
        fused = policy.encode(batch["images"], batch["instructions"], state_n)
        prefix, mask = prefix_inputs(actions_n, torch.tensor([d]))
        train_q = policy.condition_on_prefix(fused, prefix, mask).queries
        # inference's layout: the same actions as committed robot-unit actions of a request
        obs = Observation(batch["images"], batch["instructions"][0], batch["state"][0].numpy(),
                          committed=batch["actions"][0, :d].numpy(), inference_delay=d)
        committed, delay, given = policy.committed_tensor(obs)
        infer_q = policy.condition_on_prefix(fused, *prefix_inputs(committed, torch.tensor([delay]))).queries
    assert (delay, given) == (d, d)
    torch.testing.assert_close(committed[:, :d], actions_n[:, :d])
    assert torch.all(committed[:, d:] == 0) and torch.all(prefix[:, d:] == 0)
    torch.testing.assert_close(infer_q, train_q)
    # and predict() runs exactly that path: its steps after the prefix are the head's on those features
    out = policy.predict(obs, seed=0).actions
    np.testing.assert_array_equal(out[:d], batch["actions"][0, :d].numpy().astype(np.float32))
    if head == "continuous":
        with torch.inference_mode():
            expect = policy.postprocess(policy.head.predict(policy.condition_on_prefix(fused, prefix, mask)))
        np.testing.assert_allclose(out[d:], expect[0, d:].numpy(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("committed", [None, "empty", "delay 0"])
def test_a_request_without_committed_actions_takes_the_path_of_training_samples_without_a_prefix(committed):
    """No committed actions (the first request of an instruction, a policy server that sends none) is a
    d = 0 sample: every step "not given", through the same conditioning block training ran."""
    torch.manual_seed(0)
    cfg = tiny_config(action_head="continuous", chunk_size=8, action_prefix=5)
    batch = make_batch(cfg, batch_size=1)
    policy = build_policy(cfg, ROBOT, stats=batch_stats(batch)).eval()
    c = {None: None, "empty": np.zeros((0, 3), np.float32), "delay 0": batch["actions"][0, :4].numpy()}[committed]
    obs = Observation(batch["images"], batch["instructions"][0], batch["state"][0].numpy(), committed=c,
                      inference_delay=0)
    with torch.inference_mode():
        state_n, actions_n = policy.preprocessor(batch["state"], batch["actions"])
        fused = policy.encode(batch["images"], batch["instructions"], state_n)
        prefix, mask = prefix_inputs(actions_n, torch.tensor([0]))
        expect = policy.postprocess(policy.head.predict(policy.condition_on_prefix(fused, prefix, mask)))[0]
    np.testing.assert_allclose(policy.predict(obs).actions, expect.numpy(), rtol=1e-5, atol=1e-6)


def test_a_prefix_conditioned_policy_learns_to_continue_the_committed_actions():
    """Actions ramp with a slope the images and state do not show (a plan already under way): only the
    committed actions tell it. Trained with training-time RTC, the policy continues the committed ramp;
    without them it can only guess the average."""
    torch.manual_seed(0)
    H = 8
    # every sample gets a prefix here (action_prefix_dropout 0): only the prefix carries the slope
    cfg = tiny_config(action_head="continuous", chunk_size=H, action_prefix=4, action_prefix_dropout=0.0,
                      language_encoder="simple", unnormalized_names=[])
    robot = RobotInterface(action_names=["x"], camera_names=["front"], state_names=["j1"])
    g = torch.Generator().manual_seed(1)

    def sample(n):
        slope = torch.rand(n, 1, 1, generator=g) * 2 - 1
        return {"images": torch.rand(n, 1, 3, cfg.image_size, cfg.image_size, generator=g),
                "instructions": ["go"] * n, "state": torch.zeros(n, 1),
                "actions": slope * torch.arange(1, H + 1, dtype=torch.float32)[None, :, None] / H}

    pool = sample(512)
    policy = build_policy(cfg, robot, stats={"action": compute_stats(pool["actions"]),
                                             "state": compute_stats(torch.randn(64, 1))})
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(2)
    policy.train()
    for step in range(250):
        idx = torch.randint(0, 512, (64,), generator=gen)
        batch = {k: (v[idx] if torch.is_tensor(v) else [v[i] for i in idx]) for k, v in pool.items()}
        loss, _ = policy.loss(batch, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
    policy.eval()
    test = sample(32)
    err_with, err_without = [], []
    for i in range(32):
        a = test["actions"][i].numpy()
        with_prefix = policy.predict(Observation(test["images"][i:i + 1], "go", np.zeros(1, np.float32),
                                                 committed=a[:3], inference_delay=3)).actions
        without = policy.predict(Observation(test["images"][i:i + 1], "go", np.zeros(1, np.float32))).actions
        err_with.append(np.abs(with_prefix[3:] - a[3:]).mean())
        err_without.append(np.abs(without[3:] - a[3:]).mean())
    assert np.mean(err_with) < 0.35 * np.mean(err_without), (np.mean(err_with), np.mean(err_without))


def test_committed_actions_of_the_wrong_shape_are_refused():
    policy, batch = _flow_policy()
    base = dict(images=batch["images"][:1], instruction="go", state=batch["state"][0].numpy())
    with pytest.raises(ValueError, match=r"committed actions must have shape \(n <= 8, 3\)"):
        policy.predict(Observation(**base, committed=np.zeros((2, 4)), inference_delay=1))
    with pytest.raises(ValueError, match="NaN or inf"):
        policy.predict(Observation(**base, committed=np.full((2, 3), np.nan), inference_delay=1))
    with pytest.raises(ValueError, match="action_prefix must be below chunk_size"):
        tiny_config(chunk_size=4, action_prefix=4)


def test_policies_without_a_prefix_keep_their_checkpoint_layout():
    # action_prefix 0 (the default) adds no parameters: existing checkpoints load unchanged.
    torch.manual_seed(0)
    plain = build_policy(tiny_config(), ROBOT)
    assert plain.prefix is None
    assert not any(k.startswith("prefix.") for k in plain.state_dict())
    assert isinstance(plain, VLAPolicy)
