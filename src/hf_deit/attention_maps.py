"""Where a model looks: spatial attention maps of students and teachers, for distillation and for figures.

Every map here is a `(batch, grid_height, grid_width)` tensor of non-negative weights over image positions.

Transformers (our distilled DeiT, transformers' ViT/DeiT)
    token_attention_map(attentions, grid, token_index, num_prefix_tokens)
        The attention a token (cls: 0, dist: 1) pays to the patches, averaged over heads and over the given
        layers' weights. The weights it drops (to the prefix tokens) are why maps are renormalised before comparing.
    attention_rollout(attentions, ...)
        Abnar & Zuidema (2020): the product over layers of `(A + I) / 2`, each row renormalised, so that attention
        flowing through the residual stream is counted. For figures: it needs every layer's weights.

CNNs (ResNet, RegNet, ConvNeXt, ... from transformers)
    activation_attention_map(features)
        Attention transfer (Zagoruyko & Komodakis, 2017): the channel-wise mean of squared activations of a stage.

Teachers, in one forward pass
    teacher_forward(teacher, pixel_values, attention_map=..., features=...) -> TeacherForwardOutput
        logits, the teacher's map (last layer's cls attention, or last stage's activation map) and its pooled
        pre-logits features (the input of its classifier), all from the forward pass that gives the logits.
"""

import math
import warnings
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

CLS_TOKEN, DISTILLATION_TOKEN = 0, 1


def grid_for(num_patches: int, image_size: Sequence[int] | None = None, patch_size: Sequence[int] | None = None):
    """The (rows, columns) of a patch sequence: from the input and patch sizes when known, else a square grid."""
    if image_size is not None and patch_size is not None:
        grid = (image_size[0] // patch_size[0], image_size[1] // patch_size[1])
        if grid[0] * grid[1] == num_patches:
            return grid
    side = math.isqrt(num_patches)
    if side * side != num_patches:
        raise ValueError(
            f"Cannot lay {num_patches} patches on a grid: pass the input and patch sizes for a non-square image."
        )
    return side, side


def token_attention_map(
    attentions: Sequence[torch.Tensor],
    grid: tuple[int, int],
    token_index: int = CLS_TOKEN,
    num_prefix_tokens: int | None = None,
) -> torch.Tensor:
    """The attention of one token over the patches, averaged over heads and over the layers given.

    Args:
        attentions: attention weights `(batch, heads, queries, keys)` of the layers to use (one or more). Keys are
            `[prefix tokens..., patches...]`; queries must include `token_index`.
        grid: the patch grid (rows, columns); `rows * columns` keys are patches.
        token_index: the query row: 0 for the cls token, 1 for our dist token.
        num_prefix_tokens: keys before the patches; default: all keys that are not patches.

    Returns `(batch, rows, columns)`; each map sums to the share of attention the token gives to patches (< 1).
    """
    if not attentions:
        raise ValueError("No attention weights given: request them with attention_layers=[...] or output_attentions.")
    num_patches = grid[0] * grid[1]
    maps = []
    for weights in attentions:
        keys = weights.shape[-1]
        prefix = keys - num_patches if num_prefix_tokens is None else num_prefix_tokens
        if prefix < 0 or prefix + num_patches != keys:
            raise ValueError(f"Attention over {keys} keys does not hold {num_prefix_tokens} prefix tokens and a "
                             f"{grid[0]}x{grid[1]} patch grid.")
        maps.append(weights[:, :, token_index, prefix:].float().mean(dim=1))
    return torch.stack(maps).mean(dim=0).reshape(-1, *grid)


def attention_rollout(attentions: Sequence[torch.Tensor], residual_weight: float = 0.5) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema, 2020) over all given layers, first to last.

    Each layer's head-averaged weights are mixed with the identity, `residual_weight * I + (1 - residual_weight) * A`
    (the residual connection carries a token's own state forward), renormalised by row, and the layers multiplied.
    Returns `(batch, seq, seq)`: row t is how much each input token contributes to token t at the end.
    """
    if not attentions:
        raise ValueError("Attention rollout needs every layer's weights (output_attentions=True).")
    rollout = None
    for weights in attentions:
        if weights.shape[-2] != weights.shape[-1]:
            raise ValueError("Attention rollout needs every query row; this layer computed only some.")
        layer = weights.float().mean(dim=1)
        identity = torch.eye(layer.shape[-1], device=layer.device, dtype=layer.dtype)
        layer = residual_weight * identity + (1 - residual_weight) * layer
        layer = layer / layer.sum(dim=-1, keepdim=True)
        rollout = layer if rollout is None else layer @ rollout
    return rollout


def rollout_map(
    attentions: Sequence[torch.Tensor], grid: tuple[int, int], token_index: int = CLS_TOKEN, residual_weight: float = 0.5
) -> torch.Tensor:
    """The rollout row of one token, restricted to the patches: `(batch, rows, columns)`."""
    rollout = attention_rollout(attentions, residual_weight)
    num_patches = grid[0] * grid[1]
    return rollout[:, token_index, -num_patches:].reshape(-1, *grid)


def activation_attention_map(features: torch.Tensor) -> torch.Tensor:
    """Activation-based spatial attention of a CNN stage: the mean over channels of squared activations.

    `features` is `(batch, channels, height, width)`; returns `(batch, height, width)`, in float32.
    """
    if features.ndim != 4:
        raise ValueError(f"Expected CNN features (batch, channels, height, width), got shape {tuple(features.shape)}.")
    return features.float().pow(2).mean(dim=1)


# ---- teachers ----


@dataclass
class TeacherForwardOutput:
    """What one teacher forward pass gives: logits, and when asked, a spatial map and pooled pre-logits features."""

    logits: torch.Tensor
    attention_map: torch.Tensor | None = None
    features: torch.Tensor | None = None
    stage_maps: tuple[torch.Tensor, ...] | None = None  # a CNN's stage outputs (batch, channels, h, w), first to last


def classifier_layer(model: nn.Module, num_labels: int | None = None) -> nn.Linear:
    """The layer that produces a classifier's logits: the last `nn.Linear` (registered last) with `num_labels`
    outputs (any last `nn.Linear` when `num_labels` is None). Its input is the model's pooled pre-logits features."""
    found = None
    for module in model.modules():
        if isinstance(module, nn.Linear) and (num_labels is None or module.out_features == num_labels):
            found = module
    if found is None:
        raise ValueError(f"{type(model).__name__} has no linear classifier layer with {num_labels} outputs, whose "
                         "input would be its pooled features; feature distillation needs one.")
    return found


@contextmanager
def capture_outputs(modules: Sequence[nn.Module]):
    """Within the block, the list holds each module's output of its latest call, in the order of `modules`."""
    outputs: list = [None] * len(modules)
    handles = []
    for position, module in enumerate(modules):
        def hook(_module, _args, output, position=position):
            outputs[position] = output

        handles.append(module.register_forward_hook(hook))
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()


@contextmanager
def capture_input(module: nn.Module):
    """Within the block, `captured["input"]` holds the (first) input of `module`'s latest call, flattened to 2-D."""
    captured = {}

    def hook(_module, args):
        captured["input"] = args[0].flatten(1)

    handle = module.register_forward_pre_hook(hook)
    try:
        yield captured
    finally:
        handle.remove()


def _is_vit_like(config) -> bool:
    """A ViT-like transformer (patches and attention heads) rather than a CNN (ConvNeXt also has a patch size)."""
    return config is not None and hasattr(config, "patch_size") and hasattr(config, "num_attention_heads")


def _is_distilled_deit(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == "distilled_deit"


def prepare_teacher_for_maps(teacher: nn.Module) -> None:
    """Make a transformers ViT-like teacher able to return attention weights (only the eager path computes them).

    Our distilled DeiT needs nothing (it computes weights for the requested layers only); a CNN needs nothing.
    """
    if _is_distilled_deit(teacher):
        return
    config = getattr(teacher, "config", None)
    if _is_vit_like(config) and getattr(config, "_attn_implementation", "eager") != "eager":
        teacher.set_attn_implementation("eager")


def _logits_of(output) -> torch.Tensor:
    return output if isinstance(output, torch.Tensor) else output.logits


def teacher_forward(
    teacher: nn.Module,
    pixel_values: torch.Tensor,
    attention_map: bool = False,
    features: bool = False,
    layers: Sequence[int] = (-1,),
    stage_maps: bool = False,
) -> TeacherForwardOutput:
    """Logits, and optionally the spatial map and pooled features, from a single forward pass of the teacher.

    Maps: a transformer teacher (ours, or transformers' ViT/DeiT: a config with `patch_size` and attention heads) gives its cls token's
    attention over the patches in `layers`, averaged over heads and layers; a CNN (transformers' ResNet, RegNet,
    ConvNeXt, ...: hidden states of shape `(batch, channels, h, w)`) gives `activation_attention_map` of its last
    stage. Features: the input of the layer producing the logits (`classifier_layer`), i.e. pooled pre-logits.
    Stage maps: a CNN's spatial stage outputs (its 4-D hidden states), for feature-map distillation.
    A transformers ViT must run with eager attention for its weights: call `prepare_teacher_for_maps` once.
    """
    kwargs = {"output_hidden_states": True} if stage_maps else {}
    config = getattr(teacher, "config", None)
    transformer = _is_vit_like(config)
    if attention_map:
        if _is_distilled_deit(teacher):
            kwargs["attention_layers"] = list(layers)
        elif transformer:
            kwargs["output_attentions"] = True
        else:
            kwargs["output_hidden_states"] = True
    head = classifier_layer(teacher, getattr(config, "num_labels", None)) if features else None
    with capture_input(head) if head is not None else _nothing() as captured:
        output = teacher(pixel_values, **kwargs)
    spatial = None
    if attention_map:
        spatial = _teacher_map(teacher, output, pixel_values, transformer, layers)
    maps = _stage_maps(teacher, output) if stage_maps else None
    return TeacherForwardOutput(_logits_of(output), spatial, captured["input"] if head is not None else None, maps)


def _stage_maps(teacher: nn.Module, output) -> tuple[torch.Tensor, ...]:
    maps = tuple(state for state in getattr(output, "hidden_states", None) or () if state.ndim == 4)
    if not maps:
        raise ValueError(f"The teacher {type(teacher).__name__} returns no spatial stage outputs (4-D hidden states): "
                         "feature-map distillation needs a CNN teacher, such as transformers' ResNet, RegNet or "
                         "ConvNeXt (scripts/train_teacher.py trains one).")
    return maps


@contextmanager
def _nothing():
    yield {}


def _teacher_map(teacher, output, pixel_values, transformer: bool, layers: Sequence[int]) -> torch.Tensor:
    name = type(teacher).__name__
    if transformer:
        attentions = getattr(output, "attentions", None)
        if not attentions:
            raise ValueError(f"The teacher {name} returned no attention weights; call prepare_teacher_for_maps "
                             "(transformers computes them with eager attention only).")
        if not _is_distilled_deit(teacher):  # every layer came back: pick the requested ones
            attentions = [attentions[index] for index in layers]
        patch_size = teacher.config.patch_size
        patch_size = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
        num_patches = (pixel_values.shape[-2] // patch_size[0]) * (pixel_values.shape[-1] // patch_size[1])
        grid = grid_for(num_patches, pixel_values.shape[-2:], patch_size)
        return token_attention_map(attentions, grid, CLS_TOKEN)
    hidden_states = getattr(output, "hidden_states", None)
    if not hidden_states or hidden_states[-1].ndim != 4:
        raise ValueError(
            f"The teacher {name} gives neither attention weights nor CNN stage outputs (output_hidden_states): "
            "attention distillation supports transformers' ViT/DeiT, our distilled DeiT and transformers' CNNs."
        )
    if hidden_states[-1].shape[-2:].numel() == 1:
        warnings.warn(
            f"The teacher {name}'s last stage is 1x1 at {tuple(pixel_values.shape[-2:])} px: its attention map is "
            "uniform, so the attention term only spreads the student's attention. Use a teacher that downsamples "
            "less (scripts/train_teacher.py --config_overrides '{\"hidden_sizes\": [32, 64], \"depths\": [1, 1]}') "
            "or larger images.",
            stacklevel=3,
        )
    return activation_attention_map(hidden_states[-1])
