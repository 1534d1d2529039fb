"""Convert DeiT checkpoints from other implementations into a folder that `from_pretrained` loads.

Supported sources, recognised from their keys:

- ``timm``: timm DeiT/ViT state dicts and the original facebookresearch/deit `.pth` files (the same names:
  ``cls_token, dist_token, pos_embed, patch_embed.proj, blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2},
  norm, head, head_dist``), as `.pth`/`.bin` (weights at the top level or under ``"model"``/``"state_dict"``) or
  `.safetensors`.
- ``transformers-legacy``: transformers' DeiT folders as stored on the Hub (``deit.encoder.layer.N.attention.attention.
  {query,key,value}``, ...), which is also what transformers 5.x ``save_pretrained`` writes; ``vit.``-prefixed ViT
  checkpoints (the non-distilled DeiTs on the Hub) as well.
- ``transformers``: transformers 5.x in-memory names (``deit.layers.N.attention.{q,k,v,o}_proj``, ``mlp.fc1``, ...).
- ``hf-deit``: a folder or file already in our layout passes through, so that an old folder gets fresh code and a
  preprocessing config (and overrides such as new labels).

Numerics: the converted model reproduces the source's logits. For timm/facebook sources that means layer-norm eps
1e-6 (what they use); for transformers sources the eps of their config.json is kept, even transformers' default 1e-12,
because that is what their implementation computes with (a warning says so, and how to choose 1e-6 instead).

A checkpoint without a distillation token (a plain DeiT/ViT) gets one: the dist token, its position row and the
distillation head are copies of the cls ones. The new token takes part in attention, so the converted model's
predictions are close to, not identical with, the source's until it is fine-tuned (a warning says so).

Loading never runs pickled code: safetensors, or `torch.load(weights_only=True)`, which refuses any pickle that
would call arbitrary functions.

Conversion also happens on load: with hf_deit imported, `DistilledDeiTForImageClassification.from_pretrained` (and
`DistilledDeiTModel.from_pretrained`) accept any of these sources, local or by Hub id (`load_converted`), and
`scripts/train.py --model_name_or_path` with them.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
import warnings
from pathlib import Path
from types import SimpleNamespace

import torch

from .configuration_distilled_deit import DistilledDeiTConfig, _pair
from .image_processing import deit_image_processor
from .modeling_distilled_deit import DistilledDeiTEmbeddings, DistilledDeiTForImageClassification

logger = logging.getLogger(__name__)

# transformers model types whose checkpoints convert (the Hub's non-distilled DeiTs are ViT checkpoints).
CONVERTIBLE_MODEL_TYPES = ("deit", "vit")

# DeiT's sizes all use 64-dimensional heads; other widths need the head count from a config or the user.
HEADS_BY_WIDTH = {192: 3, 384: 6, 768: 12}
TIMM_LAYER_NORM_EPS = 1e-6

# Files tried, in order, inside a checkpoint folder.
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")
# Where training checkpoints keep the weights (facebook: "model"; timm's train.py: "state_dict").
NESTED_STATE_DICT_KEYS = ("model", "state_dict")

# Config fields that the weights determine: an override that disagrees with them is an error, not a change.
WEIGHT_DETERMINED = ("hidden_size", "num_hidden_layers", "intermediate_size", "patch_size", "num_channels", "qkv_bias")
# Fields taken from a transformers (or hf-deit) config.json when the source has one.
SOURCE_CONFIG_FIELDS = ("num_attention_heads", "layer_norm_eps", "hidden_act", "image_size", "id2label")
HF_DEIT_EXTRA_FIELDS = ("drop_path_rate", "hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range")


class CheckpointConversionError(ValueError):
    """The checkpoint cannot be converted; the message says why and what to do."""


class MismatchedClassesError(CheckpointConversionError, RuntimeError):
    """Loading would replace the checkpoint's heads (another class count) and `ignore_mismatched_sizes` was not set:
    a `RuntimeError`, as transformers' `from_pretrained` raises for mismatched shapes."""


# ----------------------------------------------------------------------------------------------------------------
# Loading


def _load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    if path.name.endswith(".index.json"):  # sharded: {"weight_map": {key: shard_file}}
        shards = sorted(set(json.loads(path.read_text())["weight_map"].values()))
        state_dict = {}
        for shard in shards:
            state_dict.update(_load_weights_file(path.parent / shard))
        return state_dict
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        raise CheckpointConversionError(
            f"Refusing to load {path}: it is a pickle that contains code or objects other than tensors and plain "
            f"containers, and unpickling it could run that code. Only load files you trust; convert a trusted file to "
            f"a plain state dict (torch.save(model.state_dict(), ...)) or to safetensors first. ({error})"
        ) from None
    if not isinstance(loaded, dict):
        raise CheckpointConversionError(f"{path} holds a {type(loaded).__name__}, not a state dict.")
    for key in NESTED_STATE_DICT_KEYS:
        if isinstance(loaded.get(key), dict):
            loaded = loaded[key]
            break
    return {k: v for k, v in loaded.items() if isinstance(v, torch.Tensor)}


def _hub_file(repo_id: str, filename: str, hub_options: dict) -> str | None:
    """The local path of `filename` of a Hub repo (downloaded once, then cached); None when the repo has no such file."""
    from transformers.utils import cached_file

    return cached_file(repo_id, filename, _raise_exceptions_for_missing_entries=False, **hub_options)


def _read_config(name: str, hub_options: dict) -> dict | None:
    """The config.json of a local folder or a Hub repo as a dict; None where there is none (a file, a bare folder)."""
    path = Path(name)
    if path.exists():
        config_file = path / "config.json"  # not a file under a weights file
    else:
        config_file = _hub_file(name, "config.json", hub_options)
    return json.loads(Path(config_file).read_text()) if config_file and Path(config_file).is_file() else None


def load_checkpoint(checkpoint: str | Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """The weights of a checkpoint file or folder, and its config.json as a dict (None when there is none)."""
    path = Path(checkpoint)
    if not path.exists():
        raise CheckpointConversionError(f"Checkpoint {path} does not exist.")
    source_config = _read_config(str(path), {})
    if path.is_dir():
        weights = next((path / name for name in WEIGHT_FILES if (path / name).is_file()), None)
        if weights is None:
            raise CheckpointConversionError(
                f"No weights in {path}: expected one of {', '.join(WEIGHT_FILES)}; or pass the weights file itself."
            )
        path = weights
    state_dict = _load_weights_file(path)
    # Checkpoints saved from DistributedDataParallel or torch.compile carry a wrapper prefix on every key.
    for prefix in ("module.", "_orig_mod."):
        if state_dict and all(key.startswith(prefix) for key in state_dict):
            state_dict = {key[len(prefix):]: value for key, value in state_dict.items()}
    return state_dict, source_config


# ----------------------------------------------------------------------------------------------------------------
# Renaming: each layout is a table of (source pattern, our name); query/key/value parts are fused afterwards.

_TIMM_RULES = [
    (r"cls_token", "deit.embeddings.cls_token"),
    (r"dist_token", "deit.embeddings.distillation_token"),
    (r"pos_embed", "deit.embeddings.position_embeddings"),
    (r"patch_embed\.proj\.(weight|bias)", r"deit.embeddings.patch_embeddings.projection.\1"),
    (r"blocks\.(\d+)\.norm1\.(weight|bias)", r"deit.layers.\1.layernorm_before.\2"),
    (r"blocks\.(\d+)\.attn\.qkv\.(weight|bias)", r"deit.layers.\1.attention.qkv.\2"),
    (r"blocks\.(\d+)\.attn\.proj\.(weight|bias)", r"deit.layers.\1.attention.o_proj.\2"),
    (r"blocks\.(\d+)\.norm2\.(weight|bias)", r"deit.layers.\1.layernorm_after.\2"),
    (r"blocks\.(\d+)\.mlp\.(fc1|fc2)\.(weight|bias)", r"deit.layers.\1.mlp.\2.\3"),
    (r"norm\.(weight|bias)", r"deit.layernorm.\1"),
    (r"head\.(weight|bias)", r"cls_classifier.\1"),
    (r"head_dist\.(weight|bias)", r"distillation_classifier.\1"),
]
# The backbone prefix is "deit" (DeiT) or "vit" (ViT, the Hub's non-distilled DeiTs).
_TRANSFORMERS_SHARED_RULES = [
    (r"(?:deit|vit)\.embeddings\.(cls_token|distillation_token|position_embeddings)", r"deit.embeddings.\1"),
    (r"(?:deit|vit)\.embeddings\.patch_embeddings\.projection\.(weight|bias)", r"deit.embeddings.patch_embeddings.projection.\1"),
    (r"(?:deit|vit)\.layernorm\.(weight|bias)", r"deit.layernorm.\1"),
    (r"(cls_classifier|distillation_classifier)\.(weight|bias)", r"\1.\2"),
    # DeiTForImageClassification / ViTForImageClassification: one head, on the cls token.
    (r"classifier\.(weight|bias)", r"cls_classifier.\1"),
]
_TRANSFORMERS_LEGACY_RULES = _TRANSFORMERS_SHARED_RULES + [
    (r"(?:deit|vit)\.encoder\.layer\.(\d+)\.attention\.attention\.(query|key|value)\.(weight|bias)", r"deit.layers.\1.\2.\3"),
    (r"(?:deit|vit)\.encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"deit.layers.\1.attention.o_proj.\2"),
    (r"(?:deit|vit)\.encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"deit.layers.\1.mlp.fc1.\2"),
    (r"(?:deit|vit)\.encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"deit.layers.\1.mlp.fc2.\2"),
    (r"(?:deit|vit)\.encoder\.layer\.(\d+)\.(layernorm_before|layernorm_after)\.(weight|bias)", r"deit.layers.\1.\2.\3"),
]
_TRANSFORMERS_RULES = _TRANSFORMERS_SHARED_RULES + [
    (r"(?:deit|vit)\.layers\.(\d+)\.attention\.(q|k|v)_proj\.(weight|bias)", r"deit.layers.\1.\2.\3"),
    (r"(?:deit|vit)\.layers\.(\d+)\.attention\.o_proj\.(weight|bias)", r"deit.layers.\1.attention.o_proj.\2"),
    (r"(?:deit|vit)\.layers\.(\d+)\.(mlp\.fc1|mlp\.fc2|layernorm_before|layernorm_after)\.(weight|bias)", r"deit.layers.\1.\2.\3"),
]
# Marks the separate query/key/value parts produced by the rules above: "deit.layers.N.<part>.<weight|bias>".
_QKV_PART = re.compile(r"deit\.layers\.(\d+)\.(query|key|value|q|k|v)\.(weight|bias)")
_QKV_ORDER = {"query": 0, "key": 1, "value": 2, "q": 0, "k": 1, "v": 2}
_RULES = {"timm": _TIMM_RULES, "transformers-legacy": _TRANSFORMERS_LEGACY_RULES, "transformers": _TRANSFORMERS_RULES}


def detect_layout(state_dict: dict[str, torch.Tensor]) -> str:
    """Which layout the keys follow ("timm", "transformers-legacy", "transformers" or "hf-deit"); raises
    `CheckpointConversionError` with examples when none."""
    keys = set(state_dict)
    if "patch_embed.proj.weight" in keys and any(key.startswith("blocks.") for key in keys):
        return "timm"
    if any(re.match(r"deit\.layers\.\d+\.attention\.qkv\.", key) for key in keys):
        return "hf-deit"
    if any(re.match(r"(deit|vit)\.encoder\.layer\.\d+\.", key) for key in keys):
        return "transformers-legacy"
    if any(re.match(r"(deit|vit)\.layers\.\d+\.attention\.q_proj\.", key) for key in keys):
        return "transformers"
    examples = ", ".join(sorted(keys)[:8]) or "(no tensors)"
    raise CheckpointConversionError(
        f"Unrecognised checkpoint layout; keys seen include: {examples}. Supported layouts: timm / facebook DeiT "
        "(patch_embed.proj.weight, blocks.N.attn.qkv...), transformers DeiT legacy (deit.encoder.layer.N.attention."
        "attention.query...), transformers 5.x (deit.layers.N.attention.q_proj...), and hf-deit itself "
        "(deit.layers.N.attention.qkv...). For a backbone saved without its classification model wrapper, load it "
        "into the full model class and save that."
    )


def _rename(state_dict: dict[str, torch.Tensor], rules: list[tuple[str, str]]) -> dict[str, torch.Tensor]:
    compiled = [(re.compile(pattern), replacement) for pattern, replacement in rules]
    renamed, unknown = {}, []
    for key, tensor in state_dict.items():
        for pattern, replacement in compiled:
            if pattern.fullmatch(key):
                renamed[pattern.sub(replacement, key)] = tensor
                break
        else:
            unknown.append(key)
    if unknown:
        raise CheckpointConversionError(
            f"{len(unknown)} weights have no place in a distilled DeiT: {', '.join(sorted(unknown)[:8])}. They belong to "
            "a variant this converter does not support (e.g. layer scale, q/k norm, a pooler or a mask token)."
        )
    return renamed


def _fuse_qkv(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Concatenate separate query, key and value projections into our fused `qkv` (rows ordered q; k; v)."""
    fused, parts = {}, {}
    for key, tensor in state_dict.items():
        match = _QKV_PART.fullmatch(key)
        if match is None:
            fused[key] = tensor
        else:
            layer, part, kind = match.groups()
            parts.setdefault((layer, kind), [None, None, None])[_QKV_ORDER[part]] = tensor
    for (layer, kind), (query, key, value) in parts.items():
        if query is None or key is None or value is None:
            raise CheckpointConversionError(f"Layer {layer} lacks one of its query/key/value {kind} tensors.")
        fused[f"deit.layers.{layer}.attention.qkv.{kind}"] = torch.cat((query, key, value), dim=0)
    return fused


# ----------------------------------------------------------------------------------------------------------------
# Config inference and the tensor edits some sources need


@torch.no_grad()
def _resample_position_embeddings(
    position_embeddings: torch.Tensor, old_grid: tuple[int, int], new_grid: tuple[int, int]
) -> torch.Tensor:
    """The patch rows resampled to another grid, the two token rows kept, by the model's own
    `interpolate_pos_encoding` (which reads only the embeddings and their grid): a converted model at the new size
    then equals the source model run there with `interpolate_pos_encoding=True`."""
    embeddings = SimpleNamespace(position_embeddings=position_embeddings, grid_size=old_grid)
    return DistilledDeiTEmbeddings.interpolate_pos_encoding(embeddings, *new_grid).clone()


def _add_distillation_token(state_dict: dict[str, torch.Tensor]) -> None:
    """A checkpoint without a dist token or head gets them as copies of the cls ones, and a warning that says what
    this means for its predictions."""
    embeddings = "deit.embeddings."
    if "cls_classifier.weight" in state_dict and "distillation_classifier.weight" not in state_dict:
        for kind in ("weight", "bias"):
            state_dict[f"distillation_classifier.{kind}"] = state_dict[f"cls_classifier.{kind}"].clone()
        if embeddings + "distillation_token" in state_dict:
            warnings.warn(
                "The checkpoint has a distillation token but one classification head: the distillation head starts as "
                "a copy of it. `cls_logits` are the source's logits; `logits` (the average of both heads) differ from "
                "them until the model is fine-tuned.",
                stacklevel=3,
            )
    if embeddings + "distillation_token" not in state_dict:
        position_embeddings = state_dict[embeddings + "position_embeddings"]
        state_dict[embeddings + "distillation_token"] = state_dict[embeddings + "cls_token"].clone()
        state_dict[embeddings + "position_embeddings"] = torch.cat(
            (position_embeddings[:, :1], position_embeddings[:, :1], position_embeddings[:, 1:]), dim=1
        )
        # The copy evolves exactly like the cls token, but doubles the cls token's share of every attention.
        warnings.warn(
            "The checkpoint is not distilled: added a distillation token, its position embedding and a distillation "
            "head, copied from the cls ones. The extra token takes part in attention, so predictions are close to, "
            "not identical with, the source model's until the converted model is fine-tuned (e.g. with distillation).",
            stacklevel=3,
        )


def _infer_config_fields(state_dict: dict[str, torch.Tensor]) -> dict:
    """Everything the weights themselves say about the architecture (our keys, dist token already present)."""
    patch_weight = state_dict["deit.embeddings.patch_embeddings.projection.weight"]
    depth = 1 + max(int(m.group(1)) for key in state_dict if (m := re.match(r"deit\.layers\.(\d+)\.", key)))
    patch_h, patch_w = patch_weight.shape[2:]
    fields = dict(
        hidden_size=patch_weight.shape[0],
        num_channels=patch_weight.shape[1],
        patch_size=patch_h if patch_h == patch_w else [patch_h, patch_w],
        num_hidden_layers=depth,
        intermediate_size=state_dict["deit.layers.0.mlp.fc1.weight"].shape[0],
        qkv_bias="deit.layers.0.attention.qkv.bias" in state_dict,
    )
    if "cls_classifier.weight" in state_dict:
        fields["num_labels"] = state_dict["cls_classifier.weight"].shape[0]
    return fields


# timm model arguments that change what the same weights compute; a timm config with them is refused.
_TIMM_ARCHITECTURE_ARGS = {
    "global_pool": ("token", None), "class_token": (True, None), "no_embed_class": (False, None),
    "pre_norm": (False, None), "fc_norm": (False, None), "reg_tokens": (0, None),
}  # fmt: skip


def timm_config_fields(config: dict) -> dict:
    """What a timm Hub-layout config.json (`timm.models.save_for_hf`: `architecture`, `model_args`,
    `pretrained_cfg`) says beyond the weights: heads, trained image size, class names."""
    model_args = config.get("model_args") or {}
    pretrained_cfg = config.get("pretrained_cfg") or {}
    for name, allowed in _TIMM_ARCHITECTURE_ARGS.items():
        if model_args.get(name, allowed[0]) not in allowed:
            raise CheckpointConversionError(
                f"The timm model {config.get('architecture')!r} has {name}={model_args[name]!r}, a variant the "
                "distilled DeiT does not compute (it reads the cls and dist tokens, with position embeddings on every token)."
            )
    fields = {}
    if "num_heads" in model_args:
        fields["num_attention_heads"] = model_args["num_heads"]
    image_size = model_args.get("img_size") or (pretrained_cfg.get("input_size") or [None])[1:]
    if image_size:
        fields["image_size"] = image_size  # int or (height, width): `_resolve_geometry` writes it as the config keeps it
    names = config.get("label_names") or pretrained_cfg.get("label_names")
    if names and len(names) == config.get("num_classes", len(names)):
        fields["id2label"] = list(names)
    return fields


IMAGENET_CLASSES = 1000


def imagenet_id2label() -> dict[int, str] | None:
    """ImageNet-1k's class names as transformers' ImageNet checkpoints name them ("tench, Tinca tinca", ...), from
    the list timm ships; None when timm is not installed. Given to 1,000-class checkpoints that carry no names
    (facebook and timm files), instead of transformers' LABEL_0 .. LABEL_999."""
    try:
        from timm.data import ImageNetInfo
    except ImportError:
        return None
    info = ImageNetInfo()
    logger.info("The checkpoint's 1,000 classes are ImageNet-1k's: named from timm's list (timm.data.ImageNetInfo).")
    return {index: info.index_to_description(index) for index in range(IMAGENET_CLASSES)}


def _labels(id2label) -> dict[int, str]:
    """`id2label` with int keys, from a dict (keys may be strings, as in JSON) or a list of names."""
    if isinstance(id2label, (list, tuple)):
        return {index: str(name) for index, name in enumerate(id2label)}
    return {int(index): str(name) for index, name in id2label.items()}


def _check_weight_determined(fields: dict, overrides: dict) -> None:
    """Sizes the weights fix cannot be overridden; a disagreeing override is a mistake worth naming."""
    for name in WEIGHT_DETERMINED:
        given = overrides.pop(name, None)
        if given is None:
            continue
        found = fields[name]
        same = _pair(given) == _pair(found) if name == "patch_size" else given == found
        if not same:
            raise CheckpointConversionError(
                f"{name}={given!r} was given, but the checkpoint's weights have {name}={found!r}; "
                "drop the option (it is read from the weights)."
            )


def _resolve_geometry(ours: dict[str, torch.Tensor], fields: dict, image_size) -> None:
    """Set `fields["image_size"]` to the size the position embeddings were made for, or resample them to
    `image_size` when that asks for another patch grid."""
    patch_size = _pair(fields["patch_size"])
    key = "deit.embeddings.position_embeddings"
    num_positions = ours[key].shape[1] - 2
    square = math.isqrt(num_positions) ** 2 == num_positions
    # Without a config that says it, a non-square grid takes its shape from the user's size.
    trained_size = fields.get("image_size") or (None if square else image_size)
    if trained_size is None:
        trained_grid = (math.isqrt(num_positions),) * 2
    else:
        trained_grid = tuple(side // patch for side, patch in zip(_pair(trained_size), patch_size))
    if trained_grid[0] * trained_grid[1] != num_positions:
        raise CheckpointConversionError(
            f"The checkpoint has {num_positions} patch positions, which is not the {trained_grid[0]}x{trained_grid[1]} "
            f"grid of image size {trained_size!r} in patches of {patch_size}"
            + ("" if square else " (not a square grid either)")
            + "; pass the image size the checkpoint was trained at (--image_size H W)."
        )
    grid = trained_grid
    if image_size is not None:
        image_h, image_w = _pair(image_size)
        if image_h % patch_size[0] or image_w % patch_size[1]:
            raise CheckpointConversionError(
                f"image_size {image_size!r} is not a multiple of the checkpoint's patch size {patch_size}: pass a "
                f"multiple (e.g. {max(1, image_h // patch_size[0]) * patch_size[0]}), or leave it out for the "
                "checkpoint's own."
            )
        grid = (image_h // patch_size[0], image_w // patch_size[1])
        if grid != trained_grid:
            ours[key] = _resample_position_embeddings(ours[key], trained_grid, grid)
            warnings.warn(
                f"Resampled the position embeddings from a {trained_grid} to a {grid} patch grid (as the model's "
                "interpolate_pos_encoding, the token rows kept); fine-tune at the new resolution for best accuracy.",
                stacklevel=3,
            )
    image_h, image_w = grid[0] * patch_size[0], grid[1] * patch_size[1]
    fields["image_size"] = image_h if image_h == image_w else [image_h, image_w]


def _resolve_heads(fields: dict) -> None:
    if "num_attention_heads" in fields:
        return
    width = fields["hidden_size"]
    if width not in HEADS_BY_WIDTH:
        raise CheckpointConversionError(
            f"The number of attention heads cannot be read from the weights, and hidden size {width} is none of "
            f"DeiT's ({', '.join(f'{d}: {h} heads' for d, h in HEADS_BY_WIDTH.items())}); pass num_attention_heads "
            "(--num_attention_heads N)."
        )
    fields["num_attention_heads"] = HEADS_BY_WIDTH[width]


def _resolve_labels(ours: dict[str, torch.Tensor], fields: dict, num_labels: int | None, id2label,
                    new_heads_allowed: bool) -> None:
    """Keep the checkpoint's classes and labels, or replace them: another class count means new heads (refused
    unless `new_heads_allowed`)."""
    if id2label is not None:
        id2label = _labels(id2label)
        if num_labels is not None and num_labels != len(id2label):
            raise CheckpointConversionError(
                f"id2label has {len(id2label)} labels but num_labels is {num_labels}; give one label per class."
            )
        num_labels = len(id2label)
    checkpoint_labels = fields.pop("num_labels", None)
    if num_labels is None and checkpoint_labels is None:
        raise CheckpointConversionError(
            "The checkpoint has no classification head; pass num_labels (--num_labels N) to add freshly initialised "
            "heads."
        )
    if num_labels is not None and num_labels != checkpoint_labels:
        if checkpoint_labels is not None and not new_heads_allowed:
            raise MismatchedClassesError(
                f"The checkpoint's heads have {checkpoint_labels} classes and {num_labels} were asked for: loading "
                "would replace both heads with new, untrained ones. Pass ignore_mismatched_sizes=True to fine-tune "
                "on new classes, or leave num_labels and id2label out to keep the checkpoint's classes."
            )
        for key in [key for key in ours if key.split(".")[0] in ("cls_classifier", "distillation_classifier")]:
            del ours[key]
        if checkpoint_labels is not None:
            warnings.warn(
                f"num_labels={num_labels} differs from the checkpoint's {checkpoint_labels} classes: both heads are "
                "freshly initialised; fine-tune before use.",
                stacklevel=3,
            )
        fields.pop("id2label", None)  # the checkpoint's names are those of its old classes
    labels = id2label if id2label is not None else fields.pop("id2label", None)
    if labels is None and checkpoint_labels == IMAGENET_CLASSES and num_labels in (None, IMAGENET_CLASSES):
        labels = imagenet_id2label()  # None without timm
    if labels is None:
        fields["num_labels"] = num_labels if num_labels is not None else checkpoint_labels
    else:
        # PretrainedConfig derives num_labels from id2label; label2id is rebuilt so both always agree.
        fields["id2label"] = _labels(labels)
        fields["label2id"] = {name: index for index, name in fields["id2label"].items()}


def convert_state_dict(
    state_dict: dict[str, torch.Tensor], source_config: dict | None = None, ignore_mismatched_sizes: bool = True,
    **overrides
) -> tuple[dict[str, torch.Tensor], DistilledDeiTConfig, str]:
    """Map a foreign DeiT state dict onto our keys and infer the config that fits it.

    Args:
        state_dict: weights in any layout `detect_layout` recognises.
        source_config: the source's config.json as a dict, if it has one (heads, layer-norm eps, labels).
        ignore_mismatched_sizes: allow another class count than the checkpoint's (new heads); False raises
            `MismatchedClassesError` instead, as `from_pretrained` does without it.
        overrides: `DistilledDeiTConfig` fields (None means "not given"). Fields the weights fix (`hidden_size`,
            `num_hidden_layers`, `intermediate_size`, `patch_size`, `num_channels`, `qkv_bias`) are checked against
            them. An `image_size` with another patch grid resamples the position embeddings. A `num_labels` other
            than the checkpoint's gives freshly initialised heads. `id2label` (dict or list of names) sets the labels.
            Anything else (`num_attention_heads`, `layer_norm_eps`, `drop_path_rate`, ...) is set as given.

    Returns:
        (our state dict, the config, the detected layout). The state dict lacks the two heads when they are to be
        freshly initialised.
    """
    layout = detect_layout(state_dict)
    # Renamed (query/key/value fused) into our keys, no value changed.
    ours = dict(state_dict) if layout == "hf-deit" else _fuse_qkv(_rename(state_dict, _RULES[layout]))
    source_config = source_config or {}
    overrides = {name: value for name, value in overrides.items() if value is not None}
    _add_distillation_token(ours)

    fields = _infer_config_fields(ours)
    _check_weight_determined(fields, overrides)
    # What only a config can say (heads, eps, activation, labels): transformers and hf-deit folders have one.
    if layout == "timm":
        fields["layer_norm_eps"] = TIMM_LAYER_NORM_EPS
        if "architecture" in source_config:  # a timm Hub-layout folder (save_for_hf)
            fields.update(timm_config_fields(source_config))
    else:
        copied = SOURCE_CONFIG_FIELDS + (HF_DEIT_EXTRA_FIELDS if layout == "hf-deit" else ())
        fields.update({name: source_config[name] for name in copied if name in source_config})
        if fields.get("layer_norm_eps") == 1e-12 and "layer_norm_eps" not in overrides:
            warnings.warn(
                "The source config has layer_norm_eps=1e-12 (transformers' DeiTConfig default): kept, so that the "
                "converted model reproduces the source's logits. The original DeiT weights were trained with 1e-6; "
                "pass layer_norm_eps=1e-6 (--layer_norm_eps 1e-6) to match the original implementation instead.",
                stacklevel=2,
            )

    _resolve_geometry(ours, fields, overrides.pop("image_size", None))
    _resolve_labels(ours, fields, overrides.pop("num_labels", None), overrides.pop("id2label", None),
                    new_heads_allowed=ignore_mismatched_sizes)
    fields.update(overrides)
    _resolve_heads(fields)
    try:
        config = DistilledDeiTConfig(**fields)
    except ValueError as error:
        raise CheckpointConversionError(f"The inferred configuration is invalid: {error}") from None
    return ours, config, layout


# ----------------------------------------------------------------------------------------------------------------
# End to end


def _load_converted_weights(model, ours: dict[str, torch.Tensor]) -> None:
    """Load converted weights (our classifier's keys) into a classifier or a backbone (`DistilledDeiTModel`, whose
    keys lack the `deit.` prefix and which has no heads); only freshly initialised heads may be missing."""
    heads = ("cls_classifier", "distillation_classifier")
    if not hasattr(model, "deit"):
        prefix = model.base_model_prefix + "."
        ours = {key[len(prefix):]: value for key, value in ours.items() if key.startswith(prefix)}
    missing, unexpected = model.load_state_dict(ours, strict=False)
    freshly_initialised = {key for key in missing if key.split(".")[0] in heads}
    if unexpected or set(missing) - freshly_initialised:
        raise CheckpointConversionError(
            f"Converted weights do not fit the model: missing {sorted(set(missing) - freshly_initialised)[:8]}, "
            f"unexpected {sorted(unexpected)[:8]}."
        )


def convert_checkpoint(
    checkpoint: str | Path, output_dir: str | Path | None = None, **overrides
) -> DistilledDeiTForImageClassification:
    """Convert a DeiT checkpoint (file or folder) into a `DistilledDeiTForImageClassification`.

    When `output_dir` is given, writes there the model (safetensors, config with `auto_map`, the model code for
    `trust_remote_code=True`) and the DeiT evaluation preprocessing config, so that `from_pretrained(output_dir)`
    and `pipeline("image-classification", model=output_dir)` work. `overrides` as in `convert_state_dict`.
    """
    state_dict, source_config = load_checkpoint(checkpoint)
    ours, config, _ = convert_state_dict(state_dict, source_config, **overrides)
    model = DistilledDeiTForImageClassification(config)
    _load_converted_weights(model, ours)
    model.eval()
    if output_dir is not None:
        model.save_pretrained(output_dir)
        image_h, image_w = _pair(config.image_size)
        processor = deit_image_processor(max(image_h, image_w))
        if image_h != image_w:  # crop to the model's (non-square) input; resize so that the crop fits
            processor.crop_size = {"height": image_h, "width": image_w}
        processor.save_pretrained(output_dir)
    return model


# ----------------------------------------------------------------------------------------------------------------
# Conversion on load: `from_pretrained` and `scripts/train.py --model_name_or_path`

# `from_pretrained` options that say where to find a Hub checkpoint.
HUB_OPTIONS = ("cache_dir", "revision", "token", "local_files_only", "force_download")
# `from_pretrained` options that conversion on load does not carry out: convert first, then load the folder.
UNSUPPORTED_ON_LOAD = (
    "device_map", "max_memory", "offload_folder", "quantization_config", "tp_plan", "key_mapping", "state_dict",
    "output_loading_info", "gguf_file", "subfolder",
)  # fmt: skip
# Options that mean nothing for a converted checkpoint: the model's code is this package's.
IGNORED_ON_LOAD = ("trust_remote_code", "use_safetensors", "weights_only", "low_cpu_mem_usage")


def checkpoint_class_count(pretrained_model_name_or_path, **hub_options) -> int | None:
    """The class count of a saved model's heads as its config.json says (a folder or a Hub repo, transformers' or
    timm's Hub layout), or None where no config says (a bare weights file; a repo that cannot be reached)."""
    try:
        config = _read_config(str(pretrained_model_name_or_path), hub_options)
    except OSError:
        return None
    if config is None:
        return None
    if "architecture" in config:  # timm's Hub layout
        return config.get("num_classes")
    return len(config["id2label"]) if config.get("id2label") else config.get("num_labels")


def _needs_conversion(source_config: dict | None, name: str, overrides: dict) -> bool:
    """True for a source this module converts, and for our own model when `overrides` ask for another patch grid
    (resampled position embeddings), which transformers' loading cannot do; False for our own model otherwise
    (transformers loads it, and another class count raises unless `ignore_mismatched_sizes`). Raises for a config
    of another kind of model."""
    if source_config is None:
        return True  # a bare weights file or folder: its keys say what it is
    model_type = source_config.get("model_type")
    if model_type == DistilledDeiTConfig.model_type:
        image_size, patch_size = overrides.get("image_size"), _pair(source_config.get("patch_size", 16))
        return image_size is not None and (
            [side // patch for side, patch in zip(_pair(image_size), patch_size)]
            != [side // patch for side, patch in zip(_pair(source_config.get("image_size", 224)), patch_size)]
        )
    if model_type in CONVERTIBLE_MODEL_TYPES or "architecture" in source_config:
        return True
    raise CheckpointConversionError(
        f"{name} is a {model_type!r} checkpoint, not a DeiT: a distilled DeiT loads from its own checkpoints, "
        f"transformers DeiT/ViT ones ({', '.join(CONVERTIBLE_MODEL_TYPES)}), timm/facebook DeiT files and timm "
        "Hub-layout folders."
    )


def _checkpoint_to_convert(name: str, hub_options: dict, overrides: dict) -> Path | None:
    """The path of the checkpoint `name`: a local path, or the Hub snapshot folder holding its config.json and the
    first weights file of `WEIGHT_FILES` (shards included). None where transformers loads it itself: this package's
    own layout, or no checkpoint at all."""
    path = Path(name)
    source_config = _read_config(name, hub_options)
    if path.is_dir() and source_config is None and not any((path / weights).is_file() for weights in WEIGHT_FILES):
        return None  # not a checkpoint at all: let transformers say what is missing
    if not _needs_conversion(source_config, name, overrides):
        return None
    if path.exists():
        return path
    for filename in WEIGHT_FILES:
        weights = _hub_file(name, filename, hub_options)
        if weights is None:
            continue
        if filename.endswith(".index.json"):
            for shard in sorted(set(json.loads(Path(weights).read_text())["weight_map"].values())):
                _hub_file(name, shard, hub_options)
        return Path(weights).parent
    raise CheckpointConversionError(f"The Hub repo {name!r} has no weights file ({', '.join(WEIGHT_FILES)}).")


def load_converted(model_class, pretrained_model_name_or_path, **kwargs):
    """`model_class.from_pretrained` for checkpoints of other implementations: convert on load.

    Returns None for this package's own folders and Hub repos (transformers loads those), else the converted model
    (in eval mode, as `from_pretrained` returns it), after logging what was converted. `kwargs` are
    `from_pretrained`'s: the Hub options, `attn_implementation`, `dtype`, `ignore_mismatched_sizes`, and config fields,
    which act as the overrides of `convert_state_dict` (`num_labels`/`id2label` other than the checkpoint's give new
    heads with `ignore_mismatched_sizes=True` and raise `MismatchedClassesError` without it, as transformers does; an
    `image_size` with another patch grid resamples the position embeddings once, `drop_path_rate`, ...).
    """
    name = str(pretrained_model_name_or_path)
    kwargs = dict(kwargs)
    hub_options = {key: kwargs.pop(key) for key in HUB_OPTIONS if key in kwargs}
    path = _checkpoint_to_convert(name, hub_options, kwargs)
    if path is None:
        return None
    unsupported = sorted(key for key in kwargs if key in UNSUPPORTED_ON_LOAD and kwargs[key] is not None)
    if unsupported:
        raise CheckpointConversionError(
            f"{name} is converted on load, which does not support {', '.join(unsupported)}: convert it first "
            "(hf_deit.convert.convert_checkpoint or scripts/convert_checkpoint.py), then load the converted folder."
        )
    for key in IGNORED_ON_LOAD + UNSUPPORTED_ON_LOAD:
        kwargs.pop(key, None)
    ignore_mismatched_sizes = bool(kwargs.pop("ignore_mismatched_sizes", False))
    attn_implementation = kwargs.pop("attn_implementation", None)
    dtype = kwargs.pop("dtype", None) or kwargs.pop("torch_dtype", None)
    if kwargs.get("id2label") is not None:
        kwargs.pop("label2id", None)  # rebuilt from id2label, so that the two always agree

    state_dict, source_config = load_checkpoint(path)  # a Hub repo's config.json is in the snapshot folder
    # What conversion has to say (new heads, resampled position embeddings, an added dist token, eps) goes to the
    # log, where a training run's reader looks, rather than to warnings.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours, config, layout = convert_state_dict(state_dict, source_config,
                                                  ignore_mismatched_sizes=ignore_mismatched_sizes, **kwargs)
    for warning in caught:
        logger.warning("%s: %s", name, warning.message)
    if attn_implementation is not None:
        config._attn_implementation = attn_implementation
    model = model_class(config)
    _load_converted_weights(model, ours)
    if dtype not in (None, "auto"):
        model.to(getattr(torch, dtype) if isinstance(dtype, str) else dtype)
    logger.info(
        "%s %s (%s layout) into a %s on load: %d classes, image size %s, %d blocks of width %d.",
        "Loaded" if layout == "hf-deit" else "Converted", name, layout, model_class.__name__, config.num_labels,
        config.image_size, config.num_hidden_layers, config.hidden_size,
    )
    return model.eval()

