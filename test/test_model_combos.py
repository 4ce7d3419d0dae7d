"""Every vision encoder x fusion x action head: shapes on 1 and 3 cameras, and overfitting."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from model_fixtures import ROBOT, batch_stats, make_batch, one_thread, repeat_batch, seed_all, tiny_config, tiny_robot  # noqa: F401
from vla_ros.model import Observation, build_policy, make_generator

VISION = ["cnn", "vit"]
FUSION = ["film", "cross_attention", "prefix"]
HEADS = ["discrete", "continuous", "flow"]
COMBOS = [(v, f, h) for v in VISION for f in FUSION for h in HEADS]
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("cameras", [1, 3])
@pytest.mark.parametrize("vision,fusion,head", COMBOS)
def test_forward_shapes(vision, fusion, head, cameras):
    seed_all(0)
    names = ["front", "wrist", "side"][:cameras]
    cfg = tiny_config(vision_encoder=vision, fusion=fusion, action_head=head)
    robot = tiny_robot(names)
    policy = build_policy(cfg, robot)
    batch = make_batch(cfg, batch_size=2, robot=robot)
    policy.set_normalization_stats(batch_stats(batch))
    B, H, D, C = 2, cfg.chunk_size, robot.action_dim, cfg.d_model

    vis_tokens, vis_pooled = policy.vision(batch["images"])
    assert vis_tokens.shape[0] == B and vis_tokens.shape[2] == C and vis_tokens.shape[1] % cameras == 0
    assert vis_pooled.shape == (B, C)
    fused = policy.encode(batch["images"], batch["instructions"], policy.normalize_state(batch["state"]))
    assert fused.queries.shape == (B, H, C)
    assert fused.context.shape[0] == B and fused.context.shape[2] == C

    loss, metrics = policy.loss(batch)
    assert loss.ndim == 0 and torch.isfinite(loss) and metrics["loss"] == pytest.approx(loss.item())
    loss.backward()
    with torch.no_grad():
        out = policy(batch["images"], batch["instructions"], batch["state"], generator=make_generator(0))
    assert out.shape == (B, H, D) and out.dtype == torch.float32

    # Raw camera frames of another size go through OpenCV preprocessing.
    frames = [np.random.default_rng(i).integers(0, 256, (40, 56, 3), dtype=np.uint8) for i in range(cameras)]
    chunk = policy.predict(Observation(frames, "pick up the red cube", np.array([0.1, 0.5])), seed=0)
    assert chunk.actions.shape == (H, D) and chunk.actions.dtype == np.float32
    assert chunk.action_names == ["x", "y", "gripper"]
    assert set(chunk.timings) == {"preprocess", "encode", "decode", "postprocess", "total"}


def _eval_loss(policy, batch, draws: int) -> float:
    with torch.no_grad():
        return float(np.mean([policy.loss(batch, generator=make_generator(100 + i))[0].item() for i in range(draws)]))


@pytest.mark.parametrize("vision,fusion,head", COMBOS)
def test_overfits_fixed_batch(vision, fusion, head):
    """Loss on a fixed batch of 4 falls by >= 90% (flow: expectation over fixed noise draws)."""
    seed_all(0)
    cfg = tiny_config(vision_encoder=vision, fusion=fusion, action_head=head)
    policy = build_policy(cfg, ROBOT)
    batch = make_batch(cfg, batch_size=4)
    policy.set_normalization_stats(batch_stats(batch))
    # Flow matching regresses a noisy target (actions - noise): each sample is repeated with
    # independent noise draws so the gradient is not dominated by that noise.
    train = repeat_batch(batch, 4) if head == "flow" else batch
    draws = 2 if head == "flow" else 1
    evaluate = repeat_batch(batch, 4) if head == "flow" else batch
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3, weight_decay=0.0)
    gen = make_generator(7)
    initial = _eval_loss(policy, evaluate, draws)
    final = initial
    for step in range(1, 601):
        loss, _ = policy.loss(train, generator=gen)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            final = _eval_loss(policy, evaluate, draws)
            if final <= 0.1 * initial:
                break
    assert final <= 0.1 * initial, f"loss {initial:.4f} -> {final:.4f} after {step} steps"
