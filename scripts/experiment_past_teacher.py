#!/usr/bin/env python
r"""DeiT's headline at our scale: does the distilled student end up at or above its CNN teacher?

On the embedded MNIST digits (4,000 training labels, 1,000 validation), each seed trains the main job's (a) teacher
(`scripts/train_teacher.py`, 10 epochs; 98.5% at seed 0 in the main job) and then one distilled DeiT student per
recipe, far longer than the main job's 1,600 steps: the literature's "patient and consistent" distillation (Beyer et
al. 2022; DeiT trains 300-1,000 epochs). The teacher runs online on exactly the student's augmented (and mixed) view.
Students evaluate every twentieth of their run, for learning curves.

    python scripts/experiment_past_teacher.py --output_dir outputs/past_teacher --seeds 0 1 2 --recipes mixed
    python scripts/experiment_past_teacher.py --output_dir outputs/past_teacher --summary_only
    python scripts/experiment_past_teacher.py --output_dir /tmp/past_teacher --quick      # smoke run (tests)

Teachers train first, one after the other; then every (seed, recipe) student runs at once, one process and one
thread each (`experiment_common.run_in_parallel`). Finished runs are kept: a rerun completes what is missing. Writes
`results.json`, `results.md` (the table) and `learning_curves.png` (one panel per seed: each student's averaged,
class and distillation heads over the steps, the teacher's accuracy as a line).
"""

import argparse
import json
import platform
import subprocess
from pathlib import Path

import experiment_common  # noqa: F401  (first: it keeps everything offline before transformers is imported)
import train_teacher
from experiment_common import QUIET_RUN_FLAGS, finished_results, is_finished, run_in_parallel, run_unless_finished

from hf_deit.plots import learning_curve, matplotlib_available, plot_learning_curves

# The embedded student (28 px, patch 7, width 192, 6 blocks), hard distillation with the teacher's feature maps for
# its first block (the small-image default), learning rate 5e-4: the recipe study's best row at 2,400 steps.
STUDENT = ["--dataset_name", "mnist", "--distillation_type", "hard", "--learning_rate", "5e-4"]
LIGHT = ["--rand_augment", "none", "--reprob", "0", "--scale_min", "0.8"]
RECIPES = {
    # crops of >= 80% and nothing else: the recipe study's p7-28px-2400 row (98.0 +- 0.4 there), four times longer
    "light": ("crops >= 80%, no mixing", [*LIGHT, "--mixup", "0", "--cutmix", "0"]),
    # function matching: every batch mixed (mixup 0.8 / cutmix 1.0), the teacher labelling the mixed image
    "mixed": ("crops >= 80%, mixup 0.8 / cutmix 1.0 on every batch", [*LIGHT, "--mixup", "0.8", "--cutmix", "1.0"]),
}
CURVE_POINTS = 20
HEADS = {"averaged heads": "eval_accuracy", "class head": "eval_cls_accuracy",
         "distillation head": "eval_distillation_accuracy"}  # fmt: skip


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/past_teacher")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--recipes", nargs="+", choices=list(RECIPES), default=["mixed"])
    parser.add_argument("--steps", type=int, default=6000, help="Optimizer steps of each student (batch 64).")
    parser.add_argument("--teacher_epochs", type=float, default=10)
    parser.add_argument("--summary_only", action="store_true", help="Train nothing; rebuild the table from disk.")
    parser.add_argument("--quick", action="store_true", help="Tiny subsets and a few steps: a smoke run.")
    return parser.parse_args(argv)


def teacher_argv(out: Path, seed: int, args) -> list[str]:
    steps = ["--max_steps", "2"] if args.quick else ["--num_train_epochs", str(args.teacher_epochs)]
    return ["--output_dir", str(out / f"seed{seed}" / "teacher"), "--dataset_name", "mnist", "--seed", str(seed),
            *steps, *QUIET_RUN_FLAGS, *_subset(args)]  # fmt: skip


def student_argv(out: Path, seed: int, recipe: str, args) -> list[str]:
    steps = 4 if args.quick else args.steps
    quiet = list(QUIET_RUN_FLAGS)
    quiet[quiet.index("--eval_strategy") + 1] = "steps"
    return ["--output_dir", str(out / f"seed{seed}" / recipe), "--seed", str(seed),
            "--teacher_name_or_path", str(out / f"seed{seed}" / "teacher"), *STUDENT, *RECIPES[recipe][1],
            "--max_steps", str(steps), *quiet, "--eval_steps", str(max(1, steps // CURVE_POINTS)),
            *_subset(args)]  # fmt: skip


def _subset(args) -> list[str]:
    return ["--max_train_samples", "128", "--max_eval_samples", "64"] if args.quick else []


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    if not args.summary_only:
        for seed in args.seeds:
            argv_ = teacher_argv(out, seed, args)
            run_unless_finished(f"seed {seed}: teacher", argv_[1], train_teacher.main, argv_)
        students = {f"seed {seed}, {recipe}": ("train.py", student_argv(out, seed, recipe, args))
                    for seed in args.seeds for recipe in args.recipes
                    if not is_finished(out / f"seed{seed}" / recipe)}  # fmt: skip
        for name, (_, student) in students.items():
            print(f"=== {name}: scripts/train.py {' '.join(student)}", flush=True)
        run_in_parallel(students)
    results = collect(out)
    (out / "results.json").write_text(json.dumps(results, indent=2))
    table = summary_table(results)
    (out / "results.md").write_text(f"{table}\n\nTable written on {machine()}.\n")
    print(table)
    if matplotlib_available() and results:
        print(f"Learning curves: {plot_curves(results, out / 'learning_curves.png')}")
    return results


def collect(out: Path) -> dict:
    """{seed: {"teacher": metrics, recipe: metrics with "curves" and "cpu_threads_share"}} of the finished runs."""
    results = {}
    for seed_dir in sorted(out.glob("seed*")):
        teacher = finished_results(seed_dir / "teacher")
        if teacher is None:
            continue
        seed = results.setdefault(seed_dir.name.removeprefix("seed"), {"teacher": teacher})
        for recipe in RECIPES:
            metrics = finished_results(seed_dir / recipe)
            if metrics is None:
                continue
            state = json.loads((seed_dir / recipe / "trainer_state.json").read_text())
            metrics["curves"] = {head: learning_curve(state["log_history"], key, metrics, state["global_step"])
                                 for head, key in HEADS.items()}  # fmt: skip
            seed[recipe] = metrics
    return results


def summary_table(results: dict) -> str:
    lines = ["Validation top-1 (%) on the 1,000 embedded MNIST digits, after the last step (no checkpoint picked).",
             "", "| seed | recipe | teacher | student, averaged heads | class / distillation head | student - teacher "
             "| steps | train min |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for seed, runs in sorted(results.items()):
        teacher = 100 * runs["teacher"]["eval_accuracy"]
        for recipe in RECIPES:
            if recipe not in runs:
                continue
            m = runs[recipe]
            student = 100 * m["eval_accuracy"]
            steps = m["curves"]["averaged heads"][-1][0]
            lines.append(f"| {seed} | {recipe} | {teacher:.1f} | {student:.1f} | {100 * m['eval_cls_accuracy']:.1f} / "
                         f"{100 * m['eval_distillation_accuracy']:.1f} | {student - teacher:+.1f} | {steps} | "
                         f"{m['train_runtime'] / 60:.1f} |")  # fmt: skip
    lines += ["", "Recipes: " + "; ".join(f"`{name}`: {text}" for name, (text, _) in RECIPES.items()) + "."]
    return "\n".join(lines)


def plot_curves(results: dict, path: Path) -> Path:
    panels, references = {}, {}
    for seed, runs in sorted(results.items()):
        panel = f"seed {seed}"
        panels[panel] = {f"{recipe}, {head}": runs[recipe]["curves"][head]
                         for recipe in RECIPES if recipe in runs for head in HEADS}  # fmt: skip
        references[panel] = {"CNN teacher": runs["teacher"]["eval_accuracy"]}
    return plot_learning_curves(panels, path, references, title="Distilled DeiT students and their teacher")


def machine() -> str:
    """The CPU model and its bf16/AMX flags, for the record next to the figures."""
    flags = open("/proc/cpuinfo").read() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in flags.splitlines() if line.startswith("model name")),
                 platform.processor())  # fmt: skip
    kinds = [flag for flag in ("avx512_bf16", "amx_bf16") if f" {flag}" in flags]
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    return f"{model} ({', '.join(kinds) or 'no bf16 flags'}), commit {commit or 'unknown'}"


if __name__ == "__main__":
    main()
