"""transformers' common model tests (`ModelTesterMixin` in transformers' tests/test_modeling_common.py, which the
5.23 wheel does not ship), written out for our two model classes: each test keeps the name of the common test it
ports and checks what that test checks. The common tests that do not apply, each on purpose, are named in the README
("transformers' common model tests") with the reason; tests/test_modeling.py covers the ones not repeated here
(attention backends, gradient checkpointing, remote code, offloading)."""

import copy
import inspect
import logging

import pytest
import torch
from torch import nn
from transformers import PretrainedConfig

from hf_deit import DistilledDeiTConfig, DistilledDeiTForImageClassification, DistilledDeiTModel

ALL_MODEL_CLASSES = (DistilledDeiTModel, DistilledDeiTForImageClassification)
BATCH, IMAGE_SIZE, PATCH_SIZE, LAYERS, HEADS, WIDTH = 3, 16, 4, 2, 2, 32
SEQ_LENGTH = (IMAGE_SIZE // PATCH_SIZE) ** 2 + 2  # patches, the class token and the distillation token


def get_config(**overrides) -> DistilledDeiTConfig:
    return DistilledDeiTConfig(image_size=IMAGE_SIZE, patch_size=PATCH_SIZE, hidden_size=WIDTH,
                               num_hidden_layers=LAYERS, num_attention_heads=HEADS, intermediate_size=37, num_labels=3,
                               drop_path_rate=0.0, attn_implementation="eager", **overrides)  # fmt: skip


def inputs(seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    return {"pixel_values": torch.randn(BATCH, 3, IMAGE_SIZE, IMAGE_SIZE, generator=generator)}


def _config_zero_init(config: PretrainedConfig) -> PretrainedConfig:
    """As transformers' helper: every `*_range`/`*_std`/`initializer_factor` field made tiny."""
    config = copy.deepcopy(config)
    for key in list(config.__dict__):
        if "_range" in key or "_std" in key or "initializer_factor" in key or "layer_scale" in key:
            setattr(config, key, 1e-10)
    return config


def first_output(model, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs(), **kwargs)[0]


@pytest.mark.parametrize("model_class", ALL_MODEL_CLASSES)
def test_save_load(model_class, tmp_path):
    model = model_class(get_config()).eval()
    before = first_output(model)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "config.json").is_file() and not (tmp_path / "generation_config.json").exists()
    torch.testing.assert_close(first_output(model_class.from_pretrained(tmp_path)), before, rtol=0, atol=1e-5)


@pytest.mark.parametrize("model_class", ALL_MODEL_CLASSES)
def test_from_pretrained_no_checkpoint(model_class):
    config = get_config()
    model = model_class(config)
    loaded = model_class.from_pretrained(None, config=config, state_dict=model.state_dict())
    for saved, restored in zip(model.parameters(), loaded.parameters()):
        assert torch.equal(saved, restored)


@pytest.mark.parametrize("model_class", ALL_MODEL_CLASSES)
def test_determinism(model_class):
    model = model_class(get_config()).eval()
    assert torch.equal(first_output(model), first_output(model))


# Initialised as the original DeiT (timm) does, not from `initializer_range`: the patch convolution keeps torch's
# default (tests/test_modeling.py::test_initialisation_is_the_originals). A README exception.
ORIGINAL_INITIALISATION = ("embeddings.patch_embeddings.projection.",)


@pytest.mark.parametrize("model_class", ALL_MODEL_CLASSES)
def test_initialization(model_class):
    model = model_class(_config_zero_init(get_config()))
    for name, parameter in model.named_parameters():
        if name.removeprefix("deit.").startswith(ORIGINAL_INITIALISATION):
            continue
        mean = ((parameter.data.mean() * 1e9).round() / 1e9).item()
        assert mean in (0.0, 1.0), f"{name} of {model_class.__name__} is not initialised from the config"


@pytest.mark.parametrize("model_class", ALL_MODEL_CLASSES)
def test_forward_signature(model_class):
    assert list(inspect.signature(model_class.forward).parameters)[1:2] == ["pixel_values"]
    assert model_class.main_input_name == "pixel_values"
    # What a user of the model passes, and nothing training needs: distillation hooks the blocks it reads instead.
    expected = {"DistilledDeiTModel": ["token_states_only"], "DistilledDeiTForImageClassification": ["labels"]}
    assert set(inspect.signature(model_class.forward).parameters) == {
        "self", "pixel_values", "output_attentions", "output_hidden_states", "interpolate_pos_encoding", "return_dict",
        "kwargs", *expected[model_class.__name__]}  # fmt: skip


@pytest.mark.parametrize("model_class", ALL_MODEL_CLASSES)
def test_model_get_set_embeddings(model_class):
    model = model_class(get_config())
    assert isinstance(model.get_input_embeddings(), nn.Module)


@pytest.mark.parametrize("model_class", ALL_MODEL_CLASSES)
def test_hidden_states_output(model_class):
    for from_config in (False, True):
        config = get_config(output_hidden_states=True) if from_config else get_config()
        model = model_class(config).eval()
        with torch.no_grad():
            outputs = model(**inputs(), **({} if from_config else {"output_hidden_states": True}))
        assert len(outputs.hidden_states) == LAYERS + 1
        assert all(list(state.shape) == [BATCH, SEQ_LENGTH, WIDTH] for state in outputs.hidden_states)


@pytest.mark.parametrize("model_class", ALL_MODEL_CLASSES)
def test_attention_outputs(model_class):
    for from_config in (False, True):
        config = get_config(output_attentions=True) if from_config else get_config()
        model = model_class(config).eval()
        with torch.no_grad():
            outputs = model(**inputs(), **({} if from_config else {"output_attentions": True}))
        assert len(outputs.attentions) == LAYERS
        assert list(outputs.attentions[0].shape[-3:]) == [HEADS, SEQ_LENGTH, SEQ_LENGTH]
        # Attention comes last, hidden states before it.
        with torch.no_grad():
            both = model(**inputs(), output_attentions=True, output_hidden_states=True, return_dict=False)
        assert len(both[-1]) == LAYERS and len(both[-2]) == LAYERS + 1


@pytest.mark.parametrize("model_class", ALL_MODEL_CLASSES)
def test_model_outputs_equivalence(model_class):
    model = model_class(get_config()).eval()
    for flags in ({}, {"output_hidden_states": True}, {"output_attentions": True},
                  {"output_hidden_states": True, "output_attentions": True}):  # fmt: skip
        with torch.no_grad():
            as_tuple = model(**inputs(), return_dict=False, **flags)
            as_dict = model(**inputs(), return_dict=True, **flags).to_tuple()
        assert len(as_tuple) == len(as_dict)
        for left, right in zip(as_tuple, as_dict):
            as_pairs = zip(left, right) if isinstance(left, tuple) else [(left, right)]
            for a, b in as_pairs:
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5)


def test_training():
    model = DistilledDeiTForImageClassification(get_config()).train()
    loss = model(**inputs(), labels=torch.tensor([0, 1, 2])).loss
    loss.backward()
    assert all(parameter.grad is not None for parameter in model.parameters() if parameter.requires_grad)


@pytest.mark.parametrize("model_class", ALL_MODEL_CLASSES)
def test_retain_grad_hidden_states_attentions(model_class):
    model = model_class(get_config())
    outputs = model(**inputs(), output_hidden_states=True, output_attentions=True)
    hidden_states, attentions = outputs.hidden_states[0], outputs.attentions[0]
    hidden_states.retain_grad()
    attentions.retain_grad()
    outputs[0].flatten()[0].backward()
    assert hidden_states.grad is not None and attentions.grad is not None


def test_can_load_ignoring_mismatched_shapes(tmp_path, caplog):
    """Another class count than the checkpoint's raises unless `ignore_mismatched_sizes=True`; then exactly the two
    heads are new (centred, sized for 42 classes) and every other weight is the checkpoint's. (The backbone class has
    no head, as transformers' test skips such classes.)"""
    torch.manual_seed(42)
    config = _config_zero_init(get_config())
    model = DistilledDeiTForImageClassification(config)
    model.save_pretrained(tmp_path)
    with pytest.raises(RuntimeError):
        DistilledDeiTForImageClassification.from_pretrained(tmp_path, num_labels=42)
    with caplog.at_level(logging.INFO, logger="transformers.modeling_utils"):
        new_model = DistilledDeiTForImageClassification.from_pretrained(tmp_path, num_labels=42,
                                                                        ignore_mismatched_sizes=True)  # fmt: skip
    assert "Reinit due to size mismatch" in caplog.text
    mismatched = [name for name, module in new_model.named_children()
                  if isinstance(module, nn.Linear) and module.out_features == 42]  # fmt: skip
    assert mismatched == ["cls_classifier", "distillation_classifier"]
    old, new = dict(model.named_parameters()), dict(new_model.named_parameters())
    assert set(old) == set(new)
    for name, value in new.items():
        if any(name.startswith(head) for head in mismatched):
            assert value.shape[0] == 42 and old[name].data.mean().item() <= 1e-1
        else:
            torch.testing.assert_close(old[name], value, rtol=0, atol=0)


def test_config_common_properties(tmp_path):
    """ConfigTester's checks: a config without arguments, num_labels setting the label maps, a JSON round trip."""
    config = DistilledDeiTConfig()
    for name in ("hidden_size", "num_attention_heads", "num_hidden_layers"):
        assert hasattr(config, name)
    config.num_labels = 5
    assert len(config.id2label) == 5 and len(config.label2id) == 5
    config.num_labels = 3
    assert len(config.id2label) == 3
    config.save_pretrained(tmp_path)
    assert DistilledDeiTConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()
