"""The model card (README.md) of a trained distilled DeiT, rendered from `model_cards/distilled_deit.md`.

The card's YAML header carries a model-index with one result per head (the averaged output, the cls head, the
distillation head) and the student-teacher agreement, so the Hub shows them; the body explains the two heads, the
distillation recipe, the hyper-parameters and a usage snippet that runs as written.

No secret reaches the card: hyper-parameters and extra fields whose name mentions a token, password, secret or key,
and any value that looks like a Hugging Face token, are left out.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from hf_deit_inputs.checks import install_hint

from .metrics import HEADS as METRIC_HEADS

# Shipped inside the package (src/hf_deit/model_cards is a symlink to the repository's model_cards/, and setup.cfg's
# package_data copies it into wheels), so an installed hf_deit finds it as well as a checkout does.
TEMPLATE_PATH = Path(__file__).parent / "model_cards" / "distilled_deit.md"
TAGS = ["image-classification", "deit", "distillation", "vision", "hf-deit"]
LICENSE = "apache-2.0"
MAX_LABELS_SHOWN = 20

# The outputs reported by the trainer's evaluation (keys of `eval_results`, without the "eval_" prefix).
HEADS = tuple(  # (row in the table, key prefix)
    (f"{name} (`{field}`)", prefix)
    for name, (field, prefix) in zip(("average of both heads", "cls head", "distillation head"), METRIC_HEADS)
)
# The learning curves' picture, saved beside the model and linked from the card by this relative name, so that the Hub
# shows it with the card.
LEARNING_CURVES_NAME = "learning_curves.png"
logger = logging.getLogger(__name__)
_SECRET_NAME = re.compile(r"token|secret|password|passwd|api_?key|credential|authorization", re.IGNORECASE)
_SECRET_VALUE = re.compile(r"\bhf_[A-Za-z0-9]{20,}\b")


def public_fields(fields: dict | None) -> dict:
    """`fields` without those that must stay out of the card: a name that says it holds a credential, or a value
    that looks like one."""
    return {name: value for name, value in (fields or {}).items()
            if not _SECRET_NAME.search(str(name)) and not _SECRET_VALUE.search(str(value))}  # fmt: skip


def build_model_card(
    *,
    model_name: str,
    eval_results: dict[str, float] | None = None,
    dataset_name: str | None = None,
    teacher_name: str | None = None,
    distillation_type: str | None = None,
    distillation_alpha: float | None = None,
    distillation_tau: float | None = None,
    hyperparameters: dict | None = None,
    repo_id: str | None = None,
    config=None,
    hub_dataset: bool | None = None,
    **extra,
) -> ModelCard:
    """Render the model card of a distilled DeiT.

    Args:
        model_name: title of the card and name in the model-index.
        eval_results: evaluation metrics without the "eval_" prefix, any subset of `accuracy`, `top5_accuracy`,
            `cls_accuracy`, `cls_top5_accuracy`, `distillation_accuracy`, `distillation_top5_accuracy`,
            `teacher_agreement`, `teacher_accuracy`, `loss` (prefixed keys are accepted too).
        dataset_name: the training/evaluation dataset (a Hub id goes into the metadata's `datasets`).
        teacher_name: the teacher's Hub id or path. It is not the card's `base_model` (the student does not start
            from the teacher's weights); pass `base_model=` when the student was fine-tuned from a checkpoint.
        distillation_type, distillation_alpha, distillation_tau: the distillation recipe.
        hyperparameters: training hyper-parameters for the table (secrets are dropped).
        repo_id: the Hub repo the card will live in; the usage snippet loads from it.
        config: a `DistilledDeiTConfig`, for the architecture table and the label names.
        hub_dataset: whether `dataset_name` is a Hub dataset id (listed in the metadata's `datasets`); None guesses
            from its spelling.
        **extra: `base_model`, `license`, `language`, or further template variables (secrets are dropped): the
            scripts give `training_data`, `evaluation_data` (`describe_data`), `num_train_images`,
            `num_eval_images`, `augmentation` (`augmentation_recipe`) and `final_train_loss`.
    """
    extra = public_fields(extra)
    metrics = {key.removeprefix("eval_"): value for key, value in (eval_results or {}).items()}
    metadata = {key: extra.pop(key) for key in ("license", "base_model", "language") if key in extra}
    architecture, labels = _describe_config(config)
    return ModelCard.from_template(
        _card_metadata(model_name, metrics, dataset_name, hub_dataset, **metadata),
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        repo_id=repo_id or f"your-username/{model_name}",
        dataset_name=dataset_name,
        teacher_name=teacher_name,
        distillation_type=distillation_type,
        distillation_alpha=distillation_alpha,
        distillation_tau=distillation_tau,
        hyperparameters={name: _format_value(value) for name, value in public_fields(hyperparameters).items()},
        architecture=architecture,
        labels=labels[:MAX_LABELS_SHOWN],
        labels_truncated=len(labels) > MAX_LABELS_SHOWN,
        num_labels=len(labels),
        evaluation_rows=_evaluation_rows(metrics),
        evaluation_notes=_evaluation_notes(metrics),
        **extra,
    )


def _card_metadata(model_name: str, metrics: dict, dataset_name: str | None, hub_dataset: bool | None,
                   tags: list[str] = TAGS, heads=HEADS, license: str = LICENSE, base_model: str | None = None,
                   language=None) -> ModelCardData:
    """The card's YAML header: what the Hub indexes (license, tags, dataset, base model, the model-index results of
    the outputs `heads`)."""
    if hub_dataset is None:
        # guessed from the spelling of a Hub id: "name" or "owner/name"
        hub_dataset = bool(dataset_name) and re.fullmatch(r"[\w.-]+(/[\w.-]+)?", dataset_name) is not None
    return ModelCardData(
        license=license,
        library_name="transformers",
        tags=list(tags),
        datasets=[dataset_name] if hub_dataset and dataset_name else None,
        pipeline_tag="image-classification",
        base_model=base_model,
        language=language,
        model_name=model_name,
        eval_results=_model_index(metrics, dataset_name, heads) or None,
    )


TEACHER_TEMPLATE_PATH = TEMPLATE_PATH.with_name("teacher.md")
TEACHER_TAGS = ["image-classification", "hf-deit", "deit-teacher"]


def write_teacher_card(output_dir, *, model_name: str, config, eval_results: dict | None = None,
                       dataset_name: str | None = None, hub_dataset: bool = False, hyperparameters: dict | None = None,
                       **fields) -> Path:  # fmt: skip
    """README.md of a teacher trained by `scripts/train_teacher.py`: its data as given, image counts, recipe,
    final training loss, the checkpoint kept and accuracy (`fields`: `training_data`, `evaluation_data`,
    `num_train_images`, `num_eval_images`, `augmentation`, `final_train_loss`, `checkpoint_kept`)."""
    metrics = {key.removeprefix("eval_"): value for key, value in (eval_results or {}).items()}
    labels = [str(config.id2label[i]) for i in sorted(config.id2label, key=int)]
    card = ModelCard.from_template(
        _card_metadata(model_name, metrics, dataset_name, hub_dataset, TEACHER_TAGS, heads=((None, ""),)),
        template_path=str(TEACHER_TEMPLATE_PATH),
        model_name=model_name,
        model_type=config.model_type,
        labels=labels[:MAX_LABELS_SHOWN],
        labels_truncated=len(labels) > MAX_LABELS_SHOWN,
        num_labels=len(labels),
        hyperparameters={name: _format_value(value) for name, value in public_fields(hyperparameters).items()
                         if value is not None},  # fmt: skip
        evaluation_rows=_evaluation_rows(metrics, heads=(("`logits`", ""),)),
        **public_fields(fields),
    )
    path = Path(output_dir) / "README.md"
    card.save(path)
    return path


def training_hyperparameters(args, num_processes: int = 1) -> dict:
    """The card's hyper-parameter table of a run with `TrainingArguments` `args` on `num_processes` processes (both
    training scripts' cards); settings that do not apply (epochs of a run sized by max_steps) are left out."""
    hyperparameters = {
        "learning_rate": args.learning_rate,
        "train_batch_size": args.per_device_train_batch_size,
        "eval_batch_size": args.per_device_eval_batch_size,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "total_train_batch_size": args.per_device_train_batch_size * args.gradient_accumulation_steps
        * max(num_processes, 1),
        "num_processes": num_processes,
        "optimizer": str(getattr(args.optim, "value", args.optim)),
        "weight_decay": args.weight_decay,
        "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup_steps": args.warmup_steps,
        "num_epochs": args.num_train_epochs if args.max_steps <= 0 else None,
        "max_steps": args.max_steps if args.max_steps > 0 else None,
        "label_smoothing": args.label_smoothing_factor,
        "mixed_precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "no",
        "seed": args.seed,
    }  # fmt: skip
    return {key: value for key, value in hyperparameters.items() if value is not None}


def kept_checkpoint(state) -> str | None:
    """'the best by validation accuracy (97.5%, step 146 of 300)' when training reloaded its best checkpoint at the
    end (`load_best_model_at_end`), from a Trainer's `state`; None otherwise."""
    checkpoint = getattr(state, "best_model_checkpoint", None)
    if not checkpoint or getattr(state, "best_metric", None) is None:
        return None
    step = checkpoint.rstrip("/").rsplit("-", 1)[-1]
    return f"the best by validation accuracy ({state.best_metric:.1%}, step {step} of {state.max_steps})"


def final_train_loss(log_history: list[dict]) -> str | None:
    """'0.1234 (logged at step N)' from a Trainer's log history: the last training loss logged, or, for a run too
    short to log one, the mean over its steps."""
    losses = [entry for entry in log_history if "loss" in entry]
    if losses:
        return f"{losses[-1]['loss']:.4f} (logged at step {losses[-1]['step']})"
    summaries = [entry for entry in log_history if entry.get("train_loss") is not None]
    if summaries:
        return f"{summaries[-1]['train_loss']:.4f} (mean over the run's {summaries[-1]['step']} steps)"
    return None


def curve_data(log_history: list[dict]) -> tuple[dict[str, list[tuple[int, float]]], float | None]:
    """The learning curves a card shows, from a Trainer's log history: {head row: (step, top-1)} for each head the
    evaluations logged, and the teacher's top-1 (its latest), or None without a teacher."""
    from .plots import learning_curve

    curves = {head: learning_curve(log_history, f"eval_{prefix}accuracy") for head, prefix in HEADS}
    teacher = learning_curve(log_history, "eval_teacher_accuracy")
    return {head: points for head, points in curves.items() if points}, teacher[-1][1] if teacher else None


def write_learning_curves(output_dir, log_history: list[dict], model_name: str) -> str | None:
    """Draws the validation top-1 of each head over the training steps, with the teacher's as a line, to
    `output_dir/learning_curves.png`; returns its name for the card, or None when there is nothing to draw (fewer
    than two evaluations: pass `--eval_strategy steps`) or no matplotlib (`pip install hf-deit[plots]`)."""
    curves, teacher = curve_data(log_history)
    if len(curves.get(HEADS[0][0], [])) < 2:
        return None
    from .plots import matplotlib_available, plot_learning_curves

    if not matplotlib_available():
        logger.info("No learning curves in the card: they need matplotlib (%s).", install_hint("plots"))
        return None
    references = {model_name: {"teacher": teacher}} if teacher is not None else None
    plot_learning_curves({model_name: curves}, Path(output_dir) / LEARNING_CURVES_NAME, references)
    return LEARNING_CURVES_NAME


def write_model_card(output_dir, **card_fields) -> Path:
    """Build the card (same arguments as `build_model_card`) and write it to `output_dir/README.md`."""
    path = Path(output_dir) / "README.md"
    build_model_card(**card_fields).save(path)  # creates output_dir if needed
    return path


def local_name(path: str) -> str:
    """How a card names a local folder: as given when relative, else by its last two parts (`data/train`); an
    absolute path would publish the training machine's file system."""
    path = os.path.normpath(path)
    if not os.path.isabs(path):
        return path
    return os.path.join(os.path.basename(os.path.dirname(path)), os.path.basename(path))


def describe_data(name: str, kind: str) -> str:
    """Markdown naming a dataset as given: `kind` "hub" (a link to the Hub dataset), "folder" (a local image folder,
    by `local_name`), "embedded" (a set shipped with hf-deit) or "local" (a dataset folder written by save_to_disk)."""
    if kind == "hub":
        return f"[{name}](https://huggingface.co/datasets/{name})"
    if kind == "embedded":
        return f"`{name}` (real digits shipped in a pip package, embedded in hf-deit)"
    what = "a local image folder, one sub-folder per class" if kind == "folder" else "a local dataset folder"
    return f"`{local_name(name)}` ({what})"


def data_card_fields(data_args, seed: int) -> dict:
    """The card's `dataset_name`, `hub_dataset`, `training_data` and `evaluation_data` from the data flags
    (`hf_deit.arguments.DataArguments`): what was given, never an absolute path."""
    from .data import EMBEDDED_DATASETS

    held_out = f"{data_args.train_val_split:.0%} of the training data held out (stratified, seed {seed})"
    if data_args.train_dir:
        training = describe_data(data_args.train_dir, "folder")
        evaluation = describe_data(data_args.validation_dir, "folder") if data_args.validation_dir else held_out
        return dict(dataset_name=local_name(data_args.train_dir), hub_dataset=False, training_data=training,
                    evaluation_data=evaluation)  # fmt: skip
    name = data_args.dataset_name
    kind = "embedded" if name in EMBEDDED_DATASETS else "local" if os.path.isdir(name) else "hub"
    training = describe_data(name, kind)
    if data_args.eval_split:
        evaluation = f"the `{data_args.eval_split}` split of {training}"
    else:
        evaluation = f"the evaluation split of {training} (its validation/test split, else {held_out})"
    return dict(dataset_name=local_name(name) if kind == "local" else name, hub_dataset=kind == "hub",
                training_data=training, evaluation_data=evaluation)  # fmt: skip


def augmentation_recipe(resolved_args) -> str:
    """The augmentation preset and the flags that differ from it, from resolved `AugmentationArguments`."""
    from .data import AUGMENTATION_PRESETS

    preset = AUGMENTATION_PRESETS[resolved_args.preset]
    changed = [f"--{name} {_format_value(getattr(resolved_args, name))}" for name, value in preset.items()
               if name != "image_size" and getattr(resolved_args, name) != value]  # fmt: skip
    return f"preset `{resolved_args.preset}`" + (f", changed: {', '.join(changed)}" if changed else " as it is")


def _model_index(metrics: dict[str, float], dataset_name: str | None, heads=HEADS) -> list[EvalResult]:
    """One EvalResult per head and metric (a head named None: a model's one output), plus the agreement with the
    teacher (the Hub needs a dataset name)."""
    dataset = dataset_name or "evaluation set"
    entries = []
    for head, prefix in heads:
        for key, metric_type, label in ((f"{prefix}accuracy", "accuracy", "top-1"), (f"{prefix}top5_accuracy", "top_5_accuracy", "top-5")):
            if key in metrics:
                entries.append((metric_type, f"{label} accuracy" + (f", {head}" if head else ""), metrics[key]))
    if "teacher_agreement" in metrics:
        entries.append(("agreement", "top-1 agreement with the teacher", metrics["teacher_agreement"]))
    return [
        EvalResult(
            task_type="image-classification",
            task_name="Image Classification",
            dataset_type=dataset,
            dataset_name=dataset,
            metric_type=metric_type,
            metric_name=metric_name,
            metric_value=float(value),
        )
        for metric_type, metric_name, value in entries
    ]


def _evaluation_rows(metrics: dict[str, float], heads=HEADS) -> list[dict[str, str]]:
    rows = []
    for head, prefix in heads:
        top1, top5 = metrics.get(f"{prefix}accuracy"), metrics.get(f"{prefix}top5_accuracy")
        if top1 is not None or top5 is not None:
            rows.append({"output": head, "top1": _percent(top1), "top5": _percent(top5)})
    return rows


def _evaluation_notes(metrics: dict[str, float]) -> list[str]:
    notes = []
    if "teacher_accuracy" in metrics:
        notes.append(f"Teacher top-1 accuracy on the same data: {_percent(metrics['teacher_accuracy'])}")
    if "teacher_agreement" in metrics:
        notes.append(f"Student-teacher agreement (same top-1 class): {_percent(metrics['teacher_agreement'])}")
    if "loss" in metrics:
        notes.append(f"Evaluation loss: {metrics['loss']:.4f}")
    return notes


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.2f}%"


def _format_value(value: Any) -> str:
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")  # keep the Markdown table intact


def _describe_config(config) -> tuple[dict[str, Any], list[str]]:
    """Architecture table and label names from a DistilledDeiTConfig; empty when there is none."""
    if config is None:
        return {}, []
    architecture = {
        "image size": config.image_size,
        "patch size": config.patch_size,
        "hidden size": config.hidden_size,
        "layers": config.num_hidden_layers,
        "attention heads": config.num_attention_heads,
        "parameters": f"{_count_parameters(config):,}",
    }
    id2label = getattr(config, "id2label", None) or {}
    labels = [str(id2label[i]) for i in sorted(id2label, key=int)]
    return architecture, labels


def _count_parameters(config) -> int:
    """Exact parameter count, from the model built on the meta device (no memory, no initialisation cost)."""
    import torch

    from .modeling_distilled_deit import DistilledDeiTForImageClassification

    with torch.device("meta"):
        model = DistilledDeiTForImageClassification(config)
    return sum(parameter.numel() for parameter in model.parameters())
