"""Episode bags -> aligned training samples (vla_ros.data), on real bags written here.

`write_episode` writes a synthetic episode bag the way the simulator's data collection does
(camera frames, joint states, expert twist + gripper per control tick, instruction, success),
with known values so the alignment can be checked exactly. The training and open-loop
evaluation tests import it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_ros.data import episode_messages
from vla_ros.data.alignment import load_episode
from vla_ros.data.bags import BagReader, BagWriter, typestore_for
from vla_ros.data.compatibility import check_episodes_fit
from vla_ros.data.config import CameraTopic, DatasetConfig
from vla_ros.data.episode import Episode
from vla_ros.data.episodes import cache_key, find_bags, load_episodes, split_episodes
from vla_ros.data.errors import DatasetError
from vla_ros.data.torch_dataset import EpisodeDataset

torch.set_num_threads(1)

NS = 1_000_000_000
JOINTS = [f"panda_joint{i}" for i in range(1, 8)] + ["panda_finger_joint1", "panda_finger_joint2"]
_STORE = typestore_for()
T = _STORE.types


def _time(ns):
    return T["builtin_interfaces/msg/Time"](sec=int(ns // NS), nanosec=int(ns % NS))


def _header(ns, frame=""):
    return T["std_msgs/msg/Header"](stamp=_time(ns), frame_id=frame)


def _cdr(msg):
    return bytes(_STORE.serialize_cdr(msg, msg.__msgtype__))


def default_image(k, cam=0, size=96):
    """Uniform frame whose colour encodes the frame number (exact after resizing)."""
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 0] = k % 256
    img[..., 1] = 200
    img[..., 2] = 7
    return img


def write_episode(path, storage="mcap", n_ticks=20, period=0.1, t0_ns=100 * NS, instruction="pick up the red cube",
                  success=True, image_fn=default_image, twist_fn=None, gripper_fn=None, state_fn=None,
                  js_start_ns=None, js_period_ns=20_000_000, recv_offset_ns=3_000_000, encoding="rgb8",
                  skip_topics=(), skip_gripper_ticks=(), cameras=(("front", "/front/image_raw"),), skip_twist_ticks=()):
    """Write one episode bag: tick k at t0 + k * period (frame, twist, gripper, success).

    twist_fn(k) -> (vx, vy, vz, wx, wy, wz); gripper_fn(k) -> float; state_fn(t_ns) -> 9
    joint positions; image_fn(k, cam) -> HxWx3 RGB uint8 (frame number
    and camera index cam). Receive timestamps lag header stamps by recv_offset_ns.
    """
    twist_fn = twist_fn or (lambda k: (0.1 * k, -0.05 * k, 0.01, 0.2, 0.0, -0.1 * k))
    gripper_fn = gripper_fn or (lambda k: 1.0 if k < n_ticks // 2 else 0.0)
    state_fn = state_fn or (lambda t: [(t - t0_ns) / NS + 0.1 * j for j in range(9)])
    period_ns = int(round(period * NS))
    js_start_ns = t0_ns - 50_000_000 if js_start_ns is None else js_start_ns
    topics = {cam_topic: "sensor_msgs/msg/Image" for _, cam_topic in cameras}
    topics.update({"/joint_states": "sensor_msgs/msg/JointState", "/expert/twist": "geometry_msgs/msg/TwistStamped",
                   "/expert/gripper": "std_msgs/msg/Float64", "/instruction": "std_msgs/msg/String",
                   "/task_success": "std_msgs/msg/Bool"})
    msgs = []  # (receive ns, topic, msg)
    t_end = t0_ns + n_ticks * period_ns
    t = js_start_ns
    while t < t_end:
        msgs.append((t + recv_offset_ns, "/joint_states", T["sensor_msgs/msg/JointState"](
            header=_header(t), name=list(JOINTS), position=np.array(state_fn(t), np.float64),
            velocity=np.zeros(0), effort=np.zeros(0))))
        t += js_period_ns
    if instruction is not None:
        msgs.append((t0_ns - 10_000_000, "/instruction", T["std_msgs/msg/String"](data=instruction)))
    for k in range(n_ticks):
        tk = t0_ns + k * period_ns
        for ci, (_, cam_topic) in enumerate(cameras):
            rgb = image_fn(k, ci)
            h, w = rgb.shape[:2]
            if encoding == "rgb8":
                data, step = rgb, w * 3
            elif encoding == "bgr8":
                data, step = rgb[:, :, ::-1], w * 3
            else:
                data, step = rgb[:, :, :1], w
            msgs.append((tk + recv_offset_ns, cam_topic, T["sensor_msgs/msg/Image"](
                header=_header(tk, "cam"), height=h, width=w, encoding=encoding, is_bigendian=0, step=step,
                data=np.ascontiguousarray(data).reshape(-1))))
        v = twist_fn(k)
        V3 = T["geometry_msgs/msg/Vector3"]
        if k not in skip_twist_ticks:
            msgs.append((tk + recv_offset_ns, "/expert/twist", T["geometry_msgs/msg/TwistStamped"](
                header=_header(tk, "panda_link0"),
                twist=T["geometry_msgs/msg/Twist"](linear=V3(*v[:3]), angular=V3(*v[3:])))))
        if k not in skip_gripper_ticks:
            msgs.append((tk + recv_offset_ns + 1000, "/expert/gripper",
                         T["std_msgs/msg/Float64"](data=float(gripper_fn(k)))))
        msgs.append((tk + recv_offset_ns + 2000, "/task_success",
                     T["std_msgs/msg/Bool"](data=bool(success and k == n_ticks - 1))))
    msgs.sort(key=lambda m: m[0])
    with BagWriter(path, storage=storage) as bag:
        for topic, msgtype in topics.items():
            if topic not in skip_topics:
                bag.add_topic(topic, msgtype)
        for recv, topic, msg in msgs:
            if topic not in skip_topics:
                bag.write(topic, recv, _cdr(msg))
    return Path(path)


def small_config(**kw):
    base = dict(image_size=32, chunk_size=4)
    base.update(kw)
    return DatasetConfig(**base)


# --------------------------------------------------------------------------- alignment
@pytest.mark.parametrize("storage", ["mcap", "sqlite3"])
def test_alignment_known_values(tmp_path, storage):
    t0 = 100 * NS
    # Joint states start 0.15 s after the first frame: frames 0 and 1 have no state yet.
    bag = write_episode(tmp_path / "ep", storage=storage, n_ticks=12, js_start_ns=t0 + 150_000_000,
                        skip_gripper_ticks=(3,), gripper_fn=lambda k: 0.0 if k in (2, 7, 8, 9, 10, 11) else 1.0)
    ep = load_episode(bag, small_config())
    assert ep.instruction == "pick up the red cube" and ep.success
    assert ep.camera_names == ["front"] and ep.state_names == JOINTS
    assert ep.action_names == ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]
    # Frames 2..11 kept (header stamps, not the receive times 3 ms later).
    assert ep.num_frames == 10
    np.testing.assert_array_equal(ep.frame_stamps, t0 + np.arange(2, 12) * 100_000_000)
    assert ep.images.shape == (10, 1, 32, 32, 3) and ep.images.dtype == np.uint8
    np.testing.assert_array_equal(ep.images[:, 0, 5, 7, 0], np.arange(2, 12))  # frame number in red
    assert (ep.images[:, 0, :, :, 1] == 200).all()
    # State: latest joint state at or before the frame (states every 20 ms from t0+150 ms).
    for i, k in enumerate(range(2, 12)):
        t_frame = t0 + k * 100_000_000
        t_js = t0 + 150_000_000 + ((t_frame - t0 - 150_000_000) // 20_000_000) * 20_000_000
        expected = [(t_js - t0) / NS + 0.1 * j for j in range(9)]
        np.testing.assert_allclose(ep.state[i], expected, rtol=0, atol=1e-6)
    # Actions: twist * 0.1 s; gripper reused on tick 3 (no message: keeps tick 2's 0.0).
    g = [1, 1, 0, 0, 1, 1, 1, 0, 0, 0, 0, 0]
    tick = np.array([[0.01 * k, -0.005 * k, 0.001, 0.02, 0.0, -0.01 * k, g[k]] for k in range(12)], np.float32)
    np.testing.assert_allclose(ep.tick_actions, tick, atol=1e-7)
    for i, k in enumerate(range(2, 12)):
        idx = [min(k + h, 11) for h in range(4)]
        np.testing.assert_allclose(ep.actions[i], tick[idx], atol=1e-7)
        np.testing.assert_array_equal(ep.action_is_pad[i], [k + h > 11 for h in range(4)])
    assert ep.action_is_pad[-1].tolist() == [False, True, True, True]
    assert ep.action_start.tolist() == list(range(2, 12))


def test_multi_camera_and_encodings(tmp_path):
    cams = (("front", "/front/image_raw"), ("wrist", "/wrist/image_raw"))
    bag = write_episode(tmp_path / "ep", n_ticks=6, encoding="bgr8", cameras=cams,
                        image_fn=lambda k, cam: default_image(k + 100 * cam, size=64))
    cfg = small_config(cameras=[CameraTopic("front", "/front/image_raw"), CameraTopic("wrist", "/wrist/image_raw")],
                       chunk_size=3, image_size=16)
    ep = load_episode(bag, cfg)
    assert ep.images.shape == (6, 2, 16, 16, 3)
    np.testing.assert_array_equal(ep.images[:, 0, 0, 0], [[k, 200, 7] for k in range(6)])   # bgr8 -> RGB
    np.testing.assert_array_equal(ep.images[:, 1, 0, 0], [[k + 100, 200, 7] for k in range(6)])
    mono = load_episode(write_episode(tmp_path / "mono", n_ticks=3, encoding="mono8"), small_config(image_size=16))
    np.testing.assert_array_equal(mono.images[:, 0, 3, 3], [[k, k, k] for k in range(3)])


def test_frames_between_ticks_use_next_tick(tmp_path):
    """A 5 ms late frame: with tolerance it takes the tick 5 ms before; without, the next tick."""
    t0 = 100 * NS
    bag = write_episode(tmp_path / "ep", n_ticks=5, twist_fn=lambda k: (k, 0, 0, 0, 0, 0))
    # Rewrite the camera stamps 5 ms later by writing a second bag with shifted frames only.
    late = tmp_path / "late"
    from vla_ros.data.bags import read_bag
    with BagWriter(late) as w:
        for topic, info in BagReader(bag).topics.items():
            w.add_topic(topic, info.msgtype)
        for m in read_bag(bag):
            data = m.data
            if m.topic == "/front/image_raw":
                img = _STORE.deserialize_cdr(m.data, m.msgtype)
                ns = img.header.stamp.sec * NS + img.header.stamp.nanosec + 5_000_000
                img.header.stamp = _time(ns)
                data = _cdr(img)
            w.write(m.topic, m.timestamp, data)
    ep = load_episode(late, small_config(chunk_size=1))
    assert ep.action_start.tolist() == [0, 1, 2, 3, 4]
    ep = load_episode(late, small_config(chunk_size=1, tick_tolerance=0.001))
    assert ep.action_start.tolist() == [1, 2, 3, 4]   # the last frame has no later tick: dropped
    np.testing.assert_allclose(ep.actions[:, 0, 0], [0.1, 0.2, 0.3, 0.4], atol=1e-6)
    assert ep.frame_stamps[0] == t0 + 5_000_000


# --------------------------------------------------------------------------- errors
def test_missing_topic_no_instruction_and_corrupt_bag(tmp_path):
    cfg = small_config()
    bag = write_episode(tmp_path / "no_twist", skip_topics=("/expert/twist",), n_ticks=4)
    with pytest.raises(DatasetError, match=r"no_twist: missing topic /expert/twist \(ee_delta action\)"):
        load_episode(bag, cfg)
    bag = write_episode(tmp_path / "no_instr", instruction=None, n_ticks=4)
    with pytest.raises(DatasetError, match="no_instr: no instruction"):
        load_episode(bag, cfg)
    assert load_episode(bag, small_config(default_instruction="do it")).instruction == "do it"
    bag = write_episode(tmp_path / "corrupt", n_ticks=4)
    mcap = next(bag.glob("*.mcap"))
    mcap.write_bytes(mcap.read_bytes()[: 300])
    with pytest.raises(DatasetError, match="corrupt: unreadable"):
        load_episode(bag, cfg)
    not_a_bag = tmp_path / "plain"
    not_a_bag.mkdir()
    with pytest.raises(DatasetError, match="neither a bag directory"):
        find_bags(not_a_bag)
    bag = write_episode(tmp_path / "sq_corrupt", storage="sqlite3", n_ticks=4)
    db = next(bag.glob("*.db3"))
    db.write_bytes(b"garbage" * 100)
    with pytest.raises(DatasetError, match="sq_corrupt: unreadable"):
        load_episode(bag, cfg)


def test_find_bags_expands_quoted_patterns_and_refuses_one_that_matches_nothing(tmp_path):
    for name in ("episode_000", "episode_001", "episode_010", "other_000"):
        write_episode(tmp_path / "bags" / name, n_ticks=2)
    found = find_bags([str(tmp_path / "bags" / "episode_00*"), tmp_path / "bags" / "other_000"])
    assert [p.name for p in found] == ["episode_000", "episode_001", "other_000"]
    assert [p.name for p in find_bags(str(tmp_path / "bags" / "episode_0[01]0"))] == ["episode_000", "episode_010"]
    with pytest.raises(DatasetError, match=r"data pattern .*/bags/nothing_\* matches nothing"):
        find_bags(str(tmp_path / "bags" / "nothing_*"))


def test_many_bags_skip_bad_unsuccessful_and_zero_usable(tmp_path, caplog):
    root = tmp_path / "bags"
    write_episode(root / "ep_a", n_ticks=4)
    write_episode(root / "ep_b", n_ticks=4, skip_topics=("/front/image_raw",))
    write_episode(root / "ep_c", n_ticks=4, success=False)
    (root / "not_a_bag").mkdir()
    with caplog.at_level(logging.WARNING, logger="vla_ros.data.episodes"):
        eps = load_episodes(root, small_config())
    assert [e.name for e in eps] == ["ep_a"]
    assert any("ep_b: missing topic /front/image_raw (camera 'front')" in r.getMessage() for r in caplog.records)
    assert len(load_episodes(root, small_config(only_successful=False))) == 2
    with pytest.raises(DatasetError, match="ep_b: missing topic"):
        load_episodes(root, small_config(skip_bad_bags=False))
    with pytest.raises(DatasetError,
                       match=r"no usable episodes.*ep_b: missing topic.*1 episode\(s\) were unsuccessful"):
        load_episodes([root / "ep_b", root / "ep_c"], small_config())


# --------------------------------------------------------------------------- cache
def test_cache_hit_identical_and_skips_bag_reading(tmp_path, monkeypatch):
    bag = write_episode(tmp_path / "bags" / "ep", n_ticks=8, storage="sqlite3")
    cache = tmp_path / "cache"
    cfg = small_config()
    first = load_episodes(tmp_path / "bags", cfg, cache_dir=cache)[0]
    files = list(cache.glob("*.npz"))
    assert len(files) == 1 and files[0].name.startswith("ep-")

    def no_reading(*a, **k):
        raise AssertionError("the bag was read despite a cache hit")
    monkeypatch.setattr(episode_messages, "BagReader", no_reading)
    second = load_episodes(tmp_path / "bags", cfg, cache_dir=cache)[0]
    for name in Episode._ARRAYS:
        a, b = getattr(first, name), getattr(second, name)
        assert a.dtype == b.dtype and a.shape == b.shape
        np.testing.assert_array_equal(a, b)
    assert (second.instruction, second.success, second.path) == (first.instruction, first.success, first.path)
    # Filtering flags do not change the key; config fields and the bag's files do.
    assert cache_key(bag, cfg) == cache_key(bag, small_config(only_successful=False))
    assert cache_key(bag, cfg) != cache_key(bag, small_config(chunk_size=5))
    monkeypatch.undo()
    key = cache_key(bag, cfg)
    (bag / "extra.txt").write_text("x")
    assert cache_key(bag, cfg) != key


# --------------------------------------------------------------------------- split + batches
def _blank_episode(path: str, frames: int, **names) -> Episode:
    """An episode of zeros: 1 camera of 4x4 px, 2 state values, chunks of 2 actions of 3 values."""
    return Episode(path=path, instruction="x", success=True, images=np.zeros((frames, 1, 4, 4, 3), np.uint8),
                   state=np.zeros((frames, 2), np.float32), actions=np.zeros((frames, 2, 3), np.float32),
                   action_is_pad=np.zeros((frames, 2), bool), frame_stamps=np.arange(frames),
                   action_start=np.arange(frames), tick_stamps=np.arange(frames),
                   tick_actions=np.zeros((frames, 3), np.float32), **names)


def test_episodes_fit_a_model_only_with_its_names_and_sizes():
    names = dict(camera_names=["front"], state_names=["j1", "j2"], action_names=["x", "y", "gripper"])
    eps = [_blank_episode("/bags/a", 3, **names), _blank_episode("/bags/b", 4, **names)]
    model = dict(action_names=["x", "y", "gripper"], camera_names=["front"], state_names=["j1", "j2"],
                 chunk_size=2, image_size=4)
    check_episodes_fit(eps, **model)
    check_episodes_fit(eps, **dict(model, state_names=None))
    with pytest.raises(DatasetError, match=r"/bags/a has state_names \['j1', 'j2'\], the ckpt expects \['j1'\]"):
        check_episodes_fit(eps, **dict(model, state_names=["j1"]), what="the ckpt")
    with pytest.raises(DatasetError, match="camera_names"):
        check_episodes_fit(eps, **dict(model, camera_names=["wrist"]))
    with pytest.raises(DatasetError, match="chunks of 2 and images of 4 px, the model expects 3 and 4"):
        check_episodes_fit(eps, **dict(model, chunk_size=3))


def test_split_by_episode_seeded(tmp_path):
    eps = [_blank_episode(f"/bags/ep{i:02d}", 3 + i) for i in range(10)]
    train, val = split_episodes(eps, 0.3, seed=1)
    assert len(val) == 3 and len(train) == 7
    assert not {e.path for e in train} & {e.path for e in val}
    assert {e.path for e in train} | {e.path for e in val} == {e.path for e in eps}
    train2, val2 = split_episodes(list(reversed(eps)), 0.3, seed=1)
    assert [e.path for e in val2] == [e.path for e in val]
    _, val3 = split_episodes(eps, 0.3, seed=2)
    assert [e.path for e in val3] != [e.path for e in val]
    assert len(split_episodes(eps[:2], 0.1, 0)[1]) == 1
    assert split_episodes(eps[:1], 0.5, 0)[1] == []
    # Frames of a validation episode never appear in the training dataset.
    assert len(EpisodeDataset(train)) == sum(e.num_frames for e in train)


def test_dataset_batches_for_policy_loss(tmp_path):
    from vla_ros.model import RobotInterface, build_policy, load_preset
    root = tmp_path / "bags"
    write_episode(root / "a", n_ticks=6, storage="mcap")
    write_episode(root / "b", n_ticks=5, storage="sqlite3", instruction="open the drawer")
    cfg = small_config()
    data = EpisodeDataset(load_episodes(root, cfg))
    assert len(data) == 11
    batch = data.batch([0, 10, 3])
    assert batch["images"].shape == (3, 1, 3, 32, 32) and batch["images"].dtype == torch.float32
    assert float(batch["images"].max()) <= 1.0 and abs(float(batch["images"][0, 0, 1, 0, 0]) - 200 / 255) < 1e-6
    assert batch["instructions"] == ["pick up the red cube", "open the drawer", "pick up the red cube"]
    assert batch["state"].shape == (3, 9) and batch["actions"].shape == (3, 4, 7)
    assert batch["action_is_pad"].dtype == torch.bool
    assert batch["action_is_pad"][1].tolist() == [False, True, True, True]
    sample = data[10]
    assert sample["images"].shape == (1, 3, 32, 32) and sample["instructions"] == "open the drawer"
    collated = EpisodeDataset.collate([data[0], data[10], data[3]])
    for k in ("images", "state", "actions", "action_is_pad"):
        assert torch.equal(collated[k], batch[k])
    stats = data.stats()
    non_pad = np.concatenate([e.actions[~e.action_is_pad] for e in data.episodes])
    assert stats["action"].count == len(non_pad) and stats["state"].count == 11
    np.testing.assert_allclose(stats["action"].max, non_pad.max(0), rtol=1e-6)
    robot = RobotInterface(action_names=cfg.action_names, camera_names=cfg.camera_names, state_names=cfg.state_names)
    policy = build_policy(load_preset("tiny", chunk_size=4, image_size=32), robot)
    policy.set_normalization_stats(stats)
    loss, _ = policy.loss(batch)
    loss.backward()
    assert torch.isfinite(loss)


def test_config_roundtrip(tmp_path):
    cfg = small_config(cameras=[CameraTopic("front", "/f"), CameraTopic("wrist", "/w")], success_topic="")
    cfg.save(tmp_path / "d.json")
    back = DatasetConfig.load(tmp_path / "d.json")
    assert back == cfg and back.camera_names == ["front", "wrist"]
    with pytest.raises(DatasetError, match="unknown DatasetConfig key"):
        DatasetConfig.from_dict({"camera": []})
    with pytest.raises(DatasetError, match="unknown action source kind"):
        DatasetConfig(action={"kind": "joint_velocity"})
    no_grip = DatasetConfig(action={"gripper_topic": ""})
    assert no_grip.action_names == ["x", "y", "z", "roll", "pitch", "yaw"]
