"""The distillation terms, one module each, and their registry (`TERMS`, in the order their losses are summed):

    logits.py       DeiT's loss on the two heads: none, soft or hard (`hf_deit.losses.DistillationLoss`)
    attention.py    a student token's attention over its patches vs the teacher's spatial map
    feature.py      the student's pooled features, projected, vs the teacher's pre-logits features
    feature_map.py  the student's patch tokens, projected, vs a CNN stage output, position by position
    base.py         what a term is (`DistillationTerm`), the batch it sees, and `register_term`

A new term is its declaration (`hf_deit_inputs.terms.declare_term`: its settings, which become `DistillationConfig`
fields, flags and early checks, and its teacher outputs) and a module with a `DistillationTerm` subclass, registered
below (from outside the package: with `register_term`, before the objective is built).
`hf_deit.objective.DistillationObjective` builds the terms the settings switch on and sums them.
"""

from .attention import AttentionMapTerm
from .base import TERMS, DistillationTerm, TermBatch, TermLoss, register_term
from .feature import FeatureTerm
from .feature_map import FeatureMapTerm
from .logits import LogitTerm

for _term in (LogitTerm, AttentionMapTerm, FeatureTerm, FeatureMapTerm):  # summed in this order
    register_term(_term)

__all__ = [
    "TERMS",
    "AttentionMapTerm",
    "DistillationTerm",
    "FeatureMapTerm",
    "FeatureTerm",
    "LogitTerm",
    "TermBatch",
    "TermLoss",
    "register_term",
]
