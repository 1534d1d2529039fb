#!/usr/bin/env python
r"""A new user's own small folder: does the README's path, teacher first and then distil, help the student?

On each sample folder (`scripts/make_sample_folders.py`: 4 classes of photos, 30 training images each; 5 classes of
textures, 40 each; validation crops from regions never seen in training; 10 classes of 8x8 digit scans, about 1,440
training images; 25x25 faces and background patches, 80 training images each), with default flags (the input sized
to the images, `hf_deit.data.sizing`, unless `--image_size`):

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
    python scripts/experiment_own_folder.py --seed_dirs outputs/own_folder/seed0 outputs/own_folder/seed1 ...
                                                                    # the table over seeds (seeds.md, seeds.png)

With `--labeled_fraction F` the study is the teacher check's on an unlabelled pool: each training folder is split
per class (seeded) into F labelled images and a pool of the rest, their labels dropped (`pool_split`), as a user
with a few labelled images and many unlabelled ones has them. The teacher trains on the labelled images; then

    none             scripts/train.py --train_dir labelled --distillation_type none (the student alone)
    pool_off         ... --teacher_name_or_path teacher --unlabeled_train_dir pool --protect_from_weak_teacher false
    pool             ... the same with the check's defaults (a teacher under --min_teacher_accuracy on its training
                     or the validation images does not label the pool: the student trains on the labelled images)

    python scripts/experiment_own_folder.py --labeled_fraction 0.25 --image_size 96 --seed 0
    python scripts/experiment_own_folder.py --seed_dirs outputs/pool/seed0 outputs/pool/seed1 outputs/pool/seed2
                                                            # the pool study's table over seeds (pool.md, pool.png)

The three students of the weak teacher see the same views: `--teacher_record`
(`experiment_common.share_teacher_records`) lets them train from one record of it. Two runs at a time, one process and
one thread each; each run's log is `train.log` in its folder, and a finished run is kept when the script is rerun.
Prints a table (also `results.md`, and `results.png`) with the command, machine and date.
"""

import argparse
import collections
import datetime
import json
import os
import platform
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

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
POOL_STUDENTS = {  # --labeled_fraction: the teacher check on an unlabelled pool
    "none": ("student alone, on the labelled images", ["--distillation_type", "none"]),
    "pool_off": ("student, hard distillation, the teacher labels the pool, --protect_from_weak_teacher false",
                 ["--teacher_name_or_path", "{teacher}", "--unlabeled_train_dir", "{pool}",
                  "--protect_from_weak_teacher", "false"]),
    "pool": ("student, hard distillation, the teacher labels the pool, with the teacher check (the default)",
             ["--teacher_name_or_path", "{teacher}", "--unlabeled_train_dir", "{pool}"]),
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


def pool_split(train_dir: Path, fraction: float, seed: int, folder: Path) -> tuple[Path, Path]:
    """(labelled, pool): `folder/labelled/<class>/` with a seeded `fraction` of each class of `train_dir` (at least
    one image), `folder/pool/` with the rest, flat and renamed so that no file name tells its class. Links, not
    copies; kept when it exists."""
    labelled, pool = folder / "labelled", folder / "pool"
    if pool.is_dir():
        return labelled, pool
    rng = np.random.default_rng(seed)
    for class_dir in sorted(path for path in train_dir.iterdir() if path.is_dir()):
        files = sorted(path for path in class_dir.iterdir() if path.is_file())
        keep = set(rng.choice(len(files), max(1, round(fraction * len(files))), replace=False).tolist())
        (labelled / class_dir.name).mkdir(parents=True, exist_ok=True)
        pool.mkdir(parents=True, exist_ok=True)
        for index, path in enumerate(files):
            target = labelled / class_dir.name / path.name if index in keep else \
                pool / f"{rng.integers(1 << 62):x}{path.suffix}"  # fmt: skip
            os.link(path, target)
    return labelled, pool


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
    log = output_dir / "train.log"
    if metrics is not None and log.is_file():  # what the teacher check did (hf_deit.teacher_check)
        text = log.read_text()
        metrics["check"] = ", ".join(action for action, line in (
            ("pool left out", "Training on the "), ("labels replace a weak teacher", "The label replaced the teacher"),
            ("named: generalises poorly", "generalises poorly")) if line in text)  # fmt: skip
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
                        help="The student runs to make.")
    parser.add_argument("--teacher_record", choices=RECORD_WHEN, default="auto",
                        help="The students of one teacher see the same views and can train from one record of it: "
                        "'auto' where it pays (measured), 'always', or 'never'.")
    parser.add_argument("--labeled_fraction", type=float, default=None,
                        help="The pool study: this fraction of each class labelled, the rest an unlabelled pool.")
    parser.add_argument("--table_only", action="store_true", help="Print the table of the finished runs; run none.")
    parser.add_argument("--seed_dirs", nargs="+", type=Path, default=None,
                        help="The table over seeds (the pool study's with --labeled_fraction runs): one --output_dir "
                        "per seed; runs none.")
    args = parser.parse_args(argv)
    if args.seed_dirs:
        pooled = any((seed_dir / kind / "pool").is_dir() for seed_dir in args.seed_dirs for kind in args.kinds)
        return (pool_table if pooled else seeds_table)(args.seed_dirs, args.kinds, argv)
    out = Path(args.output_dir)
    pooled = args.labeled_fraction is not None
    teachers = {"teacher": TEACHERS["teacher"]} if pooled else {name: TEACHERS[name] for name in args.teachers}
    students = POOL_STUDENTS if pooled else {name: STUDENTS[name] for name in args.students}
    results = {}
    for kind in args.kinds:
        folder = out / "data" / kind
        train_dir, val_dir = (folder / "train", folder / "val") if (folder / "val").is_dir() else \
            build_folder(kind, folder, seed=args.seed)  # fmt: skip
        folders = {"teacher": str(out / kind / "teacher"), "weak": str(out / kind / "weak_teacher")}
        if pooled:
            train_dir, folders["pool"] = pool_split(train_dir, args.labeled_fraction, args.seed, folder / "split")
        size = [] if args.image_size is None else ["--image_size", str(args.image_size)]
        data = ["--train_dir", str(train_dir), "--validation_dir", str(val_dir), *size, "--seed", str(args.seed),
                *COMMON]  # fmt: skip
        runs = out / kind
        if not args.table_only:
            run_two_at_a_time([(f"{kind}: {title}", "train_teacher.py", runs / name, [*flags, *data])
                               for name, (title, flags) in teachers.items()])  # fmt: skip
            commands = {name: ["--output_dir", str(runs / name), *(flag.format(**folders) for flag in flags), *data]
                        for name, (_, flags) in students.items()}  # fmt: skip
            if not pooled:  # the three students of the weak teacher see the same views
                commands = share_teacher_records(kind, runs / "records", commands, when=args.teacher_record)
            run_two_at_a_time([(f"{kind}: {students[name][0]}", "train.py", runs / name,
                                without_flag(argv, "--output_dir")) for name, argv in commands.items()])  # fmt: skip
        results[kind] = {name: finished_run(runs / name) for name in (*teachers, *students)}
    table = results_table(results, {**teachers, **students}, argv)
    print(table)
    (out / "results.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    plot_groups({kind: {name: [100 * metrics["eval_accuracy"]] for name, metrics in runs.items() if metrics}
                 for kind, runs in results.items()}, out / "results.png",
                title=f"Own folders: top-1 of the averaged heads (seed {args.seed})")  # fmt: skip
    return results


def results_table(results: dict, titles: dict, argv) -> str:
    rows = ["| folder | model | top-1 (averaged heads) | class head | distillation head | teacher (val) | teacher check "
            "| wall min |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for kind, runs in results.items():
        for name, (title, _) in titles.items():
            metrics = runs[name]
            if metrics is None:
                continue  # not run
            wall = f"{metrics['wall_seconds'] / 60:.1f}" if "wall_seconds" in metrics else "-"
            if name in TEACHERS:
                rows.append(f"| {kind} | {title} | {pct(metrics, 'eval_accuracy')} | | | | | {wall} |")
            else:
                rows.append(f"| {kind} | {title} | {pct(metrics, 'eval_accuracy')} | "
                            f"{pct(metrics, 'eval_cls_accuracy')} | {pct(metrics, 'eval_distillation_accuracy')} | "
                            f"{pct(metrics, 'eval_teacher_accuracy')} | {metrics.get('check') or '-'} | {wall} |")
    command = "python scripts/experiment_own_folder.py " + " ".join(argv if argv is not None else sys.argv[1:])
    when = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return "\n".join(rows) + f"\n\n`{command.strip()}`, {when}, {machine()}; one thread per run, two runs at a time."


def seeds_table(seed_dirs: list[Path], kinds, argv) -> dict:
    """The study over seeds: per folder and run the top-1 of each seed, their mean, and what the teacher check did; a
    figure, one dot per seed. Writes `seeds.md`, `seeds.json` and `seeds.png` beside the seed folders."""
    rows = [f"| folder | model | {' | '.join(seed_dir.name for seed_dir in seed_dirs)} | mean | the teacher check did |",
            "|---|---|" + "---|" * (len(seed_dirs) + 2)]  # fmt: skip
    results, groups = {}, {}
    for kind in kinds:
        for name, (title, _) in {**TEACHERS, **STUDENTS}.items():
            runs = [finished_run(seed_dir / kind / name) for seed_dir in seed_dirs]
            top1 = [None if metrics is None else 100 * metrics["eval_accuracy"] for metrics in runs]
            done = [value for value in top1 if value is not None]
            if not done:
                continue
            acted = collections.Counter(action for metrics in runs if metrics and metrics.get("check")
                                        for action in metrics["check"].split(", "))  # fmt: skip
            checks = ", ".join(action + ("" if count == len(done) else f" ({count} of {len(done)})")
                               for action, count in acted.items())  # fmt: skip
            mean = f"{np.mean(done):.1f}" + ("" if len(done) == len(top1) else f" ({len(done)} of {len(top1)})")
            shown = " | ".join("-" if value is None else f"{value:.1f}" for value in top1)
            rows.append(f"| {kind} | {title} | {shown} | {mean} | {checks if name in STUDENTS and checks else '-'} |")
            results.setdefault(kind, {})[name] = top1
            groups.setdefault(kind, {})[name] = done
    command = "python scripts/experiment_own_folder.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = "\n".join(rows) + f"\n\nValidation top-1 of the averaged heads (%). `{command.strip()}`, {machine()}."
    return write_over_seeds(seed_dirs[0].parent / "seeds", table, results, groups,
                            "Own folders: top-1 of the averaged heads, one dot per seed")


def pool_table(seed_dirs: list[Path], kinds, argv) -> dict:
    """The pool study over seeds: per folder and seed the teacher's accuracy as the check measured it, the three
    students' top-1 and what the check did; a figure of the students, one dot per seed. Writes `pool.md`, `pool.json`
    and `pool.png` beside the first seed's folder."""
    rows = ["| folder | seed | teacher: train / val (check) | student alone | distilled, unprotected | "
            "distilled, with the check | check - alone | the check did |", "|---|---|---|---|---|---|---|---|"]
    results, groups = {}, {}
    for kind in kinds:
        for seed_dir in seed_dirs:
            runs = {name: finished_run(seed_dir / kind / name) for name in POOL_STUDENTS}
            if not all(runs.values()):
                continue  # not finished
            log = (seed_dir / kind / "pool_off" / "train.log").read_text()
            measured = re.search(r"right on ([\d.]+)% of \d+ labelled training images, ([\d.]+)% of", log)
            top1 = {name: 100 * metrics["eval_accuracy"] for name, metrics in runs.items()}
            results.setdefault(kind, {})[seed_dir.name] = {**top1, "teacher": measured.groups() if measured else None,
                                                           "check": runs["pool"]["check"]}  # fmt: skip
            for name, value in top1.items():
                arm = POOL_STUDENTS[name][0].split(",")[0] + f" ({name})"
                groups.setdefault(kind, {}).setdefault(arm, []).append(value)
            teacher = " / ".join(measured.groups()) if measured else "-"
            rows.append(f"| {kind} | {seed_dir.name} | {teacher} | {top1['none']:.1f} | {top1['pool_off']:.1f} | "
                        f"{top1['pool']:.1f} | {top1['pool'] - top1['none']:+.1f} | {runs['pool']['check'] or '-'} |")
    command = "python scripts/experiment_own_folder.py " + " ".join(argv if argv is not None else sys.argv[1:])
    table = "\n".join(rows) + f"\n\n`{command.strip()}`, {machine()}."
    return write_over_seeds(seed_dirs[0].parent / "pool", table, results, groups,
                            "Unlabelled pool: student alone, unprotected, with the check")


def write_over_seeds(path: Path, table: str, results: dict, groups: dict, title: str) -> dict:
    """Prints a table over seeds and writes it beside the seed folders: `path`.md, .json (`results`) and .png."""
    print(table)
    path.with_suffix(".md").write_text(table + "\n")
    path.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    plot_groups(groups, path.with_suffix(".png"), title=title)
    return results


if __name__ == "__main__":
    main()
