#!/usr/bin/env python
r"""A new user's own small folder: does the README's path, teacher first and then distil, help the student?

On each sample folder (`scripts/make_sample_folders.py`: 4 classes of photos, 30 training images each; 5 classes of
textures, 40 each; validation crops from regions never seen in training; 10 classes of 8x8 digit scans, about 1,440
training images), with default flags (the input sized to the images, `hf_deit.data.sizing`, unless `--image_size`):

    teacher          scripts/train_teacher.py (its default schedule: at least 300 steps, best checkpoint kept)
    weak teacher     scripts/train_teacher.py --num_train_epochs 10 (the old default's schedule: 20-40 steps)
    none             scripts/train.py --distillation_type none
    hard             scripts/train.py --teacher_name_or_path teacher (hard distillation, the default)
    hard, weak, all  ... --teacher_name_or_path "weak teacher" (protected, the default: labels on labelled images)
    hard, weak, ...  ... the same with --weak_teacher_fallback where_wrong (labels where the teacher is wrong)
    hard, weak, off  ... the same with --protect_from_weak_teacher false

    python scripts/experiment_own_folder.py --kinds photos textures            # input sized to the images
    python scripts/experiment_own_folder.py --kinds scans --teachers teacher --students none hard
    python scripts/experiment_own_folder.py --image_size 96                    # one size for every folder
    python scripts/experiment_own_folder.py --table_only           # the table of the runs finished so far

The three students of the weak teacher see the same views: `--teacher_record`
(`experiment_common.share_teacher_records`) lets them train from one record of it. Two runs at a time, one process and
one thread each; each run's log is `train.log` in its folder, and a finished run is kept when the script is rerun.
Prints a table (also `results.md`, and `results.png`) with the command, machine and date.
"""

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import experiment_common  # noqa: F401  (first: it keeps everything offline)
from experiment_common import (
    RECORD_WHEN,
    finished_results,
    is_finished,
    run_in_parallel,
    share_teacher_records,
    without_flag,
)
from make_sample_folders import KINDS, build_folder

from hf_deit.plots import plot_groups

COMMON = ["--report_to", "none", "--disable_tqdm", "true"]
STUDENTS = {  # name -> (title, flags beyond the data; "{teacher}"/"{weak}" are the teachers' folders)
    "none": ("student, no teacher", ["--distillation_type", "none"]),
    "hard": ("student, hard distillation from the default teacher", ["--teacher_name_or_path", "{teacher}"]),
    "hard_weak": ("student, hard distillation from the weak teacher, --weak_teacher_fallback where_wrong",
                  ["--teacher_name_or_path", "{weak}", "--weak_teacher_fallback", "where_wrong"]),
    "hard_weak_off": ("student, hard distillation from the weak teacher, --protect_from_weak_teacher false",
                      ["--teacher_name_or_path", "{weak}", "--protect_from_weak_teacher", "false"]),
    "hard_weak_all": ("student, hard distillation from the weak teacher, protected (the default: fallback all)",
                      ["--teacher_name_or_path", "{weak}", "--weak_teacher_fallback", "all"]),
}  # fmt: skip
TEACHERS = {
    "teacher": ("teacher (default schedule)", []),
    "weak_teacher": ("weak teacher (--num_train_epochs 10, the old default's schedule)", ["--num_train_epochs", "10"]),
}


def run_two_at_a_time(runs: list[tuple[str, str, Path, list[str]]]) -> None:
    """Runs (title, script, output folder, argv) two at a time, one thread each (`experiment_common.run_in_parallel`,
    a progress line per run); finished runs are skipped."""
    pending = {f"{output_dir.parent.name}/{output_dir.name}": (title, script, output_dir, argv)
               for title, script, output_dir, argv in runs if not is_finished(output_dir)}  # fmt: skip
    for title, script, output_dir, argv in pending.values():
        print(f"=== {title}: {script} --output_dir {output_dir} {' '.join(argv)}", flush=True)
    seconds = run_in_parallel({name: (script, ["--output_dir", str(output_dir), *argv])
                               for name, (_, script, output_dir, argv) in pending.items()}, width=2)  # fmt: skip
    for name, (_, _, output_dir, _) in pending.items():
        (output_dir / "wall_seconds.txt").write_text(f"{seconds[name]:.0f}\n")


def machine() -> str:
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
    except OSError:
        return platform.processor() or platform.machine()
    model = next((line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name")), "?")
    flags = [flag for flag in ("avx512_bf16", "amx_bf16", "amx_tile") if f" {flag}" in lscpu]
    return f"{model}, {os.cpu_count()} cores, flags: {', '.join(flags) or 'no avx512_bf16/amx'}"


def finished_run(output_dir: Path) -> dict | None:
    """A finished run's metrics, with the wall-clock seconds its process took (`wall_seconds`) where recorded."""
    metrics = finished_results(output_dir)
    wall = output_dir / "wall_seconds.txt"
    if metrics is not None and wall.is_file():
        metrics["wall_seconds"] = float(wall.read_text())
    return metrics


def pct(metrics: dict | None, key: str) -> str:
    value = (metrics or {}).get(key)
    return "-" if value is None else f"{100 * value:.1f}"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="outputs/own_folder")
    parser.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    parser.add_argument("--image_size", type=int, default=None,
                        help="One input size for every run (default: the scripts' own, sized to each folder's images).")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--teachers", nargs="+", default=list(TEACHERS), choices=list(TEACHERS))
    parser.add_argument("--students", nargs="+", default=list(STUDENTS), choices=list(STUDENTS),
                        help="The student runs to make (the table shows every finished one).")
    parser.add_argument("--teacher_record", choices=RECORD_WHEN, default="auto",
                        help="The students of one teacher see the same views and can train from one record of it: "
                        "'auto' where it pays (measured), 'always', or 'never'.")
    parser.add_argument("--table_only", action="store_true", help="Print the table of the finished runs; run none.")
    args = parser.parse_args(argv)
    out = Path(args.output_dir)
    results = {}
    for kind in args.kinds:
        folder = out / "data" / kind
        train_dir, val_dir = (folder / "train", folder / "val") if (folder / "val").is_dir() else \
            build_folder(kind, folder, seed=args.seed)  # fmt: skip
        size = [] if args.image_size is None else ["--image_size", str(args.image_size)]
        data = ["--train_dir", str(train_dir), "--validation_dir", str(val_dir), *size, "--seed", str(args.seed),
                *COMMON]  # fmt: skip
        runs = out / kind
        if args.table_only:
            results[kind] = {name: finished_run(runs / name) for name in (*TEACHERS, *STUDENTS)}
            continue
        run_two_at_a_time([(f"{kind}: {title}", "train_teacher.py", runs / name, [*flags, *data])
                         for name, (title, flags) in TEACHERS.items() if name in args.teachers])  # fmt: skip
        folders = {"teacher": str(runs / "teacher"), "weak": str(runs / "weak_teacher")}
        students = {name: ["--output_dir", str(runs / name), *(flag.format(**folders) for flag in flags), *data]
                    for name, (_, flags) in STUDENTS.items() if name in args.students}  # fmt: skip
        # the three students of the weak teacher see the same views
        students = share_teacher_records(kind, runs / "records", students, when=args.teacher_record)
        run_two_at_a_time([(f"{kind}: {STUDENTS[name][0]}", "train.py", runs / name, without_flag(argv, "--output_dir"))
                           for name, argv in students.items()])  # fmt: skip
        results[kind] = {name: finished_run(runs / name) for name in (*TEACHERS, *STUDENTS)}
    table = results_table(results, args, argv)
    print(table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot_groups({kind: {name: [100 * metrics["eval_accuracy"]] for name, metrics in runs.items() if metrics}
                 for kind, runs in results.items()}, out / "results.png",
                title=f"Own folders: top-1 of the averaged heads (seed {args.seed})")  # fmt: skip
    return results


def results_table(results: dict, args, argv) -> str:
    rows = ["| folder | model | top-1 (averaged heads) | class head | distillation head | teacher (val) | wall min |",
            "|---|---|---|---|---|---|---|"]  # fmt: skip
    for kind, runs in results.items():
        for name, (title, _) in {**TEACHERS, **STUDENTS}.items():
            metrics = runs[name]
            if metrics is None:
                continue  # not run
            wall = f"{metrics['wall_seconds'] / 60:.1f}" if "wall_seconds" in metrics else "-"
            if name in TEACHERS:
                rows.append(f"| {kind} | {title} | {pct(metrics, 'eval_accuracy')} | | | | {wall} |")
            else:
                rows.append(f"| {kind} | {title} | {pct(metrics, 'eval_accuracy')} | "
                            f"{pct(metrics, 'eval_cls_accuracy')} | {pct(metrics, 'eval_distillation_accuracy')} | "
                            f"{pct(metrics, 'eval_teacher_accuracy')} | {wall} |")
    command = "python scripts/experiment_own_folder.py " + " ".join(argv if argv is not None else sys.argv[1:])
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return "\n".join(rows) + f"\n\n`{command.strip()}`, {when}, {machine()}; one thread per run, two runs at a time."


if __name__ == "__main__":
    main()
