"""The distilled DeiT (Touvron et al., 2021) as a transformers model.

A pre-norm ViT whose sequence is `[cls, dist, patch_1 .. patch_N]`; the class head reads the cls token and the
distillation head reads the dist token. During training the two heads are supervised separately (ground truth and
teacher); at inference their logits are averaged.

This file travels to the Hub as remote code: it imports only torch, transformers and its sibling config.
"""

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.activations import ACT2FN
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import ModelOutput

from .configuration_distilled_deit import DistilledDeiTConfig, _pair


@dataclass
class DistilledDeiTModelOutput(ModelOutput):
    """
    Output of [`DistilledDeiTModel`].

    Args:
        last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 2 + num_patches, hidden_size)`):
            final-norm output for every token, `[cls, dist, patches...]`.
        pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`): the cls token's final state.
        distillation_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`): the dist token's final state.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): the embeddings and every block's output.
        attentions (`tuple(torch.FloatTensor)`, *optional*): attention weights `(batch, heads, seq, seq)` of every
            block when `output_attentions=True`.

    As a tuple (`return_dict=False`) in this order, the attentions last, as every transformers model output.
    """

    last_hidden_state: torch.FloatTensor | None = None
    pooler_output: torch.FloatTensor | None = None
    distillation_output: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


@dataclass
class DistilledDeiTImageClassifierOutput(ModelOutput):
    """
    Output of [`DistilledDeiTForImageClassification`].

    Args:
        loss (`torch.FloatTensor`, *optional*): returned when `labels` are given: the mean of the class head's and
            the distillation head's cross-entropy against the labels (training without a teacher).
        logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): `(cls_logits + distillation_logits) / 2`,
            the prediction pipelines and metrics read.
        cls_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): class-token head.
        distillation_logits (`torch.FloatTensor` of shape `(batch_size, num_labels)`): distillation-token head.
        hidden_states (`tuple(torch.FloatTensor)`, *optional*): as in [`DistilledDeiTModelOutput`].
        attentions (`tuple(torch.FloatTensor)`, *optional*): as in [`DistilledDeiTModelOutput`].
    """

    loss: torch.FloatTensor | None = None
    logits: torch.FloatTensor | None = None
    cls_logits: torch.FloatTensor | None = None
    distillation_logits: torch.FloatTensor | None = None
    hidden_states: tuple[torch.FloatTensor, ...] | None = None
    attentions: tuple[torch.FloatTensor, ...] | None = None


class DistilledDeiTPatchProjection(nn.Conv2d):
    """The patch projection: a strided convolution (kernel = stride = patch size), as `nn.Conv2d` computes it, with
    the same input and output as `nn.Conv2d`, so that hooks, accelerate's offloading and peft's LoRA layers, which
    all act on this module, see an ordinary convolution.

    On CPU it computes the convolution as one matrix product over the flattened patches, with the same weights: on
    CPUs without native bf16, PyTorch runs a bf16 Conv2d on its slow reference kernel (about 4x slower than the bf16
    Linear kernel); in float32 both are equally fast. So CPU inputs take that path in every dtype. The result comes
    back as a `(batch, hidden, rows, cols)` view of the `(batch, patches, hidden)` product, so the caller's
    `flatten(2).transpose(1, 2)` is free.
    """

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        patch_h, patch_w = self.kernel_size
        batch_size, channels, height, width = pixel_values.shape
        if (
            pixel_values.device.type != "cpu"
            or self.stride != self.kernel_size
            or self.padding != (0, 0)
            or self.dilation != (1, 1)
            or self.groups != 1
            or height % patch_h
            or width % patch_w
        ):
            return super().forward(pixel_values)
        rows, cols = height // patch_h, width // patch_w
        patches = pixel_values.reshape(batch_size, channels, rows, patch_h, cols, patch_w)
        # (batch, rows, cols, channels, patch_h, patch_w): the conv weight's (out, channels, kh, kw) order.
        patches = patches.permute(0, 2, 4, 1, 3, 5).reshape(batch_size, rows * cols, channels * patch_h * patch_w)
        output = F.linear(patches, self.weight.reshape(self.out_channels, -1), self.bias)
        return output.transpose(1, 2).unflatten(2, (rows, cols))


class DistilledDeiTPatchEmbeddings(nn.Module):
    """Non-overlapping patches, linearly projected by a strided convolution (`projection`)."""

    def __init__(self, config: DistilledDeiTConfig):
        super().__init__()
        self.patch_size = _pair(config.patch_size)
        self.num_channels = config.num_channels
        self.projection = DistilledDeiTPatchProjection(
            config.num_channels, config.hidden_size, kernel_size=self.patch_size, stride=self.patch_size
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        _, channels, height, width = pixel_values.shape
        if channels != self.num_channels:
            raise ValueError(
                f"pixel_values have {channels} channels but the model expects {self.num_channels}; "
                "convert the images (e.g. to RGB) or set num_channels in the config."
            )
        if height % self.patch_size[0] or width % self.patch_size[1]:
            raise ValueError(
                f"Image size {height}x{width} is not a multiple of the patch size {self.patch_size}; "
                "resize or crop the images."
            )
        return self.projection(pixel_values).flatten(2).transpose(1, 2)


class DistilledDeiTEmbeddings(nn.Module):
    """Patch embeddings with the cls and dist tokens prepended; position embeddings cover all N + 2 tokens."""

    def __init__(self, config: DistilledDeiTConfig):
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.distillation_token = nn.Parameter(torch.zeros(1, 1, config.hidden_size))
        self.patch_embeddings = DistilledDeiTPatchEmbeddings(config)
        self.patch_size = _pair(config.patch_size)
        self.grid_size = config.grid_size
        self.image_size = _pair(config.image_size)
        self.position_embeddings = nn.Parameter(torch.zeros(1, config.num_patches + 2, config.hidden_size))
        self.dropout = nn.Dropout(config.hidden_dropout_prob)

    def interpolate_pos_encoding(self, grid_height: int, grid_width: int) -> torch.Tensor:
        """Position embeddings for another patch grid: the patch rows resampled bicubically, the token rows kept.

        Antialiased bicubic, as timm resamples DeiT position embeddings (its dynamic image size and checkpoint
        loading), so that our outputs at another resolution match timm's. The original fine-tuning script and
        transformers' DeiT use plain bicubic (a sharper kernel); the two differ by a few percent of the embedding
        scale, which fine-tuning absorbs.
        """
        if (grid_height, grid_width) == self.grid_size:
            return self.position_embeddings
        token_rows, patch_rows = self.position_embeddings[:, :2], self.position_embeddings[:, 2:]
        dim = patch_rows.shape[-1]
        patch_rows = patch_rows.reshape(1, *self.grid_size, dim).permute(0, 3, 1, 2)
        # Resample in float32: bicubic is not implemented for every low-precision dtype.
        patch_rows = F.interpolate(
            patch_rows.float(), size=(grid_height, grid_width), mode="bicubic", align_corners=False, antialias=True
        ).to(token_rows.dtype)
        patch_rows = patch_rows.permute(0, 2, 3, 1).reshape(1, grid_height * grid_width, dim)
        return torch.cat((token_rows, patch_rows), dim=1)

    def forward(self, pixel_values: torch.Tensor, interpolate_pos_encoding: bool = False) -> torch.Tensor:
        patches = self.patch_embeddings(pixel_values)
        batch_size = patches.shape[0]
        grid = (pixel_values.shape[-2] // self.patch_size[0], pixel_values.shape[-1] // self.patch_size[1])
        if interpolate_pos_encoding:
            position_embeddings = self.interpolate_pos_encoding(*grid)
        elif grid != self.grid_size:
            raise ValueError(
                f"Input image size {tuple(pixel_values.shape[-2:])} doesn't match the model's {self.image_size}; "
                "resize the images or pass interpolate_pos_encoding=True."
            )
        else:
            position_embeddings = self.position_embeddings
        tokens = torch.cat(
            (self.cls_token.expand(batch_size, -1, -1), self.distillation_token.expand(batch_size, -1, -1), patches),
            dim=1,
        )
        return self.dropout(tokens + position_embeddings)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention written out, so that the weights can be returned. Output is `(batch, seq, heads, head_dim)`."""
    weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        weights = weights + attention_mask
    weights = F.softmax(weights, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    output = torch.matmul(weights, value).transpose(1, 2).contiguous()
    return output, weights


class DistilledDeiTAttention(nn.Module):
    """Multi-head self-attention with one fused query/key/value projection (rows ordered q, k, v)."""

    def __init__(self, config: DistilledDeiTConfig):
        super().__init__()
        self.config = config
        self.num_heads = config.num_attention_heads
        self.head_dim = config.hidden_size // config.num_attention_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = config.attention_probs_dropout_prob
        # Read by transformers' sdpa/flash wrappers; without it they would apply a causal mask.
        self.is_causal = False
        self.qkv = nn.Linear(config.hidden_size, 3 * config.hidden_size, bias=config.qkv_bias)
        self.o_proj = nn.Linear(config.hidden_size, config.hidden_size)

    def forward(
        self, hidden_states: torch.Tensor, need_weights: bool = False, num_queries: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`num_queries`: attend from the first `num_queries` tokens only (all tokens are still keys and values);
        the output then has `num_queries` rows."""
        batch_size, seq_len, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch_size, seq_len, 3, self.num_heads, self.head_dim)
        # (3, batch, heads, seq, head_dim) as a view: SDPA takes these strides as they are, no copy.
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        if num_queries is not None:
            query = query[:, :, :num_queries]
        out_len = query.shape[2]
        dropout = self.attention_dropout if self.training else 0.0

        # Only the eager path returns weights: use it where they are asked for, the configured backend elsewhere.
        if need_weights:
            output, weights = eager_attention_forward(self, query, key, value, None, scaling=self.scaling, dropout=dropout)
        elif self.config._attn_implementation == "sdpa":
            # Called directly rather than through transformers' wrapper: that one adds a `.contiguous()` copy of the
            # output and per-call Python checks (GQA, masks, caches) that a ViT never needs; at batch 1 they show.
            output = F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=self.scaling)
            output, weights = output.transpose(1, 2), None
        else:
            attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
            output, weights = attention_interface(self, query, key, value, None, scaling=self.scaling, dropout=dropout)
        output = self.o_proj(output.reshape(batch_size, out_len, -1))
        return output, (weights if need_weights else None)


class DistilledDeiTMLP(nn.Module):
    def __init__(self, config: DistilledDeiTConfig):
        super().__init__()
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.activation_fn = ACT2FN[config.hidden_act]
        # The original also drops after the activation (the block drops after fc2).
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.activation_fn(self.fc1(hidden_states))))


class DistilledDeiTDropPath(nn.Module):
    """Stochastic depth: drops a block's residual branch for whole samples, rescaling the survivors."""

    def __init__(self, drop_prob: float):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return hidden_states
        keep_prob = 1.0 - self.drop_prob
        mask_shape = (hidden_states.shape[0],) + (1,) * (hidden_states.ndim - 1)
        mask = hidden_states.new_empty(mask_shape).bernoulli_(keep_prob)
        return hidden_states * mask.div_(keep_prob)

    def extra_repr(self) -> str:
        return f"drop_prob={self.drop_prob:.3f}"


class DistilledDeiTLayer(GradientCheckpointingLayer):
    """Pre-norm block: `x + drop_path(attn(norm(x)))`, then `x + drop_path(mlp(norm(x)))`."""

    def __init__(self, config: DistilledDeiTConfig, drop_path: float):
        super().__init__()
        self.layernorm_before = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.attention = DistilledDeiTAttention(config)
        self.layernorm_after = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = DistilledDeiTMLP(config)
        self.dropout = nn.Dropout(config.hidden_dropout_prob)
        self.drop_path = DistilledDeiTDropPath(drop_path)

    def forward(
        self, hidden_states: torch.Tensor, need_weights: bool = False, num_queries: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """`num_queries`: compute the block's output for the first `num_queries` tokens only (see `attention`)."""
        attention_output, weights = self.attention(self.layernorm_before(hidden_states), need_weights, num_queries)
        if num_queries is not None:
            hidden_states = hidden_states[:, :num_queries]
        hidden_states = hidden_states + self.drop_path(self.dropout(attention_output))
        mlp_output = self.mlp(self.layernorm_after(hidden_states))
        hidden_states = hidden_states + self.drop_path(self.dropout(mlp_output))
        return hidden_states, weights


# The Auto classes a saved folder serves, and the class of this module each one loads.
_AUTO_CLASS_NAMES = {
    "AutoModel": "DistilledDeiTModel",
    "AutoModelForImageClassification": "DistilledDeiTForImageClassification",
}


class DistilledDeiTPreTrainedModel(PreTrainedModel):
    config_class = DistilledDeiTConfig
    config: DistilledDeiTConfig
    base_model_prefix = "deit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["DistilledDeiTEmbeddings", "DistilledDeiTLayer"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    # The losses are per-batch means: the Trainer must not rescale them by the number of items.
    accepts_loss_kwargs = False
    # Set by the hf_deit package (`hf_deit.convert.load_converted`): loads a checkpoint of another implementation
    # (transformers DeiT/ViT, timm, facebook) into this model, or returns None for this model's own folders. Where
    # only this file is present (remote code), it is None and `from_pretrained` is transformers' own.
    _convert_on_load: Callable | None = None

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *model_args, **kwargs):
        """As transformers', and with the hf_deit package installed, also from a checkpoint of another DeiT
        implementation (a transformers DeiT/ViT folder or Hub id, a timm or facebook file, a timm Hub-layout folder),
        converted on load (`hf_deit.convert`)."""
        converter = DistilledDeiTPreTrainedModel._convert_on_load
        if converter is not None and not model_args and kwargs.get("config") is None:
            model = converter(cls, pretrained_model_name_or_path, **kwargs)
            if model is not None:
                return model
        return super().from_pretrained(pretrained_model_name_or_path, *model_args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """As transformers', but a folder saved from either model lists both in `auto_map`, so that `AutoModel` and
        `AutoModelForImageClassification` load it with `trust_remote_code=True` (transformers records only the
        class being saved). A model sharded by FSDP2 saves as its own class: `fully_shard` swaps in a subclass of
        torch's (`FSDP<Name>`), whose module transformers would copy into the folder and name in `auto_map`."""
        sharded_class = type(self)
        if sharded_class.__name__.startswith("FSDP"):
            self.__class__ = next(cls for cls in sharded_class.__mro__ if not cls.__name__.startswith("FSDP"))
            try:
                return self.save_pretrained(save_directory, *args, **kwargs)
            finally:
                self.__class__ = sharded_class
        if self._auto_class is not None:
            module = type(self).__module__.split(".")[-1]
            auto_map = dict(getattr(self.config, "auto_map", None) or {})
            for auto_class, class_name in _AUTO_CLASS_NAMES.items():
                auto_map.setdefault(auto_class, f"{module}.{class_name}")
            self.config.auto_map = auto_map
        return super().save_pretrained(save_directory, *args, **kwargs)

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """As the original: truncated normal for Linears, tokens and position embeddings; torch's default for the
        patch convolution; unit LayerNorms."""
        std = self.config.initializer_range
        if isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, nn.Conv2d):
            init.kaiming_uniform_(module.weight, a=math.sqrt(5))
            if module.bias is not None:
                fan_in = module.weight[0].numel()
                bound = 1 / math.sqrt(fan_in)
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.LayerNorm):
            init.ones_(module.weight)
            init.zeros_(module.bias)
        elif isinstance(module, DistilledDeiTEmbeddings):
            init.trunc_normal_(module.cls_token, std=std)
            init.trunc_normal_(module.distillation_token, std=std)
            init.trunc_normal_(module.position_embeddings, std=std)


class DistilledDeiTModel(DistilledDeiTPreTrainedModel):
    """The backbone: embeddings, `num_hidden_layers` blocks and the final LayerNorm, without heads."""

    def __init__(self, config: DistilledDeiTConfig):
        super().__init__(config)
        self.embeddings = DistilledDeiTEmbeddings(config)
        depth = config.num_hidden_layers
        # Stochastic depth grows linearly from 0 at the first block to drop_path_rate at the last.
        rates = [config.drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.layers = nn.ModuleList([DistilledDeiTLayer(config, rate) for rate in rates])
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def set_input_embeddings(self, value: nn.Module) -> None:
        """Replace the patch embeddings: any module mapping `(batch, channels, height, width)` pixels to
        `(batch, num_patches, hidden_size)` tokens for the config's patch size."""
        self.embeddings.patch_embeddings = value

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        token_states_only: bool = False,
        **kwargs,
    ) -> DistilledDeiTModelOutput | tuple:
        r"""
        pixel_values (`torch.Tensor` of shape `(batch_size, num_channels, height, width)`): normalised images.
        output_attentions (`bool`, *optional*): return every block's attention weights (runs every block eagerly).
            To read a few blocks' weights only, hook those blocks (`hf_deit.attention_maps.capture_attention`).
        output_hidden_states (`bool`, *optional*): return the embeddings and every block's output.
        interpolate_pos_encoding (`bool`): accept a resolution other than `config.image_size` by resampling the
            patch position embeddings (bicubic; the two token rows are kept).
        token_states_only (`bool`): compute the last block for the cls and dist tokens only, for a caller that reads
            `pooler_output` and `distillation_output` alone; `last_hidden_state` then has those 2 rows. It skips the
            patch rows' queries, projection and MLP in that block (about 1/depth of the compute). Ignored when hidden
            states or attention weights are asked for, which need every token, and while dropout is active. An
            inference saving, not a training option: `DistilledDeiTForImageClassification`, whose heads read those
            two tokens only, passes it on every call.
        """
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        every_token = output_hidden_states or output_attentions or not token_states_only or self._last_block_drops()
        # The model's dtype, read from a parameter every variant keeps (the patch embeddings may be replaced).
        hidden_states = self.embeddings(pixel_values.to(self.embeddings.position_embeddings.dtype),
                                        interpolate_pos_encoding)  # fmt: skip
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        for index, layer in enumerate(self.layers):
            num_queries = 2 if index == len(self.layers) - 1 and not every_token else None
            hidden_states, weights = layer(hidden_states, output_attentions, num_queries)
            if output_attentions:
                all_attentions += (weights,)
            if output_hidden_states:
                all_hidden_states += (hidden_states,)

        sequence_output = self.layernorm(hidden_states)
        output = DistilledDeiTModelOutput(
            last_hidden_state=sequence_output,
            pooler_output=sequence_output[:, 0],
            distillation_output=sequence_output[:, 1],
            hidden_states=all_hidden_states,
            attentions=all_attentions,
        )
        return output if return_dict else output.to_tuple()

    def _last_block_drops(self) -> bool:
        """Whether the last block applies dropout now: skipping rows would then change which random numbers the
        other rows draw (and so break draw-for-draw parity with timm). DeiT trains without dropout, so training
        keeps the two-token saving."""
        last_block = self.layers[-1]
        return self.training and (
            last_block.attention.attention_dropout > 0
            or any(module.p > 0 for module in last_block.modules() if isinstance(module, nn.Dropout))
        )


def _cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy with class indices, or with per-class probabilities (mixup/cutmix targets)."""
    if labels.is_floating_point() and labels.ndim == logits.ndim:
        return torch.sum(-labels * F.log_softmax(logits.float(), dim=-1), dim=-1).mean()
    # Labels often arrive as int32 (numpy, some datasets); cross_entropy accepts only int64 class indices.
    return F.cross_entropy(logits.float(), labels.long())


class DistilledDeiTForImageClassification(DistilledDeiTPreTrainedModel):
    """The distilled DeiT with its two heads: `cls_classifier` on the cls token, `distillation_classifier` on the
    dist token. `logits` is their average, as in the original at inference."""

    def __init__(self, config: DistilledDeiTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.deit = DistilledDeiTModel(config)
        self.cls_classifier = nn.Linear(config.hidden_size, config.num_labels) if config.num_labels else nn.Identity()
        self.distillation_classifier = (
            nn.Linear(config.hidden_size, config.num_labels) if config.num_labels else nn.Identity()
        )
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        labels: torch.Tensor | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        interpolate_pos_encoding: bool = False,
        return_dict: bool | None = None,
        **kwargs,
    ) -> DistilledDeiTImageClassifierOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)` or `torch.FloatTensor` of shape
            `(batch_size, num_labels)`, *optional*): class indices, or class probabilities (mixup targets). Without a
            teacher both heads learn from them, so that their average stays meaningful; distillation training
            (`hf_deit.DistillationTrainer`) supervises the distillation head with the teacher instead.
        Other arguments as in [`DistilledDeiTModel.forward`].
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.deit(
            pixel_values,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            interpolate_pos_encoding=interpolate_pos_encoding,
            return_dict=True,
            token_states_only=True,  # the classification output carries no last_hidden_state
        )
        cls_logits = self.cls_classifier(outputs.pooler_output)
        distillation_logits = self.distillation_classifier(outputs.distillation_output)
        logits = (cls_logits + distillation_logits) / 2

        loss = None
        if labels is not None:
            labels = labels.to(logits.device)
            loss = (_cross_entropy(cls_logits, labels) + _cross_entropy(distillation_logits, labels)) / 2

        output = DistilledDeiTImageClassifierOutput(
            loss=loss,
            logits=logits,
            cls_logits=cls_logits,
            distillation_logits=distillation_logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
        )
        return output if return_dict else output.to_tuple()


__all__ = [
    "DistilledDeiTForImageClassification",
    "DistilledDeiTImageClassifierOutput",
    "DistilledDeiTModel",
    "DistilledDeiTModelOutput",
    "DistilledDeiTPreTrainedModel",
]
