#!/usr/bin/env python
"""The main job (`make train`): what distillation buys, on the embedded MNIST digits, in about 12 minutes on 2 CPU cores.

(a) All 4,000 labels: a CNN teacher, then the same DeiT student without a teacher and with hard distillation (and the
    teacher's feature maps: the recipe of scripts/experiment_recipe.py).
(b) 10% of the labels: a teacher trained on those 400 images, then the same student on the 400 labelled images alone,
    and on them plus the other 3,600 training images unlabelled, which the teacher labels.

Every student has the same steps, batch and augmentation. Accuracies are printed side by side and saved in
`results.json`. No network.

    python scripts/main_job.py                         # the full job
    python scripts/main_job.py --student_steps 2400    # the recipe study's longer schedule (about twice as long)
    python scripts/main_job.py --quick                 # a smoke run in about a minute (tests use it)

Every stage is a public script with its documented flags, printed above it so that each can be rerun alone; the two
students of a comparison run side by side, one process each (their logs are `train.log` in their folders).
"""

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import experiment_common  # noqa: F401  (first: it keeps everything offline before transformers is imported)
import train_teacher
from experiment_common import QUIET_RUN_FLAGS, embedded_splits, run_stage, write_label_split

from hf_deit.arguments import EMBEDDED_STUDENT

# The recipe's distillation: hard labels from the teacher, and (the default for small images and a CNN teacher) its
# feature maps for the student's patch tokens.
DISTILLED = ["--distillation_type", "hard"]
FEW_LABELS_FRACTION = 0.1


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/main_job")
    parser.add_argument("--dataset_name", default="mnist", help="mnist (5,000 digits) or digits (1,797, 8x8).")
    parser.add_argument("--teacher_epochs", type=float, default=10)
    parser.add_argument("--student_steps", type=int, default=1200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="Tiny subset and few steps: a smoke run.")
    return parser.parse_args(argv)


def common_flags(args: argparse.Namespace) -> list[str]:
    # The job owns its folder: a rerun (after an update, or with another --seed) replaces the previous run there
    # rather than stopping at the rerun check that protects users' own output folders.
    flags = ["--seed", str(args.seed), "--overwrite_output_dir", "true", *QUIET_RUN_FLAGS]
    if args.quick:
        flags += ["--max_train_samples", "256", "--max_eval_samples", "128"]
    return flags


def run_side_by_side(stages: dict[str, tuple[str, list[str]]]) -> dict[str, dict]:
    """Runs `scripts/train.py` once per stage, all at the same time, one process and one thread each (two small
    students use two cores better than one process with two threads). Each process's log is `train.log` in its
    output folder; the stages' metrics come back by name."""
    processes = {}
    for name, (title, argv) in stages.items():
        output_dir = Path(argv[argv.index("--output_dir") + 1])
        output_dir.mkdir(parents=True, exist_ok=True)
        print(f"\n=== {title}: scripts/train.py {' '.join(argv)}\n    (log: {output_dir / 'train.log'})", flush=True)
        log = open(output_dir / "train.log", "w")
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        command = [sys.executable, str(Path(__file__).resolve().parent / "train.py"), *argv]
        processes[name] = (subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env), log, output_dir,
                           time.perf_counter())  # fmt: skip
    results = {}
    for name, (process, log, output_dir, start) in processes.items():
        returncode = process.wait()
        log.close()
        if returncode != 0:
            tail = (output_dir / "train.log").read_text().splitlines()[-20:]
            raise SystemExit(f"{stages[name][0]} failed (exit {returncode}); the end of {output_dir / 'train.log'}:\n"
                             + "\n".join(tail))
        results[name] = json.loads((output_dir / "all_results.json").read_text())
        results[name]["wall_seconds"] = round(time.perf_counter() - start, 1)
    return results


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
    teacher_steps = ["--max_steps", "2"] if args.quick else ["--num_train_epochs", str(args.teacher_epochs)]
    data = ["--dataset_name", args.dataset_name]
    results = {}

    # (a) All labels
    teacher_dir = out / "teacher"
    results["teacher"] = run_stage("(a) all labels: teacher (CNN)", train_teacher.main, [
        "--output_dir", str(teacher_dir), *data, *teacher_steps, *flags,
    ])  # fmt: skip
    student = [*data, "--teacher_name_or_path", str(teacher_dir), *steps, *flags]
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
                   *steps, *flags]  # fmt: skip
    results.update(run_side_by_side({
        "few_labels_alone": ("(b) 10% labels: DeiT student, labels alone",
                             ["--output_dir", str(few / "deit_alone"), "--distillation_type", "none", *few_student]),
        "few_labels_pool": ("(b) 10% labels: DeiT student, + 90% unlabelled via the teacher",
                            ["--output_dir", str(few / "deit_pool"), *DISTILLED, "--unlabeled_dataset_name",
                             str(pool_dir), *few_student]),
    }))  # fmt: skip

    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(summary_table(results))
    print(f"\nModels, cards and metrics are in {out}/ (results.json has every number).")
    return results


ROWS = (
    ("teacher", "(a) CNN teacher, all labels"),
    ("deit_none", "(a) DeiT, no distillation"),
    ("deit_hard", "(a) DeiT, hard distillation + feature maps"),
    ("few_teacher", "(b) CNN teacher, 10% of the labels"),
    ("few_labels_alone", "(b) DeiT, 10% of the labels alone"),
    ("few_labels_pool", "(b) DeiT, 10% of the labels + the other 90% unlabelled (teacher)"),
)


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
