"""What keeps a run safe, as `TrainerCallback`s any `transformers.Trainer` takes (`add_run_safety`), and the checks
that run during training: stop on a non-finite loss before it reaches the weights; log often enough; warn about heads
that collapse.

    trainer = Trainer(model=model, args=args, train_dataset=train)   # any Trainer: ours, transformers', TRL's
    add_run_safety(trainer)    # preemption, non-finite stop, lost-rank watch, clean exit, progress file
    trainer.train()            # SIGTERM/Ctrl-C: the step ends, a checkpoint is saved, TrainingInterrupted is raised

transformers' Trainer, with its default `logging_nan_inf_filter=True`, replaces a NaN/inf step loss by the running
mean in the logs and keeps stepping the optimizer: a run that diverged (learning rate too high, fp16 overflow, a
teacher returning inf, a corrupt batch) goes on training on NaN weights for days while its logged loss looks fine.

`NonFiniteLossGuard` records, on the device, which loss terms were not finite in the current optimizer step
(`observe`, no host synchronisation), and `check` reads that flag once per optimizer step, after the backward pass
and before `optimizer.step()` (Trainer's `on_pre_optimizer_step`): the bad update is never applied. Trainer already
synchronises with the device once per micro-batch for its NaN filter, so the extra read costs nothing measurable (see
the README's reliability section).
It then saves a checkpoint of the last good state and raises `NonFiniteLossError`, which says at which step, in which
loss term, where the checkpoint is and what usually causes it. A trainer that does not report its loss terms (a plain
`Trainer`) has its gradients read instead, at the same moment: a non-finite loss leaves them non-finite.
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Sequence

import torch
import torch.distributed as dist
from transformers import Trainer, TrainerCallback

from .distributed import PeerWatch, release_group_at_exit
from .metrics import HEAD_PREFIXES
from .preemption import StopOnSignal
from .progress import progress_file_callback

logger = logging.getLogger(__name__)


def add_run_safety(trainer: Trainer) -> "NonFiniteLossGuard":
    """Adds to `trainer` (any `transformers.Trainer`) what keeps a run safe: the non-finite-loss stop, the progress
    file when `HF_DEIT_PROGRESS_FILE` asks for one (`hf_deit.progress`), with several processes the lost-rank watch
    and the clean release of the process group at exit (`hf_deit.distributed`), and last the preemption stop
    (`hf_deit.preemption`), whose `TrainingInterrupted` ends `train()` once the others have seen its end. Returns the
    guard, for a trainer that reports its loss terms to it (`observe`)."""
    guard = NonFiniteLossGuard(trainer)
    trainer.add_callback(guard)
    progress = progress_file_callback()
    if progress is not None:
        trainer.add_callback(progress)
    if trainer.args.world_size > 1:
        release_group_at_exit(trainer)  # the scripts leave the group themselves; this is the safety net
        trainer.add_callback(PeerWatch(trainer.args.output_dir))  # a rank that dies alone ends the run, named
    trainer.add_callback(StopOnSignal())
    return guard


class NonFiniteLossError(RuntimeError):
    """The training loss was NaN or infinite. `step` is the optimizer step that produced it (1-based, as Trainer's
    `global_step` would have become), `terms` the loss terms that were not finite, `checkpoint` the folder holding the
    state before that step (set once it is saved)."""

    def __init__(self, step: int, terms: Sequence[str], checkpoint: str | None = None):
        self.step, self.terms, self.checkpoint = step, list(terms), checkpoint
        saved = (
            f"The weights were not updated by that step; the state before it is saved in {self.checkpoint} "
            f"(resume with --resume_from_checkpoint {self.checkpoint} once the cause is fixed)."
            if self.checkpoint
            else "The weights were not updated by that step."
        )
        hints = [
            "a learning rate too high for this batch size (--learning_rate, --warmup_steps)",
            "fp16 overflow (use --bf16, or full precision)",
            "corrupt or unnormalised inputs",
        ]
        if any("distillation" in term for term in self.terms):
            hints.insert(0, "a teacher returning NaN/inf logits (check it on a batch alone)")
        super().__init__(
            f"Training stopped: the loss term(s) {', '.join(self.terms)} became NaN or infinite at step {self.step}. {saved} "
            f"Usual causes: {'; '.join(hints)}."
        )


class NonFiniteLossGuard(TrainerCallback):
    """Records non-finite loss terms on the device; `check` raises `NonFiniteLossError` if any were seen. As a
    Trainer callback it checks before every optimizer step (`on_pre_optimizer_step`), across processes, and first
    saves the last good state of `trainer` (given: `add_run_safety`)."""

    def __init__(self, trainer: Trainer | None = None):
        self._not_finite: torch.Tensor | None = None  # bool per term, OR-ed over the micro-batches of one step
        self._names: tuple[str, ...] = ()
        self._trainer = weakref.ref(trainer) if trainer is not None else lambda: None  # no cycle through the trainer

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self._not_finite is None and model is not None:  # no loss terms reported: read the gradients
            gradients = [parameter.grad for parameter in model.parameters() if parameter.grad is not None]
            if gradients:
                self.observe(torch.nn.utils.get_total_norm(gradients, float("inf"))[None], ("loss",))
        try:
            self.check(state.global_step + 1)  # the step about to be taken
        except NonFiniteLossError as error:
            trainer = self._trainer()
            if trainer is None:
                raise
            # No public hook saves a checkpoint before the optimizer step: Trainer's own save, which every rank runs.
            saved = trainer._save_checkpoint(trainer.model, trial=None)  # our trainers' returns its folder
            saved = saved or os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
            raise NonFiniteLossError(error.step, error.terms, saved) from None

    def observe(self, terms: torch.Tensor, names: Sequence[str]) -> None:
        """`terms`: a 1-D tensor of this micro-batch's loss terms, named by `names`. No host synchronisation."""
        not_finite = ~torch.isfinite(terms.detach())
        self._not_finite = not_finite if self._not_finite is None else self._not_finite | not_finite
        self._names = tuple(names)

    def check(self, step: int) -> None:
        """Read the flags (one host sync; one all-reduce when several processes train) and reset them."""
        if self._not_finite is None:
            return
        not_finite, self._not_finite = self._not_finite.to(torch.int32), None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # Every process must stop at the same step, or the others would wait forever in the next collective.
            dist.all_reduce(not_finite, op=dist.ReduceOp.MAX)
        if bool(not_finite.any()):
            raise NonFiniteLossError(step, [name for name, bad in zip(self._names, not_finite.tolist()) if bad])


# ---- logging often enough, whatever the run's length ----

MIN_LOGS_PER_RUN = 20


class LogAtLeastEvery(TrainerCallback):
    """Logs the training loss at least every 1/`MIN_LOGS_PER_RUN` of training when `logging_steps` is coarser than
    that: a short run (a few hundred steps, or a small image folder) would otherwise log it once or never with a
    fixed number of steps, and a long run keeps its own, finer `logging_steps`."""

    def on_step_end(self, args, state, control, **kwargs):
        if args.logging_strategy == "no" or not state.max_steps:
            return control
        interval = max(1, state.max_steps // MIN_LOGS_PER_RUN)
        if (state.logging_steps or 0) > interval and state.global_step % interval == 0:
            control.should_log = True
        return control


class LossTermMeans(TrainerCallback):
    """Adds to each training log (the one with `loss`) every loss term's mean over the same steps, averaged over the
    processes: what `compute_loss` reports with `observe`, summed on the device and read once per log. It must be
    the first callback to hear `on_log`: the trackers and the progress bar send and print the logs it completes."""

    def __init__(self):
        self._sum, self._count, self._names = None, 0, ()

    def observe(self, terms: torch.Tensor, names: Sequence[str]) -> None:
        """`terms`: a 1-D tensor of this micro-batch's loss terms, named by `names`. No host synchronisation."""
        self._sum = terms if self._sum is None else self._sum + terms
        self._count += 1
        self._names = tuple(names)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or "loss" not in logs or not self._count:
            return
        means = self._sum / self._count
        if args.world_size > 1 and dist.is_initialized():
            dist.all_reduce(means)
            means /= args.world_size
        terms = {name: round(value, 4) for name, value in zip(self._names, means.tolist())}
        logs.update(terms)
        state.log_history[-1].update(terms)  # Trainer keeps its own copy of the logs, made before it calls back
        self._sum, self._count = None, 0


# ---- heads that collapse ----

COLLAPSED_SHARE = 0.9  # a head giving one class to this share of the images predicts nothing


def head_warnings(metrics: dict, num_labels: int, prefix: str = "eval_", num_examples: int | None = None) -> list[str]:
    """Warnings about the heads from evaluation metrics (`hf_deit.metrics.make_compute_metrics`): a head that
    collapsed onto one class or is at chance level, and averaged logits worse than the better head by more than a
    point and more than two of the `num_examples` evaluated (so that one image of a small split is not an alarm)."""
    warnings, accuracies = [], {}
    chance = 1.0 / max(num_labels, 1)
    for name, head in zip(("class head", "distillation head"), HEAD_PREFIXES[1:]):
        accuracy = metrics.get(f"{prefix}{head}accuracy")
        share = metrics.get(f"{prefix}{head}majority_share")
        if accuracy is None:
            continue
        accuracies[name] = accuracy
        if share is not None and share >= COLLAPSED_SHARE and accuracy < share - 0.2:
            warnings.append(f"The {name} has collapsed: it predicts one class for {share:.0%} of the evaluation images "
                            f"(accuracy {accuracy:.1%}).")
        elif num_labels > 2 and accuracy <= 1.5 * chance:
            warnings.append(f"The {name} is at chance level: accuracy {accuracy:.1%} with {num_labels} classes.")
    averaged = metrics.get(f"{prefix}accuracy")
    if averaged is not None and accuracies:
        best = max(accuracies, key=accuracies.get)
        margin = max(0.01, 2 / num_examples if num_examples else 0.0)
        if averaged < accuracies[best] - margin:
            warnings.append(
                f"The averaged logits (`logits`, what pipeline() and eval_accuracy use) score {averaged:.1%}, below the "
                f"{best}'s {accuracies[best]:.1%}."
            )
    if warnings:
        warnings.append("Usual causes: a learning rate too high for this batch (--learning_rate), a teacher that is "
                        "wrong on this data (see eval_teacher_accuracy), or a run too short for the distillation head.")
    return warnings


class HeadCheck(TrainerCallback):
    """After each evaluation, once a quarter of training is done (early on, heads often give every image one class):
    the `head_warnings`, and at the end of the run which head to use (`hf_deit.teacher_check.which_head`). Metrics
    without per-head accuracies (a single-head model) give nothing."""

    def on_evaluate(self, args, state, control, metrics=None, model=None, eval_dataloader=None, **kwargs):
        settled = not state.max_steps or state.global_step >= state.max_steps / 4
        if not (metrics and state.is_world_process_zero and settled):
            return
        from .teacher_check import which_head

        prefix = next((key.removesuffix("runtime") for key in metrics if key.endswith("_runtime")), "eval_")
        try:
            num_examples = len(eval_dataloader.dataset)
        except (AttributeError, TypeError):  # a stream: size unknown
            num_examples = None
        for warning in head_warnings(metrics, model.config.num_labels, prefix, num_examples):
            logger.warning(warning)
        if state.max_steps and state.global_step >= state.max_steps:  # the end of the run
            advice = which_head(metrics, prefix, num_examples)
            if advice:
                logger.info(advice)
