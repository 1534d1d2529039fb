#!/usr/bin/env python
r"""The recipe study: under which recipe does hard distillation beat training without a teacher, on the embedded MNIST
digits with all 4,000 training labels? Each row is one recipe (student shape, input size, schedule, augmentation);
its arms differ only in what the student learns from (no teacher, soft or hard distillation, extra terms), with the
same steps, batch and augmentation. Writes `results.json`, `results.md` (per seed, mean ± std, and the hard - none
difference per seed where a row has both) and `results.png` (each arm's accuracy per seed as dots, row by row).

    python scripts/experiment_recipe.py --output_dir outputs/recipe --seeds 0                  # every row, seed 0
    python scripts/experiment_recipe.py --output_dir outputs/recipe --rows p7-28px-2400 --arms none hard+fmap --seeds 1
    python scripts/experiment_recipe.py --output_dir outputs/recipe --summary_only              # table from disk
    python scripts/experiment_recipe.py --output_dir /tmp/recipe --quick                        # smoke run (CI)

Each seed trains one CNN teacher per input size (`scripts/train_teacher.py`, 10 epochs) that every student of that
seed and size shares. Students of a seed that see the same views (the distilled arms of a row, and rows that differ
only in learning rate or student) can train from one record of their teacher's outputs, the teacher run once for
them (`experiment_common.share_teacher_records`): `--teacher_record auto` (the default) records where the measured
costs say it pays, `always`, or `never`. Finished runs are kept: a rerun completes what is missing, and seeds can
run as separate processes (one thread each) into one folder. Every run is `scripts/train.py` in-process with the
flags printed above it.
"""

import argparse
import json
import statistics
import time
from pathlib import Path

import experiment_common  # noqa: F401  (first: it keeps everything offline before transformers is imported)
import train
import train_teacher
from experiment_common import (
    RECORD_WHEN,
    RESULTS_NAME,
    describe_distillation_cost,
    distillation_cost,
    finished_results,
    output_dir_of,
    run_unless_finished,
    share_teacher_records,
)

from hf_deit.plots import plot_groups

# Students. "p7": the default embedded student (28 px, patch 7: a 4x4 grid of 16 tokens, width 192, 6 blocks);
# "p4": the earlier one (28 px padded to 32, patch 4: 64 tokens, width 128), 1.3x slower per step.
P7 = ["--config_overrides", "image_size=28,patch_size=7,hidden_size=192,num_hidden_layers=6,num_attention_heads=3",
      "--learning_rate", "5e-4"]  # fmt: skip
P4 = ["--config_overrides", "image_size=32,patch_size=4,hidden_size=128,num_hidden_layers=6,num_attention_heads=4",
      "--learning_rate", "1e-3"]  # fmt: skip
LIGHT = ["--rand_augment", "none", "--reprob", "0", "--scale_min", "0.8", "--mixup", "0", "--cutmix", "0"]
MODERATE = ["--rand_augment", "3", "--reprob", "0", "--scale_min", "0.65", "--mixup", "0", "--cutmix", "0"]
# between light and moderate, for budgets too short for moderate augmentation to pay the undistilled student back
MILD = ["--rand_augment", "2", "--reprob", "0", "--scale_min", "0.8", "--mixup", "0", "--cutmix", "0"]
MILD_CROPS = ["--rand_augment", "3", "--reprob", "0", "--scale_min", "0.7", "--mixup", "0", "--cutmix", "0"]
STRONGER = ["--rand_augment", "5", "--reprob", "0.1", "--scale_min", "0.5", "--mixup", "0", "--cutmix", "0"]
MIXED = ["--rand_augment", "none", "--reprob", "0", "--scale_min", "0.8", "--mixup", "0.8", "--cutmix", "1.0"]

NO_MAPS = ["--feature_map_distillation_weight", "0"]  # the default turns them on for small images and a CNN teacher
NONE = ["--distillation_type", "none"]
HARD = ["--distillation_type", "hard", *NO_MAPS]
SOFT = ["--distillation_type", "soft", "--distillation_tau", "1", *NO_MAPS]
# hard distillation, and the student's first block imitates the teacher's stage output nearest its 4x4 grid
HARD_FMAP = ["--distillation_type", "hard", "--feature_map_distillation_weight", "1", "--feature_map_distillation_layers", "0"]
SOFT_T3 = ["--distillation_type", "soft", "--distillation_tau", "3", "--distillation_alpha", "0.1", *NO_MAPS]
# stronger locality guidance: a larger weight, or more blocks imitating the teacher's map
HARD_FMAP_W3 = ["--distillation_type", "hard", "--feature_map_distillation_weight", "3", "--feature_map_distillation_layers", "0"]
HARD_FMAP_L012 = ["--distillation_type", "hard", "--feature_map_distillation_weight", "1",
                  "--feature_map_distillation_layers", "0", "1", "2"]
HARD_FMAP_ALL = ["--distillation_type", "hard", "--feature_map_distillation_weight", "1",
                 "--feature_map_distillation_layers", "0", "1", "2", "3", "4", "5"]

# row: (what it tests, image size, flags of every arm, {arm: its own flags})
ROWS = {
    "p4-32px-800": ("the earlier student, 32 px, patch 4, width 128, lr 1e-3; 800 steps", 32, [*P4, *LIGHT, "--max_steps", "800"],
                    {"none": NONE, "hard": HARD}),
    "p7-28px-800": ("native 28 px, patch 7, width 192, lr 5e-4; 800 steps", 28, [*P7, *LIGHT, "--max_steps", "800"],
                    {"none": NONE, "hard": HARD, "soft": SOFT, "soft-t3-a0.1": SOFT_T3, "hard+fmap": HARD_FMAP}),
    "p7-28px-800-mixup": ("as above, mixup 0.8 / cutmix 1.0 (the teacher labels the mixed image)", 28,
                          [*P7, *MIXED, "--max_steps", "800"], {"none": NONE, "hard": HARD, "hard+fmap": HARD_FMAP}),
    "p7-28px-1200": ("native 28 px, patch 7, width 192, lr 5e-4; 1,200 steps (the main job's budget)", 28,
                     [*P7, *LIGHT, "--max_steps", "1200"], {"none": NONE, "hard+fmap": HARD_FMAP, "hard+fmap-w3": HARD_FMAP_W3,
                                                             "hard+fmap-blocks012": HARD_FMAP_L012,
                                                             "hard+fmap-all-blocks": HARD_FMAP_ALL}),
    "p7-28px-1200-lr1e-3": ("as above with learning rate 1e-3; 1,200 steps", 28,
                            [*P7, *LIGHT, "--max_steps", "1200", "--learning_rate", "1e-3"],
                            {"none": NONE, "hard+fmap": HARD_FMAP}),
    "p7-28px-1200-lr2e-3": ("as above with learning rate 2e-3; 1,200 steps", 28,
                            [*P7, *LIGHT, "--max_steps", "1200", "--learning_rate", "2e-3"],
                            {"none": NONE, "hard+fmap": HARD_FMAP}),
    "p7-28px-1200-lr1e-3-midaug": ("learning rate 1e-3, moderate augmentation: RandAugment m3, crops >= 65%; 1,200 steps",
                                   28, [*P7, *MODERATE, "--max_steps", "1200", "--learning_rate", "1e-3"],
                                   {"none": NONE, "hard+fmap": HARD_FMAP}),
    "p7-28px-2400-lr1e-3-midaug": ("as above (moderate augmentation, learning rate 1e-3); 2,400 steps", 28,
                                   [*P7, *MODERATE, "--max_steps", "2400", "--learning_rate", "1e-3"],
                                   {"none": NONE, "hard+fmap": HARD_FMAP}),
    "p7-28px-1600-lr1e-3-mildaug": ("learning rate 1e-3, mild augmentation: RandAugment m2, crops >= 80%; 1,600 steps",
                                    28, [*P7, *MILD, "--max_steps", "1600", "--learning_rate", "1e-3"],
                                    {"none": NONE, "hard+fmap": HARD_FMAP}),
    "p7-28px-1600-lr1e-3-mildaug-crops": ("learning rate 1e-3, RandAugment m3, crops >= 70%; 1,600 steps", 28,
                                          [*P7, *MILD_CROPS, "--max_steps", "1600", "--learning_rate", "1e-3"],
                                          {"none": NONE, "hard+fmap": HARD_FMAP}),
    "p7-28px-1200-lr1e-3-aug": ("learning rate 1e-3, stronger augmentation: RandAugment m5, crops >= 50%, erasing 0.1; "
                                "1,200 steps", 28,
                                [*P7, *STRONGER, "--max_steps", "1200", "--learning_rate", "1e-3"],
                                {"none": NONE, "hard+fmap": HARD_FMAP}),
    "p7-28px-1200-mixup": ("as above, mixup 0.8 / cutmix 1.0 (the teacher labels the mixed image); 1,200 steps", 28,
                           [*P7, *MIXED, "--max_steps", "1200"], {"none": NONE, "hard+fmap": HARD_FMAP}),
    "p7-28px-2400": ("native 28 px, patch 7, width 192, lr 5e-4; 2,400 steps", 28, [*P7, *LIGHT, "--max_steps", "2400"],
                     {"none": NONE, "hard": HARD, "hard+fmap": HARD_FMAP}),
}  # fmt: skip
QUICK_ROWS = {"quick": ("smoke run", 28, [*P7, *LIGHT, "--max_steps", "2", "--max_train_samples", "64",
                                          "--max_eval_samples", "32", "--per_device_train_batch_size", "16"],
                        {"none": NONE, "hard": HARD, "hard+fmap": HARD_FMAP})}  # fmt: skip
COMMON = ["--dataset_name", "mnist", "--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true",
          "--report_to", "none", "--dataloader_num_workers", "0"]  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/recipe")
    parser.add_argument("--rows", nargs="+", default=None, help=f"Rows to run (default: all): {', '.join(ROWS)}.")
    parser.add_argument("--arms", nargs="+", default=None, help="Only these arms of each row.")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--teacher_epochs", type=float, default=10)
    parser.add_argument("--teacher_record", choices=RECORD_WHEN, default="auto",
                        help="Students that see the same views train from one record of their teacher: 'auto' where "
                        "it pays (measured), 'always', or 'never' (the teacher runs inside every student).")
    parser.add_argument("--summary_only", action="store_true", help="Train nothing; rebuild the table from disk.")
    parser.add_argument("--quick", action="store_true", help="A tiny row for CI.")
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    rows = QUICK_ROWS if args.quick else ROWS
    chosen = args.rows or list(rows)
    unknown = sorted(set(chosen) - set(rows))
    if unknown:
        raise SystemExit(f"Unknown rows {unknown}; choose from {', '.join(rows)}.")
    for seed in [] if args.summary_only else args.seeds:
        students = {}
        for row in chosen:
            _, image_size, flags, arms = rows[row]
            teacher_dir = out / f"seed{seed}" / f"teacher{image_size}"
            teacher_flags = ["--image_size", str(image_size), "--num_train_epochs", str(args.teacher_epochs)]
            if args.quick:
                teacher_flags += ["--max_steps", "2", "--max_train_samples", "64", "--max_eval_samples", "32"]
            run_unless_finished(f"seed {seed}: teacher at {image_size} px", teacher_dir, train_teacher.main,
                     ["--output_dir", str(teacher_dir), "--seed", str(seed), *COMMON, *teacher_flags])  # fmt: skip
            for arm, arm_flags in arms.items():
                if args.arms and arm not in args.arms:
                    continue
                students[f"{row} / {arm}"] = [
                    "--output_dir", str(out / f"seed{seed}" / row / arm), "--seed", str(seed),
                    "--teacher_name_or_path", str(teacher_dir), *COMMON, *flags, *arm_flags,
                ]  # fmt: skip
        # the distilled arms of a row, and rows that differ only in learning rate, see the same views
        students = share_teacher_records(f"seed {seed}", out / f"seed{seed}" / "records", students,
                                         when=args.teacher_record)  # fmt: skip
        for name, argv in students.items():
            run_unless_finished(f"seed {seed}: {name}", output_dir_of(argv), train.main, argv)
    return write_results(out, rows)


def collect(out: Path, rows: dict) -> dict:
    """{row: {arm: {seed: metrics}}} and {image size: {seed: teacher metrics}} from the finished runs on disk."""
    runs, teachers = {}, {}
    for seed_dir in sorted(out.glob("seed*")):
        seed = int(seed_dir.name.removeprefix("seed"))
        for teacher in seed_dir.glob(f"teacher*/{RESULTS_NAME}"):
            teachers.setdefault(teacher.parent.name, {})[seed] = json.loads(teacher.read_text())
        for row in rows:  # rows in the study's order
            for result in sorted((seed_dir / row).glob(f"*/{RESULTS_NAME}")):
                metrics = finished_results(result.parent)
                if metrics is not None:
                    runs.setdefault(row, {}).setdefault(result.parent.name, {})[seed] = metrics
    return {"runs": runs, "teachers": teachers}


def _stats(values: list[float]) -> str:
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.fmean(values):.1f} ± {statistics.stdev(values):.1f}"


def write_results(out: Path, rows: dict) -> dict:
    found = collect(out, rows)
    lines = [
        "Validation top-1 (%) of the averaged heads on the 1,000 embedded MNIST digits (4,000 training labels); "
        "every arm of a row has the same steps (batch 64), recipe and teacher.",
        "",
        "| row | arm | per seed | mean ± std | cls / dist head (mean) | minus none, per seed | train min (mean) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, by_seed in sorted(found["teachers"].items()):
        accuracies = [100 * metrics["eval_accuracy"] for _, metrics in sorted(by_seed.items())]
        lines.append(f"| CNN teacher, {name.removeprefix('teacher')} px | - | {' / '.join(f'{a:.1f}' for a in accuracies)} | "
                     f"{_stats(accuracies)} | - | - | {statistics.fmean(m['train_runtime'] for m in by_seed.values()) / 60:.1f} |")
    for row, arms in found["runs"].items():
        baseline = arms.get("none", {})
        for arm in sorted(arms, key=list(rows[row][3]).index):  # in the row's order: none first
            by_seed = arms[arm]
            seeds = sorted(by_seed)
            accuracy = [100 * by_seed[s]["eval_accuracy"] for s in seeds]
            cls = statistics.fmean(100 * by_seed[s]["eval_cls_accuracy"] for s in seeds)
            dist = statistics.fmean(100 * by_seed[s]["eval_distillation_accuracy"] for s in seeds)
            minus = [f"{100 * (by_seed[s]['eval_accuracy'] - baseline[s]['eval_accuracy']):+.1f}"
                     for s in seeds if s in baseline and arm != "none"]  # fmt: skip
            minutes = statistics.fmean(by_seed[s]["train_runtime"] for s in seeds) / 60
            lines.append(f"| {row} | {arm} | {' / '.join(f'{a:.1f}' for a in accuracy)} ({'seeds' if len(seeds) > 1 else 'seed'} {', '.join(map(str, seeds))}) "
                         f"| {_stats(accuracy)} | {cls:.1f} / {dist:.1f} | {' / '.join(minus) or '-'} | {minutes:.1f} |")
    lines += ["", "Rows:"] + [f"- `{row}`: {rows[row][0]}; flags `{' '.join(rows[row][2])}`" for row in found["runs"]]
    found["distillation_cost"] = distillation_cost(
        sorted(out.glob("seed*/records")),
        [out / f"seed{seed}" / row / arm for row, arms in found["runs"].items() for arm, by_seed in arms.items()
         if arm != "none" for seed in by_seed],
    )  # fmt: skip
    lines += ["", describe_distillation_cost(found["distillation_cost"])]
    table = "\n".join(lines) + "\n"
    (out / "results.md").write_text(table)
    (out / "results.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), **found}, indent=2))
    if found["runs"]:
        plot_groups({row: {arm: [100 * metrics["eval_accuracy"] for _, metrics in sorted(arms[arm].items())]
                           for arm in sorted(arms, key=list(rows[row][3]).index)}
                     for row, arms in found["runs"].items()},
                    out / "results.png", title="Recipe study: top-1 of the averaged heads, a dot per seed")  # fmt: skip
    print(table)
    return found


if __name__ == "__main__":
    main()
