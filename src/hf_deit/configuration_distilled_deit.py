"""Configuration of the distilled DeiT (Touvron et al., 2021): a ViT with a class token and a distillation token.

This file travels to the Hub as remote code: it imports only the standard library and transformers.
"""

from transformers import PretrainedConfig

# The paper's sizes; every preset is a distilled, patch-16 model. Keys are the names timm uses.
PRESETS: dict[str, dict] = {
    "deit_tiny_distilled_patch16_224": dict(hidden_size=192, num_attention_heads=3, image_size=224),
    "deit_small_distilled_patch16_224": dict(hidden_size=384, num_attention_heads=6, image_size=224),
    "deit_base_distilled_patch16_224": dict(hidden_size=768, num_attention_heads=12, image_size=224),
    "deit_tiny_distilled_patch16_384": dict(hidden_size=192, num_attention_heads=3, image_size=384),
    "deit_small_distilled_patch16_384": dict(hidden_size=384, num_attention_heads=6, image_size=384),
    "deit_base_distilled_patch16_384": dict(hidden_size=768, num_attention_heads=12, image_size=384),
}
# Short names a user can type: "tiny", "small-384", ...
PRESET_ALIASES: dict[str, str] = {
    f"{size}{'' if res == 224 else f'-{res}'}": f"deit_{size}_distilled_patch16_{res}"
    for size in ("tiny", "small", "base")
    for res in (224, 384)
}

# Beyond this a config is far more likely a typo than a model anyone can train (ViT-22B has ~2.2e10 parameters).
MAX_PARAMETERS = 25_000_000_000
MAX_SEQUENCE_LENGTH = 65_536


def _pair(value) -> tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a (height, width) pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


class DistilledDeiTConfig(PretrainedConfig):
    r"""
    Configuration of [`DistilledDeiTModel`] and [`DistilledDeiTForImageClassification`].

    Defaults are DeiT-Tiny distilled at 224 px, with the original implementation's values (layer-norm eps 1e-6,
    stochastic depth 0.1, no dropout), not those of transformers' `DeiTConfig`.

    Args:
        image_size (`int` or `tuple[int, int]`): input resolution the position embeddings are made for.
        patch_size (`int` or `tuple[int, int]`): side of the square (or rectangular) patches.
        num_channels (`int`): input channels.
        hidden_size (`int`): token width D.
        num_hidden_layers (`int`): number of transformer blocks.
        num_attention_heads (`int`): heads per block; must divide `hidden_size`.
        intermediate_size (`int`, *optional*): MLP width; `4 * hidden_size` when omitted.
        hidden_act (`str`): MLP activation (a key of `transformers.activations.ACT2FN`); "gelu" is exact GELU.
        layer_norm_eps (`float`): epsilon of every LayerNorm.
        qkv_bias (`bool`): whether the fused query/key/value projection has a bias.
        drop_path_rate (`float`): stochastic depth of the last block; block i gets `i / (depth - 1)` of it.
        hidden_dropout_prob (`float`): dropout after the embeddings, the attention projection and the MLP.
        attention_probs_dropout_prob (`float`): dropout on the attention weights.
        initializer_range (`float`): std of the truncated normal used for tokens, position embeddings and Linears.
    """

    model_type = "distilled_deit"

    def __init__(
        self,
        image_size=224,
        patch_size=16,
        num_channels: int = 3,
        hidden_size: int = 192,
        num_hidden_layers: int = 12,
        num_attention_heads: int = 3,
        intermediate_size: int | None = None,
        hidden_act: str = "gelu",
        layer_norm_eps: float = 1e-6,
        qkv_bias: bool = True,
        drop_path_rate: float = 0.1,
        hidden_dropout_prob: float = 0.0,
        attention_probs_dropout_prob: float = 0.0,
        initializer_range: float = 0.02,
        **kwargs,
    ):
        self.image_size = list(image_size) if isinstance(image_size, (list, tuple)) else image_size
        self.patch_size = list(patch_size) if isinstance(patch_size, (list, tuple)) else patch_size
        self.num_channels = num_channels
        self.hidden_size = hidden_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.intermediate_size = 4 * hidden_size if intermediate_size is None else intermediate_size
        self.hidden_act = hidden_act
        self.layer_norm_eps = layer_norm_eps
        self.qkv_bias = qkv_bias
        self.drop_path_rate = drop_path_rate
        self.hidden_dropout_prob = hidden_dropout_prob
        self.attention_probs_dropout_prob = attention_probs_dropout_prob
        self.initializer_range = initializer_range
        super().__init__(**kwargs)
        self._validate_geometry()

    def _validate_geometry(self) -> None:
        """Reject impossible or absurd configurations before any weight is allocated."""
        for name in ("num_channels", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"DistilledDeiTConfig: {name} must be a positive integer, got {value!r}.")
        (image_h, image_w), (patch_h, patch_w) = _pair(self.image_size), _pair(self.patch_size)
        if min(image_h, image_w, patch_h, patch_w) <= 0:
            raise ValueError(
                f"DistilledDeiTConfig: image_size {self.image_size!r} and patch_size {self.patch_size!r} must be positive."
            )
        if image_h % patch_h or image_w % patch_w:
            raise ValueError(
                f"DistilledDeiTConfig: image_size {self.image_size!r} is not divisible by patch_size {self.patch_size!r}; "
                f"use an image size that is a multiple of the patch size (e.g. {image_h // patch_h * patch_h or patch_h})."
            )
        if self.hidden_size % self.num_attention_heads:
            divisors = [h for h in range(1, min(self.hidden_size, 64) + 1) if self.hidden_size % h == 0]
            raise ValueError(
                f"DistilledDeiTConfig: hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                f"{self.num_attention_heads}; pick num_attention_heads among {divisors} or change hidden_size."
            )
        for name in ("drop_path_rate", "hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"DistilledDeiTConfig: {name} must be in [0, 1), got {value!r}.")
        if not self.layer_norm_eps > 0:
            raise ValueError(f"DistilledDeiTConfig: layer_norm_eps must be positive, got {self.layer_norm_eps!r}.")
        if self.num_patches + 2 > MAX_SEQUENCE_LENGTH:
            raise ValueError(
                f"DistilledDeiTConfig: {self.num_patches} patches ({self.image_size!r} px in patches of "
                f"{self.patch_size!r}) exceed {MAX_SEQUENCE_LENGTH}; use a larger patch_size or a smaller image_size."
            )
        if self.estimated_num_parameters > MAX_PARAMETERS:
            raise ValueError(
                f"DistilledDeiTConfig: these sizes give about {self.estimated_num_parameters:.2e} parameters, more than "
                f"the {MAX_PARAMETERS:.0e} allowed; check hidden_size, intermediate_size and num_hidden_layers."
            )

    @property
    def grid_size(self) -> tuple[int, int]:
        (image_h, image_w), (patch_h, patch_w) = _pair(self.image_size), _pair(self.patch_size)
        return image_h // patch_h, image_w // patch_w

    @property
    def num_patches(self) -> int:
        grid_h, grid_w = self.grid_size
        return grid_h * grid_w

    @property
    def estimated_num_parameters(self) -> int:
        d, m = self.hidden_size, self.intermediate_size
        patch_h, patch_w = _pair(self.patch_size)
        per_block = 4 * d * d + 2 * d * m + 9 * d + m
        labels = getattr(self, "num_labels", 2)
        embeddings = self.num_channels * patch_h * patch_w * d + d + (self.num_patches + 4) * d
        return self.num_hidden_layers * per_block + embeddings + 2 * d + 2 * (d + 1) * labels

    @classmethod
    def from_preset(cls, name: str, **kwargs) -> "DistilledDeiTConfig":
        """A config for one of the paper's sizes, by timm name or short alias; `kwargs` override any field.

        >>> DistilledDeiTConfig.from_preset("small-384", num_labels=10).hidden_size
        384
        """
        key = PRESET_ALIASES.get(name, name)
        if key not in PRESETS:
            known = ", ".join(sorted(PRESET_ALIASES) + sorted(PRESETS))
            raise ValueError(f"Unknown DeiT preset {name!r}; choose one of: {known}.")
        return cls(**{**PRESETS[key], **kwargs})
