"""Everything a distilled student learns from, with its weights, in one module.

    loss = DeiT's loss on the two heads                   (hf_deit.losses.DistillationLoss: none, soft or hard)
         + attention_weight   * attention-map term        (a student token's attention vs the teacher's map)
         + feature_weight     * feature term              (projected student features vs the teacher's pooled ones)
         + feature_map_weight * feature-map term          (projected patch tokens vs a CNN stage output, per position)

`DistillationObjective.build(args, student, teacher)` sizes it for a student and a teacher and checks the settings;
`student_forward` runs the student and reads what the switched-on terms need from that one pass; `teacher_request`
says what the teacher's pass must return; calling the objective gives the loss and its named, unweighted terms
(`ObjectiveOutput`). The three extra terms are training terms: in evaluation only DeiT's loss is computed, so
evaluation losses compare across runs with and without them.

The feature and feature-map terms compare through learnable projections, parameters of this module. The trainer
attaches the objective to the student while it trains (`student.distillation_objective`), so that the Trainer's
optimizer, gradient clipping, DDP averaging and checkpoints treat them like any other weight; the model it saves
holds none of them.
"""

import contextlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from .configuration_distilled_deit import _pair
from .data.mixup import LABELED_KEY
from .attention_maps import CLS_TOKEN, DISTILLATION_TOKEN, capture_input, grid_for, token_attention_map
from .feature_distillation import (
    FEATURE_LOSSES,
    FEATURE_TOKENS,
    FeatureProjection,
    feature_distillation_loss,
    feature_map_distillation_loss,
    nearest_stage,
    patch_mean_features,
    student_head,
)
from .losses import ATTENTION_MAP_LOSSES, DistillationLoss, attention_map_loss

logger = logging.getLogger(__name__)

# The student's tokens before its patches: cls and dist.
NUM_PREFIX_TOKENS = 2
ATTENTION_TOKENS = {"cls": (CLS_TOKEN,), "dist": (DISTILLATION_TOKEN,), "both": (CLS_TOKEN, DISTILLATION_TOKEN)}


@dataclass
class StudentSignals:
    """What the extra terms read from the student's forward pass (None when their term is off)."""

    grid: tuple[int, int]
    attention_maps: list[torch.Tensor] | None = None  # (batch, rows, columns) per distilled token
    features: torch.Tensor | None = None  # (batch, teacher features): projected student features
    patch_tokens: list[torch.Tensor] | None = None  # (batch, rows * columns, teacher channels) per block, projected


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)  # unweighted: loss_cls, loss_distillation, ...


class DistillationObjective(nn.Module):
    """DeiT's loss plus the optional attention-map, feature and feature-map terms (see the module docstring).

    Args:
        loss: the two-head loss (`hf_deit.losses.DistillationLoss`).
        attention_weight, attention_layers, attention_token, attention_loss: the attention-map term
            (`hf_deit.losses.attention_map_loss`): the student's `attention_token` ("cls", "dist" or "both": the mean
            of the two terms) attention over patches in `attention_layers` (mean over heads and layers) against the
            teacher's map, compared with `attention_loss` ("kl" or "mse").
        feature_weight, feature_loss, feature_token, feature_projection: the feature term
            (`hf_deit.feature_distillation`): the student's `feature_token` features ("dist", "cls" or "patches")
            through `feature_projection` against the teacher's pooled pre-logits features.
        feature_map_weight, feature_map_layers, feature_map_projections, feature_map_stage: the feature-map term
            (locality guidance): the patch tokens after each block in `feature_map_layers`, through their
            projection, imitate the teacher's stage output number `feature_map_stage`, position by position.
    """

    def __init__(
        self,
        loss: DistillationLoss,
        *,
        attention_weight: float = 0.0,
        attention_layers: Sequence[int] = (-1,),
        attention_token: str = "dist",
        attention_loss: str = "kl",
        feature_weight: float = 0.0,
        feature_loss: str = "cosine",
        feature_token: str = "dist",
        feature_projection: nn.Module | None = None,
        feature_map_weight: float = 0.0,
        feature_map_layers: Sequence[int] = (0,),
        feature_map_projections: Sequence[nn.Module] = (),
        feature_map_stage: int | None = None,
    ):
        super().__init__()
        if min(attention_weight, feature_weight, feature_map_weight) < 0:
            raise ValueError("The attention, feature and feature-map distillation weights must be >= 0.")
        if attention_token not in ATTENTION_TOKENS:
            raise ValueError(f"attention_distillation_token must be 'cls', 'dist' or 'both', got {attention_token!r}.")
        if attention_loss not in ATTENTION_MAP_LOSSES:
            raise ValueError(f"attention_distillation_loss must be one of {ATTENTION_MAP_LOSSES}, got {attention_loss!r}.")
        if feature_loss not in FEATURE_LOSSES:
            raise ValueError(f"feature_distillation_loss must be one of {FEATURE_LOSSES}, got {feature_loss!r}.")
        if feature_token not in FEATURE_TOKENS:
            raise ValueError(f"feature_distillation_token must be one of {FEATURE_TOKENS}, got {feature_token!r}.")
        if feature_weight > 0 and feature_projection is None:
            raise ValueError("The feature term needs its feature_projection.")
        if feature_map_weight > 0 and (len(feature_map_projections) != len(feature_map_layers) or feature_map_stage is None):
            raise ValueError("The feature-map term needs one projection per layer and the teacher stage to imitate.")
        self.loss = loss
        self.attention_weight = attention_weight
        self.attention_layers = list(attention_layers)
        self.attention_token = attention_token
        self.attention_loss = attention_loss
        self.feature_weight = feature_weight
        self.feature_loss = feature_loss
        self.feature_token = feature_token
        self.feature_projection = feature_projection if feature_weight > 0 else None
        self.feature_map_weight = feature_map_weight
        self.feature_map_layers = list(feature_map_layers)
        self.feature_map_projections = nn.ModuleList(feature_map_projections if feature_map_weight > 0 else ())
        self.feature_map_stage = feature_map_stage

    # ---- built for a student and a teacher ----

    @classmethod
    def build(cls, args, student: nn.Module, teacher=None) -> "DistillationObjective":
        """The objective `args` (a `DistillationConfig`) describes, sized for `student` and `teacher` (a
        `hf_deit.teacher.Teacher`, None for `distillation_type="none"` without one). A feature-map weight left unset
        (None) becomes 1 for images of at most 64 px with a CNN teacher and distillation on, else 0. The projections
        are built on the student's device."""
        loss = DistillationLoss(args.distillation_type, args.distillation_alpha, args.distillation_tau,
                                args.label_smoothing_factor, args.pseudo_label_threshold)  # fmt: skip
        if loss.needs_teacher and teacher is None:
            raise ValueError(f"distillation_type={args.distillation_type!r} needs a teacher: pass `teacher=` (a model, "
                             "a folder or a Hub id) or set teacher_name_or_path, or use distillation_type='none'.")
        weights = {"attention_distillation_weight": args.attention_distillation_weight,
                   "feature_distillation_weight": args.feature_distillation_weight,
                   "feature_map_distillation_weight": args.feature_map_distillation_weight or 0}  # fmt: skip
        if teacher is None and any(weight > 0 for weight in weights.values()):
            given = ", ".join(name for name, weight in weights.items() if weight > 0)
            raise ValueError(f"{given}: these terms learn from a teacher; pass `teacher=` or set them to 0.")
        config = student.config
        depth = config.num_hidden_layers
        for name, layers in (("attention_distillation_layers", args.attention_distillation_layers),
                             ("feature_map_distillation_layers", args.feature_map_distillation_layers)):  # fmt: skip
            for index in layers:
                if not -depth <= index < depth:
                    raise ValueError(f"{name} has {index}, but the student has {depth} blocks.")
        device = next(student.parameters()).device
        probe = _probe_input(config, device)
        feature_projection = None
        if teacher is not None and args.feature_distillation_weight > 0:
            features = teacher(probe, features=True).features
            feature_projection = FeatureProjection(config.hidden_size, features.shape[-1]).to(device)
        feature_map_weight, stage_maps = args.feature_map_distillation_weight, None
        if feature_map_weight is None:
            feature_map_weight, stage_maps = _default_feature_map_weight(loss, teacher, probe)
        layers = sorted({index % depth for index in args.feature_map_distillation_layers})
        projections, stage = (), None
        if feature_map_weight > 0:
            # One teacher pass at the student's input size tells which stage matches the patch grid, and its width.
            stage_maps = stage_maps or teacher(probe, stage_maps=True).stage_maps
            stage = nearest_stage(stage_maps, student_grid(config, probe))
            channels = stage_maps[stage].shape[1]
            projections = [FeatureProjection(config.hidden_size, channels).to(device) for _ in layers]
        return cls(
            loss,
            attention_weight=args.attention_distillation_weight,
            attention_layers=args.attention_distillation_layers,
            attention_token=args.attention_distillation_token,
            attention_loss=args.attention_distillation_loss,
            feature_weight=args.feature_distillation_weight,
            feature_loss=args.feature_distillation_loss,
            feature_token=args.feature_distillation_token,
            feature_projection=feature_projection,
            feature_map_weight=feature_map_weight,
            feature_map_layers=layers,
            feature_map_projections=projections,
            feature_map_stage=stage,
        )

    @property
    def needs_teacher(self) -> bool:
        return self.loss.needs_teacher

    @property
    def term_names(self) -> tuple[str, ...]:
        """The names of the terms the objective reports in training, in order."""
        names = ("loss_cls", "loss_distillation")
        names += ("loss_attention",) if self.attention_weight > 0 else ()
        names += ("loss_feature",) if self.feature_weight > 0 else ()
        return names + (("loss_feature_map",) if self.feature_map_weight > 0 else ())

    def teacher_request(self, extra_terms: bool) -> dict[str, bool]:
        """What the teacher's forward pass must return besides its logits (`hf_deit.teacher.Teacher`)."""
        return dict(attention_map=extra_terms and self.attention_weight > 0,
                    features=extra_terms and self.feature_weight > 0,
                    stage_maps=extra_terms and self.feature_map_weight > 0)  # fmt: skip

    # ---- the student's forward pass ----

    def student_forward(self, model: nn.Module, student: nn.Module, inputs: dict, extra_terms: bool):
        """Run `model` (the student, maybe wrapped by DDP or compiled; `student` is the unwrapped one) on the batch
        and read what the switched-on extra terms need from the same pass. Returns `(outputs, StudentSignals)`."""
        student_inputs = {name: value for name, value in inputs.items() if name not in ("labels", LABELED_KEY)}
        want_maps = extra_terms and self.attention_weight > 0
        want_features = extra_terms and self.feature_weight > 0
        want_patch_tokens = extra_terms and self.feature_map_weight > 0
        if want_maps:
            student_inputs["attention_layers"] = self.attention_layers
        head = student_head(student, self.feature_token) if want_features else None
        if (want_features and head is None) or want_patch_tokens:
            # hidden_states: every block's output, all tokens (the last block then computes every token's row)
            student_inputs["output_hidden_states"] = True
        pixel_values = inputs["pixel_values"]
        signals = StudentSignals(grid=student_grid(student.config, pixel_values))

        def read_signals(_module, _args, outputs):
            # Runs inside the student's call, so the projections' weights take part in its forward pass: DDP then
            # averages their gradients with the student's, as for any of its weights.
            if want_maps:
                grid = grid_for(outputs.attentions[0].shape[-1] - NUM_PREFIX_TOKENS, pixel_values.shape[-2:],
                                _pair(student.config.patch_size))  # fmt: skip
                signals.attention_maps = [
                    token_attention_map(outputs.attentions, grid, token, num_prefix_tokens=NUM_PREFIX_TOKENS)
                    for token in ATTENTION_TOKENS[self.attention_token]
                ]
            if want_features:
                features = (captured["input"] if head is not None
                            else patch_mean_features(outputs.hidden_states[-1], student.deit.layernorm))  # fmt: skip
                signals.features = self.feature_projection(features)
            if want_patch_tokens:  # hidden_states[0] is the embeddings: block i's output is hidden_states[i + 1]
                signals.patch_tokens = [
                    projection(outputs.hidden_states[index + 1][:, NUM_PREFIX_TOKENS:])
                    for projection, index in zip(self.feature_map_projections, self.feature_map_layers)
                ]
            # Returned with the output: DDP, which looks for unused weights from the output, sees the projections used.
            return outputs, tuple(t for t in (signals.features, *(signals.patch_tokens or ())) if t is not None)

        hook = student.register_forward_hook(read_signals) if extra_terms else None
        try:
            with capture_input(head) if head is not None else contextlib.nullcontext({}) as captured:
                outputs = model(**student_inputs)
        finally:
            if hook is not None:
                hook.remove()
        if hook is not None:
            outputs, _ = outputs  # (the output, the projected signals) from read_signals
        if getattr(outputs, "distillation_logits", None) is None:
            raise ValueError(
                f"{type(student).__name__} returned no `distillation_logits`: DistillationTrainer trains models with a "
                "class head and a distillation head, such as DistilledDeiTForImageClassification."
            )
        return outputs, signals

    # ---- the loss ----

    def forward(
        self,
        outputs,
        signals: StudentSignals | None,
        labels: torch.Tensor,
        teacher=None,
        labeled: torch.Tensor | None = None,
    ) -> ObjectiveOutput:
        """The loss of one batch: `outputs` and `signals` from `student_forward`, `teacher` a `TeacherForwardOutput`
        (or None without a teacher). The extra terms are added when `signals` carries what they need."""
        teacher_logits = teacher.logits if teacher is not None else None
        if teacher_logits is not None and teacher_logits.shape[-1] != outputs.cls_logits.shape[-1]:
            raise ValueError(f"The teacher returned {teacher_logits.shape[-1]} logits per image, the student "
                             f"{outputs.cls_logits.shape[-1]}: they must predict the same classes.")  # fmt: skip
        base = self.loss(outputs.cls_logits, outputs.distillation_logits, labels, teacher_logits, labeled)
        loss, terms = base.loss, {"loss_cls": base.cls, "loss_distillation": base.distillation}
        if signals is None:
            return ObjectiveOutput(loss, terms)
        if signals.attention_maps is not None:
            term = torch.stack([attention_map_loss(student_map, teacher.attention_map, self.attention_loss)
                                for student_map in signals.attention_maps]).mean()  # fmt: skip
            loss, terms["loss_attention"] = loss + self.attention_weight * term, term
        if signals.features is not None:
            term = feature_distillation_loss(signals.features, teacher.features, self.feature_loss)
            loss, terms["loss_feature"] = loss + self.feature_weight * term, term
        if signals.patch_tokens is not None:
            teacher_map = teacher.stage_maps[self.feature_map_stage]
            term = torch.stack([
                feature_map_distillation_loss(tokens, teacher_map, signals.grid) for tokens in signals.patch_tokens
            ]).mean()  # fmt: skip
            loss, terms["loss_feature_map"] = loss + self.feature_map_weight * term, term
        return ObjectiveOutput(loss, terms)

    def extra_repr(self) -> str:
        return (f"attention_weight={self.attention_weight}, feature_weight={self.feature_weight}, "
                f"feature_map_weight={self.feature_map_weight}, feature_map_layers={self.feature_map_layers}")


def student_grid(config, pixel_values: torch.Tensor) -> tuple[int, int]:
    """The student's patch grid for a batch of this size."""
    patch_size = _pair(config.patch_size)
    return pixel_values.shape[-2] // patch_size[0], pixel_values.shape[-1] // patch_size[1]


def _probe_input(config, device) -> torch.Tensor:
    """One blank image at the student's input size."""
    return torch.zeros(1, config.num_channels, *_pair(config.image_size), device=device)


def _default_feature_map_weight(loss: DistillationLoss, teacher, probe: torch.Tensor):
    """1 for small images (at most 64 px) distilled from a CNN, 0 otherwise: the recipe that made distillation pay
    off on the embedded digits (README, scripts/experiment_recipe.py). Returns (weight, the probe's stage maps or
    None), so that the caller does not run the teacher again."""
    from .arguments import SMALL_IMAGE_MAX_SIZE

    size = max(probe.shape[-2:])
    if teacher is None or not loss.needs_teacher or size > SMALL_IMAGE_MAX_SIZE:
        return 0.0, None
    if getattr(teacher.model, "config", None) is None:  # a plain module: no hidden states to ask for
        return 0.0, None
    try:
        stage_maps = teacher(probe, stage_maps=True).stage_maps
    except ValueError:  # not a CNN: no spatial stage outputs to imitate
        return 0.0, None
    logger.info("Feature-map distillation on (weight 1): a CNN teacher and %d px images. "
                "--feature_map_distillation_weight 0 turns it off.", size)
    return 1.0, stage_maps
