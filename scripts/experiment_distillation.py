#!/usr/bin/env python
r"""The paper's claim at our scale: on the embedded MNIST digits, a CNN teacher, and a small DeiT trained without
distillation, with soft distillation and with hard distillation, every student with the same budget (epochs, batch,
recipe), over several seeds. Writes `results.json`, `results.md` (mean, std, min, max per variant) and `results.png`
(each run's accuracy as a dot, per variant).

    python scripts/experiment_distillation.py --output_dir outputs/experiment --seeds 0 1 2 --student_epochs 16 \
        -- --config_overrides hidden_size=96 --rand_augment none --reprob 0 --scale_min 0.8   # the README's run
    python scripts/experiment_distillation.py --quick            # a smoke run (CI)

Each seed trains its own teacher, so the spread includes the teacher's. The soft and hard students of a seed see the
same views: `--teacher_record` (`experiment_common.share_teacher_records`) lets them train from one record of it. Every run is `scripts/train.py` or
`scripts/train_teacher.py` in-process with the flags printed above it.
"""

import argparse
import json
import statistics
from pathlib import Path

import experiment_common  # noqa: F401  (first: it keeps everything offline before transformers is imported)
import train
import train_teacher
from experiment_common import RECORD_WHEN, RESULTS_NAME, finished_results, run_unless_finished, share_teacher_records

from hf_deit.plots import plot_groups
from hf_deit_inputs.terms import DISTILLATION_TYPES

STUDENT_VARIANTS = DISTILLATION_TYPES
LABELS = {"teacher": "CNN teacher", "none": "DeiT, no distillation", "soft": "DeiT, soft distillation",
          "hard": "DeiT, hard distillation"}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/experiment_distillation")
    parser.add_argument("--dataset_name", default="mnist")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="+", default=list(STUDENT_VARIANTS), choices=STUDENT_VARIANTS)
    parser.add_argument("--teacher_epochs", type=float, default=10)
    parser.add_argument("--student_epochs", type=float, default=30)
    parser.add_argument("--distillation_tau", type=float, default=1.0)
    parser.add_argument("--quick", action="store_true", help="Tiny subset, few steps, for CI.")
    parser.add_argument("--teacher_record", choices=RECORD_WHEN, default="auto",
                        help="The soft and hard students see the same views and can train from one record of the "
                        "teacher: 'auto' where it pays (measured), 'always', or 'never'.")
    parser.add_argument("student_flags", nargs=argparse.REMAINDER, help="After --: more flags for every student.")
    return parser.parse_args(argv)


def common_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--dataset_name", args.dataset_name, "--seed", str(args.seed), "--save_strategy", "no",
             "--eval_strategy", "no", "--logging_steps", "20", "--disable_tqdm", "true"]  # fmt: skip
    if args.quick:
        flags += ["--max_train_samples", "256", "--max_eval_samples", "128", "--max_steps", "6"]
    return flags


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    extra = [flag for flag in args.student_flags if flag != "--"]
    for seed in args.seeds:
        args.seed = seed
        flags = common_flags(args)
        teacher_dir = out / f"seed{seed}" / "teacher"
        # Finished runs are kept: a rerun completes the grid.
        run_unless_finished(f"seed {seed}: teacher", teacher_dir, train_teacher.main, [
            "--output_dir", str(teacher_dir), "--num_train_epochs", str(args.teacher_epochs),
            *flags,
        ])
        students = {variant: [
            "--output_dir", str(out / f"seed{seed}" / variant), "--num_train_epochs", str(args.student_epochs),
            "--teacher_name_or_path", str(teacher_dir), "--distillation_type", variant,
            "--distillation_tau", str(args.distillation_tau), *flags, *extra,
        ] for variant in args.variants}  # fmt: skip
        # soft and hard see the same views
        students = share_teacher_records(f"seed {seed}", out / f"seed{seed}" / "records", students,
                                         when=args.teacher_record)  # fmt: skip
        for variant, student_argv in students.items():
            run_unless_finished(f"seed {seed}: student, {variant}", out / f"seed{seed}" / variant, train.main,
                                student_argv)  # fmt: skip
        # Summarised after every seed from what is on disk: an interrupted experiment keeps what it measured, and
        # seeds run as separate processes into the same folder add up.
        summary = write_results(out, vars(args))
    return summary


def collect_runs(out: Path) -> dict[str, dict[int, dict]]:
    """{run name: {seed: metrics}} from every finished run's all_results.json under `out`."""
    runs: dict[str, dict[int, dict]] = {}
    for path in sorted(out.glob(f"seed*/*/{RESULTS_NAME}")):
        metrics = finished_results(path.parent)
        if metrics is None:  # still running, or killed before its evaluation
            continue
        seed = int(path.parent.parent.name.removeprefix("seed"))
        runs.setdefault(path.parent.name, {})[seed] = metrics
    return runs


def summarize(values: list[float]) -> dict:
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else 0.0,
        "min": min(values),
        "max": max(values),
        "n": len(values),
    }


def write_results(out: Path, setup: dict) -> dict:
    runs = collect_runs(out)
    summary = {}
    for name in ("teacher", *STUDENT_VARIANTS):
        by_seed = runs.get(name)
        if not by_seed:
            continue
        summary[name] = {
            key: summarize([100 * metrics[f"eval_{key}"] for metrics in by_seed.values()])
            for key in ("accuracy", "cls_accuracy", "distillation_accuracy", "teacher_agreement")
            if all(f"eval_{key}" in metrics for metrics in by_seed.values())
        }
        summary[name]["train_minutes"] = summarize([metrics["train_runtime"] / 60 for metrics in by_seed.values()])
        summary[name]["seeds"] = sorted(by_seed)
    setup = {key: value for key, value in setup.items() if key != "seed"}
    setup["student_flags"] = [flag for flag in setup.get("student_flags", []) if flag != "--"]
    (out / "results.json").write_text(json.dumps({"setup": setup, "summary": summary, "runs": runs}, indent=2))
    (out / "results.md").write_text(markdown_table(summary, setup))
    plot_groups({"top-1 of the averaged heads": {LABELS[name]: [100 * metrics["eval_accuracy"] for metrics in
                                                                runs[name].values()] for name in summary}},
                out / "results.png", title=f"{setup['dataset_name']}: one dot per seed, bars at the mean")
    return summary


def markdown_table(summary: dict, setup: dict) -> str:
    def cell(stats: dict | None) -> str:
        if not stats:
            return "-"
        return f"{stats['mean']:.1f} ± {stats['std']:.1f} ({stats['min']:.1f}-{stats['max']:.1f})"

    lines = [
        f"Validation top-1 (%), mean ± std (min-max) over the seeds listed; dataset {setup['dataset_name']}; "
        f"teacher {setup['teacher_epochs']:g} epochs, every student {setup['student_epochs']:g} epochs"
        + (f" with `{' '.join(setup['student_flags'])}`." if setup["student_flags"] else "."),
        "",
        "| run | seeds | averaged heads | cls head | distillation head | agrees with teacher | train minutes |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, stats in summary.items():
        lines.append(f"| {LABELS[name]} | {', '.join(map(str, stats['seeds']))} | {cell(stats.get('accuracy'))} | "
                     f"{cell(stats.get('cls_accuracy'))} | {cell(stats.get('distillation_accuracy'))} | "
                     f"{cell(stats.get('teacher_agreement'))} | {stats['train_minutes']['mean']:.1f} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
