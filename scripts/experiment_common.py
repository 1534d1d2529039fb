"""What the experiment scripts (`main_job.py`, `experiment_*.py`) share: running `train.py` and `train_teacher.py` as
stages in this process or side by side as processes of their own, with one progress line per run
(`hf_deit.progress`), the flags every stage gets, the labelled/unlabelled splits they train on, and reading finished
runs back from disk.

Imported plainly (`import experiment_common`): Python puts a script's own folder on `sys.path`, so the scripts of this
folder import each other when one of them runs; tests put this folder on the path in `tests/conftest.py`.
"""

import contextlib
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
