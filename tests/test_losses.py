"""DistillationLoss against values computed by hand from the formulas (log-sum-exp written out)."""

import math

import pytest
import torch

from hf_deit.losses import DistillationLoss

CLS = torch.tensor([[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]])
DIST = torch.tensor([[1.0, 1.5, 0.0], [-0.5, 2.0, 0.5]])
TEACHER = torch.tensor([[0.2, 3.0, -1.0], [4.0, 0.0, 1.0]])  # argmax: 1, 0
LABELS = torch.tensor([0, 2])


def log_softmax_by_hand(row: list[float]) -> list[float]:
    log_sum_exp = math.log(sum(math.exp(v) for v in row))
    return [v - log_sum_exp for v in row]


def ce_by_hand(logits: torch.Tensor, targets: list[int], smoothing: float = 0.0) -> float:
    """Mean over rows of -(1 - eps) * log p[target] - eps / C * sum_c log p[c]."""
    total = 0.0
    for row, target in zip(logits.tolist(), targets):
        log_p = log_softmax_by_hand(row)
        total += -(1 - smoothing) * log_p[target] - smoothing / len(row) * sum(log_p)
    return total / len(targets)


def soft_by_hand(student: torch.Tensor, teacher: torch.Tensor, tau: float) -> float:
    """sum over rows and classes of p_t * (log p_t - log p_s) at temperature tau, times tau^2 / (B * C)."""
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        log_s = log_softmax_by_hand([v / tau for v in s_row])
        log_t = log_softmax_by_hand([v / tau for v in t_row])
        total += sum(math.exp(lt) * (lt - ls) for ls, lt in zip(log_s, log_t))
    return total * tau * tau / student.numel()


def test_none_trains_both_heads_on_labels_with_smoothing():
    out = DistillationLoss("none", label_smoothing=0.1)(CLS, DIST, LABELS)
    expected_cls, expected_dist = ce_by_hand(CLS, [0, 2], 0.1), ce_by_hand(DIST, [0, 2], 0.1)
    assert out.cls.item() == pytest.approx(expected_cls, rel=1e-6)
    assert out.distillation.item() == pytest.approx(expected_dist, rel=1e-6)
    assert out.loss.item() == pytest.approx((expected_cls + expected_dist) / 2, rel=1e-6)


def test_none_does_not_need_a_teacher_and_ignores_alpha():
    a = DistillationLoss("none", alpha=0.1)(CLS, DIST, LABELS).loss
    b = DistillationLoss("none", alpha=0.9)(CLS, DIST, LABELS).loss
    assert a.item() == b.item()


def test_hard_uses_teacher_argmax_without_smoothing():
    out = DistillationLoss("hard", alpha=0.5, label_smoothing=0.1)(CLS, DIST, LABELS, TEACHER)
    expected_cls = ce_by_hand(CLS, [0, 2], 0.1)
    expected_dist = ce_by_hand(DIST, [1, 0], 0.0)
    assert out.distillation.item() == pytest.approx(expected_dist, rel=1e-6)
    assert out.loss.item() == pytest.approx(0.5 * expected_cls + 0.5 * expected_dist, rel=1e-6)


@pytest.mark.parametrize("tau", [1.0, 3.0])
def test_soft_is_kl_scaled_by_tau_squared_over_numel(tau):
    out = DistillationLoss("soft", alpha=0.5, tau=tau)(CLS, DIST, LABELS, TEACHER)
    assert out.distillation.item() == pytest.approx(soft_by_hand(DIST, TEACHER, tau), rel=1e-5)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
def test_alpha_weights_the_two_terms(alpha):
    out = DistillationLoss("soft", alpha=alpha, tau=2.0)(CLS, DIST, LABELS, TEACHER)
    expected = (1 - alpha) * ce_by_hand(CLS, [0, 2], 0.1) + alpha * soft_by_hand(DIST, TEACHER, 2.0)
    assert out.loss.item() == pytest.approx(expected, rel=1e-5)


def test_soft_targets_use_soft_cross_entropy_and_are_smoothed_by_the_loss():
    """The loss is the one owner of label smoothing: mixup/cutmix targets arrive unsmoothed and are smoothed here,
    `t * (1 - eps) + eps / num_classes`, as class ids are."""
    targets = torch.tensor([[0.7, 0.3, 0.0], [0.0, 0.0, 1.0]])
    out = DistillationLoss("hard", label_smoothing=0.1)(CLS, DIST, targets, TEACHER)
    expected = 0.0
    for row, target in zip(CLS.tolist(), targets.tolist()):
        smoothed = [t * 0.9 + 0.1 / 3 for t in target]
        expected -= sum(t * lp for t, lp in zip(smoothed, log_softmax_by_hand(row)))
    assert out.cls.item() == pytest.approx(expected / 2, rel=1e-6)
    one_hot = DistillationLoss("hard", label_smoothing=0.1)(CLS, DIST, torch.eye(3)[[0, 2]], TEACHER)
    class_ids = DistillationLoss("hard", label_smoothing=0.1)(CLS, DIST, torch.tensor([0, 2]), TEACHER)
    assert one_hot.cls.item() == pytest.approx(class_ids.cls.item(), rel=1e-6)


def test_bf16_inputs_are_computed_in_float32():
    loss = DistillationLoss("soft", tau=2.0)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = loss(CLS.bfloat16(), DIST.bfloat16(), LABELS, TEACHER.bfloat16())
    assert out.loss.dtype == out.cls.dtype == out.distillation.dtype == torch.float32
    # Only the inputs carry bf16 rounding: the result is float32 arithmetic on the rounded inputs.
    rounded = [t.bfloat16().float() for t in (CLS, DIST, TEACHER)]
    assert out.loss.item() == pytest.approx(loss(rounded[0], rounded[1], LABELS, rounded[2]).loss.item(), rel=1e-6)


def test_gradients_reach_only_the_student():
    cls, dist, teacher = CLS.clone().requires_grad_(), DIST.clone().requires_grad_(), TEACHER.clone()
    DistillationLoss("soft")(cls, dist, LABELS, teacher).loss.backward()
    assert cls.grad.abs().sum() > 0 and dist.grad.abs().sum() > 0


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="distillation_type"):
        DistillationLoss("kl")
    with pytest.raises(ValueError, match="alpha"):
        DistillationLoss("hard", alpha=1.5)
    with pytest.raises(ValueError, match="teacher"):
        DistillationLoss("hard")(CLS, DIST, LABELS)


def test_int32_labels_are_accepted():
    expected = DistillationLoss("hard")(CLS, DIST, LABELS, TEACHER).loss
    assert DistillationLoss("hard")(CLS, DIST, LABELS.int(), TEACHER).loss.item() == expected.item()


# ---- attention-map loss, feature loss, unlabelled examples ----

from hf_deit.terms.attention import attention_map_loss  # noqa: E402
from hf_deit.terms.feature import feature_distillation_loss  # noqa: E402


def test_attention_map_loss_is_zero_for_identical_maps_whatever_their_scale():
    maps = torch.rand(3, 4, 4)
    assert attention_map_loss(maps, maps).item() == 0.0
    assert attention_map_loss(maps, 5 * maps).item() == pytest.approx(0.0, abs=1e-6)  # normalised to distributions
    assert attention_map_loss(maps, maps, "mse").item() == 0.0


def test_attention_map_kl_against_a_hand_computed_value():
    student = torch.tensor([[[1.0, 1.0], [1.0, 1.0]]])  # uniform: 1/4 each
    teacher = torch.tensor([[[3.0, 1.0], [0.0, 0.0]]])  # 3/4, 1/4, 0, 0
    by_hand = 0.75 * math.log(0.75 / 0.25) + 0.25 * math.log(0.25 / 0.25)  # KL(teacher || student)
    assert attention_map_loss(student, teacher).item() == pytest.approx(by_hand, rel=1e-5)
    # MSE over densities (N * p): student 1, 1, 1, 1; teacher 3, 1, 0, 0.
    assert attention_map_loss(student, teacher, "mse").item() == pytest.approx((4 + 0 + 1 + 1) / 4, rel=1e-6)


def test_attention_map_loss_resizes_the_finer_map_onto_the_coarser_grid():
    # A 4x4 teacher map whose mass sits in the top-left quadrant equals a 2x2 student map with all mass top-left.
    teacher = torch.zeros(1, 4, 4)
    teacher[0, :2, :2] = 1.0
    student = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    assert attention_map_loss(student, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert attention_map_loss(teacher, student).item() == pytest.approx(0.0, abs=1e-6)  # either side may be finer
    # Area averaging on a non-divisible grid still compares: a uniform 3x3 map against a uniform 2x2 one.
    assert attention_map_loss(torch.ones(2, 3, 3), torch.ones(2, 2, 2)).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="kl"):
        attention_map_loss(student, student, "l1")


def test_attention_map_loss_gives_the_student_a_gradient_towards_the_teacher():
    student = torch.ones(1, 2, 2, requires_grad=True)
    teacher = torch.tensor([[[3.0, 1.0], [0.0, 0.0]]])
    attention_map_loss(student, teacher).backward()
    # Raising the student's weight where the teacher looks most lowers the loss.
    assert student.grad[0, 0, 0] < 0 and student.grad[0, 1, 1] > 0


def test_feature_loss_by_hand():
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[2.0, 0.0], [-1.0, -1.0]])
    # Cosine: 1 - 1 = 0 for parallel rows, 1 - (-1) = 2 for opposite rows; mean 1.
    assert feature_distillation_loss(a, b, "cosine").item() == pytest.approx(1.0, rel=1e-6)
    assert feature_distillation_loss(a, a, "cosine").item() == pytest.approx(0.0, abs=1e-6)
    assert feature_distillation_loss(a, b, "mse").item() == pytest.approx((1 + 0 + 4 + 4) / 4, rel=1e-6)
    with pytest.raises(ValueError, match="shape"):
        feature_distillation_loss(a, b[:, :1])


def test_unlabelled_rows_learn_the_teachers_label_on_the_cls_head():
    # Row 0 labelled (class 0); row 1 unlabelled: the teacher says class 0 (argmax of [4, 0, 1]).
    labeled = torch.tensor([True, False])
    out = DistillationLoss("hard", label_smoothing=0.1)(CLS, DIST, torch.tensor([0, -1]), TEACHER, labeled)
    expected_cls = ce_by_hand(CLS, [0, 0], 0.1)
    assert out.cls.item() == pytest.approx(expected_cls, rel=1e-6)
    assert out.distillation.item() == pytest.approx(ce_by_hand(DIST, [1, 0], 0.0), rel=1e-6)


def test_pseudo_label_threshold_drops_unconfident_rows_from_the_cls_mean():
    labeled = torch.tensor([True, False])
    teacher_probability = torch.softmax(TEACHER[1], 0).max().item()  # ~0.94 for row 1
    confident = DistillationLoss("hard", pseudo_label_threshold=teacher_probability - 0.01)
    unconfident = DistillationLoss("hard", pseudo_label_threshold=teacher_probability + 0.01)
    assert confident(CLS, DIST, torch.tensor([0, -1]), TEACHER, labeled).cls.item() == pytest.approx(
        ce_by_hand(CLS, [0, 0], 0.1), rel=1e-6
    )
    # Only row 0 contributes: the mean over contributing examples is row 0's loss alone.
    assert unconfident(CLS, DIST, torch.tensor([0, -1]), TEACHER, labeled).cls.item() == pytest.approx(
        ce_by_hand(CLS[:1], [0], 0.1), rel=1e-6
    )
    # No example contributes: zero, not NaN, and still a tensor the graph accepts.
    nothing = unconfident(CLS, DIST, torch.tensor([-1, -1]), TEACHER, torch.tensor([False, False]))
    assert nothing.cls.item() == 0.0 and torch.isfinite(nothing.loss)


def test_unlabelled_soft_target_rows_are_replaced_and_a_teacher_is_required():
    targets = torch.tensor([[0.7, 0.2, 0.1], [0.0, 0.0, 0.0]])  # row 1: a mixed row with an unlabelled partner
    labeled = torch.tensor([True, False])
    out = DistillationLoss("soft", label_smoothing=0.0)(CLS, DIST, targets, TEACHER, labeled)
    row0 = -sum(t * lp for t, lp in zip(targets[0].tolist(), log_softmax_by_hand(CLS[0].tolist())))
    row1 = -log_softmax_by_hand(CLS[1].tolist())[0]  # teacher's class 0 for row 1
    assert out.cls.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)
    none = DistillationLoss("none", label_smoothing=0.0)(CLS, DIST, targets, TEACHER, labeled)
    assert none.cls.item() == pytest.approx((row0 + row1) / 2, rel=1e-6)  # "none" uses the teacher only for them
    with pytest.raises(ValueError, match="teacher"):
        DistillationLoss("none")(CLS, DIST, targets, None, labeled)


def test_all_labelled_mask_is_the_plain_loss():
    plain = DistillationLoss("hard")(CLS, DIST, LABELS, TEACHER)
    masked = DistillationLoss("hard")(CLS, DIST, LABELS, TEACHER, torch.tensor([True, True]))
    assert masked.loss.item() == plain.loss.item()
