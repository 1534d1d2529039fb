"""What the experiment scripts (`main_job.py`, `experiment_*.py`) share: running `train.py` and `train_teacher.py` as
stages in this process, the flags every stage gets, the labelled/unlabelled splits they train on, and reading
finished runs back from disk.

Imported plainly (`import experiment_common`): Python puts a script's own folder on `sys.path`, so the scripts of this
folder import each other when one of them runs; tests put this folder on the path in `tests/conftest.py`.
"""

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

# Every stage reads local data: no request should wait for the Hub. Set on import, so import this module before
# `train`/`train_teacher` (huggingface_hub reads the variable when it is first imported).
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Every stage of an experiment: no checkpoints (a stage is short and rerun whole), one evaluation at the end, and no
# progress bars or trackers in the logs.
QUIET_RUN_FLAGS = ["--save_strategy", "no", "--eval_strategy", "no", "--disable_tqdm", "true", "--report_to", "none"]

# Trainer writes eval_results.json after the final evaluation, last of a run's files: its presence marks a run that
# finished (all_results.json then holds the training and evaluation metrics together).
FINISHED_MARKER = "eval_results.json"
RESULTS_NAME = "all_results.json"


def run_stage(title: str, main: Callable[[list[str]], dict], argv: list[str]) -> dict:
    """Runs a script's `main(argv)` after printing the command (so that each stage can be rerun alone); returns its
    metrics with `wall_seconds` added."""
    print(f"\n=== {title}: {' '.join(argv)}", flush=True)
    start = time.perf_counter()
    metrics = main(argv)
    metrics["wall_seconds"] = round(time.perf_counter() - start, 1)
    return metrics


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
