"""Checkpoint conversion: timm / facebook / transformers DeiT checkpoints give the same logits after conversion."""

import json
import os
import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file
from timm.models.deit import VisionTransformerDistilled
from transformers import (
    AutoModelForImageClassification,
    DeiTConfig,
    DeiTForImageClassification,
    DeiTForImageClassificationWithTeacher,
    ViTConfig,
    ViTForImageClassification,
)

from hf_deit import DistilledDeiTForImageClassification, DistilledDeiTModel
from hf_deit.convert import CheckpointConversionError, convert_checkpoint, convert_state_dict, detect_layout

REPO = Path(__file__).resolve().parents[1]
TOLERANCE = 1e-5  # max abs logit difference, fp32


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@torch.no_grad()
def randomise(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Every parameter random (biases, norms, tokens included), so that a misplaced tensor changes the logits."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()


def images(size, batch: int = 2) -> torch.Tensor:
    height, width = (size, size) if isinstance(size, int) else size
    return torch.randn(batch, 3, height, width, generator=torch.Generator().manual_seed(1))


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a - b).abs().max().item()


@torch.no_grad()
def logits_of(folder, pixels) -> torch.Tensor:
    return DistilledDeiTForImageClassification.from_pretrained(folder).eval()(pixels).logits


def tiny_timm_distilled() -> torch.nn.Module:
    return randomise(VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                                                num_classes=5))


# ---------------------------------------------------------------------------------------------- timm / facebook


@pytest.mark.slow  # ~5 s alone, 15-20 s on the shared CPU
def test_timm_deit_tiny_distilled_224_parity(tmp_path):
    source = randomise(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False))
    torch.save(source.state_dict(), tmp_path / "deit.pth")
    save_file(source.state_dict(), tmp_path / "deit.safetensors")
    pixels = images(224)
    with torch.no_grad():
        expected = source(pixels)

    for suffix in (".pth", ".safetensors"):
        convert_checkpoint(tmp_path / f"deit{suffix}", tmp_path / suffix)
        assert max_diff(logits_of(tmp_path / suffix, pixels), expected) <= TOLERANCE, suffix

    # The folder carries its code and the DeiT evaluation transform.
    with torch.no_grad():
        converted = AutoModelForImageClassification.from_pretrained(tmp_path / ".pth", trust_remote_code=True)
        assert max_diff(converted.eval()(pixels).logits, expected) <= TOLERANCE
    assert converted.config.num_attention_heads == 3 and converted.config.layer_norm_eps == 1e-6
    saved = json.loads((tmp_path / ".pth" / "config.json").read_text())
    assert saved["auto_map"]["AutoModelForImageClassification"].endswith("DistilledDeiTForImageClassification")
    assert (tmp_path / ".pth" / "modeling_distilled_deit.py").is_file()
    processor = json.loads((tmp_path / ".pth" / "preprocessor_config.json").read_text())
    assert processor["size"] == {"shortest_edge": 256} and processor["crop_size"] == {"height": 224, "width": 224}


@pytest.mark.slow
def test_script_converts_timm_checkpoint(tmp_path):
    source = randomise(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False))
    save_file(source.state_dict(), tmp_path / "deit.safetensors")
    result = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "convert_checkpoint.py"),
         "--checkpoint", str(tmp_path / "deit.safetensors"), "--output_dir", str(tmp_path / "converted")],
        capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "heads 3" in result.stdout and "1000 classes" in result.stdout
    pixels = images(224)
    with torch.no_grad():
        assert max_diff(logits_of(tmp_path / "converted", pixels), source(pixels)) <= TOLERANCE


def test_script_reports_errors_without_traceback(tmp_path, capsys):
    save_file(tiny_timm_distilled().state_dict(), tmp_path / "deit.safetensors")
    script = runpy.run_path(str(REPO / "scripts" / "convert_checkpoint.py"))
    with pytest.raises(SystemExit) as exit_info:
        script["main"](["--checkpoint", str(tmp_path / "deit.safetensors"), "--output_dir", str(tmp_path / "out"),
                        "--hidden_size", "128"])
    assert exit_info.value.code == "error: hidden_size=128 was given, but the checkpoint's weights have " \
        "hidden_size=64; drop the option (it is read from the weights)."
    assert not (tmp_path / "out").exists()


def test_script_options_reach_the_converter(tmp_path, capsys):
    save_file(tiny_timm_distilled().state_dict(), tmp_path / "deit.safetensors")
    (tmp_path / "labels.json").write_text(json.dumps(["a", "b", "c", "d", "e"]))
    script = runpy.run_path(str(REPO / "scripts" / "convert_checkpoint.py"))

    script["main"](["--checkpoint", str(tmp_path / "deit.safetensors"), "--output_dir", str(tmp_path / "out"),
                    "--num_attention_heads", "4", "--id2label_json", str(tmp_path / "labels.json"),
                    "--image_size", "40", "--layer_norm_eps", "1e-5"])

    config = DistilledDeiTForImageClassification.from_pretrained(tmp_path / "out").config
    assert (config.num_attention_heads, config.image_size, config.layer_norm_eps) == (4, 40, 1e-5)
    assert config.id2label[4] == "e"
    captured = capsys.readouterr()
    assert "heads 4, image 40" in captured.out and "warning: Resampled the position embeddings" in captured.err


def test_unusual_geometry_parity_and_head_count(tmp_path):
    source = randomise(VisionTransformerDistilled(img_size=48, patch_size=8, embed_dim=64, depth=3, num_heads=4,
                                                  num_classes=7, mlp_ratio=3.0))
    torch.save(source.state_dict(), tmp_path / "odd.pth")
    # 64 is none of DeiT's widths: the head count cannot be guessed.
    with pytest.raises(CheckpointConversionError, match="--num_attention_heads"):
        convert_checkpoint(tmp_path / "odd.pth")

    model = convert_checkpoint(tmp_path / "odd.pth", tmp_path / "converted", num_attention_heads=4)

    config = model.config
    assert (config.image_size, config.patch_size, config.hidden_size, config.num_hidden_layers) == (48, 8, 64, 3)
    assert (config.intermediate_size, config.num_labels) == (192, 7)
    pixels = images(48)
    with torch.no_grad():
        assert max_diff(logits_of(tmp_path / "converted", pixels), source(pixels)) <= TOLERANCE


def test_non_square_grid_needs_image_size(tmp_path):
    source = randomise(VisionTransformerDistilled(img_size=(32, 48), patch_size=8, embed_dim=64, depth=2, num_heads=4,
                                                  num_classes=3))
    torch.save(source.state_dict(), tmp_path / "wide.pth")
    with pytest.raises(CheckpointConversionError, match="not a square grid.*--image_size"):
        convert_checkpoint(tmp_path / "wide.pth", num_attention_heads=4)

    model = convert_checkpoint(tmp_path / "wide.pth", tmp_path / "out", num_attention_heads=4, image_size=[32, 48])

    assert model.config.image_size == [32, 48]
    pixels = images((32, 48))
    with torch.no_grad():
        assert max_diff(logits_of(tmp_path / "out", pixels), source(pixels)) <= TOLERANCE


def test_facebook_checkpoint_with_model_key(tmp_path):
    source = tiny_timm_distilled()
    # The official release files hold the weights under "model"; training checkpoints add more entries.
    torch.save({"model": source.state_dict(), "epoch": 299, "args_lr": 5e-4}, tmp_path / "deit_facebook.pth")

    model = convert_checkpoint(tmp_path / "deit_facebook.pth", num_attention_heads=4)

    pixels = images(32)
    with torch.no_grad():
        assert max_diff(model(pixels).logits, source(pixels)) <= TOLERANCE


def test_non_distilled_timm_deit_gets_a_copied_distillation_token(tmp_path):
    # deit_tiny_patch16_224's width (192: 3 heads inferred), smaller grid and depth to stay fast.
    source = randomise(timm.create_model("deit_tiny_patch16_224", pretrained=False, num_classes=5, img_size=32,
                                         patch_size=8, depth=2))
    state_dict = source.state_dict()
    torch.save(state_dict, tmp_path / "plain.pth")

    with pytest.warns(UserWarning, match="not distilled.*copied from the cls"):
        model = convert_checkpoint(tmp_path / "plain.pth")

    pixels = images(32)
    with torch.no_grad():
        output, expected = model(pixels), source(pixels)
    # The copy evolves exactly like the cls token, and the heads are equal: both heads say the same.
    torch.testing.assert_close(output.distillation_logits, output.cls_logits, rtol=0, atol=1e-6)
    # The extra token shares the cls token's attention, so the logits are close to the source's, not equal.
    assert max_diff(output.cls_logits, expected) < 0.1 * expected.abs().max().item()
    # Exactly timm's distilled architecture given the same expansion, written out independently here.
    expanded = dict(state_dict, dist_token=state_dict["cls_token"])
    expanded["pos_embed"] = torch.cat([state_dict["pos_embed"][:, :1], state_dict["pos_embed"]], dim=1)
    expanded["head_dist.weight"], expanded["head_dist.bias"] = state_dict["head.weight"], state_dict["head.bias"]
    reference = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=192, depth=2, num_heads=3,
                                           num_classes=5).eval()
    reference.load_state_dict(expanded)
    with torch.no_grad():
        assert max_diff(output.logits, reference(pixels)) <= TOLERANCE


# ---------------------------------------------------------------------------------------------- transformers


def small_deit_config(**kwargs) -> DeiTConfig:
    return DeiTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=48, id2label={0: "cat", 1: "dog", 2: "bird"}, **kwargs)


def legacy_name(key: str) -> str:
    """transformers 5.x in-memory names -> the legacy names of the Hub's DeiT checkpoints."""
    key = re.sub(r"deit\.layers\.(\d+)\.", r"deit.encoder.layer.\1.", key)
    for new, old in (("attention.q_proj", "attention.attention.query"), ("attention.k_proj", "attention.attention.key"),
                     ("attention.v_proj", "attention.attention.value"), ("attention.o_proj", "attention.output.dense"),
                     ("mlp.fc1", "intermediate.dense"), ("mlp.fc2", "output.dense")):
        key = key.replace(new, old)
    return key


@pytest.mark.parametrize("how", ["save_pretrained", "5.x names", "legacy names"])
def test_transformers_deit_with_teacher_parity(tmp_path, how):
    source = randomise(DeiTForImageClassificationWithTeacher(small_deit_config(layer_norm_eps=1e-6)))
    folder = tmp_path / "transformers_deit"
    if how == "save_pretrained":
        source.save_pretrained(folder)
    else:
        source.config.save_pretrained(folder)
        state_dict = {key: value.contiguous() for key, value in source.state_dict().items()}
        if how == "legacy names":
            state_dict = {legacy_name(key): value for key, value in state_dict.items()}
        save_file(state_dict, folder / "model.safetensors")
    expected_layout = {"5.x names": "transformers", "legacy names": "transformers-legacy"}.get(how)
    if expected_layout:
        assert detect_layout(load_file(folder / "model.safetensors")) == expected_layout

    convert_checkpoint(folder, tmp_path / "converted")

    converted = DistilledDeiTForImageClassification.from_pretrained(tmp_path / "converted").eval()
    assert converted.config.id2label == {0: "cat", 1: "dog", 2: "bird"}
    assert converted.config.label2id == {"cat": 0, "dog": 1, "bird": 2}
    assert converted.config.num_attention_heads == 4 and converted.config.layer_norm_eps == 1e-6
    pixels = images(32)
    with torch.no_grad():
        expected, output = source(pixels), converted(pixels)
    for name in ("logits", "cls_logits", "distillation_logits"):
        assert max_diff(getattr(output, name), getattr(expected, name)) <= TOLERANCE


def test_transformers_default_eps_is_kept_with_a_warning(tmp_path):
    source = randomise(DeiTForImageClassificationWithTeacher(small_deit_config()))  # layer_norm_eps 1e-12
    source.save_pretrained(tmp_path / "src")

    with pytest.warns(UserWarning, match="layer_norm_eps=1e-12"):
        model = convert_checkpoint(tmp_path / "src")
    assert model.config.layer_norm_eps == 1e-12
    pixels = images(32)
    with torch.no_grad():
        assert max_diff(model(pixels).logits, source(pixels).logits) <= TOLERANCE
    assert convert_checkpoint(tmp_path / "src", layer_norm_eps=1e-6).config.layer_norm_eps == 1e-6


def test_transformers_single_head_deit_keeps_its_logits_as_cls_logits(tmp_path):
    source = randomise(DeiTForImageClassification(small_deit_config(layer_norm_eps=1e-6)))
    source.save_pretrained(tmp_path / "src")

    with pytest.warns(UserWarning, match="one classification head"):
        model = convert_checkpoint(tmp_path / "src")

    pixels = images(32)
    with torch.no_grad():
        assert max_diff(model(pixels).cls_logits, source(pixels).logits) <= TOLERANCE


def test_transformers_vit_checkpoint_gets_a_distillation_token(tmp_path):
    # The Hub's non-distilled DeiTs are ViTForImageClassification checkpoints.
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=48, num_labels=3, layer_norm_eps=1e-6)
    source = randomise(ViTForImageClassification(config))
    source.save_pretrained(tmp_path / "vit")

    with pytest.warns(UserWarning, match="not distilled"):
        model = convert_checkpoint(tmp_path / "vit")

    pixels = images(32)
    with torch.no_grad():
        output, expected = model(pixels), source(pixels).logits
    torch.testing.assert_close(output.distillation_logits, output.cls_logits, rtol=0, atol=1e-6)
    assert max_diff(output.cls_logits, expected) < 0.1 * expected.abs().max().item()


def test_hf_deit_folder_passes_through_with_new_labels(tmp_path):
    source = tiny_timm_distilled()
    torch.save(source.state_dict(), tmp_path / "deit.pth")
    convert_checkpoint(tmp_path / "deit.pth", tmp_path / "first", num_attention_heads=4)
    labels = ["airplane", "car", "bird", "cat", "deer"]

    model = convert_checkpoint(tmp_path / "first", tmp_path / "second", id2label=labels)

    assert model.config.id2label[3] == "cat" and model.config.num_attention_heads == 4
    pixels = images(32)
    with torch.no_grad():
        assert max_diff(logits_of(tmp_path / "second", pixels), source(pixels)) <= TOLERANCE


# ---------------------------------------------------------------------------------------------- overrides


def test_new_class_count_gives_fresh_heads(tmp_path):
    torch.save(tiny_timm_distilled().state_dict(), tmp_path / "deit.pth")

    with pytest.warns(UserWarning, match="freshly initialised"):
        model = convert_checkpoint(tmp_path / "deit.pth", num_attention_heads=4, num_labels=2)

    assert model.cls_classifier.weight.shape == (2, 64) and model.config.num_labels == 2
    assert model.cls_classifier.bias.abs().max() == 0  # our init, not some leftover of the checkpoint's head


def test_other_image_size_resamples_position_embeddings(tmp_path):
    source = tiny_timm_distilled()
    torch.save(source.state_dict(), tmp_path / "deit.pth")

    with pytest.warns(UserWarning, match="Resampled the position embeddings"):
        model = convert_checkpoint(tmp_path / "deit.pth", tmp_path / "out", num_attention_heads=4, image_size=48)

    assert model.config.image_size == 48
    assert model.deit.embeddings.position_embeddings.shape == (1, 2 + 36, 64)
    # The same resampling as the model's own interpolate_pos_encoding, so the two routes agree.
    original = convert_checkpoint(tmp_path / "deit.pth", num_attention_heads=4)
    with torch.no_grad():
        expected = original(images(48), interpolate_pos_encoding=True).logits
        assert max_diff(logits_of(tmp_path / "out", images(48)), expected) <= TOLERANCE


def test_overrides_that_contradict_the_weights_fail(tmp_path):
    state_dict = tiny_timm_distilled().state_dict()
    with pytest.raises(CheckpointConversionError, match="num_hidden_layers=3 was given.*num_hidden_layers=2"):
        convert_state_dict(state_dict, num_attention_heads=4, num_hidden_layers=3)
    with pytest.raises(CheckpointConversionError, match="patch_size=16 was given.*patch_size=8"):
        convert_state_dict(state_dict, num_attention_heads=4, patch_size=16)
    with pytest.raises(CheckpointConversionError, match="hidden_size 64 is not divisible by num_attention_heads 5"):
        convert_state_dict(state_dict, num_attention_heads=5)
    with pytest.raises(CheckpointConversionError, match="id2label has 2 labels but num_labels is 5"):
        convert_state_dict(state_dict, num_attention_heads=4, num_labels=5, id2label=["a", "b"])


# ---------------------------------------------------------------------------------------------- refusals


def test_unknown_layout_lists_keys_and_supported_layouts(tmp_path):
    resnet = {"conv1.weight": torch.zeros(8, 3, 7, 7), "fc.weight": torch.zeros(10, 8), "fc.bias": torch.zeros(10)}
    save_file(resnet, tmp_path / "resnet.safetensors")
    with pytest.raises(CheckpointConversionError) as error:
        convert_checkpoint(tmp_path / "resnet.safetensors")
    message = str(error.value)
    assert "Unrecognised checkpoint layout" in message and "conv1.weight" in message
    assert "timm" in message and "deit.encoder.layer" in message and "q_proj" in message


def test_weights_of_an_unsupported_variant_are_named(tmp_path):
    state_dict = tiny_timm_distilled().state_dict()
    state_dict["blocks.0.ls1.gamma"] = torch.ones(64)  # DeiT III layer scale
    with pytest.raises(CheckpointConversionError, match=r"no place in a distilled DeiT: blocks\.0\.ls1\.gamma"):
        convert_state_dict(state_dict, num_attention_heads=4)


def test_folder_without_weights_fails_clearly(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(CheckpointConversionError, match="No weights in .*model.safetensors"):
        convert_checkpoint(tmp_path)


class WritesAFile:
    """A pickle payload: unpickling it calls `open(path, "w")`, which would leave a file behind."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return open, (self.path, "w")


def test_pickle_with_code_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "payload_ran"
    state_dict = tiny_timm_distilled().state_dict()
    torch.save({"model": state_dict, "extra": WritesAFile(marker)}, tmp_path / "malicious.pth")

    with pytest.raises(CheckpointConversionError, match="Refusing to load .*malicious.pth.*contains code"):
        convert_checkpoint(tmp_path / "malicious.pth", num_attention_heads=4)
    assert not marker.exists()

    # The payload is live: an unsafe load runs it. This is what the converter protects against.
    torch.load(tmp_path / "malicious.pth", weights_only=False)
    assert marker.exists()


# ---------------------------------------------------------------------------------------------- conversion on load


def _converted_on_load(caplog):
    return [record.getMessage() for record in caplog.records if "on load" in record.getMessage()]


@pytest.mark.parametrize("how", ["save_pretrained", "5.x names", "legacy names"])
def test_from_pretrained_converts_a_transformers_deit_folder(tmp_path, caplog, how):
    """`DistilledDeiTForImageClassification.from_pretrained(<transformers DeiT folder>)`: the converter's parity,
    without a separate step; the backbone class loads it too."""
    source = randomise(DeiTForImageClassificationWithTeacher(small_deit_config(layer_norm_eps=1e-6)))
    folder = tmp_path / "transformers_deit"
    source.config.save_pretrained(folder)
    state_dict = {key: value.contiguous() for key, value in source.state_dict().items()}
    if how == "legacy names":
        state_dict = {legacy_name(key): value for key, value in state_dict.items()}
    if how == "save_pretrained":
        source.save_pretrained(folder)
    else:
        save_file(state_dict, folder / "model.safetensors")
    caplog.set_level("INFO", logger="hf_deit.convert")

    model = DistilledDeiTForImageClassification.from_pretrained(folder)

    assert not model.training and type(model) is DistilledDeiTForImageClassification
    assert model.config.id2label == {0: "cat", 1: "dog", 2: "bird"} and model.config.num_attention_heads == 4
    pixels = images(32)
    with torch.no_grad():
        expected, output = source(pixels), model(pixels)
        for name in ("logits", "cls_logits", "distillation_logits"):
            assert max_diff(getattr(output, name), getattr(expected, name)) <= TOLERANCE
        backbone = DistilledDeiTModel.from_pretrained(folder)
        assert max_diff(backbone(pixels).pooler_output, model.deit(pixels).pooler_output) == 0
    messages = _converted_on_load(caplog)
    assert len(messages) == 2 and str(folder) in messages[0] and "transformers" in messages[0]
    assert "DistilledDeiTForImageClassification" in messages[0] and "DistilledDeiTModel" in messages[1]


def test_from_pretrained_converts_a_non_distilled_transformers_vit(tmp_path, caplog):
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                       intermediate_size=48, num_labels=3, layer_norm_eps=1e-6)
    randomise(ViTForImageClassification(config)).save_pretrained(tmp_path / "vit")
    caplog.set_level("INFO", logger="hf_deit.convert")
    model = DistilledDeiTForImageClassification.from_pretrained(tmp_path / "vit")
    assert model.deit.embeddings.position_embeddings.shape == (1, 2 + 16, 32)
    assert any("not distilled: added a distillation token" in message for message in caplog.messages)


def test_from_pretrained_converts_timm_files_and_hub_layout_folders(tmp_path, caplog):
    """A facebook/timm `.pth` and a timm `save_for_hf` folder (config.json with `architecture` and `model_args`,
    weights in safetensors): heads, image size and labels come from the timm config."""
    from timm.models import save_for_hf

    source = randomise(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=5,
                                         embed_dim=32, depth=2, num_heads=2, img_size=(32, 48), patch_size=8))
    save_for_hf(source, tmp_path / "timm_hub", safe_serialization=True)
    torch.save({"model": source.state_dict()}, tmp_path / "facebook.pth")  # the facebook files nest under "model"
    caplog.set_level("INFO", logger="hf_deit.convert")
    pixels = images((32, 48))
    with torch.no_grad():
        expected = source(pixels)

    from_folder = DistilledDeiTForImageClassification.from_pretrained(tmp_path / "timm_hub")
    from_file = DistilledDeiTForImageClassification.from_pretrained(
        tmp_path / "facebook.pth", num_attention_heads=2, image_size=[32, 48]
    )
    for model in (from_folder, from_file):
        assert model.config.image_size == [32, 48] and model.config.num_attention_heads == 2
        assert model.config.layer_norm_eps == 1e-6
        with torch.no_grad():
            assert max_diff(model(pixels).logits, expected) <= TOLERANCE
    assert [("timm layout" in message) for message in _converted_on_load(caplog)] == [True, True]


def test_timm_hub_layout_of_another_pooling_is_refused(tmp_path):
    from timm.models import save_for_hf

    source = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=5, embed_dim=32, depth=1,
                               num_heads=2, img_size=32, patch_size=8, global_pool="avg", fc_norm=False)
    # The weights have every key of a DeiT (no fc_norm): only the config says the head reads the patch mean.
    save_for_hf(source, tmp_path / "avg", safe_serialization=True)
    with pytest.raises(CheckpointConversionError, match="global_pool='avg'"):
        DistilledDeiTForImageClassification.from_pretrained(tmp_path / "avg")


def test_from_pretrained_of_our_own_folder_is_transformers_own(tmp_path, caplog):
    torch.save(tiny_timm_distilled().state_dict(), tmp_path / "deit.pth")
    convert_checkpoint(tmp_path / "deit.pth", tmp_path / "ours", num_attention_heads=4)
    caplog.set_level("INFO", logger="hf_deit.convert")
    model = DistilledDeiTForImageClassification.from_pretrained(tmp_path / "ours", drop_path_rate=0.2)
    assert model.config.drop_path_rate == 0.2 and _converted_on_load(caplog) == []


def test_from_pretrained_overrides_act_on_the_converted_model(tmp_path, caplog):
    source = randomise(DeiTForImageClassificationWithTeacher(small_deit_config(layer_norm_eps=1e-6)))
    source.save_pretrained(tmp_path / "src")
    caplog.set_level("INFO", logger="hf_deit.convert")
    model = DistilledDeiTForImageClassification.from_pretrained(
        tmp_path / "src", id2label={0: "a", 1: "b"}, label2id={"a": 0, "b": 1}, drop_path_rate=0.2,
        attn_implementation="eager", dtype=torch.bfloat16, ignore_mismatched_sizes=True,
    )
    assert any("num_labels=2 differs from the checkpoint's 3 classes: both heads are freshly initialised" in message
               for message in caplog.messages)
    assert model.config.id2label == {0: "a", 1: "b"} and model.cls_classifier.out_features == 2
    assert model.config.drop_path_rate == 0.2 and model.config._attn_implementation == "eager"
    assert model.cls_classifier.weight.dtype == torch.bfloat16


def test_from_pretrained_refuses_what_conversion_cannot_do(tmp_path):
    randomise(DeiTForImageClassificationWithTeacher(small_deit_config())).save_pretrained(tmp_path / "src")
    with pytest.raises(CheckpointConversionError, match="does not support device_map.*convert it first"):
        DistilledDeiTForImageClassification.from_pretrained(tmp_path / "src", device_map="cpu")
    resnet = tmp_path / "resnet"
    from transformers import ResNetConfig, ResNetForImageClassification

    ResNetForImageClassification(ResNetConfig(hidden_sizes=[8], depths=[1], embedding_size=8)).save_pretrained(resnet)
    with pytest.raises(CheckpointConversionError, match="'resnet' checkpoint, not a DeiT"):
        DistilledDeiTForImageClassification.from_pretrained(resnet)


def test_from_pretrained_converts_a_hub_repo(tmp_path, monkeypatch, caplog):
    """A transformers DeiT by Hub id (the loopback Hub standing in for facebook/deit-*-distilled-*)."""
    sys.path.insert(0, str(REPO / "tests"))
    from hub_server import loopback_hub, use_in_this_process

    source = randomise(DeiTForImageClassificationWithTeacher(small_deit_config(layer_norm_eps=1e-6)))
    source.save_pretrained(tmp_path / "src")
    caplog.set_level("INFO", logger="hf_deit.convert")
    with loopback_hub(tmp_path / "hub") as hub:
        hub.publish("facebook/deit-tiny-distilled-test", tmp_path / "src")
        use_in_this_process(hub, monkeypatch, tmp_path / "cache")
        model = DistilledDeiTForImageClassification.from_pretrained("facebook/deit-tiny-distilled-test")
    pixels = images(32)
    with torch.no_grad():
        assert max_diff(model(pixels).logits, source(pixels).logits) <= TOLERANCE
    assert "facebook/deit-tiny-distilled-test" in _converted_on_load(caplog)[0]


def test_imagenet_checkpoint_gets_imagenet_class_names(tmp_path):
    """A facebook/timm file carries no class names: a 1,000-class one gets ImageNet-1k's (timm ships them), as
    transformers' own ImageNet checkpoints name them, instead of LABEL_0 .. LABEL_999."""
    source = VisionTransformerDistilled(img_size=32, patch_size=8, embed_dim=32, depth=1, num_heads=2, num_classes=1000)
    torch.save(source.state_dict(), tmp_path / "deit_in1k.pth")
    model = DistilledDeiTForImageClassification.from_pretrained(tmp_path / "deit_in1k.pth", num_attention_heads=2)
    assert model.config.num_labels == 1000
    assert model.config.id2label[0] == "tench, Tinca tinca" and model.config.id2label[1] == "goldfish, Carassius auratus"
    assert model.config.label2id["goldfish, Carassius auratus"] == 1
    # ImageNet names "crane" twice (the bird, 134, and the machine, 517), as transformers' ImageNet configs do.
    assert model.config.id2label[134] == model.config.id2label[517] == "crane"
    assert len(set(model.config.id2label.values())) == 999


@pytest.mark.parametrize("source_kind", ["timm file", "our own folder"])
def test_new_resolution_at_load_is_timms_resampling(tmp_path, caplog, source_kind):
    """Fine-tuning at another resolution (the paper: 224 -> 384, here 32 -> 48 px): the position embeddings are
    resampled once at load, as timm resamples them when it loads a checkpoint into a model of another image size
    (checkpoint_filter_fn: bicubic, antialiased, the two token rows kept); the config follows."""
    from timm.models.vision_transformer import checkpoint_filter_fn

    source = tiny_timm_distilled()
    torch.save(source.state_dict(), tmp_path / "deit.pth")
    path = tmp_path / "deit.pth"
    if source_kind == "our own folder":
        convert_checkpoint(path, tmp_path / "ours", num_attention_heads=4)
        path = tmp_path / "ours"
    caplog.set_level("INFO", logger="hf_deit.convert")

    model = DistilledDeiTForImageClassification.from_pretrained(path, image_size=48, num_attention_heads=4)

    reference = VisionTransformerDistilled(img_size=48, patch_size=8, embed_dim=64, depth=2, num_heads=4,
                                           num_classes=5).eval()
    reference.load_state_dict(checkpoint_filter_fn(source.state_dict(), reference))
    assert model.config.image_size == 48
    assert max_diff(model.deit.embeddings.position_embeddings, reference.pos_embed) <= 1e-6
    with torch.no_grad():
        assert max_diff(model(images(48)).logits, reference(images(48))) <= TOLERANCE
    assert any("Resampled the position embeddings from a (4, 4) to a (6, 6) patch grid" in message
               for message in caplog.messages)


@pytest.mark.parametrize("source_kind", ["timm file", "our own folder"])
def test_other_classes_than_the_checkpoints_need_ignore_mismatched_sizes(tmp_path, caplog, source_kind):
    """transformers' contract: a class count other than the checkpoint's raises (a RuntimeError naming
    ignore_mismatched_sizes) instead of silently loading untrained heads; with ignore_mismatched_sizes=True both
    heads are new and every other weight is the checkpoint's."""
    path = tmp_path / "deit.pth"
    torch.save(tiny_timm_distilled().state_dict(), path)
    if source_kind == "our own folder":
        convert_checkpoint(path, tmp_path / "ours", num_attention_heads=4)
        path = tmp_path / "ours"
    saved = DistilledDeiTForImageClassification.from_pretrained(path, num_attention_heads=4)
    names = {index: str(index) for index in range(10)}
    for asked in (dict(num_labels=10), dict(id2label=names)):
        with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
            DistilledDeiTForImageClassification.from_pretrained(path, num_attention_heads=4, **asked)
    caplog.set_level("INFO")
    model = DistilledDeiTForImageClassification.from_pretrained(path, num_attention_heads=4, id2label=names,
                                                                drop_path_rate=0.2, ignore_mismatched_sizes=True)
    assert model.config.id2label == names and model.config.drop_path_rate == 0.2
    heads = ("cls_classifier.", "distillation_classifier.")
    new = dict(model.named_parameters())
    for name, value in saved.named_parameters():
        if name.startswith(heads):
            assert new[name].shape == (10, *value.shape[1:])
        else:
            assert torch.equal(new[name], value), name
    expected = "freshly initialised" if source_kind == "timm file" else "Reinit due to size mismatch"
    assert any(expected in message for message in caplog.messages)
