"""Progress lines of watched runs: the file a run writes, the line drawn from it, on a terminal and in a log file."""

import io

from transformers import TrainerControl, TrainerState, TrainingArguments

from hf_deit.progress import (
    PROGRESS_FILE_ENV,
    ProgressBoard,
    ProgressFileCallback,
    progress_file_callback,
    progress_line,
    read_progress,
)


def test_the_callback_writes_step_total_loss_and_accuracy_for_the_watcher(tmp_path, monkeypatch):
    path = tmp_path / "_progress.json"
    monkeypatch.delenv(PROGRESS_FILE_ENV, raising=False)
    assert progress_file_callback() is None  # not asked: nothing written
    monkeypatch.setenv(PROGRESS_FILE_ENV, str(path))
    callback = progress_file_callback()
    assert isinstance(callback, ProgressFileCallback) and callback.path == path

    args, control = TrainingArguments(output_dir=str(tmp_path), report_to="none"), TrainerControl()
    state = TrainerState(max_steps=50)
    assert read_progress(path) is None
    callback.on_train_begin(args, state, control)
    assert read_progress(path)["step"] == 0
    state.global_step = 20
    callback.on_log(args, state, control, logs={"loss": 0.75, "learning_rate": 1e-3})
    callback.on_log(args, state, control, logs={"eval_accuracy": 0.875, "eval_loss": 0.4})
    state.global_step = 21
    callback.on_step_end(args, state, control)  # within min_interval of the last write: not written
    progress = read_progress(path)
    assert (progress["step"], progress["max_steps"]) == (20, 50)
    assert (progress["loss"], progress["eval_accuracy"]) == (0.75, 0.875)
    assert progress["training_done"] is False and progress["elapsed"] >= 0
    callback.min_interval = 0.0
    callback.on_step_end(args, state, control)
    assert read_progress(path)["step"] == 21
    state.global_step = 50
    callback.on_train_end(args, state, control)
    assert read_progress(path)["training_done"] is True
    assert [entry.name for entry in tmp_path.iterdir()] == ["_progress.json"]  # no staging file left

    other_rank = ProgressFileCallback(tmp_path / "rank1.json")
    other_rank.on_train_begin(args, TrainerState(max_steps=50, is_world_process_zero=False), control)
    assert not (tmp_path / "rank1.json").exists()
    (tmp_path / "half.json").write_text('{"step": 3')  # never produced by the atomic write, but read safely
    assert read_progress(tmp_path / "half.json") is None


def test_a_line_says_steps_elapsed_time_left_loss_and_accuracy():
    progress = {"step": 600, "max_steps": 1200, "elapsed": 100.0, "loss": 0.82314, "eval_accuracy": 0.912,
                "training_done": False}
    line = progress_line("deit_hard", progress)
    assert line == "deit_hard  [##########----------]  600/1200   50%  1:40 elapsed  ~1:40 left  loss 0.8231  val 91.2%"
    assert "2:05:00 elapsed" in progress_line("long", {**progress, "elapsed": 7500.0})
    assert progress_line("deit_none", None) == "deit_none  starting (loading data, model and teacher)"
    assert progress_line("deit_none", None, "waiting") == "deit_none  waiting"
    finished = {**progress, "step": 1200, "training_done": True}
    assert "1:40 training, now evaluating and saving" in progress_line("deit_hard", finished)
    done = progress_line("deit_hard", finished, "done in 130 s")
    assert "[####################]  1200/1200  100%  done in 130 s  loss" in done and "left" not in done
    early = progress_line("x", {**progress, "step": 0, "loss": None, "eval_accuracy": None})
    assert early.endswith("0/1200    0%  1:40 elapsed")


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_on_a_terminal_the_block_is_redrawn_in_place():
    screen = Terminal()
    board = ProgressBoard(screen)
    assert board.live
    board.update(["a  1/10", "b  starting"])
    board.update(["a  2/10", "b  1/10"])
    board.close()
    text = screen.getvalue()
    assert "\r" not in text
    # First drawn from where the cursor is, then from two lines up, each line cleared before it is written.
    assert text == "\x1b[2Ka  1/10\n\x1b[2Kb  starting\n" + "\x1b[2F\x1b[2Ka  2/10\n\x1b[2Kb  1/10\n"
    board.update(["x" * 1000])  # wider than any terminal: cut, so that the line count to go back up stays right
    assert max(len(line) for line in screen.getvalue().splitlines()) < 1000


def test_in_a_log_file_plain_lines_at_most_every_interval_and_the_last_state_at_the_end():
    log = io.StringIO()
    board = ProgressBoard(log, interval=3600)
    assert not board.live
    board.update(["a  1/10"])
    board.update(["a  2/10"])  # within the interval: not printed
    board.update(["a  3/10"])
    board.close()  # the last state, once
    board.close()
    text = log.getvalue()
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    assert [line for line in lines if not line.startswith("[progress ")] == ["  a  1/10", "  a  3/10"]
    assert len(lines) == 4

    every_time = io.StringIO()
    board = ProgressBoard(every_time, interval=0)
    for step in range(3):
        board.update([f"a  {step}/10"])
    board.close()  # already printed: not again
    assert [line for line in every_time.getvalue().splitlines() if line.startswith("  ")] == [
        "  a  0/10", "  a  1/10", "  a  2/10"]
