"""DistilledDeiTConfig: the original's defaults, the paper's presets, and early, helpful rejection of bad sizes."""

import time
import tracemalloc

import pytest
import torch

from hf_deit import PRESET_ALIASES, PRESETS, DistilledDeiTConfig, DistilledDeiTForImageClassification


def test_defaults_are_the_originals():
    config = DistilledDeiTConfig()
    # DeiT-Tiny distilled at 224 px, patch 16.
    assert (config.image_size, config.patch_size, config.num_channels) == (224, 16, 3)
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (192, 12, 3)
    assert config.intermediate_size == 4 * config.hidden_size
    assert config.layer_norm_eps == 1e-6  # not transformers' 1e-12
    assert config.drop_path_rate == 0.1
    assert config.hidden_dropout_prob == 0.0 and config.attention_probs_dropout_prob == 0.0
    assert config.hidden_act == "gelu" and config.qkv_bias is True
    assert config.initializer_range == 0.02
    assert config.model_type == "distilled_deit"
    assert config.grid_size == (14, 14) and config.num_patches == 196


def test_intermediate_size_follows_hidden_size_unless_given():
    assert DistilledDeiTConfig(hidden_size=64, num_attention_heads=2).intermediate_size == 256
    assert DistilledDeiTConfig(hidden_size=64, num_attention_heads=2, intermediate_size=100).intermediate_size == 100


@pytest.mark.parametrize(
    "preset, expected",
    [
        ("tiny", 5_910_800),
        ("small", 22_436_432),
        ("base", 87_338_192),
        # At 384 px only the position embeddings grow: (576 - 196) more rows of D.
        ("tiny-384", 5_910_800 + 380 * 192),
        ("small-384", 22_436_432 + 380 * 384),
        ("base-384", 87_338_192 + 380 * 768),
    ],
)
def test_presets_have_the_papers_parameter_counts(preset, expected):
    config = DistilledDeiTConfig.from_preset(preset, num_labels=1000)
    # On the meta device no memory is allocated, so even the base model costs nothing to build.
    with torch.device("meta"):
        model = DistilledDeiTForImageClassification(config)
    assert sum(p.numel() for p in model.parameters()) == expected
    assert config.estimated_num_parameters == expected


@pytest.mark.parametrize("alias", sorted(PRESET_ALIASES))
def test_aliases_name_the_timm_presets(alias):
    timm_name = PRESET_ALIASES[alias]
    assert timm_name in PRESETS
    assert DistilledDeiTConfig.from_preset(alias).to_dict() == DistilledDeiTConfig.from_preset(timm_name).to_dict()
    size, resolution = timm_name.split("_")[1], int(timm_name.rsplit("_", 1)[1])
    config = DistilledDeiTConfig.from_preset(alias)
    assert config.image_size == resolution and config.patch_size == 16
    assert config.hidden_size == {"tiny": 192, "small": 384, "base": 768}[size]
    assert config.hidden_size // config.num_attention_heads == 64


def test_preset_keyword_arguments_override_fields():
    config = DistilledDeiTConfig.from_preset("small", num_labels=10, drop_path_rate=0.0)
    assert (config.hidden_size, config.num_labels, config.drop_path_rate) == (384, 10, 0.0)


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValueError, match="Unknown DeiT preset 'huge'") as error:
        DistilledDeiTConfig.from_preset("huge")
    for known in ("tiny", "small-384", "deit_base_distilled_patch16_224"):
        assert known in str(error.value)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(hidden_size=100, num_attention_heads=3), r"hidden_size 100 is not divisible by num_attention_heads 3"),
        (dict(image_size=225, patch_size=16), r"image_size 225 is not divisible by patch_size 16.*multiple"),
        (dict(image_size=[224, 100], patch_size=16), r"not divisible by patch_size"),
        (dict(image_size=0), r"must be positive"),
        (dict(patch_size=-16), r"must be positive"),
        (dict(hidden_size=0), r"hidden_size must be a positive integer, got 0"),
        (dict(num_hidden_layers=-1), r"num_hidden_layers must be a positive integer"),
        (dict(num_attention_heads=0), r"num_attention_heads must be a positive integer"),
        (dict(intermediate_size=0), r"intermediate_size must be a positive integer"),
        (dict(num_channels=2.5), r"num_channels must be a positive integer"),
        (dict(drop_path_rate=1.0), r"drop_path_rate must be in \[0, 1\), got 1.0"),
        (dict(drop_path_rate=-0.1), r"drop_path_rate must be in \[0, 1\)"),
        (dict(hidden_dropout_prob=1.5), r"hidden_dropout_prob must be in \[0, 1\)"),
        (dict(attention_probs_dropout_prob=-1), r"attention_probs_dropout_prob must be in \[0, 1\)"),
        (dict(layer_norm_eps=0.0), r"layer_norm_eps must be positive"),
        (dict(image_size=100_000, patch_size=4), r"patches .* exceed .*use a larger patch_size"),
    ],
)
def test_invalid_configurations_fail_at_construction_saying_what_to_change(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DistilledDeiTConfig(**kwargs)


def test_head_count_error_suggests_valid_head_counts():
    with pytest.raises(ValueError, match=r"pick num_attention_heads among \[1, 2, 4, 5, 10, 20, 25, 50\]"):
        DistilledDeiTConfig(hidden_size=100, num_attention_heads=3)


@pytest.mark.parametrize(
    "kwargs", [dict(hidden_size=10**7, num_attention_heads=1), dict(num_hidden_layers=10**6), dict(intermediate_size=10**9)]
)
def test_absurd_sizes_are_rejected_before_any_allocation(kwargs):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(ValueError, match=r"parameters, more than .*check hidden_size"):
            DistilledDeiTConfig(**kwargs)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak_bytes < 10 * 2**20  # a real allocation would be tens of GB


def test_dict_round_trip_keeps_every_field():
    config = DistilledDeiTConfig(
        image_size=[48, 64],
        patch_size=8,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=4,
        intermediate_size=100,
        hidden_act="gelu_new",
        layer_norm_eps=1e-5,
        qkv_bias=False,
        drop_path_rate=0.2,
        hidden_dropout_prob=0.1,
        attention_probs_dropout_prob=0.05,
        initializer_range=0.01,
        id2label={0: "cat", 1: "dog", 2: "bird"},
    )
    restored = DistilledDeiTConfig.from_dict(config.to_dict())
    assert restored.to_dict() == config.to_dict()
    assert restored.grid_size == (6, 8)
    assert restored.num_labels == 3 and restored.id2label[1] == "dog"
    assert restored.intermediate_size == 100 and restored.qkv_bias is False


def test_json_round_trip_through_a_folder(tmp_path):
    config = DistilledDeiTConfig.from_preset("tiny", num_labels=3, layer_norm_eps=1e-6)
    config.save_pretrained(tmp_path)
    restored = DistilledDeiTConfig.from_pretrained(tmp_path)
    assert restored.to_dict() == config.to_dict()


def test_an_invalid_saved_config_fails_on_load(tmp_path):
    """Validation also guards configs that come from files (e.g. edited by hand)."""
    import json

    DistilledDeiTConfig().save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    data = json.loads(config_file.read_text())
    data["num_attention_heads"] = 5
    config_file.write_text(json.dumps(data))
    with pytest.raises(ValueError, match="not divisible by num_attention_heads 5"):
        DistilledDeiTConfig.from_pretrained(tmp_path)
