"""Unsafe input: a pickled checkpoint carrying code is never executed on load; absurd configs fail before allocation."""

import json
import pickle

import pytest
import torch

from hf_deit import DistilledDeiTConfig, DistilledDeiTForImageClassification


class RunsCode:
    """Unpickling this calls `open(marker, "w")`: proof that code ran."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def tiny_folder(tmp_path):
    config = DistilledDeiTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=1, num_attention_heads=2)
    config.save_pretrained(tmp_path)
    return config


def test_from_pretrained_refuses_a_pickle_with_code_and_never_runs_it(tmp_path):
    tiny_folder(tmp_path)
    marker = tmp_path / "code-ran"
    with open(tmp_path / "pytorch_model.bin", "wb") as file:
        pickle.dump({"deit.layernorm.weight": RunsCode(marker)}, file)
    with pytest.raises(Exception) as raised:
        DistilledDeiTForImageClassification.from_pretrained(tmp_path)
    assert not marker.exists(), "loading a checkpoint executed code from its pickle"
    assert "weights_only" in str(raised.value) or "Unsupported global" in str(raised.value) or "unsafe" in str(raised.value).lower()


def test_torch_load_weights_only_refuses_the_same_pickle(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "checkpoint.pth"
    with open(path, "wb") as file:
        pickle.dump({"w": RunsCode(marker)}, file)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    assert not marker.exists()


@pytest.mark.parametrize(
    "field, value",
    [("hidden_size", -32), ("num_hidden_layers", 0), ("patch_size", 0), ("hidden_size", 10**7), ("image_size", 10**6)],
)
def test_absurd_config_json_is_rejected_before_any_allocation(tmp_path, field, value):
    tiny_folder(tmp_path)
    path = tmp_path / "config.json"
    config = json.loads(path.read_text())
    config[field] = value
    path.write_text(json.dumps(config))
    with pytest.raises(ValueError, match=field):
        DistilledDeiTForImageClassification.from_pretrained(tmp_path)
