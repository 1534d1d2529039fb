"""Feature distillation: the student's pooled features, through a learnable projection, regress the teacher's.

    loss = distance(projection(student_features), teacher_features)

The student's features are its distillation token's final state (`"dist"`, default), its cls token's (`"cls"`), or
the mean of its patch tokens (`"patches"`); the teacher's are its pooled pre-logits features, the input of the layer
that produces its logits (`hf_deit.teacher.Teacher(..., features=True)`). The projection maps the
student's width to the teacher's; it is trained with the student and thrown away afterwards (it is not part of the
model, so `save_pretrained` never sees it). timm users know the idea from its `FeatureDistillationTask`.

`distance` is `"cosine"` (1 - cosine similarity, default: the direction of the features carries the teacher's
knowledge, and their scale differs between architectures) or `"mse"` (mean squared error over features).
"""

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

FeatureLossType = Literal["cosine", "mse"]
FEATURE_LOSSES = ("cosine", "mse")
FeatureToken = Literal["dist", "cls", "patches"]
FEATURE_TOKENS = ("dist", "cls", "patches")


class FeatureProjection(nn.Module):
    """A linear map from the student's hidden size to the teacher's feature size."""

    def __init__(self, student_size: int, teacher_size: int):
        super().__init__()
        self.proj = nn.Linear(student_size, teacher_size)

    def forward(self, student_features: torch.Tensor) -> torch.Tensor:
        return self.proj(student_features)


def feature_distillation_loss(
    projected: torch.Tensor, teacher_features: torch.Tensor, loss_type: FeatureLossType = "cosine"
) -> torch.Tensor:
    """`(batch, d)` projected student features against `(batch, d)` teacher features; a batch mean, in float32."""
    if loss_type not in FEATURE_LOSSES:
        raise ValueError(f"feature distillation loss must be one of {FEATURE_LOSSES}, got {loss_type!r}.")
    if projected.shape != teacher_features.shape:
        raise ValueError(f"Projected student features {tuple(projected.shape)} and teacher features "
                         f"{tuple(teacher_features.shape)} differ in shape.")
    with torch.autocast(device_type=projected.device.type, enabled=False):
        projected, teacher_features = projected.float(), teacher_features.float().detach()
        if loss_type == "cosine":
            return (1.0 - F.cosine_similarity(projected, teacher_features, dim=-1)).mean()
        return F.mse_loss(projected, teacher_features)


def student_head(model: nn.Module, token: FeatureToken) -> nn.Module | None:
    """The head whose input is the token's final (normed) state: capture its input for `"dist"`/`"cls"` features
    (`hf_deit.attention_maps.capture_input`). None for `"patches"`, which reads the hidden states instead."""
    if token not in FEATURE_TOKENS:
        raise ValueError(f"feature token must be one of {FEATURE_TOKENS}, got {token!r}.")
    if token == "patches":
        return None
    name = "distillation_classifier" if token == "dist" else "cls_classifier"
    head = getattr(model, name, None)
    if head is None:
        raise ValueError(f"{type(model).__name__} has no `{name}`: {token!r} features need a distilled DeiT.")
    return head


def patch_mean_features(last_hidden_states: torch.Tensor, final_norm: nn.Module, num_prefix_tokens: int = 2):
    """The mean of the patch tokens' final states: the last block's output (`hidden_states[-1]`) after the model's
    final norm, prefix tokens (cls, dist) left out."""
    return final_norm(last_hidden_states[:, num_prefix_tokens:]).mean(dim=1)


# ---- feature-map distillation: locality from a CNN teacher ----
#
#     loss = mean over positions of || normalize(projection(student patch token)) - normalize(teacher stage map) ||^2
#
# The student's patch tokens after the chosen blocks imitate a CNN teacher's intermediate feature map, position by
# position (Li et al., "Locality Guidance for Improving Vision Transformers on Tiny Datasets", ECCV 2022). A CNN's
# early stages are local by construction; a ViT trained from scratch on a few thousand images has to discover
# locality from the labels alone, and this term hands it over directly, with a target at every patch rather than one
# per image. Vectors are L2-normalised per position (so the loss is 2 - 2 cos, scale-free across architectures).


def nearest_stage(stage_maps, grid: tuple[int, int]) -> int:
    """The index of the CNN stage output `(batch, channels, h, w)` whose grid is closest to the student's patch grid
    (fewest cells apart on the log scale; the deeper stage among equals, since it carries more semantics)."""
    import math

    def distance(index: int) -> float:
        h, w = stage_maps[index].shape[-2:]
        return abs(math.log(h / grid[0])) + abs(math.log(w / grid[1]))

    return min(reversed(range(len(stage_maps))), key=distance)


def resize_feature_map(feature_map: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """`(batch, channels, h, w)` to the student's grid: area average when shrinking, bilinear when growing."""
    if tuple(feature_map.shape[-2:]) == tuple(grid):
        return feature_map
    if feature_map.shape[-2] >= grid[0] and feature_map.shape[-1] >= grid[1]:
        return F.adaptive_avg_pool2d(feature_map, grid)
    return F.interpolate(feature_map, size=tuple(grid), mode="bilinear", align_corners=False)


def feature_map_distillation_loss(
    projected_tokens: torch.Tensor, teacher_map: torch.Tensor, grid: tuple[int, int]
) -> torch.Tensor:
    """`(batch, rows * columns, channels)` projected student patch tokens against the teacher's `(batch, channels, h,
    w)` stage output, resampled to the `(rows, columns)` grid: the mean over examples and positions of the squared
    distance between L2-normalised vectors. In float32."""
    with torch.autocast(device_type=projected_tokens.device.type, enabled=False):
        teacher = resize_feature_map(teacher_map.float().detach(), grid).flatten(2).transpose(1, 2)
        if teacher.shape != projected_tokens.shape:
            raise ValueError(f"Projected student tokens {tuple(projected_tokens.shape)} and the teacher's map on the "
                             f"{grid[0]}x{grid[1]} grid {tuple(teacher.shape)} differ in shape.")
        student = F.normalize(projected_tokens.float(), dim=-1)
        teacher = F.normalize(teacher, dim=-1)
        return (student - teacher).pow(2).sum(dim=-1).mean()
