"""Where a model looks: spatial attention maps of students and teachers, for distillation and for figures.

Every map here is a `(batch, grid_height, grid_width)` tensor of non-negative weights over image positions. A
transformer's is the attention a token pays to the patches (`token_attention_map`; the weights it drops, to the prefix
tokens, are why maps are renormalised before comparing) or its attention rollout over every layer (Abnar & Zuidema,
2020; for figures); a CNN's is the activation energy of a stage (attention transfer, Zagoruyko & Komodakis, 2017).
Our distilled DeiT gives the chosen blocks' weights alone (`capture_attention`), the others keeping the fast attention
backend. A teacher's map, features and stage outputs come from the pass that gives its logits: `hf_deit.teacher`.
"""

from collections.abc import Sequence
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from .configuration_distilled_deit import _pair

CLS_TOKEN, DISTILLATION_TOKEN = 0, 1


def patch_grid(config, pixel_values: torch.Tensor) -> tuple[int, int]:
    """The (rows, columns) of patches a ViT-like model of `config` lays over a batch of this size."""
    patch_size = _pair(config.patch_size)
    return pixel_values.shape[-2] // patch_size[0], pixel_values.shape[-1] // patch_size[1]


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
        raise ValueError("No attention weights given: read them with capture_attention(model, layers), or pass "
                         "output_attentions=True.")
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


def distilled_deit_maps(model: nn.Module, pixel_values: torch.Tensor) -> tuple:
    """`(outputs, maps)` of one forward pass of a distilled DeiT loaded with eager attention (the others return no
    weights): its output (logits of both heads) and, by title, the cls and dist tokens' maps `(batch, rows, columns)`
    in the last layer (mean over heads) and by attention rollout (all layers)."""
    with torch.no_grad():
        outputs = model(pixel_values, output_attentions=True)
    attentions = outputs.attentions
    if not attentions or attentions[-1] is None:
        raise ValueError("The model returned no attention weights: load it with attn_implementation=\"eager\".")
    prefix = DISTILLATION_TOKEN + 1  # the cls and dist tokens come before the patches
    grid = patch_grid(model.config, pixel_values)
    maps = {
        "cls, last layer": token_attention_map(attentions[-1:], grid, CLS_TOKEN, num_prefix_tokens=prefix),
        "dist, last layer": token_attention_map(attentions[-1:], grid, DISTILLATION_TOKEN, num_prefix_tokens=prefix),
        "cls, rollout": rollout_map(attentions, grid, CLS_TOKEN),
        "dist, rollout": rollout_map(attentions, grid, DISTILLATION_TOKEN),
    }
    return outputs, maps


def relative_heat(attention: torch.Tensor, size: tuple[int, int]) -> torch.Tensor | None:
    """One `(rows, columns)` map upsampled (bilinear) to `size` (height, width) and scaled to [0, 1], to draw over the
    image; None for a constant map (a CNN whose last stage is 1x1 at this size), where scaling would paint noise."""
    heat = F.interpolate(attention[None, None].float(), size=size, mode="bilinear", align_corners=False)[0, 0]
    spread = heat.max() - heat.min()
    if spread <= 1e-6 * heat.abs().max().clamp(min=1e-12):
        return None
    return (heat - heat.min()) / spread


def activation_attention_map(features: torch.Tensor) -> torch.Tensor:
    """Activation-based spatial attention of a CNN stage: the mean over channels of squared activations.

    `features` is `(batch, channels, height, width)`; returns `(batch, height, width)`, in float32.
    """
    if features.ndim != 4:
        raise ValueError(f"Expected CNN features (batch, channels, height, width), got shape {tuple(features.shape)}.")
    return features.float().pow(2).mean(dim=1)


# ---- reading models: their classifier layer, a module's inputs or outputs, what kind of model ----


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
def capture_attention(model: nn.Module, layers: Sequence[int]):
    """Within the block, the list holds the attention weights `(batch, heads, seq, seq)` of our distilled DeiT
    `model`'s blocks `layers` (negative indices count from the end) in its latest call, in block order.

    Hooks on those blocks ask them alone for their weights (eager attention, every query); the other blocks keep the
    configured backend (sdpa and flash never form the weights), and the last block its two-token saving when it is
    not one of them. The chosen blocks are kept out of gradient checkpointing while they are read: transformers before
    5.23 recomputes a checkpointed block inside its hooks, in the backward pass, when these hooks are gone; and the
    weights read are in the loss's graph anyway, so checkpointing those blocks saved little."""
    blocks = getattr(model, "deit", model).layers  # the backbone's, under a head (and peft) or alone
    for index in layers:
        if not -len(blocks) <= index < len(blocks):
            raise ValueError(f"No block {index} to read attention from: the model has {len(blocks)} blocks.")
    chosen = [blocks[index] for index in sorted({index % len(blocks) for index in layers})]
    attentions: list = []

    def eager_with_every_query(block, args):
        if block is chosen[0]:  # a new forward pass
            attentions.clear()
        return (args[0], True, None)  # the block's (hidden_states, need_weights, num_queries)

    def keep(_block, _args, output):
        attentions.append(output[1])

    handles = [hook for block in chosen for hook in (block.register_forward_pre_hook(eager_with_every_query),
                                                     block.register_forward_hook(keep))]  # fmt: skip
    checkpointed = [getattr(block, "gradient_checkpointing", False) for block in chosen]
    try:
        for block in chosen:
            block.gradient_checkpointing = False
        yield attentions
    finally:
        for block, was_checkpointed in zip(chosen, checkpointed):
            block.gradient_checkpointing = was_checkpointed
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


def is_vit_like(config) -> bool:
    """A ViT-like transformer (patches and attention heads) rather than a CNN (ConvNeXt also has a patch size)."""
    return config is not None and hasattr(config, "patch_size") and hasattr(config, "num_attention_heads")


def is_distilled_deit(model: nn.Module) -> bool:
    return getattr(getattr(model, "config", None), "model_type", None) == "distilled_deit"
