#!/usr/bin/env python
"""The main job (`make train`): train a CNN teacher, then a distilled DeiT with and without the teacher, on the
embedded MNIST digits, and print their accuracies side by side. No network; about 10 minutes on 2 CPU cores.

    python scripts/main_job.py                         # the full job
    python scripts/main_job.py --student_epochs 2      # shorter
    python scripts/main_job.py --quick                 # a smoke run in about a minute (tests use it)

Every stage is the public script run in-process with its documented flags, so each line below can be rerun alone.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # everything here is local
sys.path.insert(0, str(Path(__file__).resolve().parent))

import train  # noqa: E402
import train_teacher  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/main_job")
    parser.add_argument("--dataset_name", default="mnist", help="mnist (5,000 digits) or digits (1,797, 8x8).")
    parser.add_argument("--teacher_epochs", type=float, default=10)
    parser.add_argument("--student_epochs", type=float, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="Tiny subset and few steps: a smoke run.")
    return parser.parse_args(argv)


def common_flags(args: argparse.Namespace) -> list[str]:
    flags = ["--dataset_name", args.dataset_name, "--seed", str(args.seed), "--save_strategy", "no",
             "--eval_strategy", "no", "--logging_steps", "20", "--disable_tqdm", "true"]
    if args.quick:
        flags += ["--max_train_samples", "256", "--max_eval_samples", "128", "--max_steps", "6"]
    return flags


def run_stage(name: str, main, argv: list[str]) -> dict:
    print(f"\n=== {name}: {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    metrics = main(argv)
    metrics["wall_seconds"] = round(time.perf_counter() - start, 1)
    return metrics


def main(argv=None) -> dict:
    args = parse_args(argv)
    out = Path(args.output_dir)
    flags = common_flags(args)
    teacher_dir = out / "teacher"
    results = {
        "teacher": run_stage("teacher (CNN)", train_teacher.main, [
            "--output_dir", str(teacher_dir), "--num_train_epochs", str(args.teacher_epochs), *flags,
        ]),
    }
    for distillation_type in ("none", "hard"):
        results[f"deit_{distillation_type}"] = run_stage(f"DeiT student, distillation {distillation_type}", train.main, [
            "--output_dir", str(out / f"deit_{distillation_type}"), "--num_train_epochs", str(args.student_epochs),
            "--teacher_name_or_path", str(teacher_dir), "--distillation_type", distillation_type, *flags,
        ])
    (out / "results.json").write_text(json.dumps(results, indent=2))
    print(summary_table(results))
    print(f"\nModels, cards and metrics are in {out}/ (results.json has every number).")
    return results


def summary_table(results: dict) -> str:
    def pct(metrics: dict, key: str) -> str:
        value = metrics.get(f"eval_{key}")
        return "-" if value is None else f"{100 * value:.1f}"

    rows = [
        "| model | top-1 (averaged heads) | cls head | distillation head | agrees with teacher | train time (s) |",
        "|---|---|---|---|---|---|",
    ]
    teacher = results["teacher"]
    rows.append(f"| CNN teacher | {pct(teacher, 'accuracy')} | - | - | - | {teacher['wall_seconds']} |")
    for name, label in (("deit_none", "DeiT, no distillation"), ("deit_hard", "DeiT, hard distillation")):
        m = results[name]
        rows.append(f"| {label} | {pct(m, 'accuracy')} | {pct(m, 'cls_accuracy')} | "
                    f"{pct(m, 'distillation_accuracy')} | {pct(m, 'teacher_agreement')} | {m['wall_seconds']} |")
    return "\nValidation accuracy (%), embedded data:\n" + "\n".join(rows)


if __name__ == "__main__":
    main()
