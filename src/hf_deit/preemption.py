"""Stopping when asked to: SIGTERM from a scheduler, or Ctrl-C, ends a run with a checkpoint to resume from.

Schedulers stop jobs with SIGTERM and a grace period (SLURM's `scancel`, Kubernetes pod deletion, spot-instance
reclaims; usually 30 s or more before SIGKILL), and `accelerate launch`/`torchrun` pass it on to every rank. Python's
default is to die at once, losing the steps since the last checkpoint. Instead, `StopOnSignal` (a `TrainerCallback`:
any `Trainer` takes it, see `hf_deit.callbacks.add_run_safety`) notes the signal, lets the current optimizer step
finish, has Trainer save a checkpoint and stop, and ends `train()` with `TrainingInterrupted`, which says what happened
and how to resume. A second Ctrl-C stops at once.

With several processes the signal may reach the ranks at different moments (or only some of them): at every step's
end the ranks agree, through one all-reduce of a flag, whether any was asked to stop, so that all stop after the same
step and save one consistent checkpoint. DataLoader workers leave both signals to the training process
(`ShieldedWorkerInit`): a signal sent to the whole process group (a terminal's Ctrl-C, SLURM's) would otherwise kill
them under it (torch ends a worker on any SIGTERM that its parent did not send).

transformers' own `enable_jit_checkpoint` is not used: it handles SIGTERM only, waits 3 s, and each rank saves on its
own timer, so ranks can stop after different steps.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import torch
from transformers import Trainer, TrainerCallback

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


class TrainingInterrupted(RuntimeError):
    """Training stopped on a signal after `step`, with the state saved in `checkpoint`. The scripts exit with
    `exit_status` (128 + the signal's number, as a shell reports a process ended by that signal)."""

    def __init__(self, signal_number: int, step: int, checkpoint: str):
        self.signal_number, self.step, self.checkpoint = signal_number, step, checkpoint
        self.exit_status = 128 + signal_number
        name = signal.Signals(signal_number).name
        super().__init__(f"Training stopped on {name} after step {step}; its state is saved in {checkpoint}. Run the "
                         "same command again to resume from it (the newest checkpoint in --output_dir is picked up).")


class StopOnSignal(TrainerCallback):
    """Turns SIGTERM and a first SIGINT during `train()` into: finish the step, save, stop, and `train()` raises
    `TrainingInterrupted` (see the module docstring). Its handlers act only while a `train()` runs: installed when it
    begins, put back when it ends, and a signal that arrives after a `train()` that failed (no `on_train_end` then)
    puts them back and goes to the handler from before, so that Ctrl-C interrupts at once again."""

    def __init__(self):
        self.received: int | None = None  # the first stop signal, as noted by the handler
        self.stopped_at: int | None = None  # the step after which training stopped for it
        self._previous_handlers = {}
        self._pid = os.getpid()

    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.received = self.stopped_at = None
        self._pid = os.getpid()  # DataLoader workers forked during training inherit the handler; only this one speaks
        if train_dataloader is not None:
            shield_workers(train_dataloader)  # before its workers start: they leave the signals to this process
        if threading.current_thread() is not threading.main_thread():
            return  # Python runs signal handlers in the main thread only; elsewhere the defaults stay
        for signal_number in STOP_SIGNALS:
            previous = signal.signal(signal_number, self._handle)
            self._previous_handlers.setdefault(signal_number, previous)  # not our own, left by a train() that failed

    def _handle(self, signal_number, frame):
        if not _in_training_loop(frame):  # the train() that installed the handlers failed: theirs again
            self.restore_handlers()
            signal.raise_signal(signal_number)
            return
        if self.received is not None:
            if signal_number == signal.SIGINT:  # the second Ctrl-C: stop now
                raise KeyboardInterrupt
            return
        self.received = signal_number
        if os.getpid() == self._pid:
            logger.warning("%s received: finishing the current step, saving a checkpoint, then stopping (Ctrl-C "
                           "again stops at once, without saving).", signal.Signals(signal_number).name)

    def on_step_end(self, args, state, control, **kwargs):
        requested = self.received is not None
        if args.world_size > 1 and torch.distributed.is_initialized():
            flag = torch.tensor([float(requested)], device=args.device)
            torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
            requested = bool(flag.item())
            if requested and self.received is None:
                self.received = signal.SIGTERM  # another rank was asked: stop with it
        if requested:
            control.should_save = True
            control.should_training_stop = True
            self.stopped_at = state.global_step

    def on_train_end(self, args, state, control, **kwargs):
        self.restore_handlers()
        if self.stopped_at is not None:  # stopped on SIGTERM/Ctrl-C, checkpoint saved: the run is not finished
            checkpoint = os.path.join(args.output_dir, f"checkpoint-{self.stopped_at}")
            raise TrainingInterrupted(self.received, self.stopped_at, checkpoint)

    def restore_handlers(self) -> None:
        """The handlers from before training."""
        for signal_number, handler in self._previous_handlers.items():
            signal.signal(signal_number, handler)
        self._previous_handlers.clear()


def _in_training_loop(frame) -> bool:
    """Whether `frame` (where a signal interrupted the main thread) runs inside `Trainer.train`'s loop."""
    loop = Trainer._inner_training_loop.__code__
    while frame is not None:
        if frame.f_code is loop:
            return True
        frame = frame.f_back
    return False


class ShieldedWorkerInit:
    """A DataLoader `worker_init_fn` that leaves the stop signals to the training process, then runs the loader's own.

    SIGINT is ignored. For SIGTERM, torch's own rule stays for the parent's (it ends its workers that way when it
    shuts down, and multiprocessing does at exit): the signal is blocked, and a thread waits for it and ends the
    worker when its parent sent it; a SIGTERM from anyone else (a scheduler signalling the whole group) is dropped."""

    def __init__(self, worker_init_fn=None):
        self.worker_init_fn = worker_init_fn

    def __call__(self, worker_id: int) -> None:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=_end_on_sigterm_from_parent, args=(os.getppid(),), daemon=True).start()
        if self.worker_init_fn is not None:
            self.worker_init_fn(worker_id)


def _end_on_sigterm_from_parent(parent: int) -> None:
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    os._exit(0)


def shield_workers(dataloader):
    """The loader, its workers set to ignore the stop signals (the training process handles them)."""
    loader = getattr(dataloader, "base_dataloader", dataloader)  # accelerate's wrapper iterates the loader it holds
    if getattr(loader, "num_workers", 0) > 0 and not isinstance(loader.worker_init_fn, ShieldedWorkerInit):
        loader.worker_init_fn = ShieldedWorkerInit(loader.worker_init_fn)
    return dataloader


def exit_status_of(main) -> int:
    """Runs a script's `main()`: 0 when it finishes; a run stopped on a signal logs what happened and how to resume,
    and gives 128 + the signal's number (what schedulers read as "ended by that signal", so they can requeue it)."""
    try:
        main()
    except TrainingInterrupted as stopped:
        logger.warning("%s", stopped)
        return stopped.exit_status
    return 0
