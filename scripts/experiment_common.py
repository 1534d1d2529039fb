"""What the experiment scripts (`main_job.py`, `experiment_*.py`) share: running `train.py` and `train_teacher.py` as
stages in this process or side by side as processes of their own, with one progress line per run
(`hf_deit.progress`), the flags every stage gets, the labelled/unlabelled splits they train on, one record of a
teacher's outputs for the students that share it (`share_teacher_records`), and reading finished runs back from disk.

Imported plainly (`import experiment_common`): Python puts a script's own folder on `sys.path`, so the scripts of this
folder import each other when one of them runs; tests put this folder on the path in `tests/conftest.py`.
"""

import contextlib
import hashlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

# Every stage reads local data: no request should wait for the Hub. Set on import, so import this module before
# `train`/`train_teacher` (huggingface_hub reads the variable when it is first imported). The libraries' own progress
# bars (saving a dataset, mapping it) would interleave with the runs' progress lines: off, here and in the runs'
# processes, which inherit the environment.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

from hf_deit.progress import PROGRESS_FILE_ENV, PROGRESS_NAME, ProgressBoard, progress_line, read_progress  # noqa: E402

SCRIPTS = Path(__file__).resolve().parent

# Every stage of an experiment: no checkpoints (a stage is short and rerun whole), one evaluation at the end, and no
# progress bars or trackers in the logs.
QUIET_RUN_FLAGS = ["--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true", "--report_to", "none"]

# Trainer writes eval_results.json after the final evaluation, last of a run's files: its presence marks a run that
# finished (all_results.json then holds the training and evaluation metrics together).
FINISHED_MARKER = "eval_results.json"
RESULTS_NAME = "all_results.json"


def output_dir_of(argv: list[str]) -> Path:
    return Path(argv[argv.index("--output_dir") + 1])


def run_stage(title: str, main: Callable[[list[str]], dict], argv: list[str]) -> dict:
    """Runs a script's `main(argv)` after printing the command (so that each stage can be rerun alone), with a
    progress line every `PROGRESS_INTERVAL` seconds among its logs; returns its metrics with `wall_seconds` added."""
    print(f"\n=== {title}: {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    with _progress_printed(output_dir_of(argv)):
        metrics = main(argv)
    metrics["wall_seconds"] = round(time.perf_counter() - start, 1)
    return metrics


# Seconds between two progress blocks printed as plain lines (a log file, or beside a run's own logs).
PROGRESS_INTERVAL = 30.0


@contextlib.contextmanager
def _progress_printed(output_dir: Path):
    """While the block runs a stage in this process: it writes its progress to `output_dir`, and a thread prints it
    as a plain line (its logs share the console, so it is never redrawn in place)."""
    path = output_dir / PROGRESS_NAME
    path.unlink(missing_ok=True)  # an earlier run's
    board, stop = ProgressBoard(live=False, interval=PROGRESS_INTERVAL), threading.Event()

    def show():
        while not stop.wait(PROGRESS_INTERVAL):
            progress = read_progress(path)
            if progress is not None and not progress["training_done"]:
                board.update([progress_line(output_dir.name, progress)])

    previous = os.environ.get(PROGRESS_FILE_ENV)
    os.environ[PROGRESS_FILE_ENV] = str(path)
    thread = threading.Thread(target=show, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        if previous is None:
            os.environ.pop(PROGRESS_FILE_ENV, None)
        else:
            os.environ[PROGRESS_FILE_ENV] = previous


def run_in_parallel(runs: dict[str, tuple[str, list[str]]], width: int | None = None) -> dict[str, float]:
    """Runs each `name: (script, argv)` (a script of this folder; `argv` names its `--output_dir`) as a process of its
    own with one thread, `width` at a time (all by default); two small runs use two cores better than one process with
    two threads. Each run's log is `train.log` in its output folder; this process shows one progress line per run,
    redrawn in place on a terminal, every `PROGRESS_INTERVAL` seconds as plain lines otherwise. Returns each run's
    wall-clock seconds. A run that fails lets the others finish, then stops the caller with the end of its log."""
    pending, active, seconds, failed = list(runs), {}, {}, {}
    board = ProgressBoard(interval=PROGRESS_INTERVAL)
    while pending or active:
        while pending and len(active) < (width or len(runs)) and not failed:
            name = pending.pop(0)
            script, argv = runs[name]
            output_dir = output_dir_of(argv)
            output_dir.mkdir(parents=True, exist_ok=True)
            (output_dir / PROGRESS_NAME).unlink(missing_ok=True)  # an earlier run's
            env = {**os.environ, "OMP_NUM_THREADS": "1", PROGRESS_FILE_ENV: str(output_dir / PROGRESS_NAME)}
            with open(output_dir / "train.log", "w") as log:  # the child holds its own copy of the file
                process = subprocess.Popen([sys.executable, str(SCRIPTS / script), *argv], stdout=log,
                                           stderr=subprocess.STDOUT, env=env)  # fmt: skip
            active[name] = (process, output_dir, time.perf_counter())
        for name, (process, output_dir, start) in list(active.items()):
            if process.poll() is not None:
                del active[name]
                seconds[name] = round(time.perf_counter() - start, 1)
                if process.returncode != 0:
                    failed[name] = process.returncode
        if failed:
            pending.clear()
        board.update([_run_line(name, runs[name][1], active, seconds, failed) for name in runs])
        if active:
            time.sleep(1.0)
    board.close()
    for name, returncode in failed.items():
        log = output_dir_of(runs[name][1]) / "train.log"
        tail = "\n".join(log.read_text().splitlines()[-20:])
        raise SystemExit(f"{name} failed (exit {returncode}); the end of {log}:\n{tail}")
    return seconds


def _run_line(name: str, argv: list[str], active: dict, seconds: dict, failed: dict) -> str:
    progress = read_progress(output_dir_of(argv) / PROGRESS_NAME)
    if name in failed:
        return progress_line(name, progress, f"failed (exit {failed[name]}): see {output_dir_of(argv) / 'train.log'}")
    if name in seconds:
        return progress_line(name, progress, f"done in {seconds[name]:.0f} s")
    return progress_line(name, progress, None if name in active else "waiting")


def is_finished(output_dir: str | os.PathLike) -> bool:
    return (Path(output_dir) / FINISHED_MARKER).is_file()


def run_unless_finished(title: str, output_dir: str | os.PathLike, main: Callable[[list[str]], dict],
                        argv: list[str]) -> None:
    """`run_stage`, unless `output_dir` holds a finished run: an interrupted experiment resumes where it stopped, and
    seeds started as separate processes into one folder add up."""
    if is_finished(output_dir):
        print(f"=== {title}: finished earlier, kept ({output_dir})", flush=True)
        return
    run_stage(title, main, argv)


def finished_results(output_dir: str | os.PathLike) -> dict | None:
    """The metrics of a finished run in `output_dir` (`all_results.json`), or None while it is unfinished."""
    if not is_finished(output_dir):
        return None
    return json.loads((Path(output_dir) / RESULTS_NAME).read_text())


def embedded_splits(dataset_name: str, train_size: int | None = None, eval_size: int | None = None):
    """The train and validation splits of an embedded dataset, or a seeded random subset of each (the embedded
    splits list the images class by class: the first few would all be zeros)."""
    from hf_deit.data import load_embedded_dataset

    dataset = load_embedded_dataset(dataset_name)
    train_split, validation = dataset["train"], dataset["validation"]
    if train_size:
        train_split = train_split.shuffle(seed=0).select(range(train_size))
    if eval_size:
        validation = validation.shuffle(seed=0).select(range(eval_size))
    return train_split, validation


def write_label_split(train_split, validation, fraction: float, seed: int, folder: str | os.PathLike,
                      keep_existing: bool = False):
    """A stratified, seeded `fraction` of `train_split` keeps its labels: written with `validation` to
    `folder/labeled`, the rest without labels to `folder/unlabeled` (none when `fraction` is 1), as `save_to_disk`
    folders that `--dataset_name` and `--unlabeled_dataset_name` load. Returns (labeled folder, unlabeled folder or
    None). With `keep_existing`, folders an earlier, interrupted run wrote are kept (the folder must then be specific to
    the fraction and seed)."""
    from datasets import DatasetDict

    from hf_deit.data import split_labeled

    folder = Path(folder)
    labeled_dir = folder / "labeled"
    pool_dir = folder / "unlabeled" if fraction < 1.0 else None
    if keep_existing and (labeled_dir / "dataset_dict.json").is_file():
        return labeled_dir, pool_dir
    if fraction < 1.0:
        labeled, unlabeled = split_labeled(train_split, fraction, seed=seed)
        DatasetDict(train=unlabeled).save_to_disk(str(pool_dir))
    else:
        labeled = train_split
    DatasetDict(train=labeled, validation=validation).save_to_disk(str(labeled_dir))
    return labeled_dir, pool_dir


# ---------------------------------------------------------------------------------------------------------------------
# One teacher record for the students that would each run the same teacher over the same views
# ---------------------------------------------------------------------------------------------------------------------

TEACHER_FLAG, RECORD_FLAG = "--teacher_name_or_path", "--teacher_outputs"
RECORDS_NAME = "records.json"  # in the records folder: which record served which students
RECORD_WHEN = ("auto", "always", "never")


def share_teacher_records(title: str, record_root: str | os.PathLike, students: dict[str, list[str]],
                          when: str = "auto") -> dict:
    """`students` (name: `train.py` command line) with the command lines of every group that shares a teacher and its
    views rewritten to train from one record of that teacher's outputs (`hf_deit.teacher_record`) instead of running
    it: the teacher runs once per group, not once per student. Students differ freely in what does not change the
    views (learning rate, student size, loss terms); the record holds what every student of its group needs.

    Which students share their views is found out, not declared: each unfinished student's run is built (data,
    transforms, student, objective; no training) and described as a record describes it. A group with one unfinished
    student keeps its live teacher, and finished students are left alone. `when`: "always" records every group of
    two or more; "auto" only where the record pays: recording rebuilds every view once, and with a cheap teacher that
    costs more than the teacher's passes it saves (`view_costs`, measured on a few batches and printed); "never"
    changes nothing. Records go to `record_root/<digest of the views>` and are kept, so a rerun reuses them;
    `records.json` there lists which students each one served. A student given a record that does not fit is refused
    by `train.py` before its first step, each difference named, never trained on wrong targets."""
    if when not in RECORD_WHEN:
        raise ValueError(f"when must be one of {', '.join(RECORD_WHEN)}; got {when!r}.")
    if when == "never":
        return dict(students)
    record_root = Path(record_root)
    rewritten, served = dict(students), {}
    groups = _groups_sharing_views(students, measure=when == "auto")
    for (teacher, views), (members, costs, weights) in groups.items():
        folder = record_root / hashlib.sha256(f"{teacher}|{views}".encode()).hexdigest()[:12]
        plan = _plan_for_all(members)
        names = ", ".join(member["name"] for member in members)
        if not _record_covers(folder, plan, weights):
            if len(members) < 2:
                continue
            if costs is not None:
                saved = (len(members) - 1) * costs["teacher"] - costs["pipeline"]
                print(f"=== {title}: {names} share their teacher's views; per view, the teacher takes "
                      f"{1e3 * costs['teacher']:.3f} ms and rebuilding the view {1e3 * costs['pipeline']:.3f} ms, so "
                      f"one record would {'save' if saved > 0 else 'cost'} about {1e3 * abs(saved):.3f} ms: "
                      f"{'recording it' if saved > 0 else 'each keeps its live teacher'}", flush=True)  # fmt: skip
                if saved <= 0:
                    continue
            recorder = max(members, key=lambda member: (member["plan"].stage_maps, member["plan"].attention_map))
            argv = _with_flag(recorder["argv"], "--output_dir", str(folder))
            argv += ["--record_dir", str(folder), "--num_epochs", str(plan.epochs),
                     "--top_k", str(plan.top_k or "auto"), "--record_features", str(plan.features),
                     "--record_attention_map", str(plan.attention_map), "--record_stage_maps", str(plan.stage_maps),
                     "--overwrite_record", "true"]  # fmt: skip
            if plan.attention_map and not recorder["plan"].attention_map:  # the teacher loads its attention maps
                argv += ["--attention_distillation_weight", "1"]
            import record_teacher

            run_stage(f"{title}: the teacher once for {names}", record_teacher.main, argv)
        for member in members:
            argv = students[member["name"]]
            rewritten[member["name"]] = _with_flag(without_flag(argv, TEACHER_FLAG), RECORD_FLAG, str(folder))
        served[folder.name] = {"teacher": teacher, "students": [member["name"] for member in members]}
    if served:
        path = record_root / RECORDS_NAME
        known = json.loads(path.read_text()) if path.is_file() else {}
        for name, entry in served.items():
            old = known.get(name, {}).get("students", [])
            known[name] = {**entry, "students": old + [s for s in entry["students"] if s not in old]}
        path.write_text(json.dumps(known, indent=2))
    return rewritten


def _groups_sharing_views(students: dict[str, list[str]], measure: bool) -> dict[tuple, tuple[list[dict], dict, str]]:
    """{(teacher, views): ([unfinished student: name, argv, plan, stage], costs, the teacher's weights hash)}, `costs`
    the first student's `view_costs` when `measure`, else None. Feature-map students that imitate different teacher
    stages cannot share a record: each stage has its group, and the students without the term join the first."""
    import train

    from hf_deit.arguments import train_argument_parser
    from hf_deit.data.views import RunViews
    from hf_deit.teacher_record import feature_map_stage, plan_for_run, teacher_identity, view_costs

    by_views, costs, weights = {}, {}, {}
    for name, argv in students.items():
        if TEACHER_FLAG not in argv or is_finished(output_dir_of(argv)):
            continue
        model_args, data_args, aug_args, training_args = train_argument_parser().parse_args_into_dataclasses(args=argv)
        trainer, _, _ = train.build_run(model_args, data_args, aug_args, training_args)
        if not trainer.objective.loss.needs_teacher:
            continue  # trains without it (the teacher is only scored beside it): nothing to record
        key = (argv[argv.index(TEACHER_FLAG) + 1], json.dumps(RunViews(trainer, 1).describe(), sort_keys=True))
        member = dict(name=name, argv=argv, plan=plan_for_run(trainer), stage=feature_map_stage(trainer.objective))
        by_views.setdefault(key, []).append(member)
        if key not in weights:
            weights[key] = teacher_identity(trainer.teacher)["weights_sha256"]
            costs[key] = view_costs(trainer) if measure else None
    groups = {}
    for (teacher, views), members in by_views.items():
        stages = list(dict.fromkeys(member["stage"] for member in members if member["stage"] is not None)) or [None]
        for stage in stages:
            groups[(teacher, views if stage is None else f"{views}|stage {stage}")] = ([
                member for member in members
                if member["stage"] == stage or (member["stage"] is None and stage == stages[0])
            ], costs[(teacher, views)], weights[(teacher, views)])  # fmt: skip
    return groups


def _plan_for_all(members: list[dict]):
    """The record every member can train from: the most epochs, the most probabilities, every output kind."""
    from hf_deit.teacher_record import RecordPlan

    plans = [member["plan"] for member in members]
    return RecordPlan(epochs=max(plan.epochs for plan in plans), top_k=max(plan.top_k or 0 for plan in plans) or None,
                      features=any(plan.features for plan in plans),
                      attention_map=any(plan.attention_map for plan in plans),
                      stage_maps=any(plan.stage_maps for plan in plans))  # fmt: skip


def _record_covers(folder: Path, plan, weights_sha256: str) -> bool:
    """Whether `folder` holds a whole record of the teacher with these weights (one retrained in the same folder has
    other outputs) with at least what `plan` asks for."""
    path = folder / "manifest.json"
    if not path.is_file():
        return False
    manifest = json.loads(path.read_text())
    kinds = set(manifest["outputs"]["kinds"])
    return (manifest["teacher"]["weights_sha256"] == weights_sha256 and manifest["epochs"] >= plan.epochs
            and set(plan.kinds()) <= kinds
            and (manifest["outputs"].get("top_k") or 0) >= (plan.top_k or 0))  # fmt: skip


def without_flag(argv: list[str], flag: str) -> list[str]:
    """`argv` without `flag` and its value."""
    if flag not in argv:
        return list(argv)
    at = argv.index(flag)
    return argv[:at] + argv[at + 2 :]


def _with_flag(argv: list[str], flag: str, value: str) -> list[str]:
    return [*without_flag(argv, flag), flag, value]


def distillation_cost(record_roots: list[Path], distilled_runs: list[str | os.PathLike]) -> dict:
    """What the distilled students of an experiment cost in teacher time: the finished distilled runs' training
    seconds (`train_runtime`, the teacher's passes included when it ran live), and the shared records under
    `record_roots` (`share_teacher_records`): how many, the students they served, recording seconds, bytes on disk."""
    runs = [finished_results(run) for run in distilled_runs]
    cost = {"distilled_students": sum(run is not None for run in runs),
            "distilled_training_seconds": round(sum(run["train_runtime"] for run in runs if run is not None), 1),
            "records": 0, "students_from_records": 0, "recording_seconds": 0.0, "record_bytes": 0}  # fmt: skip
    for root in record_roots:
        path = Path(root) / RECORDS_NAME
        for folder, entry in (json.loads(path.read_text()) if path.is_file() else {}).items():
            manifest = Path(root) / folder / "manifest.json"
            if not manifest.is_file():
                continue
            cost["records"] += 1
            cost["students_from_records"] += len(entry["students"])
            cost["recording_seconds"] += json.loads(manifest.read_text())["recording"]["seconds"]
            cost["record_bytes"] += sum(file.stat().st_size for file in manifest.parent.iterdir())
    cost["recording_seconds"] = round(cost["recording_seconds"], 1)
    return cost


def describe_distillation_cost(cost: dict) -> str:
    """`distillation_cost` in a sentence, for an experiment's results.md."""
    text = (f"The {cost['distilled_students']} distilled students trained for "
            f"{cost['distilled_training_seconds'] / 60:.1f} min in all")
    if not cost["records"]:
        return text + ", each running its teacher live (no shared teacher records)."
    records = f"{cost['records']} shared teacher record" + ("s" if cost["records"] > 1 else "")
    text += (f"; {cost['students_from_records']} of them from {records} "
             f"(`share_teacher_records`), recorded in {cost['recording_seconds'] / 60:.1f} min "
             f"({cost['record_bytes'] / 1e6:.1f} MB on disk)")
    live = cost["distilled_students"] - cost["students_from_records"]
    return text + (f", {live} with their teacher live." if live > 0 else ".")
