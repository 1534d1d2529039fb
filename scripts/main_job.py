#!/usr/bin/env python
"""The main job (`make train`): what distillation buys, on the embedded MNIST digits, in about 13 minutes on 2 CPU cores.

(a) All 4,000 labels: a CNN teacher, then the same DeiT student without a teacher and with hard distillation (and the
    teacher's feature maps: the recipe of scripts/experiment_recipe.py).
(b) 10% of the labels: a teacher trained on those 400 images, then the same student on the 400 labelled images alone,
    and on them plus the other 3,600 training images unlabelled, which the teacher labels.

The two students of a comparison have the same steps, batch and augmentation. Accuracies are printed side by side and
saved in `results.json`; `learning_curves.png` draws them over the steps. No network.

    python scripts/main_job.py                         # the full job
    python scripts/main_job.py --seed 1                # the same job on another seed
    python scripts/main_job.py --quick                 # a smoke run in about a minute (tests use it)

Every stage is a public script with its documented flags, printed above it so that each can be rerun alone; the two
students of a comparison run side by side, one process each (their logs are `train.log` in their folders).
"""

import argparse
import json
from pathlib import Path

import experiment_common  # noqa: F401  (first: it keeps everything offline before transformers is imported)
import train_teacher
from experiment_common import (QUIET_RUN_FLAGS, embedded_splits, output_dir_of, run_in_parallel, run_stage,
                               write_label_split)

from hf_deit.run import EMBEDDED_STUDENT
from hf_deit.plots import learning_curve, plot_learning_curves

# The recipe's distillation: hard labels from the teacher, and (the default for small images and a CNN teacher) its
# feature maps for the student's patch tokens.
DISTILLED = ["--distillation_type", "hard"]
# (a)'s augmentation: the small-image defaults (crops of >= 80%) plus RandAugment at magnitude 2. With no RandAugment
# the teacher's hard label is the ground truth on nearly every view, and distillation's lead over the undistilled
# student swung from +0.4 to +3.1 points between seeds; with this much the lead held on every seed of the recipe study
# (row p7-28px-1600-lr1e-3-mildaug of scripts/experiment_recipe.py, figures in the README), and 1,600 steps keep the
# undistilled student above 90%.
ALL_LABELS_AUGMENTATION = ["--rand_augment", "2"]
FEW_LABELS_FRACTION = 0.1
# The students evaluate on the validation split every tenth of their steps, for their learning curves
# (learning_curves.png); results.json has what those evaluations cost (`curve_evaluation_seconds`).
CURVE_EVALUATION_EVERY = 0.1


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/main_job")
    parser.add_argument("--dataset_name", default="mnist", help="mnist (5,000 digits) or digits (1,797, 8x8).")
    parser.add_argument("--teacher_epochs", type=float, default=10)
    parser.add_argument("--student_steps", type=int, default=1600, help="Steps of each student of (a), all labels.")
    parser.add_argument("--few_label_steps", type=int, default=1200, help="Steps of each student of (b), 10%% labels.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="Tiny subset and few steps: a smoke run.")
    return parser.parse_args(argv)


def common_flags(args: argparse.Namespace, learning_curves: bool = False) -> list[str]:
    # The job owns its folder: a rerun (after an update, or with another --seed) replaces the previous run there
    # rather than stopping at the rerun check that protects users' own output folders.
    quiet = list(QUIET_RUN_FLAGS)
    if learning_curves:
        quiet[quiet.index("--eval_strategy") + 1] = "steps"
        quiet += ["--eval_steps", str(CURVE_EVALUATION_EVERY)]
    flags = ["--seed", str(args.seed), "--overwrite_output_dir", "true", *quiet]
    if args.quick:
        flags += ["--max_train_samples", "256", "--max_eval_samples", "128"]
    return flags


def run_side_by_side(stages: dict[str, tuple[str, list[str]]]) -> dict[str, dict]:
    """Runs `scripts/train.py` once per stage, all at the same time, one process and one thread each, with a progress
    line per stage (`experiment_common.run_in_parallel`). Each process's log is `train.log` in its output folder; the
    stages' metrics come back by name, with their learning curve (`learning_curve`)."""
    for title, argv in stages.values():
        print(f"\n=== {title}: scripts/train.py {' '.join(argv)}\n    (log: {output_dir_of(argv) / 'train.log'})",
              flush=True)  # fmt: skip
    seconds = run_in_parallel({name: ("train.py", argv) for name, (_, argv) in stages.items()})
    results = {}
    for name, (_, argv) in stages.items():
        output_dir = output_dir_of(argv)
        results[name] = json.loads((output_dir / "all_results.json").read_text())
        results[name]["wall_seconds"] = seconds[name]
        results[name].update(learning_curve_of(output_dir, results[name]))
    return results


def learning_curve_of(output_dir: Path, metrics: dict) -> dict:
    """The run's validation top-1 over its steps (`learning_curve`: [step, accuracy] pairs, the evaluation after
    training last) and the seconds its evaluations during training took (`curve_evaluation_seconds`)."""
    state = json.loads((output_dir / "trainer_state.json").read_text())  # saved before the final evaluation
    during = [entry for entry in state["log_history"] if "eval_runtime" in entry]
    return {"learning_curve": learning_curve(state["log_history"], final=metrics, final_step=state["global_step"]),
            "curve_evaluation_seconds": round(sum(entry["eval_runtime"] for entry in during), 1)}  # fmt: skip


def write_few_label_splits(args: argparse.Namespace, folder: Path) -> tuple[Path, Path]:
    """The labelled 10% (stratified, seeded) with the validation split, and the unlabelled rest, as `save_to_disk`
    folders that `--dataset_name` and `--unlabeled_dataset_name` load."""
    train_split, validation = embedded_splits(args.dataset_name, *((256, 128) if args.quick else (None, None)))
    return write_label_split(train_split, validation, FEW_LABELS_FRACTION, args.seed, folder)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    flags = common_flags(args)
    steps = ["--max_steps", str(2 if args.quick else args.student_steps)]
    few_label_steps = ["--max_steps", str(2 if args.quick else args.few_label_steps)]
    teacher_steps = ["--max_steps", "2"] if args.quick else ["--num_train_epochs", str(args.teacher_epochs)]
    data = ["--dataset_name", args.dataset_name]
    results = {}

    # (a) All labels
    teacher_dir = out / "teacher"
    results["teacher"] = run_stage("(a) all labels: teacher (CNN)", train_teacher.main, [
        "--output_dir", str(teacher_dir), *data, *teacher_steps, *flags,
    ])  # fmt: skip
    student_flags = common_flags(args, learning_curves=True)
    student = [*data, "--teacher_name_or_path", str(teacher_dir), *steps, *ALL_LABELS_AUGMENTATION, *student_flags]
    results.update(run_side_by_side({
        "deit_none": ("(a) all labels: DeiT student, no distillation",
                      ["--output_dir", str(out / "deit_none"), "--distillation_type", "none", *student]),
        "deit_hard": ("(a) all labels: DeiT student, hard distillation + feature maps",
                      ["--output_dir", str(out / "deit_hard"), *DISTILLED, *student]),
    }))  # fmt: skip

    # (b) 10% of the labels; the teacher learns from those alone, and so do the students' labels
    few = out / "few_labels"
    labeled_dir, pool_dir = write_few_label_splits(args, few)
    # A folder is not the embedded dataset by name: give its student and input size explicitly
    embedded_student = ["--config_overrides", ",".join(f"{key}={value}" for key, value in EMBEDDED_STUDENT.items())]
    image_size = ["--image_size", str(EMBEDDED_STUDENT["image_size"])]
    few_teacher_dir = few / "teacher"
    # 400 images give 7 steps an epoch: more epochs for the same few hundred teacher steps as in (a)
    few_teacher_steps = ["--max_steps", "2"] if args.quick else ["--num_train_epochs", str(8 * args.teacher_epochs)]
    results["few_teacher"] = run_stage("(b) 10% labels: teacher (CNN)", train_teacher.main, [
        "--output_dir", str(few_teacher_dir), "--dataset_name", str(labeled_dir), *image_size, *few_teacher_steps, *flags,
    ])  # fmt: skip
    few_student = ["--dataset_name", str(labeled_dir), "--teacher_name_or_path", str(few_teacher_dir), *embedded_student,
                   *few_label_steps, *student_flags]  # fmt: skip
    results.update(run_side_by_side({
        "few_labels_alone": ("(b) 10% labels: DeiT student, labels alone",
                             ["--output_dir", str(few / "deit_alone"), "--distillation_type", "none", *few_student]),
        "few_labels_pool": ("(b) 10% labels: DeiT student, + 90% unlabelled via the teacher",
                            ["--output_dir", str(few / "deit_pool"), *DISTILLED, "--unlabeled_dataset_name",
                             str(pool_dir), *few_student]),
    }))  # fmt: skip

    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(summary_table(results))
    curves = plot_curves(results, out / "learning_curves.png")
    print(f"\nLearning curves: {curves}. Models, cards and metrics are in {out}/ (results.json has every number).")
    return results


ROWS = (
    ("teacher", "(a) CNN teacher, all labels"),
    ("deit_none", "(a) DeiT, no distillation"),
    ("deit_hard", "(a) DeiT, hard distillation + feature maps"),
    ("few_teacher", "(b) CNN teacher, 10% of the labels"),
    ("few_labels_alone", "(b) DeiT, 10% of the labels alone"),
    ("few_labels_pool", "(b) DeiT, 10% of the labels + the other 90% unlabelled (teacher)"),
)
STUDENTS = ("deit_none", "deit_hard", "few_labels_alone", "few_labels_pool")


def curve_panels(results: dict) -> tuple[dict, dict]:
    """The main job's learning curves: a panel per comparison with its two students' curves, and its teacher's
    final top-1 as a reference line."""
    panels, references = {}, {}
    for panel, teacher, students in (("(a) all labels", "teacher", ("deit_none", "deit_hard")),
                                     ("(b) 10% of the labels", "few_teacher", ("few_labels_alone", "few_labels_pool"))):
        labels = dict(ROWS)
        panels[panel] = {labels[name].removeprefix(panel[:4]): results[name]["learning_curve"] for name in students}
        references[panel] = {"CNN teacher": results[teacher]["eval_accuracy"]}
    return panels, references


def plot_curves(results: dict, path: Path) -> Path:
    share = sum(results[name]["curve_evaluation_seconds"] for name in STUDENTS) / sum(
        results[name]["train_runtime"] for name in STUDENTS)
    title = (f"Validation top-1 of the averaged heads during training (the evaluations took {share:.1%} of the "
             "students' training time)")
    panels, references = curve_panels(results)
    return plot_learning_curves(panels, path, references, title=title)


def summary_table(results: dict) -> str:
    def pct(metrics: dict, key: str) -> str:
        value = metrics.get(f"eval_{key}")
        return "-" if value is None else f"{100 * value:.1f}"

    rows = [
        "| model | top-1 (averaged heads) | cls head | distillation head | agrees with teacher | train time (s) |",
        "|---|---|---|---|---|---|",
    ]
    for name, label in ROWS:
        m = results[name]
        if "teacher" in name:
            rows.append(f"| {label} | {pct(m, 'accuracy')} | - | - | - | {m['wall_seconds']} |")
        else:
            rows.append(f"| {label} | {pct(m, 'accuracy')} | {pct(m, 'cls_accuracy')} | "
                        f"{pct(m, 'distillation_accuracy')} | {pct(m, 'teacher_agreement')} | {m['wall_seconds']} |")
    gain_all = 100 * (results["deit_hard"]["eval_accuracy"] - results["deit_none"]["eval_accuracy"])
    gain_few = 100 * (results["few_labels_pool"]["eval_accuracy"] - results["few_labels_alone"]["eval_accuracy"])
    return ("\nValidation accuracy (%) on the embedded data's validation split:\n" + "\n".join(rows)
            + f"\n\nDistillation: {gain_all:+.1f} points with all labels; the unlabelled images through the teacher: "
            f"{gain_few:+.1f} points with 10% of the labels.")


if __name__ == "__main__":
    main()
