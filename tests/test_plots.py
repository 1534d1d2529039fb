"""Pictures of training: the data each is built from, and real PNG files that open."""

import pytest
from PIL import Image

from hf_deit.plots import learning_curve, plot_groups, plot_learning_curves

# A Trainer's log history as it comes: training logs, evaluations during training, and the evaluation after training
# repeating the last step's.
LOG_HISTORY = [
    {"loss": 2.1, "step": 50},
    {"eval_accuracy": 0.40, "eval_cls_accuracy": 0.38, "eval_runtime": 1.2, "step": 100},
    {"loss": 1.2, "step": 150},
    {"eval_accuracy": 0.70, "eval_cls_accuracy": 0.69, "eval_runtime": 1.1, "step": 200},
    {"train_runtime": 80.0, "train_loss": 1.5, "step": 200},
    {"eval_accuracy": 0.71, "eval_cls_accuracy": 0.69, "eval_runtime": 1.1, "step": 200},
]


def test_a_learning_curve_is_every_evaluation_by_step_the_latest_winning():
    assert learning_curve(LOG_HISTORY) == [(100, 0.40), (200, 0.71)]
    assert learning_curve(LOG_HISTORY, "eval_cls_accuracy") == [(100, 0.38), (200, 0.69)]
    assert learning_curve(LOG_HISTORY, "eval_teacher_accuracy") == []
    # A log history saved before the evaluation after training gets it from the run's final metrics.
    saved_early = LOG_HISTORY[:2]
    assert learning_curve(saved_early, final={"eval_accuracy": 0.9}, final_step=300) == [(100, 0.40), (300, 0.9)]
    assert learning_curve(saved_early, final={"train_loss": 1.0}, final_step=300) == [(100, 0.40)]


def test_learning_curves_and_result_groups_are_written_as_png(tmp_path):
    curves = plot_learning_curves(
        {"(a) all labels": {"none": [(100, 0.4), (200, 0.7)], "hard": [(100, 0.5), (200, 0.8)]},
         "(b) 10%": {"alone": [(100, 0.3)], "pool": []}},
        tmp_path / "sub" / "curves.png", references={"(a) all labels": {"teacher": 0.98}}, title="curves",
    )  # fmt: skip
    groups = plot_groups({"800 steps": {"none": [90.1, 91.0], "hard": [93.2]}, "1,200 steps": {"hard": [94.0]}},
                         tmp_path / "groups.png")  # fmt: skip
    for path, min_width in ((curves, 900), (groups, 400)):
        with Image.open(path) as image:
            assert image.format == "PNG" and image.width >= min_width and image.height >= 300
            assert len(set(image.convert("RGB").getdata())) > 10  # something was drawn


def test_plots_need_matplotlib_and_say_so_without_it(monkeypatch, tmp_path):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # as if not installed
    with pytest.raises(ImportError):
        plot_groups({"a": {"b": [1.0]}}, tmp_path / "x.png")
