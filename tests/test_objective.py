"""The distillation objective: its total loss and named terms on a fixed batch, for every combination of terms, equal
to the values recorded in `objective_reference.json` within what a change of CPU explains (tests/numerics.py;
`python tests/test_objective.py --record` rewrites it, only on purpose: a change of the loss is a change of behaviour);
a term added from outside the package (tests/toy_term.py)."""

import itertools
import json
import os
import subprocess
import sys

import pytest
import torch
from transformers import ResNetConfig, ResNetForImageClassification

from hf_deit import DistilledDeiTConfig, DistilledDeiTForImageClassification
from hf_deit.arguments import DistillationConfig
from hf_deit.objective import DistillationObjective
from hf_deit.teacher import Teacher
from hf_deit.terms import DistillationTerm, register_term
from hf_deit_inputs import terms as declared
from hf_deit_inputs.terms import Setting, TermSettings, declare_term
from numerics import assert_close_across_machines

REFERENCE = os.path.join(os.path.dirname(__file__), "objective_reference.json")
NUM_LABELS = 4

# distillation_type x attention x feature x feature map, then variants of the terms' settings
CASES = {
    f"{kind}-attention{int(attention)}-feature{int(feature)}-feature_map{int(feature_map)}": dict(
        distillation_type=kind,
        attention_distillation_weight=0.5 * attention,
        feature_distillation_weight=0.7 * feature,
        feature_map_distillation_weight=1.0 * feature_map,
    )
    for kind, attention, feature, feature_map in itertools.product(("none", "soft", "hard"), *[(False, True)] * 3)
}
CASES.update({
    "soft-tau2-alpha0.3": dict(distillation_type="soft", distillation_tau=2.0, distillation_alpha=0.3,
                               feature_map_distillation_weight=0.0),
    "hard-attention_both_mse": dict(attention_distillation_weight=1.0, attention_distillation_token="both",
                                    attention_distillation_loss="mse", attention_distillation_layers=[0, 1],
                                    feature_map_distillation_weight=0.0),
    "hard-feature_patches_mse": dict(feature_distillation_weight=1.0, feature_distillation_token="patches",
                                     feature_distillation_loss="mse", feature_map_distillation_weight=0.0),
    "hard-feature_cls": dict(feature_distillation_weight=1.0, feature_distillation_token="cls",
                             feature_map_distillation_weight=0.0),
    "hard-feature_map_default_weight_two_layers": dict(feature_map_distillation_layers=[0, -1]),
    "hard-unlabelled_rows": dict(feature_map_distillation_weight=0.0, unlabelled=True),
    "soft-mixed_targets": dict(distillation_type="soft", feature_map_distillation_weight=0.0, mixed=True),
})  # fmt: skip


def student(seed=0):
    torch.manual_seed(seed)
    config = DistilledDeiTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                 drop_path_rate=0.0, num_labels=NUM_LABELS)  # fmt: skip
    return DistilledDeiTForImageClassification(config).train()


def teacher(student_config, seed=1):
    torch.manual_seed(seed)
    config = ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
                          downsample_in_first_stage=False, num_labels=NUM_LABELS)  # fmt: skip
    return Teacher.load(ResNetForImageClassification(config).eval(), student_config, attention_maps=True)


def batch(unlabelled=False, mixed=False):
    generator = torch.Generator().manual_seed(2)
    pixel_values = torch.randn(6, 3, 16, 16, generator=generator)
    labels = torch.randint(0, NUM_LABELS, (6,), generator=generator)
    inputs = {"pixel_values": pixel_values, "labels": labels}
    if mixed:
        one_hot = torch.nn.functional.one_hot(labels, NUM_LABELS).float()
        inputs["labels"] = 0.6 * one_hot + 0.4 * one_hot.flip(0)
    if unlabelled:
        inputs["labeled"] = torch.tensor([True, False, True, False, True, True])
        inputs["labels"] = torch.where(inputs["labeled"], labels, -1)
    return inputs


def objective_values(tmp_path, settings: dict, config_class=DistillationConfig, magnitudes: dict | None = None) -> dict:
    """The objective's loss, named terms and gradient (summed over the student's and its own weights) in training,
    and its loss and terms in evaluation, as float hex strings. `magnitudes`, if given, receives the gradient sum's
    magnitude (the L1 norm of the gradients): the scale of what a change of CPU can move it by."""
    settings = dict(settings)
    inputs = batch(settings.pop("unlabelled", False), settings.pop("mixed", False))
    args = config_class(output_dir=str(tmp_path), use_cpu=True, report_to=[], seed=0, **settings)
    model = student()
    teacher_model = teacher(model.config)
    torch.manual_seed(3)  # the projections' initialisation
    objective = DistillationObjective.build(args, model, teacher_model)
    values = {}
    for training in (True, False):
        model.train(training)
        with torch.set_grad_enabled(training):
            outputs, signals = objective.student_forward(model, model, inputs, extra_terms=training)
            teacher_output = teacher_model(inputs["pixel_values"], **objective.teacher_request(training))
            result = objective(outputs, signals, inputs["labels"], teacher_output, inputs.get("labeled"))
        prefix = "train" if training else "eval"
        values[f"{prefix}_loss"] = result.loss.item().hex()
        values.update({f"{prefix}_{name}": value.item().hex() for name, value in result.terms.items()})
        if training:
            result.loss.backward()
            gradients = [p.grad.double() for p in [*model.parameters(), *objective.parameters()] if p.grad is not None]
            values["gradient_sum"] = float(sum(gradient.sum() for gradient in gradients)).hex()
            if magnitudes is not None:
                magnitudes["gradient_sum"] = float(sum(gradient.abs().sum() for gradient in gradients))
            values["term_names"] = list(objective.term_names)
    return values


def _as_floats(values: dict) -> dict:
    return {key: value if isinstance(value, list) else float.fromhex(value) for key, value in values.items()}


@pytest.mark.parametrize("case", sorted(CASES))
def test_loss_and_terms_equal_the_recorded_values(case, tmp_path):
    with open(REFERENCE) as file:
        expected = _as_floats(json.load(file)[case])
    magnitudes = {}
    actual = _as_floats(objective_values(tmp_path, CASES[case], magnitudes=magnitudes))
    assert actual.keys() == expected.keys()
    assert actual["term_names"] == expected["term_names"]
    for key, value in expected.items():
        if key != "term_names":  # recorded on an Intel Xeon with AMX: other CPUs round the last bits apart
            assert_close_across_machines(actual[key], value, magnitudes.get(key), what=key)


def test_the_comparison_across_machines_still_sees_a_changed_setting(tmp_path):
    """The tolerance that absorbs a change of CPU is far below what a change of behaviour does: the weight of the
    distillation term moved by a thousandth is caught."""
    with open(REFERENCE) as file:
        expected = _as_floats(json.load(file)["soft-tau2-alpha0.3"])
    actual = _as_floats(objective_values(tmp_path, {**CASES["soft-tau2-alpha0.3"], "distillation_alpha": 0.301}))
    with pytest.raises(AssertionError, match="more than a change of CPU explains"):
        assert_close_across_machines(actual["train_loss"], expected["train_loss"], what="train_loss")


def test_each_term_says_what_it_needs_from_the_teacher(tmp_path):
    settings = dict(attention_distillation_weight=1.0, feature_distillation_weight=1.0,
                    feature_map_distillation_weight=1.0)  # fmt: skip
    args = DistillationConfig(output_dir=str(tmp_path), use_cpu=True, report_to=[], **settings)
    model = student()
    objective = DistillationObjective.build(args, model, teacher(model.config))
    assert objective.teacher_outputs(training=True) == {
        "logits": ("logits",), "attention": ("attention_map",), "feature": ("features",), "feature_map": ("stage_maps",),
    }  # fmt: skip
    assert objective.teacher_outputs(training=False) == {"logits": ("logits",)}  # evaluation: DeiT's loss only
    assert objective.teacher_request(True) == dict(attention_map=True, features=True, stage_maps=True)
    assert objective.terms["feature_map"].stage == 1  # which of the teacher's stage maps it reads


# Run in a fresh process: a term is declared before hf_deit.arguments is imported (its settings become fields then).
TOY_TERM_RUN = """
import contextlib, io, json, sys, tempfile
import toy_term  # declares the term and registers its loss
from hf_deit_inputs import InputError, check_train_command_line
from hf_deit_inputs.help import answer_help
import test_objective

found, folder = {}, tempfile.mkdtemp()
with contextlib.redirect_stdout(io.StringIO()) as shown, contextlib.suppress(SystemExit):
    answer_help(["--help"], "train.py", "")
found["help"] = shown.getvalue()
for argv in (["--logit_norm_distillation_weight", "1.5", "--teacher_name_or_path", folder],
             ["--logit_norm_distillation_weight", "0.5"]):
    try:
        check_train_command_line(argv)
    except InputError as error:
        found.setdefault("refused", []).append(str(error))
from hf_deit.arguments import DistillationConfig, train_argument_parser
parsed = train_argument_parser().parse_args_into_dataclasses(["--logit_norm_distillation_weight", "0.25"])[-1]
found["configured"] = parsed.logit_norm_distillation_weight
settings = dict(distillation_type="soft", feature_map_distillation_weight=0.0)
found["without"] = test_objective.objective_values(folder, settings)
found["with"] = test_objective.objective_values(folder, {**settings, "logit_norm_distillation_weight": 0.25})
try:
    test_objective.DistillationObjective.build(DistillationConfig(output_dir=folder, distillation_type="none",
                                                                  logit_norm_distillation_weight=0.25),
                                               test_objective.student())
except ValueError as error:
    found["objective_refused"] = str(error)
print(json.dumps(found))
"""


def test_a_term_added_from_outside_the_package_joins_help_checks_configuration_and_objective():
    """tests/toy_term.py declares a term with one setting and registers its loss; nothing in the package names it."""
    run = subprocess.run([sys.executable, "-c", TOY_TERM_RUN], capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(__file__), env={**os.environ, "PYTHONPATH": os.pathsep.join(
                             [os.path.dirname(__file__), os.environ.get("PYTHONPATH", "")])})  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    found = json.loads(run.stdout.strip().splitlines()[-1])
    assert "--logit_norm_distillation_weight X" in found["help"]
    assert "keep the teacher's norm (0 = off). (default: 0)" in " ".join(found["help"].split())
    out_of_range, without_teacher = found["refused"]
    assert "--logit_norm_distillation_weight 1.5: give a number in [0, 1]." in out_of_range
    assert "--logit_norm_distillation_weight 0.5 learn(s) from a teacher" in without_teacher
    assert found["configured"] == 0.25
    assert "logit_norm_distillation_weight 0.25 needs a teacher" in found["objective_refused"]
    without, with_term = _as_floats(found["without"]), _as_floats(found["with"])
    assert with_term["term_names"] == [*without["term_names"], "loss_logit_norm"]
    assert with_term["train_loss_logit_norm"] > 0
    assert with_term["train_loss"] == pytest.approx(without["train_loss"] + 0.25 * with_term["train_loss_logit_norm"])
    assert with_term["eval_loss"] == without["eval_loss"]  # a training term: evaluation is DeiT's loss alone
    assert with_term["gradient_sum"] != without["gradient_sum"]


def test_a_term_declared_too_late_or_not_at_all_is_refused():
    with pytest.raises(RuntimeError, match="before importing hf_deit.arguments"):
        declare_term(TermSettings("late", ("logits",), switch="late_weight", settings=(Setting("late_weight", 0.0, ""),)))
    assert "late" not in declared.TERMS
    with pytest.raises(ValueError, match="must be a term declared with hf_deit_inputs.terms.declare_term"):
        register_term(type("UndeclaredTerm", (DistillationTerm,), {}))


if __name__ == "__main__" and sys.argv[1:] == ["--record"]:
    import tempfile

    with tempfile.TemporaryDirectory() as folder:
        reference = {case: objective_values(folder, settings) for case, settings in CASES.items()}
    with open(REFERENCE, "w") as file:
        json.dump(reference, file, indent=1)
        file.write("\n")

if __name__ == "__main__" and sys.argv[1:] == ["--drift"]:
    # How far this machine is from the recorded values, in float32 epsilons of each value's magnitude: the figures
    # behind tests/numerics.py's ROUNDINGS.
    import tempfile

    from numerics import FLOAT32_EPSILON

    with open(REFERENCE) as file:
        reference = json.load(file)
    worst = {"loss": 0.0, "gradient_sum": 0.0}
    with tempfile.TemporaryDirectory() as folder:
        for case, settings in CASES.items():
            magnitudes = {}
            actual = _as_floats(objective_values(folder, settings, magnitudes=magnitudes))
            for key, value in _as_floats(reference[case]).items():
                if key != "term_names":
                    drift = abs(actual[key] - value) / (FLOAT32_EPSILON * magnitudes.get(key, abs(value)))
                    kind = "gradient_sum" if key == "gradient_sum" else "loss"
                    worst[kind] = max(worst[kind], drift)
    print({kind: round(value, 3) for kind, value in worst.items()}, "float32 epsilons of the magnitude")
