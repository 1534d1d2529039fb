"""Evaluation metrics: per-head accuracies of a distilled DeiT (`make_compute_metrics`, used by the Trainer and by
`hf_deit.evaluation`), computed with the `evaluate` metric module shipped here and loadable offline by path
(`TOP_K_ACCURACY_PATH`)."""

from .head_metrics import HEAD_FIELDS, HEAD_PREFIXES, HEADS, TOP_K_ACCURACY_PATH, make_compute_metrics

__all__ = ["HEADS", "HEAD_FIELDS", "HEAD_PREFIXES", "TOP_K_ACCURACY_PATH", "make_compute_metrics"]
