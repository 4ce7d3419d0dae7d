"""Shared helpers for the model tests (imported by test_model_*.py).

Tiny sizes everywhere so the whole model suite runs in a few minutes on 2 CPU cores.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from vla_ros.model import RobotInterface, VLAConfig, compute_stats

ACTION_NAMES = ["x", "y", "gripper"]
STATE_NAMES = ["j1", "gripper"]
INSTRUCTIONS = ["pick up the red cube", "place the cube in the bowl", "open the drawer", "push the button"]

TINY = dict(
    chunk_size=4, image_size=32,
    cnn_channels=[8, 16], cnn_keypoints=8, vit_patch_size=8, vit_width=32, vit_depth=1, vit_heads=2,
    text_max_length=24, text_depth=1, d_model=32, num_heads=2, fusion_depth=1, flow_expert_depth=1,
    flow_steps=5, unnormalized_names=["gripper"], dropout=0.0,
)
ROBOT = RobotInterface(action_names=ACTION_NAMES, camera_names=["front"], state_names=STATE_NAMES)


def tiny_config(**overrides) -> VLAConfig:
    data = dict(TINY)
    data.update(overrides)
    return VLAConfig.from_dict(data)


def tiny_robot(camera_names: list[str]) -> RobotInterface:
    """ROBOT with other cameras."""
    return RobotInterface(action_names=ACTION_NAMES, camera_names=camera_names, state_names=STATE_NAMES)


def make_batch(cfg: VLAConfig, batch_size: int = 4, seed: int = 1, robot: RobotInterface = ROBOT) -> dict:
    """A fixed batch in robot units: x in [-0.3, 0.5] m, y in [1, 3], gripper in {0, 1}."""
    g = torch.Generator().manual_seed(seed)
    B, H, D = batch_size, cfg.chunk_size, robot.action_dim
    actions = torch.rand(B, H, D, generator=g)
    lo = torch.tensor([-0.3, 1.0] + [0.0] * (D - 2))
    hi = torch.tensor([0.5, 3.0] + [1.0] * (D - 2))
    actions = lo + actions * (hi - lo)
    actions[..., -1] = (actions[..., -1] > 0.5).float()  # binary gripper, left unnormalized
    return {
        "images": torch.rand(B, robot.num_cameras, 3, cfg.image_size, cfg.image_size, generator=g),
        "instructions": [INSTRUCTIONS[i % len(INSTRUCTIONS)] for i in range(B)],
        "state": torch.randn(B, robot.state_dim, generator=g) * 0.5 + 1.0,
        "actions": actions,
    }


def batch_stats(batch: dict) -> dict:
    return {"action": compute_stats(batch["actions"]), "state": compute_stats(batch["state"])}


def repeat_batch(batch: dict, n: int) -> dict:
    return {
        k: (v * n if isinstance(v, list) else v.repeat(n, *([1] * (v.ndim - 1)))) for k, v in batch.items()
    }


@pytest.fixture(autouse=False)
def one_thread():
    """Tiny models are overhead-bound: one intra-op thread is faster and steadier on 2 cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


BERT_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "pick", "up", "the", "red", "cube", "place", "in",
              "bowl", "open", "drawer", "push", "button", "blue", "block", "##s", "a"]


def make_tiny_bert(directory) -> None:
    """A MiniLM-style BERT with tiny random weights + a BertTokenizer vocab, saved locally."""
    import transformers

    torch.manual_seed(0)
    (directory / "vocab.txt").write_text("\n".join(BERT_VOCAB) + "\n")
    transformers.BertTokenizer.from_pretrained(str(directory)).save_pretrained(str(directory))
    cfg = transformers.BertConfig(vocab_size=len(BERT_VOCAB), hidden_size=24, num_hidden_layers=1,
                                  num_attention_heads=2, intermediate_size=48, max_position_embeddings=64)
    transformers.BertModel(cfg).save_pretrained(str(directory))


def seed_all(seed: int = 0) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
