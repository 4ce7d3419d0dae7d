"""`vla-ros distill`: a student built from a smaller config learns to imitate a trained teacher
checkpoint on episode bags, and is saved as a loadable checkpoint with its metrics."""
from __future__ import annotations

import json

import torch

from test_training import learnable_bags
from vla_ros.cli import main as cli_main
from vla_ros.model import load_policy

torch.set_num_threads(1)


def test_cli_distill_writes_a_smaller_student_that_imitates_the_teacher(tmp_path, capsys):
    bags = learnable_bags(tmp_path / "bags", n=3)
    data = ["--data", str(bags), "--cache-dir", str(tmp_path / "cache")]
    assert cli_main(["train", "--out", str(tmp_path / "teacher"), "--steps", "3", "--batch-size", "4",
                     "--image-size", "32", "--chunk-size", "4", "--threads", "1", "--val-fraction", "0",
                     "--no-progress", *data]) == 0
    student_cfg = tmp_path / "student.json"
    student_cfg.write_text(json.dumps({"fusion": "film", "action_head": "continuous", "d_model": 32, "num_heads": 2,
                                       "cnn_channels": [8, 16], "text_depth": 1, "fusion_depth": 1,
                                       "unnormalized_names": ["gripper"]}))
    teacher = tmp_path / "teacher" / "last"
    rc = cli_main(["distill", "--teacher", str(teacher), "--student", str(student_cfg), "--out",
                   str(tmp_path / "student"), "--steps", "40", "--batch-size", "8", "--num-batches", "1",
                   "--lr", "3e-3", "--threads", "1", *data])
    out = capsys.readouterr().out
    assert rc == 0, out
    metrics = json.loads((tmp_path / "student" / "distill_metrics.json").read_text())
    assert metrics["steps"] == 40 and metrics["student_params"] < metrics["teacher_params"]
    assert metrics["distill_loss_last"] < 0.5 * metrics["distill_loss_first"], metrics
    assert metrics["teacher_ms_per_frame"] > 0 and metrics["student_ms_per_frame"] > 0
    assert metrics["augment_pad"] == 4  # the student trained on shifted frames, as train does
    assert f"{metrics['student_params']} parameters" in out and "fewer than the teacher's" in out
    student, t = load_policy(tmp_path / "student"), load_policy(teacher)
    assert student.interface == t.interface and student.config.d_model == 32
    assert student.normalization_stats["action"].to_dict() == t.normalization_stats["action"].to_dict()
    assert (tmp_path / "student" / "dataset_config.json").is_file()
    assert cli_main(["distill", "--teacher", str(tmp_path / "none"), "--out", str(tmp_path / "s2"), *data]) == 1
    assert "vla-ros distill: error:" in capsys.readouterr().out
    assert cli_main(["distill", "--teacher", str(teacher), "--out", str(tmp_path / "s3"), "--augment-pad", "-1",
                     *data]) == 1
    assert "augment_pad must be >= 0" in capsys.readouterr().out
