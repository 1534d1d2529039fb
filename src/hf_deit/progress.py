"""Progress of training runs that another process watches: one compact, updating line per run.

A run started with the environment variable `HF_DEIT_PROGRESS_FILE` set writes its progress there
(`ProgressFileCallback`, added by the trainers): a small JSON object, replaced atomically, with the step, the total,
the seconds since training began, the latest logged loss and validation accuracy, and whether training has ended. A
watcher (the experiment scripts, while their runs write their logs to files) reads those files (`read_progress`) and
draws one line per run (`progress_line`) on a `ProgressBoard`: redrawn in place on a terminal, printed as plain lines
every `interval` seconds otherwise, so that a log file gets readable lines and no carriage returns.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from pathlib import Path
from typing import TextIO

from transformers import TrainerCallback

PROGRESS_FILE_ENV = "HF_DEIT_PROGRESS_FILE"
# Where the experiment scripts ask their runs to write it: in the run's folder, and a leading "_" keeps it out of a
# push to the Hub (hf_deit.hub.HUB_IGNORE_PATTERNS).
PROGRESS_NAME = "_progress.json"


class ProgressFileCallback(TrainerCallback):
    """Writes the run's progress to `path` (see the module docstring) at most every `min_interval` seconds while
    training steps, and at once on every log and at the end of training. The main process only."""

    def __init__(self, path: str | os.PathLike, min_interval: float = 1.0):
        self.path = Path(path)
        self.min_interval = min_interval
        self.start = self.last_write = None
        self.loss = self.eval_accuracy = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = time.monotonic()
        if state.is_world_process_zero:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self._write(state)

    def on_step_end(self, args, state, control, **kwargs):
        if time.monotonic() - (self.last_write or 0.0) >= self.min_interval:
            self._write(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        self.loss = logs.get("loss", self.loss)
        self.eval_accuracy = logs.get("eval_accuracy", self.eval_accuracy)
        self._write(state)

    def on_train_end(self, args, state, control, **kwargs):
        self._write(state, training_done=True)

    def _write(self, state, training_done: bool = False) -> None:
        if not state.is_world_process_zero or self.start is None:
            return
        self.last_write = time.monotonic()
        progress = {"step": state.global_step, "max_steps": state.max_steps, "elapsed": self.last_write - self.start,
                    "loss": self.loss, "eval_accuracy": self.eval_accuracy, "training_done": training_done}  # fmt: skip
        staging = self.path.with_name(self.path.name + ".tmp")
        staging.write_text(json.dumps(progress))
        os.replace(staging, self.path)  # a reader sees the old or the new object, never half of one


def progress_file_callback() -> ProgressFileCallback | None:
    """The callback writing to the file `HF_DEIT_PROGRESS_FILE` names, or None when the variable is unset."""
    path = os.environ.get(PROGRESS_FILE_ENV)
    return ProgressFileCallback(path) if path else None


def read_progress(path: str | os.PathLike) -> dict | None:
    """The progress a run wrote to `path`, or None before it wrote any."""
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _duration(seconds: float) -> str:
    minutes, seconds = divmod(int(round(seconds)), 60)
    return f"{minutes // 60}:{minutes % 60:02d}:{seconds:02d}" if minutes >= 60 else f"{minutes}:{seconds:02d}"


def progress_line(name: str, progress: dict | None, status: str | None = None, bar_width: int = 20) -> str:
    """One line for one run: 'name  [#####-----]  600/1200  50%  1:40 elapsed  ~1:40 left  loss 0.8231  val 91.2%'.
    Before the run writes progress it reads 'starting' (or `status`), after training 'evaluating and saving'; a
    `status` (for example 'done in 95 s' once the run's process has ended) replaces the times."""
    if progress is None:
        return f"{name}  {status or 'starting (loading data, model and teacher)'}"
    step, total = progress["step"], progress["max_steps"] or 0
    fraction = min(step / total, 1.0) if total else 0.0
    filled = int(round(bar_width * fraction))
    parts = [name, f"[{'#' * filled}{'-' * (bar_width - filled)}]", f"{step}/{total}", f"{fraction:4.0%}"]
    if status:
        parts.append(status)
    elif progress.get("training_done"):
        parts.append(f"{_duration(progress['elapsed'])} training, now evaluating and saving")
    else:
        parts.append(f"{_duration(progress['elapsed'])} elapsed")
        if step:
            parts.append(f"~{_duration(progress['elapsed'] / step * (total - step))} left")
    if progress.get("loss") is not None:
        parts.append(f"loss {progress['loss']:.4f}")
    if progress.get("eval_accuracy") is not None:
        parts.append(f"val {progress['eval_accuracy']:.1%}")
    return "  ".join(parts)


class ProgressBoard:
    """Shows a block of lines on `stream`. On a terminal each `update` redraws the block in place (ANSI cursor moves,
    no carriage returns); elsewhere (a pipe, a log file) it prints the lines, indented under a time stamp, at most
    every `interval` seconds, and `close` prints the last state once more."""

    def __init__(self, stream: TextIO | None = None, interval: float = 30.0, live: bool | None = None):
        self.stream = stream if stream is not None else sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.interval = interval
        self.drawn = 0  # lines of the block now on the terminal
        self.last_print = None  # when the lines were last printed plainly, and which
        self.lines: list[str] = []
        self.printed: list[str] = []

    def update(self, lines: list[str]) -> None:
        self.lines = list(lines)
        if self.live:
            # Up to the block's first line, then each line rewritten and the rest of it cleared; a line wider than
            # the terminal would wrap and throw the count of lines to go up off, so it is cut.
            width = shutil.get_terminal_size().columns - 1
            up = f"\x1b[{self.drawn}F" if self.drawn else ""
            self.stream.write(up + "".join(f"\x1b[2K{line[:width]}\n" for line in self.lines))
            self.drawn = len(self.lines)
        elif self.last_print is None or time.monotonic() - self.last_print >= self.interval:
            self._print_plain()
        self.stream.flush()

    def close(self) -> None:
        """Leaves the final state shown: on a terminal the block stays; elsewhere it is printed unless it just was."""
        if not self.live and self.lines != self.printed:
            self._print_plain()
        self.drawn = 0
        self.stream.flush()

    def _print_plain(self) -> None:
        self.stream.write(f"[progress {time.strftime('%H:%M:%S')}]\n" + "".join(f"  {line}\n" for line in self.lines))
        self.last_print, self.printed = time.monotonic(), self.lines
