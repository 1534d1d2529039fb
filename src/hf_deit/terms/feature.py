"""The feature term: the student's pooled features, through a learnable projection, regress the teacher's.

    loss = distance(projection(student_features), teacher_features)

The student's features are its distillation token's final state (`"dist"`, default), its cls token's (`"cls"`), or
the mean of its patch tokens (`"patches"`); the teacher's are its pooled pre-logits features, the input of the layer
that produces its logits (`hf_deit.teacher.Teacher(..., features=True)`). The projection maps the
student's width to the teacher's; it is trained with the student and thrown away afterwards (it is not part of the
model, so `save_pretrained` never sees it). timm users know the idea from its `FeatureDistillationTask`.

`distance` is `"cosine"` (1 - cosine similarity, default: the direction of the features carries the teacher's
knowledge, and their scale differs between architectures) or `"mse"` (mean squared error over features).
"""

import contextlib
import torch
import torch.nn.functional as F
from torch import nn
from hf_deit_inputs import terms as declared
from hf_deit_inputs.terms import COSINE, MSE, PATCHES

from ..attention_maps import capture_input
from .base import NUM_PREFIX_TOKENS, DistillationTerm, TermBatch, TermLoss



class FeatureProjection(nn.Module):
    """A linear map from the student's hidden size to the teacher's feature size."""

    def __init__(self, student_size: int, teacher_size: int):
        super().__init__()
        self.proj = nn.Linear(student_size, teacher_size)

    def forward(self, student_features: torch.Tensor) -> torch.Tensor:
        return self.proj(student_features)


def feature_distillation_loss(
    projected: torch.Tensor, teacher_features: torch.Tensor, loss_type: str = "cosine"
) -> torch.Tensor:
    """`(batch, d)` projected student features against `(batch, d)` teacher features; a batch mean, in float32."""
    if projected.shape != teacher_features.shape:
        raise ValueError(f"Projected student features {tuple(projected.shape)} and teacher features "
                         f"{tuple(teacher_features.shape)} differ in shape.")
    with torch.autocast(device_type=projected.device.type, enabled=False):
        projected, teacher_features = projected.float(), teacher_features.float().detach()
        if loss_type == COSINE:
            return (1.0 - F.cosine_similarity(projected, teacher_features, dim=-1)).mean()
        if loss_type == MSE:
            return F.mse_loss(projected, teacher_features)
        raise ValueError(f"feature distillation loss must be 'cosine' or 'mse', got {loss_type!r}.")


def student_head(model: nn.Module, token: str) -> nn.Module | None:
    """The head whose input is the token's final (normed) state: capture its input for `"dist"`/`"cls"` features
    (`hf_deit.attention_maps.capture_input`). None for `"patches"`, which reads the hidden states instead."""
    if token == PATCHES:
        return None
    name = {"dist": "distillation_classifier", "cls": "cls_classifier"}[token]
    head = getattr(model, name, None)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no `{name}`: {token!r} features need a distilled DeiT.")
    return head


def patch_mean_features(last_hidden_states: torch.Tensor, final_norm: nn.Module,
                        num_prefix_tokens: int = NUM_PREFIX_TOKENS):
    """The mean of the patch tokens' final states: the last block's output (`hidden_states[-1]`) after the model's
    final norm, prefix tokens (cls, dist) left out."""
    return final_norm(last_hidden_states[:, num_prefix_tokens:]).mean(dim=1)


class FeatureTerm(DistillationTerm):
    settings = declared.TERMS["feature"]

    def __init__(self, weight: float, projection: nn.Module, token: str = "dist",
                 loss_type: str = "cosine"):  # fmt: skip
        super().__init__(weight)
        self.projection, self.token, self.loss_type = projection, token, loss_type

    @classmethod
    def build(cls, args, student, teacher, probe):
        if args.feature_distillation_weight == 0:
            return None
        # One teacher pass at the student's input size gives the width of the teacher's features.
        width = teacher(probe, features=True).features.shape[-1]
        projection = FeatureProjection(student.config.hidden_size, width).to(probe.device)
        return cls(args.feature_distillation_weight, projection, args.feature_distillation_token,
                   args.feature_distillation_loss)  # fmt: skip

    def student_kwargs(self, student):
        # Without a head to read from: every block's output, all tokens (the last block then computes every row).
        return {"output_hidden_states": True} if student_head(student, self.token) is None else {}

    def capture(self, student):
        head = student_head(student, self.token)
        return capture_input(head) if head is not None else contextlib.nullcontext({})

    def read(self, student, outputs, captured, pixel_values):
        """The projected `(batch, teacher features)` student features."""
        if student_head(student, self.token) is not None:
            return self.projection(captured["input"])
        return self.projection(patch_mean_features(outputs.hidden_states[-1], student.deit.layernorm))

    def forward(self, batch: TermBatch) -> TermLoss:
        value = feature_distillation_loss(batch.signals[self.name], batch.teacher.features, self.loss_type)
        return TermLoss(value, {"loss_feature": value})

    def extra_repr(self) -> str:
        return f"weight={self.weight}, token={self.token!r}, loss_type={self.loss_type!r}"
