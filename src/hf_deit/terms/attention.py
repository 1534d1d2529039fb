"""The attention-map term: the student looks where the teacher looks.

    loss = distance(student token's attention over its patches, the teacher's spatial map)

The student's `attention_distillation_token` ("dist", "cls", or "both": the mean of the two terms) attends over its
patches in the blocks `attention_distillation_layers` (mean over heads and layers); the teacher's map is its
attention (a ViT) or activation energy (a CNN), `hf_deit.teacher.Teacher(..., attention_map=True)`. The distance is
`attention_map_loss`'s "kl" or "mse".
"""

import torch
from hf_deit_inputs import terms as declared
from hf_deit_inputs.terms import KL, MSE

from ..attention_maps import CLS_TOKEN, DISTILLATION_TOKEN, capture_attention, patch_grid, token_attention_map
from .base import NUM_PREFIX_TOKENS, DistillationTerm, TermBatch, TermLoss, check_layers, resize_to_grid

TOKENS = {"cls": (CLS_TOKEN,), "dist": (DISTILLATION_TOKEN,), "both": (CLS_TOKEN, DISTILLATION_TOKEN)}


def as_distribution(attention_map: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Flatten `(batch, h, w)` non-negative maps to `(batch, h * w)` rows summing to 1."""
    flat = attention_map.flatten(1).float().clamp(min=0)
    return flat / flat.sum(dim=-1, keepdim=True).clamp(min=eps)


def attention_map_loss(
    student_map: torch.Tensor, teacher_map: torch.Tensor, loss_type: str = "kl", eps: float = 1e-8
) -> torch.Tensor:
    """How far the student's spatial attention is from the teacher's, averaged over the batch.

    Both `(batch, h, w)` maps go to the coarser of the two grids (the finer one is area-averaged onto it: a coarse
    map has no detail to match a fine one, and upsampling it would invent some), then each map is normalised to a
    distribution over positions. Then

    - `"kl"` (default): KL(teacher || student) = sum_p t_p (log t_p - log s_p), per example, batch mean. The maps
      are distributions over where to look, and KL compares them as such: it weighs errors by where the teacher
      looks (a student that ignores the teacher's focus pays most), is zero only for equal maps, does not depend on
      the grid size, and needs no scale matching between a CNN's activation energy and a ViT's softmax weights.
      `eps` keeps log s finite where the student gives a position no weight.
    - `"mse"`: the mean over positions of the squared difference of the two maps as densities (`N * p` over N
      positions, 1 everywhere for a uniform map, so that the value does not shrink as the grid grows), batch mean.
      Close to the attention-transfer paper's choice (an L2 distance, there between L2-normalised maps).

    Computed in float32.
    """
    with torch.autocast(device_type=student_map.device.type, enabled=False):
        grid = (min(student_map.shape[-2], teacher_map.shape[-2]), min(student_map.shape[-1], teacher_map.shape[-1]))
        student = as_distribution(resize_to_grid(student_map.float()[:, None], grid), eps)
        teacher = as_distribution(resize_to_grid(teacher_map.float()[:, None], grid), eps)
        if loss_type == KL:
            per_example = torch.sum(teacher * (torch.log(teacher + eps) - torch.log(student + eps)), dim=-1)
        elif loss_type == MSE:
            positions = student.shape[-1]
            per_example = torch.mean(((student - teacher) * positions) ** 2, dim=-1)
        else:
            raise ValueError(f"attention map loss must be 'kl' or 'mse', got {loss_type!r}.")
        return per_example.mean()


class AttentionMapTerm(DistillationTerm):
    settings = declared.TERMS["attention"]

    def __init__(self, weight: float, layers=(-1,), token: str = "dist", loss_type: str = "kl"):
        super().__init__(weight)
        self.layers, self.token, self.loss_type = list(layers), token, loss_type

    @classmethod
    def build(cls, args, student, teacher, probe):
        check_layers("attention_distillation_layers", args.attention_distillation_layers,
                     student.config.num_hidden_layers)  # fmt: skip
        if args.attention_distillation_weight == 0:
            return None
        return cls(args.attention_distillation_weight, args.attention_distillation_layers,
                   args.attention_distillation_token, args.attention_distillation_loss)  # fmt: skip

    def capture(self, student):
        return capture_attention(student, self.layers)

    def read(self, student, outputs, captured, pixel_values):
        """The distilled token's (tokens') `(batch, rows, columns)` attention over the patches."""
        grid = patch_grid(student.config, pixel_values)
        return [token_attention_map(captured, grid, token, num_prefix_tokens=NUM_PREFIX_TOKENS)
                for token in TOKENS[self.token]]  # fmt: skip

    def forward(self, batch: TermBatch) -> TermLoss:
        maps = batch.signals[self.name]
        value = torch.stack([attention_map_loss(student_map, batch.teacher.attention_map, self.loss_type)
                             for student_map in maps]).mean()  # fmt: skip
        return TermLoss(value, {"loss_attention": value})

    def extra_repr(self) -> str:
        return f"weight={self.weight}, layers={self.layers}, token={self.token!r}, loss_type={self.loss_type!r}"
