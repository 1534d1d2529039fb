"""Top-1 and top-k accuracy from ranked predictions: an `evaluate` metric shipped with hf_deit.

`evaluate.load("accuracy")` fetches its script from the Hub; this module loads by path, offline:
`evaluate.load(hf_deit.metrics.TOP_K_ACCURACY_PATH)`.
"""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Top-1 and top-k accuracy. Each prediction is a list of class indices ranked best first (e.g. the k largest logits,
in descending order); top-1 accuracy compares the first with the reference, top-k accuracy counts a hit when the
reference is anywhere in the list.
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[list[int]]`): per example, the predicted class indices ranked best first (at least one).
    references (`list[int]`): the true class index of each example.
Returns:
    accuracy (`float`): fraction of examples whose first prediction is the reference.
    top{k}_accuracy (`float`): fraction whose reference is among the k ranked predictions; only when k > 1,
        with k the length of the prediction lists.
Example:
    >>> metric = evaluate.load(TOP_K_ACCURACY_PATH)
    >>> metric.compute(predictions=[[2, 0], [1, 2]], references=[2, 2])
    {'accuracy': 0.5, 'top2_accuracy': 1.0}
"""


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class TopKAccuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("int64")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        ranked = np.asarray(predictions, dtype=np.int64)
        references = np.asarray(references, dtype=np.int64)
        if ranked.ndim != 2 or ranked.shape[1] == 0:
            raise ValueError("Each prediction must be a non-empty list of ranked class indices of the same length.")
        hits = ranked == references[:, None]
        results = {"accuracy": float(hits[:, 0].mean())}
        k = ranked.shape[1]
        if k > 1:
            results[f"top{k}_accuracy"] = float(hits.any(axis=1).mean())
        return results
