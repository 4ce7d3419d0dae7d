"""LeRobotDataset v3.0 both ways: collected sim bags -> `vla-ros export --format lerobot` -> read back
(vla_ros.data.lerobot_reader) gives the samples the bag path gives; the files follow LeRobot's v3.0
layout (field names and types as LeRobot's own writer makes them)."""
from __future__ import annotations

import json
from pathlib import Path

import av
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from vla_ros.cli import main as vla_ros_main
from vla_ros.data import lerobot as lr
from vla_ros.data.collect import CollectConfig, collect
from vla_ros.data.episodes import load_episodes
from vla_ros.data.errors import DatasetError
from vla_ros.data.lerobot_writer import export_lerobot
from test_data_dataset import write_episode

FPS = 10
STATS = ["min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"]
# Codec tolerance on the images read back (0..255). AV1 at LeRobot's crf 30 with 4:2:0 chroma (one
# colour sample per 2 x 2 pixels) blurs the colour at the objects' edges: on these 64 x 64 scenes the
# mean absolute error was 3.2, the 99th percentile 27 (the largest errors are edge pixels).
IMAGE_MEAN_ABS_TOL = 4.0
IMAGE_P99_ABS_TOL = 32


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    out = tmp_path_factory.mktemp("bags")
    collect(CollectConfig(str(out), episodes=3, families=("touch", "push", "pick"), seed=2100, workers=1,
                          image_size=64), log=lambda *_: None)
    return out


@pytest.fixture(scope="module")
def exported(bags, tmp_path_factory):
    out = tmp_path_factory.mktemp("lerobot") / "ds"
    lines: list[str] = []
    summary = export_lerobot([bags], out, progress=False, log_line=lines.append)
    return out, summary, lines


def _config(**kw):
    return lr.load_mapping("sim_panda").dataset_config(**kw)


def test_round_trip_gives_the_bag_paths_samples(bags, exported):
    out, summary, lines = exported
    assert summary.episodes == 3 and not summary.not_one_to_one and len(lines) == 1
    config = _config(image_size=64, chunk_size=8)
    from_bags = load_episodes([bags], config)
    from_lerobot = load_episodes([out], config)
    assert len(from_bags) == len(from_lerobot) == 3
    errors = []
    for b, r in zip(from_bags, from_lerobot):
        assert r.instruction == b.instruction and r.success
        assert (r.camera_names, r.state_names, r.action_names) == (b.camera_names, b.state_names, b.action_names)
        assert r.state.dtype == b.state.dtype == np.float32
        np.testing.assert_array_equal(r.state, b.state)
        np.testing.assert_array_equal(r.actions, b.actions)
        np.testing.assert_array_equal(r.action_is_pad, b.action_is_pad)
        np.testing.assert_allclose(r.frame_stamps, b.frame_stamps - b.frame_stamps[0], atol=100_000)  # ns
        assert r.images.shape == b.images.shape and r.images.dtype == np.uint8
        errors.append(np.abs(r.images.astype(int) - b.images.astype(int)).ravel())
    err = np.concatenate(errors)
    assert err.mean() < IMAGE_MEAN_ABS_TOL and np.percentile(err, 99) <= IMAGE_P99_ABS_TOL, \
        (err.mean(), np.percentile(err, 99), err.max())


def _coded(episode: int, frame: int, size: int = 96) -> np.ndarray:
    """A uniform frame whose red says the frame and green the episode, 20 levels apart: AV1 at crf 30
    moved flat colours by up to 7 levels in predicted frames, so identities survive the codec."""
    img = np.zeros((size, size, 3), np.uint8)
    img[..., 0], img[..., 1], img[..., 2] = 20 * frame + 10, 60 * episode + 20, 128
    return img


def test_every_frame_read_back_is_the_recorded_frame_of_its_episode(tmp_path):
    bags = tmp_path / "bags"
    lengths = (12, 7, 11)
    for e, n in enumerate(lengths):
        write_episode(bags / f"episode_{e:06d}", n_ticks=n, t0_ns=(100 + 50 * e) * 10**9,
                      instruction=f"task {e % 2}", image_fn=lambda k, cam, e=e: _coded(e, k))
    export_lerobot([bags], tmp_path / "ds", progress=False, log_line=lambda *_: None)
    config = _config(image_size=96, chunk_size=4)
    from_bags, from_lerobot = load_episodes([bags], config), load_episodes([tmp_path / "ds"], config)
    assert [e.num_frames for e in from_lerobot] == list(lengths)
    assert [e.instruction for e in from_lerobot] == ["task 0", "task 1", "task 0"]
    for e, (b, r) in enumerate(zip(from_bags, from_lerobot)):
        red = r.images[:, 0, ..., 0].reshape(len(r.images), -1).mean(1)
        green = r.images[:, 0, ..., 1].reshape(len(r.images), -1).mean(1)
        np.testing.assert_allclose(red, 20 * np.arange(len(red)) + 10, atol=9)
        np.testing.assert_allclose(green, 60 * e + 20, atol=9)
        np.testing.assert_array_equal(r.actions, b.actions)
        np.testing.assert_array_equal(r.action_is_pad, b.action_is_pad)
        np.testing.assert_array_equal(r.state, b.state)


def test_export_names_episodes_whose_frames_and_control_ticks_are_not_one_to_one(tmp_path):
    bags = tmp_path / "bags"
    write_episode(bags / "episode_000000", n_ticks=10)
    # the camera at twice the control rate: a twist at every other frame only
    write_episode(bags / "episode_000001", n_ticks=20, period=0.05, skip_twist_ticks=range(1, 20, 2))
    lines: list[str] = []
    summary = export_lerobot([bags], tmp_path / "ds", progress=False, log_line=lines.append)
    assert summary.episodes == 2 and summary.not_one_to_one == [str(bags / "episode_000001")]
    assert lines[0].startswith("warning: in 1 episode(s) camera frames and control ticks are not one to one")
    assert str(bags / "episode_000001") in lines[0]


def test_info_json_has_lerobot_v3_fields_and_types(exported):
    out, summary, _ = exported
    info = json.loads((out / "meta/info.json").read_text())
    assert list(info) == ["codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks",
                          "chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits",
                          "data_path", "video_path", "features"]
    assert info["codebase_version"] == "v3.0" and info["robot_type"] == "panda"
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, summary.frames, 3)
    assert (info["chunks_size"], info["data_files_size_in_mb"], info["video_files_size_in_mb"]) == (1000, 100, 200)
    assert info["fps"] == FPS and isinstance(info["fps"], int) and info["splits"] == {"train": "0:3"}
    # LeRobot's DEFAULT_DATA_PATH and DEFAULT_VIDEO_PATH
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    assert info["video_path"] == "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4"
    f = info["features"]
    assert list(f) == ["observation.images.front", "observation.state", "action", "timestamp", "frame_index",
                       "episode_index", "index", "task_index"]
    assert f["observation.images.front"] == {
        "dtype": "video", "shape": [64, 64, 3], "names": ["height", "width", "channels"],
        "info": {"video.height": 64, "video.width": 64, "video.codec": "av1", "video.pix_fmt": "yuv420p",
                 "video.is_depth_map": False, "video.fps": FPS, "video.channels": 3, "has_audio": False}}
    assert f["observation.state"] == {"dtype": "float32", "shape": [9], "names": _config().state_names}
    assert f["action"] == {"dtype": "float32", "shape": [7],
                           "names": ["x", "y", "z", "roll", "pitch", "yaw", "gripper"]}
    for name, dtype in (("timestamp", "float32"), ("frame_index", "int64"), ("episode_index", "int64"),
                        ("index", "int64"), ("task_index", "int64")):
        assert f[name] == {"dtype": dtype, "shape": [1], "names": None}


def test_parquet_files_have_lerobot_v3_columns_and_types(exported):
    out, summary, _ = exported
    data = pq.read_table(out / "data/chunk-000/file-000.parquet")
    assert data.schema.names == ["observation.state", "action", "timestamp", "frame_index", "episode_index",
                                 "index", "task_index"]
    assert data.schema.field("observation.state").type == pa.list_(pa.float32(), 9)
    assert data.schema.field("action").type == pa.list_(pa.float32(), 7)
    assert data.schema.field("timestamp").type == pa.float32()
    for c in ("frame_index", "episode_index", "index", "task_index"):
        assert data.schema.field(c).type == pa.int64()
    assert data.column("index").to_pylist() == list(range(summary.frames))
    frame_index = np.array(data.column("frame_index").to_pylist())
    np.testing.assert_allclose(data.column("timestamp").to_numpy(), frame_index / FPS, atol=1e-6)

    eps = pq.read_table(out / "meta/episodes/chunk-000/file-000.parquet")
    video = "videos/observation.images.front"
    expected = {"episode_index": pa.int64(), "tasks": pa.list_(pa.string()), "length": pa.int64(),
                "data/chunk_index": pa.int64(), "data/file_index": pa.int64(), "dataset_from_index": pa.int64(),
                "dataset_to_index": pa.int64(), f"{video}/chunk_index": pa.int64(), f"{video}/file_index": pa.int64(),
                f"{video}/from_timestamp": pa.float64(), f"{video}/to_timestamp": pa.float64(),
                "meta/episodes/chunk_index": pa.int64(), "meta/episodes/file_index": pa.int64()}
    for name, t in expected.items():
        assert eps.schema.field(name).type == t, name
    features = json.loads((out / "meta/info.json").read_text())["features"]
    stat_columns = {f"stats/{k}/{s}" for k in features for s in STATS}
    assert set(eps.schema.names) == set(expected) | stat_columns
    rows = eps.to_pylist()
    assert [r["dataset_to_index"] - r["dataset_from_index"] for r in rows] == [r["length"] for r in rows]
    assert rows[-1]["dataset_to_index"] == summary.frames
    assert rows[1][f"{video}/from_timestamp"] == pytest.approx(rows[0][f"{video}/to_timestamp"])

    tasks = pq.read_table(out / "meta/tasks.parquet")
    index = "__index_level_0__"  # pandas' unnamed index: LeRobot's tasks DataFrame is indexed by the task
    assert tasks.schema.field("task_index").type == pa.int64() and tasks.schema.field(index).type == pa.string()
    assert json.loads(tasks.schema.metadata[b"pandas"])["index_columns"] == [index]
    assert sorted(tasks.column("task_index").to_pylist()) == [0, 1, 2]
    assert sorted(tasks.column(index).to_pylist()) == sorted(r["tasks"][0] for r in rows)
    assert eps.schema.field("stats/frame_index/max").type == pa.list_(pa.int64())  # integer min/max stay integers
    assert eps.schema.field("stats/observation.state/max").type == pa.list_(pa.float64())
    hf = json.loads(data.schema.metadata[b"huggingface"])["info"]["features"]
    assert hf["action"] == {"feature": {"dtype": "float32", "_type": "Value"}, "length": 7, "_type": "List"}
    assert hf["index"] == {"dtype": "int64", "_type": "Value"}


def test_stats_and_video_match_the_frames(exported):
    out, summary, _ = exported
    stats = json.loads((out / "meta/stats.json").read_text())
    data = pq.read_table(out / "data/chunk-000/file-000.parquet")
    state = np.array(data.column("observation.state").to_pylist())
    assert set(stats) == set(json.loads((out / "meta/info.json").read_text())["features"])
    for k, s in stats.items():
        assert list(s) == STATS, k
    np.testing.assert_allclose(stats["observation.state"]["min"], state.min(0), rtol=1e-6)
    np.testing.assert_allclose(stats["observation.state"]["q50"], np.quantile(state, 0.5, axis=0), rtol=1e-6)
    assert stats["observation.state"]["count"] == [summary.frames]
    assert np.array(stats["observation.images.front"]["mean"]).shape == (3, 1, 1)
    with av.open(str(out / "videos/observation.images.front/chunk-000/file-000.mp4")) as c:
        assert c.streams.video[0].codec_context.name in ("libdav1d", "av1")
        times = [float(f.pts * f.time_base) for f in c.decode(video=0)]
    np.testing.assert_allclose(times, np.arange(summary.frames) / FPS, atol=1e-4)


def test_missing_or_broken_info_json_is_one_clear_error(exported, tmp_path, capsys):
    out, _, _ = exported
    broken = tmp_path / "broken"
    (broken / "meta").mkdir(parents=True)
    with pytest.raises(DatasetError, match=r"meta/info.json: missing"):
        load_episodes([broken], _config())
    (broken / "meta/info.json").write_text("{not json")
    with pytest.raises(DatasetError, match=r"meta/info.json: invalid JSON"):
        load_episodes([broken], _config())
    old = tmp_path / "old"
    (old / "meta").mkdir(parents=True)
    info = json.loads((out / "meta/info.json").read_text())
    (old / "meta/info.json").write_text(json.dumps({**info, "codebase_version": "v2.1"}))
    with pytest.raises(DatasetError, match=r"codebase_version 'v2.1'"):
        load_episodes([old], _config())
    assert vla_ros_main(["train", "--data", str(broken), "--out", str(tmp_path / "run"), "--no-progress"]) == 1
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 1 and "meta/info.json: invalid JSON" in printed[0]


def test_features_the_mapping_does_not_name_are_refused(exported):
    out, _, _ = exported
    with pytest.raises(DatasetError, match=r"no feature observation.images.wrist"):
        load_episodes([out], _config(cameras=[{"name": "wrist", "topic": "/wrist/image_raw"}]))
    with pytest.raises(DatasetError, match=r"observation.state names"):
        load_episodes([out], _config(state_joint_names=[f"j{i}" for i in range(9)]))


def test_export_refuses_a_non_empty_output_and_a_bad_mapping(bags, tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(DatasetError, match="exists and is not empty"):
        export_lerobot([bags], tmp_path / "full", progress=False)
    assert vla_ros_main(["export", "--format", "lerobot", "--data", str(bags), "--out", str(tmp_path / "full")]) == 1
    printed = capsys.readouterr().err.strip().splitlines()
    assert len(printed) == 1 and printed[0].startswith("vla-ros export: error:") and "not empty" in printed[0]
    bad = tmp_path / "bad.yaml"
    bad.write_text(Path(lr.mapping_path("sim_panda")).read_text().replace("gop: 2", "gop: 2\n  bitrate: 5"))
    with pytest.raises(DatasetError, match=r"bad.yaml: unknown video key\(s\) \['bitrate'\]"):
        lr.load_mapping(str(bad))


def test_training_from_the_lerobot_dataset_sees_the_bags_actions_and_states(bags, exported, tmp_path):
    from vla_ros.model import load_policy
    from vla_ros.training import TrainConfig, train

    out, _, _ = exported
    config = _config(image_size=32, chunk_size=4)
    cfg = TrainConfig(steps=2, batch_size=4, val_fraction=0.34, val_every=2, checkpoint_every=2, seed=0,
                      threads=1, progress=False)
    runs = {name: train([data], tmp_path / name, "tiny", config, cfg)
            for name, data in (("bags", bags), ("lerobot", out))}
    assert runs["bags"].num_train_episodes == runs["lerobot"].num_train_episodes == 2
    policies = {name: load_policy(tmp_path / name / "last") for name in runs}
    assert policies["bags"].normalization_stats == policies["lerobot"].normalization_stats
    assert policies["bags"].interface == policies["lerobot"].interface
