"""int8 dynamic quantization and knowledge distillation."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from model_fixtures import ROBOT, batch_stats, make_batch, make_tiny_bert, one_thread, seed_all, tiny_config  # noqa: F401
from vla_ros.model import build_policy, save_policy
from vla_ros.model.compression import Int8WeightOnlyLinear, compare_outputs, distill, quantize_dynamic_int8

pytestmark = pytest.mark.usefixtures("one_thread")


def _trained(cfg, batch, steps=40, seed=0):
    seed_all(seed)
    policy = build_policy(cfg, ROBOT)
    policy.set_normalization_stats(batch_stats(batch))
    opt = torch.optim.AdamW(policy.parameters(), lr=3e-3)
    for _ in range(steps):
        loss, _ = policy.loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return policy.eval()


@pytest.mark.parametrize("backend", ["auto", "weight_only"])
@pytest.mark.parametrize("fusion,head", [("prefix", "flow"), ("film", "continuous"), ("cross_attention", "discrete")])
def test_int8_quantized_policy_runs_close_to_fp32(backend, fusion, head, tmp_path):
    cfg = tiny_config(fusion=fusion, action_head=head, d_model=64, num_heads=4)
    batch = make_batch(cfg, batch_size=4)
    policy = _trained(cfg, batch)
    q = quantize_dynamic_int8(policy, backend=backend)
    assert q is not policy and not any(isinstance(m, nn.Linear) for m in q.modules())
    assert any(isinstance(m, nn.Linear) for m in policy.modules())  # the original is untouched
    if backend == "weight_only":
        assert q.quantization == "int8_weight_only"
        assert any(isinstance(m, Int8WeightOnlyLinear) for m in q.modules())
    diff = compare_outputs(policy, q, [batch], seed=0)
    # Robot-unit ranges: x spans 0.8, y spans 2.0. Measured errors are ~1e-3; bound loosely.
    assert diff["max_abs_diff"] < 0.15, diff
    assert diff["mean_abs_diff"] < 0.03, diff
    with pytest.raises(ValueError, match="cannot save a quantized policy"):
        save_policy(q, tmp_path / "q")
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("backend", ["auto", "weight_only"])
def test_frozen_text_backbone_stays_float_unless_asked(tmp_path, backend):
    """Its output is cached per instruction: int8 would cost accuracy and save no time."""
    pytest.importorskip("transformers")
    make_tiny_bert(tmp_path)
    cfg = tiny_config(language_encoder="pretrained", language_model_path=str(tmp_path))
    policy = build_policy(cfg, ROBOT).eval()
    q = quantize_dynamic_int8(policy, backend=backend)
    assert any(isinstance(m, nn.Linear) for m in q.language.backbone.modules())
    assert not any(isinstance(m, nn.Linear) for part in (q.vision, q.fusion, q.head) for m in part.modules())
    assert not isinstance(q.language.proj, nn.Linear) and not isinstance(q.language.pool_proj, nn.Linear)
    q_all = quantize_dynamic_int8(policy, backend=backend, quantize_text_encoder=True)
    assert not any(isinstance(m, nn.Linear) for m in q_all.modules())
    batch = make_batch(cfg)
    assert compare_outputs(policy, q_all, [batch])["max_abs_diff"] < 0.5


def test_weight_only_linear_matches_float_linear():
    torch.manual_seed(0)
    lin = nn.Linear(64, 32)
    q = Int8WeightOnlyLinear(lin)
    x = torch.randn(8, 64)
    assert q.weight_int8.dtype == torch.int8
    torch.testing.assert_close(q(x), lin(x), atol=2e-2, rtol=0)


@pytest.mark.parametrize(
    "teacher_head,student_head",
    [("discrete", "discrete"), ("flow", "continuous"), ("continuous", "flow"), ("continuous", "discrete")],
)
def test_distill_large_into_small(teacher_head, student_head):
    t_cfg = tiny_config(action_head=teacher_head, d_model=64, num_heads=4, fusion="prefix", fusion_depth=2)
    s_cfg = tiny_config(action_head=student_head, d_model=16, num_heads=2, fusion="film", image_size=24)
    batch = make_batch(t_cfg, batch_size=4)
    teacher = _trained(t_cfg, batch, steps=60)
    seed_all(1)
    student = build_policy(s_cfg, ROBOT)
    metrics = distill(teacher, student, [batch], steps=60, temperature=2.0, lr=3e-3)
    assert metrics["steps"] == 60
    if teacher_head == student_head == "discrete":
        assert metrics["mode"] == "kl"  # temperature-scaled KL between token distributions
    assert metrics["distill_loss_last"] < metrics["distill_loss_first"]
    assert metrics["student_params"] < metrics["teacher_params"] and metrics["compression_ratio"] > 1
    for k in ("teacher_l1", "student_l1", "accuracy_cost_l1", "student_teacher_mean_abs_diff"):
        assert torch.isfinite(torch.tensor(metrics[k])), k
    assert metrics["accuracy_cost_l1"] == pytest.approx(metrics["student_l1"] - metrics["teacher_l1"])
    # The student adopted the teacher's normalization statistics.
    assert student.normalization_stats == teacher.normalization_stats


def test_distill_rejects_incompatible_pairs():
    teacher = build_policy(tiny_config(), ROBOT)
    with pytest.raises(ValueError, match="differ in chunk_size"):
        distill(teacher, build_policy(tiny_config(chunk_size=5), ROBOT), [make_batch(tiny_config())], steps=1)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        distill(teacher, build_policy(tiny_config(), ROBOT), [make_batch(tiny_config())], steps=1, temperature=0)
    with pytest.raises(ValueError, match="min_lr_ratio must be in"):
        distill(teacher, build_policy(tiny_config(), ROBOT), [make_batch(tiny_config())], steps=1, min_lr_ratio=0)


@pytest.mark.parametrize("teacher_head,passes_per_step", [("continuous", False), ("flow", True)])
def test_distill_runs_a_deterministic_teacher_once_per_batch_and_shifts_only_student_images(
        teacher_head, passes_per_step):
    t_cfg = tiny_config(action_head=teacher_head, d_model=32, num_heads=2)
    batches = [make_batch(t_cfg, batch_size=4, seed=s) for s in range(3)]
    teacher = _trained(t_cfg, batches[0], steps=5)
    seen: list[int] = []
    encode = teacher.encode

    def counting_encode(images, instructions, state):  # the real forward, counted
        seen.append(images.shape[0])
        return encode(images, instructions, state)

    teacher.encode = counting_encode
    shifted: list[torch.Tensor] = []

    def augment(images, generator):
        out = torch.roll(images, shifts=int(torch.randint(1, 3, (1,), generator=generator)), dims=-1)
        shifted.append(out)
        return out

    seed_all(1)
    student = build_policy(tiny_config(action_head="continuous", d_model=16, num_heads=2), ROBOT)
    metrics = distill(teacher, student, batches, steps=7, augment=augment, lr=1e-3, min_lr_ratio=0.1)
    # A continuous teacher's labels are fixed: computed once per batch; a flow teacher samples anew.
    assert metrics["teacher_passes"] == (7 if passes_per_step else 3)
    assert len(seen) >= metrics["teacher_passes"]  # then the accuracy metrics call it too
    # The student's images (and only those) went through the augmentation, once per step.
    assert len(shifted) == 7 and all(x.shape == batches[0]["images"].shape for x in shifted)
    # The learning rate decayed along its cosine to lr * min_lr_ratio at the last step.
    assert metrics["lr_last"] == pytest.approx(1e-4)


def test_distill_counts_a_frozen_text_backbone_apart_and_encodes_each_instruction_once(tmp_path):
    pytest.importorskip("transformers")
    make_tiny_bert(tmp_path)
    cfg = tiny_config(language_encoder="pretrained", language_model_path=str(tmp_path), action_head="continuous",
                      d_model=32, num_heads=2)
    batches = [make_batch(cfg, batch_size=4, seed=s) for s in range(2)]
    teacher = _trained(cfg, batches[0], steps=3)
    seed_all(1)
    student = build_policy(cfg.replace(d_model=16), ROBOT)
    backbone = sum(p.numel() for p in student.language.backbone.parameters())
    teacher.language.clear_cache()
    teacher.language.num_encoder_calls = 0
    metrics = distill(teacher, student, batches, steps=4)
    assert metrics["student_frozen_params"] == backbone == metrics["teacher_frozen_params"]
    assert metrics["student_params"] == student.num_parameters() - backbone
    assert metrics["compression_ratio"] == pytest.approx(metrics["teacher_params"] / metrics["student_params"])
    assert metrics["compression_ratio"] > 1.5
    # Both encoders encoded the batches' instructions once, before the loop, not per step.
    distinct = {s for b in batches for s in b["instructions"]}
    assert teacher.language.num_encoder_calls == student.language.num_encoder_calls == -(-len(distinct) // 256)
