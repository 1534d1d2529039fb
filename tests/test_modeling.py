"""DistilledDeiT models: parity with timm, the original's init, outputs and loss, attention backends, resolution
changes, gradient checkpointing, save/load, Auto classes, remote code, the saved preprocessing and the pipeline."""

import json
import os
import re
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from transformers import (
    AutoConfig,
    AutoImageProcessor,
    AutoModel,
    AutoModelForImageClassification,
    pipeline,
)

from hf_deit import (
    DistilledDeiTConfig,
    DistilledDeiTForImageClassification,
    DistilledDeiTImageClassifierOutput,
    DistilledDeiTModel,
)
from hf_deit.image_processing import IMAGENET_MEAN, IMAGENET_STD, deit_image_processor

timm = pytest.importorskip("timm")

TIMM_TINY = "deit_tiny_distilled_patch16_224"

# timm (and the facebook checkpoints) name -> our name; applied in order to every key.
TIMM_TO_OURS = [
    (r"^cls_token$", "deit.embeddings.cls_token"),
    (r"^dist_token$", "deit.embeddings.distillation_token"),
    (r"^pos_embed$", "deit.embeddings.position_embeddings"),
    (r"^patch_embed\.proj\.", "deit.embeddings.patch_embeddings.projection."),
    (r"^blocks\.(\d+)\.norm1\.", r"deit.layers.\1.layernorm_before."),
    (r"^blocks\.(\d+)\.attn\.qkv\.", r"deit.layers.\1.attention.qkv."),
    (r"^blocks\.(\d+)\.attn\.proj\.", r"deit.layers.\1.attention.o_proj."),
    (r"^blocks\.(\d+)\.norm2\.", r"deit.layers.\1.layernorm_after."),
    (r"^blocks\.(\d+)\.mlp\.", r"deit.layers.\1.mlp."),
    (r"^norm\.", "deit.layernorm."),
    (r"^head\.", "cls_classifier."),
    (r"^head_dist\.", "distillation_classifier."),
]


def timm_state_dict_to_ours(state_dict: dict) -> dict:
    renamed = {}
    for key, value in state_dict.items():
        new_key = key
        for pattern, replacement in TIMM_TO_OURS:
            new_key = re.sub(pattern, replacement, new_key)
        renamed[new_key] = value
    return renamed


@pytest.fixture(scope="module")
def timm_pair():
    """A randomly initialised timm DeiT-Ti distilled and our model carrying the same weights, built once per module
    (a few seconds on a busy CPU). timm is built with `dynamic_img_size=True`, which at 224 px is the plain model
    (its resampling returns the stored position embeddings unchanged) and also accepts other resolutions."""
    torch.manual_seed(0)
    reference = timm.create_model(TIMM_TINY, pretrained=False, drop_path_rate=0.0, dynamic_img_size=True)
    ours = DistilledDeiTForImageClassification(DistilledDeiTConfig.from_preset("tiny", num_labels=1000, drop_path_rate=0.0))
    ours.load_state_dict(timm_state_dict_to_ours(reference.state_dict()), strict=True)
    images = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    return reference, ours, images


def test_eval_logits_match_timm(timm_pair):
    reference, ours, images = timm_pair
    reference.eval(), ours.eval()
    with torch.no_grad():
        expected = reference(images)
        output = ours(images)
    assert (output.logits - expected).abs().max() <= 1e-5
    assert output.logits.shape == (2, 1000)


def test_training_heads_match_timm_distilled_training(timm_pair):
    """In train mode timm returns (cls, dist) only with set_distilled_training(True); ours always gives both."""
    reference, ours, images = timm_pair
    reference.set_distilled_training(True)
    reference.train(), ours.train()
    try:
        with torch.no_grad():
            expected_cls, expected_dist = reference(images)
            output = ours(images)
    finally:
        reference.set_distilled_training(False)
    assert (output.cls_logits - expected_cls).abs().max() <= 1e-5
    assert (output.distillation_logits - expected_dist).abs().max() <= 1e-5
    assert not torch.allclose(output.cls_logits, output.distillation_logits)


def test_dropout_sits_where_timm_puts_it(timm_pair):
    """With the same seed and dropout on, the same units are dropped in the same order as in timm: after the
    position embeddings, the attention projection, the MLP activation and fc2 (timm's pos/proj/mlp dropouts)."""
    reference, ours, images = timm_pair
    timm_dropouts = [m for name, m in reference.named_modules() if re.search(r"pos_drop|proj_drop|mlp\.drop[12]$", name)]
    our_dropouts = [m for m in ours.modules() if isinstance(m, torch.nn.Dropout)]
    # timm: pos + (proj, mlp.drop1, mlp.drop2) per block; ours: embeddings + (block dropout used twice, mlp) per block.
    assert (len(timm_dropouts), len(our_dropouts)) == (1 + 12 * 3, 1 + 12 * 2)
    reference.set_distilled_training(True)
    reference.train(), ours.train()
    try:
        for module in timm_dropouts + our_dropouts:
            module.p = 0.1
        with torch.no_grad():
            torch.manual_seed(123)
            expected_cls, _ = reference(images[:1])
            torch.manual_seed(123)
            output = ours(images[:1])
            torch.manual_seed(124)
            other_draw = ours(images[:1])
    finally:
        for module in timm_dropouts + our_dropouts:
            module.p = 0.0
        reference.set_distilled_training(False)
    assert (output.cls_logits - expected_cls).abs().max() <= 1e-5
    assert (other_draw.cls_logits - expected_cls).abs().max() > 1e-3  # dropout really is on


@pytest.fixture
def tiny_model(tiny_config):
    torch.manual_seed(0)
    return DistilledDeiTForImageClassification(tiny_config).eval()


@pytest.fixture
def pixel_values():
    return torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))


def test_stochastic_depth_rates_match_timm():
    from timm.models.deit import VisionTransformerDistilled

    # The rates depend only on the depth and the rate: a 12-block model of width 24 is enough.
    reference = VisionTransformerDistilled(img_size=32, patch_size=16, embed_dim=24, depth=12, num_heads=3, drop_path_rate=0.1)
    ours = DistilledDeiTModel(DistilledDeiTConfig(image_size=32, hidden_size=24, num_attention_heads=3))
    timm_rates = [getattr(block.drop_path1, "drop_prob", 0.0) for block in reference.blocks]
    our_rates = [layer.drop_path.drop_prob for layer in ours.layers]
    assert our_rates == pytest.approx(timm_rates, abs=1e-7)
    assert our_rates[0] == 0.0 and our_rates[-1] == pytest.approx(0.1)


def test_stochastic_depth_drops_whole_samples_in_training_only(tiny_config):
    tiny_config.drop_path_rate = 0.5
    torch.manual_seed(0)
    model = DistilledDeiTForImageClassification(tiny_config)
    images = torch.randn(8, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(images).logits, model(images).logits)
        model.train()
        torch.manual_seed(1)
        first = model(images).logits
        torch.manual_seed(2)
        second = model(images).logits
    assert not torch.allclose(first, second)


# ---------------------------------------------------------------- initialisation


def test_initialisation_is_the_originals():
    config = DistilledDeiTConfig(image_size=64, patch_size=8, hidden_size=192, num_hidden_layers=2,
                                 num_attention_heads=3, num_labels=10)
    torch.manual_seed(0)
    model = DistilledDeiTForImageClassification(config)
    embeddings = model.deit.embeddings
    tokens = torch.cat([embeddings.cls_token.flatten(), embeddings.distillation_token.flatten()])
    # transformers' DeiT zeroes these; the original draws them like the other weights.
    for values in (tokens, embeddings.position_embeddings.flatten()):
        assert values.std().item() == pytest.approx(0.02, rel=0.15)
        assert abs(values.mean().item()) < 0.005
    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Linear):
            assert module.weight.std().item() == pytest.approx(0.02, rel=0.15), name
            assert module.weight.abs().max().item() < 0.02 * 6, name  # truncated normal, no outliers
            assert torch.count_nonzero(module.bias) == 0, name
        elif isinstance(module, torch.nn.LayerNorm):
            assert torch.equal(module.weight, torch.ones_like(module.weight)), name
            assert torch.equal(module.bias, torch.zeros_like(module.bias)), name
            assert module.eps == 1e-6
    # The patch projection keeps torch's default (as timm): uniform within 1/sqrt(fan_in).
    projection = embeddings.patch_embeddings.projection
    bound = 1 / (3 * 8 * 8) ** 0.5
    assert projection.weight.abs().max() <= bound and projection.bias.abs().max() <= bound
    assert projection.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.1)


# ---------------------------------------------------------------- outputs and loss


def test_output_fields_and_shapes(tiny_model, pixel_values):
    assert list(DistilledDeiTImageClassifierOutput.__dataclass_fields__) == [
        "loss", "logits", "cls_logits", "distillation_logits", "hidden_states", "attentions",
    ]
    with torch.no_grad():
        output = tiny_model(pixel_values, output_hidden_states=True)
    assert output.loss is None and output.attentions is None
    assert output.logits.shape == output.cls_logits.shape == output.distillation_logits.shape == (2, 5)
    torch.testing.assert_close(output.logits, (output.cls_logits + output.distillation_logits) / 2)
    assert len(output.hidden_states) == 3  # embeddings + 2 blocks
    assert all(h.shape == (2, 16 + 2, 32) for h in output.hidden_states)
    with torch.no_grad():
        as_tuple = tiny_model(pixel_values, return_dict=False)
    torch.testing.assert_close(as_tuple[0], output.logits)


def test_backbone_output_reads_the_two_tokens(tiny_config, pixel_values):
    torch.manual_seed(0)
    backbone = DistilledDeiTModel(tiny_config).eval()
    with torch.no_grad():
        output = backbone(pixel_values)
    assert output.last_hidden_state.shape == (2, 18, 32)
    torch.testing.assert_close(output.pooler_output, output.last_hidden_state[:, 0])
    torch.testing.assert_close(output.distillation_output, output.last_hidden_state[:, 1])


def test_wrong_channel_count_is_explained(tiny_model):
    with pytest.raises(ValueError, match="1 channels but the model expects 3.*RGB"):
        tiny_model(torch.randn(1, 1, 32, 32))


def _hand_cross_entropy(logits, targets):
    log_probs = logits - logits.exp().sum(-1, keepdim=True).log()
    return -(targets * log_probs).sum(-1).mean()


def test_loss_is_the_mean_of_both_heads_cross_entropy(tiny_model, pixel_values):
    labels = torch.tensor([3, 0])
    output = tiny_model(pixel_values, labels=labels)
    one_hot = F.one_hot(labels, 5).float()
    expected = (_hand_cross_entropy(output.cls_logits, one_hot) + _hand_cross_entropy(output.distillation_logits, one_hot)) / 2
    torch.testing.assert_close(output.loss, expected)
    output.loss.backward()
    # Both heads learn from the labels.
    assert tiny_model.cls_classifier.weight.grad.abs().sum() > 0
    assert tiny_model.distillation_classifier.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_integer_labels_of_any_width_are_accepted(tiny_model, pixel_values, dtype):
    with torch.no_grad():
        loss = tiny_model(pixel_values, labels=torch.tensor([3, 0], dtype=dtype)).loss
        expected = tiny_model(pixel_values, labels=torch.tensor([3, 0])).loss
    torch.testing.assert_close(loss, expected)


def test_soft_labels_are_supported(tiny_model, pixel_values):
    soft = torch.tensor([[0.7, 0.3, 0.0, 0.0, 0.0], [0.1, 0.1, 0.2, 0.2, 0.4]])
    with torch.no_grad():
        output = tiny_model(pixel_values, labels=soft)
        hard = tiny_model(pixel_values, labels=torch.tensor([1, 4]))
        one_hot = tiny_model(pixel_values, labels=F.one_hot(torch.tensor([1, 4]), 5).float())
    expected = (_hand_cross_entropy(output.cls_logits, soft) + _hand_cross_entropy(output.distillation_logits, soft)) / 2
    torch.testing.assert_close(output.loss, expected)
    torch.testing.assert_close(one_hot.loss, hard.loss)


# ---------------------------------------------------------------- attention


def test_attention_implementation_defaults_to_sdpa(tiny_config, tmp_path):
    model = DistilledDeiTForImageClassification(tiny_config)
    assert model.config._attn_implementation == "sdpa"
    model.save_pretrained(tmp_path)
    assert DistilledDeiTForImageClassification.from_pretrained(tmp_path).config._attn_implementation == "sdpa"
    loaded = DistilledDeiTForImageClassification.from_pretrained(tmp_path, attn_implementation="eager")
    assert loaded.config._attn_implementation == "eager"


def _flash_available() -> bool:
    if not torch.cuda.is_available():
        return False
    try:
        import flash_attn  # noqa: F401
    except ImportError:
        return False
    return True


@pytest.mark.parametrize(
    "implementation",
    [
        "sdpa",
        pytest.param("flex_attention", marks=pytest.mark.slow),  # compiles a kernel: ~15 s on CPU
        pytest.param(
            "flash_attention_2",
            marks=pytest.mark.skipif(not _flash_available(), reason="flash attention needs CUDA and flash_attn"),
        ),
    ],
)
def test_attention_backends_give_eager_logits(tiny_model, pixel_values, implementation):
    tiny_model.set_attn_implementation("eager")
    with torch.no_grad():
        expected = tiny_model(pixel_values).logits
        tiny_model.set_attn_implementation(implementation)
        assert tiny_model.config._attn_implementation == implementation
        # flex_attention has no CPU backward: inference only here.
        output = tiny_model(pixel_values).logits
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=0)


@pytest.mark.parametrize("implementation", ["eager", "sdpa"])
def test_output_attentions_returns_every_blocks_weights(tiny_model, pixel_values, tmp_path, implementation):
    tiny_model.save_pretrained(tmp_path)
    model = DistilledDeiTForImageClassification.from_pretrained(tmp_path, attn_implementation=implementation).eval()
    assert model.config._attn_implementation == implementation
    with torch.no_grad():
        output = model(pixel_values, output_attentions=True)
        plain = model(pixel_values)
    assert len(output.attentions) == 2
    for weights in output.attentions:
        assert weights.shape == (2, 2, 18, 18)
        torch.testing.assert_close(weights.sum(-1), torch.ones(2, 2, 18))
    torch.testing.assert_close(output.logits, plain.logits, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- another resolution


@pytest.mark.parametrize("new_grid", [(6, 6), (2, 2), (3, 5)])
def test_resampled_position_embeddings_match_timm(tiny_model, new_grid):
    """timm resamples DeiT position embeddings with antialiased bicubic (its defaults) and keeps the 2 token rows;
    so do we. (The original fine-tuning script and transformers' DeiT use plain bicubic.)"""
    from timm.layers import resample_abs_pos_embed

    embeddings = tiny_model.deit.embeddings
    with torch.no_grad():
        ours = embeddings.interpolate_pos_encoding(*new_grid)
        expected = resample_abs_pos_embed(
            embeddings.position_embeddings, new_size=new_grid, old_size=(4, 4), num_prefix_tokens=2
        )
    assert ours.shape == (1, new_grid[0] * new_grid[1] + 2, 32)
    torch.testing.assert_close(ours, expected, atol=1e-6, rtol=0)
    torch.testing.assert_close(ours[:, :2], embeddings.position_embeddings[:, :2], atol=0, rtol=0)


def test_other_resolution_matches_timm_dynamic_image_size(timm_pair):
    reference, ours, _ = timm_pair
    reference.eval(), ours.eval()
    images = torch.randn(1, 3, 160, 288, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = reference(images)
        output = ours(images, interpolate_pos_encoding=True)
    assert (output.logits - expected).abs().max() <= 1e-5


def test_interpolation_at_the_native_size_changes_nothing(tiny_model, pixel_values):
    with torch.no_grad():
        torch.testing.assert_close(
            tiny_model(pixel_values, interpolate_pos_encoding=True).logits, tiny_model(pixel_values).logits, atol=0, rtol=0
        )


def test_other_resolution_needs_the_flag(tiny_model):
    images = torch.randn(1, 3, 48, 40)
    with pytest.raises(ValueError, match=r"\(48, 40\) doesn't match the model's \(32, 32\).*interpolate_pos_encoding=True"):
        tiny_model(images)
    with torch.no_grad():
        output = tiny_model(images, interpolate_pos_encoding=True, output_attentions=True)
    assert output.logits.shape == (1, 5)
    assert output.attentions[0].shape == (1, 2, 6 * 5 + 2, 6 * 5 + 2)


def test_interpolated_position_embeddings_get_gradients(tiny_model):
    """Fine-tuning at another resolution trains the stored position embeddings through the resampling."""
    tiny_model.train()
    tiny_model(torch.randn(2, 3, 48, 48), labels=torch.tensor([0, 1]), interpolate_pos_encoding=True).loss.backward()
    assert tiny_model.deit.embeddings.position_embeddings.grad[:, 2:].abs().sum() > 0


# ---------------------------------------------------------------- gradient checkpointing


def _gradients(model, pixel_values, labels):
    model.zero_grad()
    model(pixel_values, labels=labels).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters()}


def test_gradient_checkpointing_gives_the_same_gradients(tiny_model, pixel_values):
    tiny_model.train()
    labels = torch.tensor([1, 2])
    calls = []
    tiny_model.deit.layers[0].attention.register_forward_pre_hook(lambda *args: calls.append(1))
    expected = _gradients(tiny_model, pixel_values, labels)
    assert len(calls) == 1
    tiny_model.gradient_checkpointing_enable()
    assert tiny_model.is_gradient_checkpointing
    calls.clear()
    checkpointed = _gradients(tiny_model, pixel_values, labels)
    assert len(calls) == 2  # the block ran again during backward: checkpointing is really on
    assert expected.keys() == checkpointed.keys()
    for name in expected:
        torch.testing.assert_close(checkpointed[name], expected[name], atol=1e-6, rtol=1e-5, msg=name)


# ---------------------------------------------------------------- precision and compilation


def test_bfloat16_autocast_forward_runs(tiny_model, pixel_values):
    with torch.no_grad():
        full = tiny_model(pixel_values).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = tiny_model(pixel_values).logits
    assert torch.isfinite(mixed).all()
    torch.testing.assert_close(mixed.float(), full, atol=0.05, rtol=0.05)


def test_bfloat16_weights_accept_float_pixels(tiny_model, pixel_values):
    model = tiny_model.to(torch.bfloat16)
    with torch.no_grad():
        output = model(pixel_values, interpolate_pos_encoding=True)
    assert output.logits.dtype == torch.bfloat16 and torch.isfinite(output.logits).all()


@pytest.mark.slow
def test_torch_compile_forward(tiny_model, pixel_values):
    """40-55 s on the shared 2-core CPU (inductor builds C++ kernels); much faster with a warm compile cache."""
    with torch.no_grad():
        expected = tiny_model(pixel_values).logits
        start = time.perf_counter()
        compiled = torch.compile(tiny_model)
        output = compiled(pixel_values).logits
    print(f"torch.compile first forward: {time.perf_counter() - start:.1f} s")
    torch.testing.assert_close(output, expected, atol=1e-5, rtol=0)


# ---------------------------------------------------------------- save, load, Auto classes, remote code


@pytest.fixture
def saved_model(tiny_config, tmp_path):
    """A tiny classifier saved with its preprocessing config and named labels."""
    tiny_config.id2label = {0: "zero", 1: "one", 2: "two", 3: "three", 4: "four"}
    tiny_config.label2id = {name: index for index, name in tiny_config.id2label.items()}
    torch.manual_seed(0)
    model = DistilledDeiTForImageClassification(tiny_config).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    deit_image_processor(32).save_pretrained(folder)
    return model, folder


def test_save_and_load_give_identical_logits(saved_model, pixel_values):
    model, folder = saved_model
    loaded = DistilledDeiTForImageClassification.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(pixel_values).logits, model(pixel_values).logits, atol=0, rtol=0)
    assert loaded.config.id2label[3] == "three"


def test_auto_classes_resolve_ours(saved_model, pixel_values):
    model, folder = saved_model
    assert type(AutoConfig.from_pretrained(folder)) is DistilledDeiTConfig
    classifier = AutoModelForImageClassification.from_pretrained(folder).eval()
    backbone = AutoModel.from_pretrained(folder).eval()
    assert type(classifier) is DistilledDeiTForImageClassification
    assert type(backbone) is DistilledDeiTModel
    with torch.no_grad():
        torch.testing.assert_close(classifier(pixel_values).logits, model(pixel_values).logits, atol=0, rtol=0)
        torch.testing.assert_close(
            backbone(pixel_values).last_hidden_state, model.deit(pixel_values).last_hidden_state, atol=0, rtol=0
        )
    assert type(AutoConfig.for_model("distilled_deit")) is DistilledDeiTConfig


def test_saved_folder_carries_its_code(saved_model):
    _, folder = saved_model
    assert (folder / "configuration_distilled_deit.py").is_file()
    assert (folder / "modeling_distilled_deit.py").is_file()
    config = json.loads((folder / "config.json").read_text())
    assert config["model_type"] == "distilled_deit"
    assert config["auto_map"] == {
        "AutoConfig": "configuration_distilled_deit.DistilledDeiTConfig",
        "AutoModel": "modeling_distilled_deit.DistilledDeiTModel",
        "AutoModelForImageClassification": "modeling_distilled_deit.DistilledDeiTForImageClassification",
    }
    # The code that travels imports torch, transformers and its siblings in the folder, never the package.
    for name in ("configuration_distilled_deit.py", "modeling_distilled_deit.py"):
        source = (folder / name).read_text()
        imported = re.findall(r"^(?:from|import)\s+(\S+)", source, flags=re.MULTILINE)
        for module in imported:
            if module.startswith("."):
                assert (folder / f"{module[1:]}.py").is_file(), module
            else:
                assert module.split(".")[0] in {"torch", "transformers", "math", "collections", "dataclasses", "typing"}, module


REMOTE_CODE_CHILD = textwrap.dedent(
    """
    import sys

    sys.modules["hf_deit"] = None  # make `import hf_deit` fail, as where it is not installed
    try:
        import hf_deit  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("hf_deit is importable in the child")

    import torch
    from transformers import AutoModel, AutoModelForImageClassification

    folder, inputs_file, outputs_file = sys.argv[1:]
    pixel_values = torch.load(inputs_file)
    classifier = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    backbone = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        outputs = {
            "logits": classifier(pixel_values).logits,
            "last_hidden_state": backbone(pixel_values).last_hidden_state,
            "modules": [type(classifier).__module__, type(backbone).__module__],
        }
    torch.save(outputs, outputs_file)
    """
)


@pytest.mark.slow
def test_remote_code_loads_where_hf_deit_is_not_importable(saved_model, pixel_values, tmp_path):
    model, folder = saved_model
    workdir = tmp_path / "elsewhere"
    workdir.mkdir()
    (workdir / "child.py").write_text(REMOTE_CODE_CHILD)
    torch.save(pixel_values, workdir / "inputs.pt")
    environment = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(workdir),
        "HF_HOME": str(workdir / "hf_home"),  # remote modules are copied here, not into the user's cache
        "HF_HUB_OFFLINE": "1",
    }
    # -I: no PYTHONPATH, no user site, no script directory on sys.path.
    result = subprocess.run(
        [sys.executable, "-I", "child.py", str(folder), "inputs.pt", "outputs.pt"],
        cwd=workdir, env=environment, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = torch.load(workdir / "outputs.pt")
    assert all(module.startswith("transformers_modules.") for module in outputs["modules"]), outputs["modules"]
    with torch.no_grad():
        torch.testing.assert_close(outputs["logits"], model(pixel_values).logits, atol=0, rtol=0)
        torch.testing.assert_close(
            outputs["last_hidden_state"], model.deit(pixel_values).last_hidden_state, atol=0, rtol=0
        )


# ---------------------------------------------------------------- preprocessing and pipeline


def _photo(width: int, height: int) -> Image.Image:
    """A real photograph (shipped with scikit-learn) at the given size."""
    from sklearn.datasets import load_sample_image

    return Image.fromarray(load_sample_image("china.jpg")).resize((width, height), Image.BICUBIC)


def test_image_processor_is_deits_evaluation_transform():
    from torchvision import transforms

    image = _photo(width=400, height=300)
    reference = transforms.Compose([
        transforms.Resize(256, interpolation=transforms.InterpolationMode.BICUBIC),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
    ])(image)
    processed = deit_image_processor(224)(image, return_tensors="pt").pixel_values[0]
    assert processed.shape == reference.shape == (3, 224, 224)
    # Both resize with PIL here; rounding differs by a grey level at a few pixels (measured: mean 5e-5, max 0.034
    # after normalisation). A square resize instead of the shortest edge gives a mean difference of 0.5.
    difference = (processed - reference).abs()
    assert difference.mean() < 1e-3
    assert difference.max() < 0.05


def test_saved_image_processor_loads_with_auto(saved_model):
    _, folder = saved_model
    processor = AutoImageProcessor.from_pretrained(folder)
    assert processor.crop_size == {"height": 32, "width": 32}
    assert processor.size == {"shortest_edge": 36}
    assert list(processor.image_mean) == pytest.approx(IMAGENET_MEAN)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_pipeline_classifies_a_photo_with_the_saved_labels(saved_model, mode):
    model, folder = saved_model
    image = _photo(width=60, height=45).convert(mode)
    classifier = pipeline("image-classification", model=str(folder))
    predictions = classifier(image)
    assert {p["label"] for p in predictions} == set(model.config.id2label.values())
    scores = [p["score"] for p in predictions]
    assert scores == sorted(scores, reverse=True) and sum(scores) == pytest.approx(1.0, abs=1e-4)
    pixel_values = deit_image_processor(32)(image.convert("RGB"), return_tensors="pt").pixel_values
    with torch.no_grad():
        probabilities = model(pixel_values).logits.softmax(-1)[0]
    assert predictions[0]["label"] == model.config.id2label[int(probabilities.argmax())]
    assert predictions[0]["score"] == pytest.approx(probabilities.max().item(), abs=1e-5)


# ---------------------------------------------------------------- transformers' tooling: hooks, embeddings, offload


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("size", [(32, 32), (24, 40), (30, 30)])
def test_patch_projection_on_cpu_is_the_convolution(tiny_model, dtype, size):
    """The CPU path (one matrix product) returns what `nn.Conv2d` does, shape and values; 30 px is not a multiple of
    the patch and goes through the convolution itself, as `nn.Conv2d` drops the remainder."""
    projection = tiny_model.deit.embeddings.patch_embeddings.projection.to(dtype)
    assert isinstance(projection, torch.nn.Conv2d)
    pixels = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(2)).to(dtype)
    with torch.no_grad():
        expected = F.conv2d(pixels.float(), projection.weight.float(), projection.bias.float(), stride=8)
        output = projection(pixels)
    assert output.shape == expected.shape == (2, 32, size[0] // 8, size[1] // 8)
    tolerance = 1e-5 if dtype == torch.float32 else 5e-2  # bf16: products rounded to 8 bits of mantissa
    assert (output.float() - expected).abs().max() <= tolerance


def test_forward_hooks_on_the_patch_projection_fire(tiny_model, pixel_values):
    """Hooks on `projection` (feature extraction, pruning, quantisation observers) see and can change its output."""
    projection = tiny_model.deit.embeddings.patch_embeddings.projection
    seen = []
    handle = projection.register_forward_hook(lambda module, inputs, output: seen.append(output.shape))
    with torch.no_grad():
        reference = tiny_model(pixel_values).logits
    handle.remove()
    assert seen == [(2, 32, 4, 4)]
    handle = projection.register_forward_hook(lambda module, inputs, output: torch.zeros_like(output))
    with torch.no_grad():
        tokens = tiny_model.deit.embeddings(pixel_values)
        changed = tiny_model(pixel_values).logits
    handle.remove()
    embeddings = tiny_model.deit.embeddings
    torch.testing.assert_close(tokens[:, 2:], embeddings.position_embeddings[:, 2:].expand(2, -1, -1).detach())
    assert not torch.equal(changed, reference)


class _ScaledPatches(torch.nn.Module):
    """A replacement patch embedding: the original's output times a factor."""

    def __init__(self, inner, factor):
        super().__init__()
        self.inner, self.factor = inner, factor

    def forward(self, pixel_values):
        return self.inner(pixel_values) * self.factor


def test_set_input_embeddings_replaces_the_patch_embeddings(tiny_model, pixel_values):
    original = tiny_model.get_input_embeddings()
    assert original is tiny_model.deit.embeddings.patch_embeddings
    with torch.no_grad():
        reference = tiny_model(pixel_values).logits
    for owner in (tiny_model, tiny_model.deit):  # the classifier delegates to its backbone
        owner.set_input_embeddings(_ScaledPatches(original, 1.0))
        assert isinstance(tiny_model.get_input_embeddings(), _ScaledPatches)
        assert tiny_model.deit.get_input_embeddings() is tiny_model.get_input_embeddings()
        with torch.no_grad():
            torch.testing.assert_close(tiny_model(pixel_values).logits, reference, atol=0, rtol=0)
    tiny_model.set_input_embeddings(_ScaledPatches(original, 0.0))
    with torch.no_grad():
        assert (tiny_model(pixel_values).logits - reference).abs().max() > 1e-3
    tiny_model.set_input_embeddings(original)
    with torch.no_grad():
        torch.testing.assert_close(tiny_model(pixel_values).logits, reference, atol=0, rtol=0)


OFFLOAD_MAPS = {
    # The embeddings (patch projection included) on disk, the blocks in memory.
    "embeddings-on-disk": {
        "deit.embeddings": "disk", "deit.layers": "cpu", "deit.layernorm": "disk",
        "cls_classifier": "cpu", "distillation_classifier": "disk",
    },
    # One block on disk between two in memory.
    "block-on-disk": {
        "deit.embeddings": "cpu", "deit.layers.0": "disk", "deit.layers.1": "cpu", "deit.layernorm": "cpu",
        "cls_classifier": "cpu", "distillation_classifier": "cpu",
    },
    # accelerate decides: nothing fits in 20 kB of memory, so everything goes to disk.
    "auto": "auto",
}


@pytest.mark.parametrize("name", sorted(OFFLOAD_MAPS))
def test_accelerate_offload_gives_the_in_memory_logits(saved_model, pixel_values, tmp_path, name):
    """`from_pretrained(device_map=...)` with accelerate's CPU/disk offload: weights stay on the meta device until
    their module runs, and the logits are those of the model held in memory (the patch projection used to read its
    weight without calling its module, and so found it on the meta device)."""
    model, folder = saved_model
    device_map = OFFLOAD_MAPS[name]
    options = dict(device_map=device_map, offload_folder=str(tmp_path / "offload"))
    if device_map == "auto":
        options["max_memory"] = {"cpu": 20_000}
    offloaded = DistilledDeiTForImageClassification.from_pretrained(folder, **options).eval()
    assert "disk" in set(offloaded.hf_device_map.values())
    projection = offloaded.deit.embeddings.patch_embeddings.projection
    if name != "block-on-disk":
        assert projection.weight.device.type == "meta"
    seen = []
    projection.register_forward_hook(lambda module, inputs, output: seen.append(output.device.type))
    with torch.no_grad():
        logits = offloaded(pixel_values).logits
        torch.testing.assert_close(logits, model(pixel_values).logits, atol=0, rtol=0)
    assert seen == ["cpu"]
    if device_map != "auto":  # the backbone's modules have no "deit." prefix and no heads
        options["device_map"] = {key[5:]: device for key, device in device_map.items() if key.startswith("deit.")}
    backbone = AutoModel.from_pretrained(folder, **options).eval()
    assert type(backbone) is DistilledDeiTModel and "disk" in set(backbone.hf_device_map.values())
    with torch.no_grad():
        torch.testing.assert_close(
            backbone(pixel_values).last_hidden_state, model.deit(pixel_values).last_hidden_state, atol=0, rtol=0
        )
