"""Evaluation metrics of a distilled DeiT, per head (`make_compute_metrics`): what `Trainer.evaluate` and
`hf_deit.evaluation` report.

The accuracies come from the `evaluate` metric module shipped beside this file (`top_k_accuracy/`), loaded by path so
that evaluation needs no network.
"""

from collections.abc import Callable
from pathlib import Path

import numpy as np
from transformers import EvalPrediction

# Installed with the package (setup.cfg package_data); `evaluate.load` takes the folder.
TOP_K_ACCURACY_PATH = str(Path(__file__).parent / "top_k_accuracy")

# The three outputs of a distilled DeiT that evaluation reads, in the order predictions come in, and the prefix of
# their metrics (`accuracy`, `cls_accuracy`, `distillation_accuracy`, ...). The one definition of both.
HEADS = (("logits", ""), ("cls_logits", "cls_"), ("distillation_logits", "distillation_"))
HEAD_FIELDS = tuple(field for field, _ in HEADS)
HEAD_PREFIXES = tuple(prefix for _, prefix in HEADS)


def _ranked(logits: np.ndarray, k: int) -> np.ndarray:
    """The k best class indices per row, best first."""
    if k == 1:
        return logits.argmax(axis=-1)[:, None]
    top = np.argpartition(-logits, k - 1, axis=-1)[:, :k]
    order = np.take_along_axis(-logits, top, axis=-1).argsort(axis=-1, kind="stable")
    return np.take_along_axis(top, order, axis=-1)


def make_compute_metrics(top_k: int = 5) -> Callable[[EvalPrediction], dict[str, float]]:
    """`compute_metrics` for `DistillationTrainer`: top-1 (and top-`top_k` when there are more than `top_k` classes)
    of the averaged output (`accuracy`, `top5_accuracy`), the class head (`cls_accuracy`, `cls_top5_accuracy`) and the
    distillation head (`distillation_accuracy`, ...); with teacher logits, `teacher_accuracy` and
    `teacher_agreement` (how often the averaged output's top-1 is the teacher's); for each head, the share of the
    images its most frequent class takes (`cls_majority_share`, `distillation_majority_share`: near 1 for a head
    that collapsed onto one class). Accuracies are computed with the `evaluate` metric module shipped in
    `hf_deit.metrics`."""
    import evaluate  # imported here: `import hf_deit` stays light

    metric = evaluate.load(TOP_K_ACCURACY_PATH)

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        outputs = prediction.predictions
        outputs = outputs if isinstance(outputs, (tuple, list)) else (outputs,)
        labels = np.asarray(prediction.label_ids)
        if labels.ndim == 2:  # soft targets: the most probable class is the reference
            labels = labels.argmax(axis=-1)
        num_classes = outputs[0].shape[-1]
        k = top_k if num_classes > top_k else 1
        results = {}
        for index, prefix in enumerate(HEAD_PREFIXES):
            if index < len(outputs):
                head = metric.compute(predictions=_ranked(outputs[index], k), references=labels)
                results.update({prefix + name: value for name, value in head.items()})
                if prefix:  # how much of the data the head's most frequent class takes: 1.0 is a collapsed head
                    counts = np.bincount(outputs[index].argmax(axis=-1), minlength=num_classes)
                    results[prefix + "majority_share"] = float(counts.max() / max(counts.sum(), 1))
        if len(outputs) > 3:
            teacher_logits = outputs[3]
            results["teacher_accuracy"] = metric.compute(predictions=_ranked(teacher_logits, 1), references=labels)[
                "accuracy"
            ]
            results["teacher_agreement"] = metric.compute(
                predictions=_ranked(outputs[0], 1), references=teacher_logits.argmax(axis=-1)
            )["accuracy"]
        return results

    return compute_metrics
