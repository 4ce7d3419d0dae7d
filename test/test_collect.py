"""Demonstration collection in the simulator writes episode bags the dataset code reads."""
import json
from pathlib import Path

import numpy as np
import pytest

from vla_ros.data.bags import BagReader, read_bag, typestore_for
from vla_ros.data.collect import TOPICS, CollectConfig, collect
from vla_ros.data.config import DatasetConfig
from vla_ros.data.episodes import load_episodes


@pytest.fixture(scope="module")
def collected(tmp_path_factory):
    out = tmp_path_factory.mktemp("demos")
    summary = collect(CollectConfig(str(out), episodes=3, families=("touch", "push", "pick"), seed=2000, workers=1),
                      log=lambda *_: None)
    return out, summary


def test_collection_writes_one_mcap_bag_per_successful_episode_with_every_topic(collected):
    out, summary = collected
    assert summary["kept"] == 3 and all(e["success"] for e in summary["episodes"])
    assert json.loads((out / "collect_summary.json").read_text())["kept"] == 3
    for ep in summary["episodes"]:
        with BagReader(ep["bag"]) as bag:
            assert bag.storage == "mcap"
            assert set(bag.topics) == set(TOPICS)
        assert (out / f"episode_{ep['index']:06d}" / "metadata.yaml").is_file()


def test_recorded_label_is_the_clean_expert_action_not_the_executed_one(collected):
    out, summary = collected
    store = typestore_for()
    msgs = read_bag(summary["episodes"][0]["bag"], ["/twist", "/expert/twist"])
    lin = {t: [] for t in ("/twist", "/expert/twist")}
    for m in msgs:
        tw = store.deserialize_cdr(m.data, "geometry_msgs/msg/TwistStamped").twist.linear
        lin[m.topic].append([tw.x, tw.y, tw.z])
    clean, executed = np.array(lin["/expert/twist"]), np.array(lin["/twist"])
    assert clean.shape == executed.shape and len(clean) > 5
    assert np.abs(executed - clean).mean() > 0.01          # noise was injected into what ran
    assert np.linalg.norm(clean, axis=1).max() <= 0.2 + 1e-6  # the expert's speed


def test_dataset_turns_collected_bags_into_aligned_samples(collected, tmp_path):
    out, summary = collected
    cfg = DatasetConfig(image_size=96, chunk_size=8)
    episodes = load_episodes([out], cfg, cache_dir=tmp_path / "cache")
    assert len(episodes) == 3
    store = typestore_for()
    for ep in episodes:
        info = next(e for e in summary["episodes"] if Path(e["bag"]).name == Path(ep.path).name)
        assert ep.success and ep.instruction == info["instruction"]
        # The first frame's first action is the first expert command times the control period.
        first = next(m for m in read_bag(info["bag"], ["/expert/twist"]))
        tw = store.deserialize_cdr(first.data, "geometry_msgs/msg/TwistStamped").twist.linear
        np.testing.assert_allclose(ep.actions[0, 0, :3], np.array([tw.x, tw.y, tw.z]) * 0.1, atol=1e-6)
        assert ep.images.shape[1:] == (1, 96, 96, 3) and ep.images.dtype == np.uint8


def test_finger_state_does_not_give_the_gripper_label_away(tmp_path):
    """Episodes start with the gripper open or closed, and the executed gripper command is at
    times the opposite of the label, so a policy cannot learn the label by copying the fingers."""
    # Seeds 3012-3017 start three episodes open and three closed.
    summary = collect(CollectConfig(str(tmp_path / "demos"), episodes=6, families=("pick", "touch"), seed=3012,
                                    workers=1, gripper_flip=0.3), log=lambda *_: None)
    assert summary["kept"] == 6  # the expert still succeeds from either start and through the flips
    episodes = load_episodes([tmp_path / "demos"], DatasetConfig(image_size=96, chunk_size=8),
                             cache_dir=tmp_path / "cache")
    fingers_open = [ep.state[:, 7] > 0.02 for ep in episodes]  # panda_finger_joint1
    labels_open = [ep.actions[:, 0, -1] > 0.5 for ep in episodes]
    assert {bool(f[0]) for f in fingers_open} == {False, True}  # both starts occur
    disagree = np.concatenate([f != g for f, g in zip(fingers_open, labels_open)])
    assert disagree.mean() > 0.1, disagree.mean()
    # Pick: the label opens the gripper from the start, whatever the fingers show.
    for ep, g in zip(episodes, labels_open):
        if "pick" in ep.instruction or "grab" in ep.instruction or "lift" in ep.instruction:
            assert g[0]
