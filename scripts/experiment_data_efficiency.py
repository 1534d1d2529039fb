#!/usr/bin/env python
r"""Data efficiency on the embedded MNIST: how much do distillation, attention distillation and an unlabelled pool help
when only a fraction of the training labels is known?

    python scripts/experiment_data_efficiency.py --output_dir outputs/data_efficiency            # the full grid
    python scripts/experiment_data_efficiency.py --output_dir /tmp/quick --quick                  # ~1 min smoke run
    python scripts/experiment_data_efficiency.py --output_dir outputs/data_efficiency_2000 \
        --fractions 0.05 0.1 --student_steps 2000

500 steps (the default grid) measures early learning only; at 2,000 steps they reach 83-94% (README).

For each labelled fraction (5%, 10%, 25%, 100%) and seed: a stratified labelled subset of the 4,000 training digits
(`hf_deit.data.split_labeled`, seeded); a CNN teacher trained on that subset only (`scripts/train_teacher.py`); then
five students, every one with the same number of steps, batch size and recipe:

    none             labelled subset, no teacher
    hard             labelled subset, hard distillation
    hard+attn        ... plus the attention-map term (student dist token vs the teacher's last-stage activation map)
    hard+pool        labelled subset + the remaining training images unlabelled (the teacher labels them, whatever
                     the teacher check would decide: --protect_from_weak_teacher false; the check's own study is
                     experiment_own_folder.py --labeled_fraction)
    hard+attn+pool   both

At 100% there is no unlabelled pool: the pool variants are not run there (the table says n/a). hard and hard+attn see
the same views, as do the two pool variants: each pair can train from one record of the teacher's outputs
(`experiment_common.share_teacher_records`), `--teacher_record auto` (the default) where the measured costs say it
pays, `always`, or `never`. Accuracy is top-1 of the
averaged heads on the 1,000 validation digits. Writes `results.json` (every run), `results.md` (mean ± std over
seeds) and `accuracy_vs_labels.png` in `--output_dir`.

Finished runs are kept and skipped when the script is started again, so an interrupted grid resumes, and seeds can run
side by side as separate processes into the same `--output_dir` (`--seeds 0` and `--seeds 1`, one thread each); the
summary is rebuilt from every finished run on disk.
"""

import argparse
import glob
import json
import os
import sys
import time

import numpy as np

import experiment_common  # noqa: F401  (first: it keeps everything offline before transformers is imported)
import train
import train_teacher
from experiment_common import (
    QUIET_RUN_FLAGS,
    RECORD_WHEN,
    describe_distillation_cost,
    distillation_cost,
    embedded_splits,
    finished_results,
    run_unless_finished,
    share_teacher_records,
    write_label_split,
)

from hf_deit.plots import plot_groups

VARIANTS = {
    "none": dict(distillation="none", attention=False, pool=False),
    "hard": dict(distillation="hard", attention=False, pool=False),
    "hard+attn": dict(distillation="hard", attention=True, pool=False),
    "hard+pool": dict(distillation="hard", attention=False, pool=True),
    "hard+attn+pool": dict(distillation="hard", attention=True, pool=True),
}
# The full grid is 36 students and 8 teachers: a narrow student (0.2 M parameters) keeps a run to about 3 CPU-minutes
# on a 2-core x86 VM, the grid to about 2.5 CPU-hours. The augmentation is the small-image preset's (crops keeping
# >= 80% of the area, nothing else), given explicitly in COMMON so the recorded results do not move with the preset.
FULL = dict(fractions=[0.05, 0.10, 0.25, 1.0], seeds=[0, 1], student_steps=500, teacher_steps=500,
            batch_size=64, student="hidden_size=64,num_hidden_layers=4,num_attention_heads=4", train_size=None,
            eval_size=None)  # fmt: skip
QUICK = dict(fractions=[0.25, 1.0], seeds=[0], student_steps=2, teacher_steps=2, batch_size=16,
             student="hidden_size=32,num_hidden_layers=2,num_attention_heads=2", train_size=400, eval_size=100)  # fmt: skip
# A 2-stage ResNet: its last stage keeps a 4x4 map at 32 px (a 4-stage one shrinks it to 1x1, nothing to distil).
TEACHER_CONFIG = "hidden_sizes=[32,64],depths=[1,1]"
COMMON = [*QUIET_RUN_FLAGS, "--logging_steps", "50", "--dataloader_num_workers", "0", "--image_size", "32",
          "--rand_augment", "none", "--reprob", "0", "--scale_min", "0.8"]  # fmt: skip


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True)
    parser.add_argument("--quick", action="store_true", help="Tiny subset, 1 seed, few steps, two fractions.")
    parser.add_argument("--fractions", type=float, nargs="*", default=None)
    parser.add_argument("--seeds", type=int, nargs="*", default=None)
    parser.add_argument("--student_steps", type=int, default=None, help="Steps of every student (the shared budget).")
    parser.add_argument("--teacher_steps", type=int, default=None)
    parser.add_argument("--attention_weight", type=float, default=1.0)
    parser.add_argument("--teacher_record", choices=RECORD_WHEN, default="auto",
                        help="Students that see the same views train from one record of their teacher: 'auto' where "
                        "it pays (measured), 'always', or 'never' (the teacher runs inside every student).")
    parser.add_argument("--summary_only", action="store_true",
                        help="Train nothing: rebuild results.json/.md and the plot from the finished runs on disk.")
    args = parser.parse_args(argv)
    settings = dict(QUICK if args.quick else FULL)
    for name in ("fractions", "seeds", "student_steps", "teacher_steps"):
        if getattr(args, name) is not None:
            settings[name] = getattr(args, name)
    return args, settings


def write_splits(folder: str, fraction: float, seed: int, settings: dict) -> tuple[str, str | None]:
    """The labelled subset (+ validation) and the unlabelled rest, as save_to_disk folders the scripts can load (kept
    when an earlier, interrupted run wrote them)."""
    train_split, validation = embedded_splits("mnist", settings["train_size"], settings["eval_size"])
    labeled_dir, pool_dir = write_label_split(train_split, validation, fraction, seed, folder, keep_existing=True)
    return str(labeled_dir), None if pool_dir is None else str(pool_dir)


def teacher_flags(labeled_dir: str, output_dir: str, seed: int, settings: dict) -> list[str]:
    return [
        "--dataset_name", labeled_dir, "--output_dir", output_dir, "--seed", str(seed),
        "--config_overrides", TEACHER_CONFIG, "--max_steps", str(settings["teacher_steps"]),
        "--per_device_train_batch_size", str(settings["batch_size"]), *COMMON,
    ]  # fmt: skip


def student_flags(variant: dict, labeled_dir, pool_dir, teacher_dir, output_dir, seed, settings, attention_weight):
    argv = [
        "--dataset_name", labeled_dir, "--output_dir", output_dir, "--seed", str(seed),
        # The embedded-MNIST student and learning rate, given explicitly since the data comes from a folder.
        "--config_overrides", f"image_size=32,patch_size=4,{settings['student']}", "--learning_rate", "1e-3",
        "--max_steps", str(settings["student_steps"]), "--per_device_train_batch_size", str(settings["batch_size"]),
        "--distillation_type", variant["distillation"], *COMMON,
    ]  # fmt: skip
    if variant["distillation"] != "none":
        argv += ["--teacher_name_or_path", teacher_dir]
    if variant["attention"]:
        argv += ["--attention_distillation_weight", str(attention_weight)]
    if variant["pool"]:  # the arm measures the pool: a teacher under the check's bar would leave it out
        argv += ["--unlabeled_dataset_name", pool_dir, "--protect_from_weak_teacher", "false"]
    return argv


def summarize(runs: list[dict], settings: dict, output_dir: str, cost: dict) -> str:
    fractions = settings["fractions"]
    seeds = sorted({run["seed"] for run in runs})
    lines = ["| labelled | teacher | " + " | ".join(VARIANTS) + " |", "|---" * (2 + len(VARIANTS)) + "|"]
    for fraction in fractions:
        here = [run for run in runs if run["fraction"] == fraction]
        cells = [f"{fraction:.0%}"]
        cells += [_mean_std([run["accuracy"] for run in here if run["variant"] == name], len(seeds))
                  for name in ["teacher", *VARIANTS]]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    with open(os.path.join(output_dir, "results.md"), "w") as handle:
        handle.write(
            f"Top-1 accuracy (%) on the 1,000 MNIST validation digits, mean ± sample std over seeds {seeds}. Student "
            f"{settings['student']}, {settings['student_steps']} steps of {settings['batch_size']} images for every "
            f"variant; teacher {settings['teacher_steps']} steps on the labelled subset.\n\n" + table + "\n\n"
            + describe_distillation_cost(cost) + "\n"
        )
    return table


def _mean_std(values: list[float], seeds: int) -> str:
    """'mean ± std' over the seeds that finished, with their count when some did not."""
    if not values:
        return "n/a"
    values = 100 * np.asarray(values)
    text = f"{values.mean():.1f} ± {values.std(ddof=1):.1f}" if len(values) > 1 else f"{values.mean():.1f}"
    return text if len(values) == seeds else f"{text} ({len(values)} of {seeds} seeds)"


def plot(runs: list[dict], fractions, output_dir: str) -> str:
    """Each fraction's teacher and students, one dot per seed (`hf_deit.plots.plot_groups`)."""
    groups = {f"{fraction:.0%} labelled": {name: [100 * r["accuracy"] for r in runs
                                                  if r["fraction"] == fraction and r["variant"] == name]
                                           for name in ["teacher", *VARIANTS]} for fraction in fractions}  # fmt: skip
    return str(plot_groups(groups, os.path.join(output_dir, "accuracy_vs_labels.png"),
                           title="Top-1 on the MNIST validation digits: one dot per seed, bars at the mean"))


def collect_runs(output_dir: str, fractions) -> list[dict]:
    """Every finished run under `output_dir/runs` (from any process), in grid order."""
    runs = []
    for fraction in fractions:
        folders = glob.glob(os.path.join(output_dir, "runs", f"labels{fraction:g}_seed*"))
        for seed, folder in sorted((int(folder.rsplit("_seed", 1)[1]), folder) for folder in folders):
            for name in ["teacher", *VARIANTS]:
                metrics = finished_results(os.path.join(folder, name))
                if metrics is not None:
                    runs.append(dict(fraction=fraction, seed=seed, variant=name, accuracy=metrics["eval_accuracy"],
                                     seconds=round(metrics["train_runtime"], 1)))  # fmt: skip
    return runs


def main(argv=None) -> dict:
    args, settings = parse_args(argv)
    os.makedirs(args.output_dir, exist_ok=True)
    for fraction in settings["fractions"] if not args.summary_only else []:
        for seed in settings["seeds"]:
            folder = os.path.join(args.output_dir, "runs", f"labels{fraction:g}_seed{seed}")
            labeled_dir, pool_dir = write_splits(folder, fraction, seed, settings)
            teacher_dir = os.path.join(folder, "teacher")
            # Finished runs are kept: an interrupted grid resumes, and seeds started as separate processes
            # (`--seeds 0`, `--seeds 1`, ...) share one `--output_dir`.
            run_unless_finished(f"{fraction:.0%} labelled, seed {seed}: teacher", teacher_dir, train_teacher.main,
                                teacher_flags(labeled_dir, teacher_dir, seed, settings))
            students = {name: student_flags(variant, labeled_dir, pool_dir, teacher_dir, os.path.join(folder, name),
                                            seed, settings, args.attention_weight)
                        for name, variant in VARIANTS.items()
                        if not (variant["pool"] and pool_dir is None)}  # 100% labelled: no unlabelled pool
            # hard and hard+attn see the same views, as do the two pool variants
            students = share_teacher_records(f"{fraction:.0%} labelled, seed {seed}", os.path.join(folder, "records"),
                                             students, when=args.teacher_record)  # fmt: skip
            for name, argv in students.items():
                run_unless_finished(f"{fraction:.0%} labelled, seed {seed}: {name}", os.path.join(folder, name),
                                    train.main, argv)  # fmt: skip
    runs = collect_runs(args.output_dir, settings["fractions"])
    folders = [folder for fraction in settings["fractions"]
               for folder in sorted(glob.glob(os.path.join(args.output_dir, "runs", f"labels{fraction:g}_seed*")))]
    cost = distillation_cost([os.path.join(folder, "records") for folder in folders],
                             [os.path.join(folder, name) for folder in folders for name in VARIANTS if name != "none"])
    results = dict(settings=settings, attention_weight=args.attention_weight, argv=sys.argv[1:] if argv is None else argv,
                   date=time.strftime("%Y-%m-%d"), runs=runs, distillation_cost=cost)  # fmt: skip
    with open(os.path.join(args.output_dir, "results.json"), "w") as handle:
        json.dump(results, handle, indent=2)
    results["table"] = summarize(runs, settings, args.output_dir, cost)
    results["plot"] = plot(runs, settings["fractions"], args.output_dir)
    print(results["table"])
    return results


if __name__ == "__main__":
    main()
