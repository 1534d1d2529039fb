"""Pushing a model folder to a loopback Hub (real huggingface_hub client, real HTTP) and loading it back without hf_deit."""

import hashlib
import json
import logging
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import constants as hub_constants

from hf_deit import DistilledDeiTConfig, DistilledDeiTForImageClassification
from hf_deit.card import write_model_card
from hf_deit.hub import HubPushError, push_folder_to_hub
from hf_deit.image_processing import deit_image_processor

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import DEFAULT_TOKEN, loopback_hub  # noqa: E402

REPO_ID = "loopback-user/tiny-distilled-deit"


@pytest.fixture
def hub(tmp_path):
    with loopback_hub(tmp_path / "hub-storage", hang_seconds=10) as server:
        yield server


@pytest.fixture
def online_in_process(monkeypatch):
    """huggingface_hub read HF_HUB_OFFLINE at import: switch it off for this process's own loopback requests only."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    """A tiny trained-shape model folder as the trainer writes it: weights, config + code, preprocessor, card."""
    folder = tmp_path_factory.mktemp("model")
    torch.manual_seed(0)
    config = DistilledDeiTConfig(
        image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
        num_labels=3, id2label={0: "cat", 1: "dog", 2: "fox"}, label2id={"cat": 0, "dog": 1, "fox": 2},
    )  # fmt: skip
    model = DistilledDeiTForImageClassification(config).eval()
    model.save_pretrained(folder)
    deit_image_processor(32).save_pretrained(folder)
    write_model_card(
        folder, model_name="tiny-distilled-deit", eval_results={"accuracy": 0.5, "cls_accuracy": 0.4},
        dataset_name="digits", teacher_name="teacher", distillation_type="hard", distillation_alpha=0.5,
        distillation_tau=1.0, hyperparameters={"learning_rate": 5e-4}, repo_id=REPO_ID, config=config,
    )  # fmt: skip
    return folder, model


def folder_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_saved_folder_holds_everything_a_hub_user_needs(saved_model):
    folder, _ = saved_model
    files = set(folder_digest(folder))
    assert {"model.safetensors", "config.json", "preprocessor_config.json", "README.md"} <= files
    assert {"configuration_distilled_deit.py", "modeling_distilled_deit.py"} <= files
    assert "AutoModelForImageClassification" in json.loads((folder / "config.json").read_text())["auto_map"]


@pytest.mark.parametrize("mode", ["500", "hang", "drop"])
def test_failed_push_keeps_local_output_says_how_to_retry_and_hides_token(hub, saved_model, online_in_process, caplog, mode):
    folder, _ = saved_model
    before = folder_digest(folder)
    hub.fail("commit", mode, times=1)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(HubPushError) as raised:
        push_folder_to_hub(folder, REPO_ID, token=DEFAULT_TOKEN, endpoint=hub.url, retries=0, timeout=1.0)
    message = str(raised.value)
    assert "local output is intact" in message and str(folder) in message
    assert f"hf upload {REPO_ID} {folder} ." in message and raised.value.transient
    assert DEFAULT_TOKEN not in message and DEFAULT_TOKEN not in caplog.text
    assert raised.value.__cause__ is None  # the traceback cannot show a request carrying the token
    assert folder_digest(folder) == before
    assert hub.calls("commit") == 1 and hub.calls("lfs_upload") == 1  # it failed at the commit, after the upload


def test_transient_failure_is_retried_and_push_completes(hub, saved_model, online_in_process):
    folder, _ = saved_model
    hub.fail("commit", "500", times=1)
    url = push_folder_to_hub(folder, REPO_ID, token=DEFAULT_TOKEN, endpoint=hub.url, retries=1, retry_wait=0.01)
    assert url.startswith(f"{hub.url}/{REPO_ID}/commit/")
    assert hub.calls("commit") == 2
    # The second attempt skips what the first one uploaded: the weights went up once.
    assert hub.calls("lfs_upload") == 1
    local = {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    remote = hub.files(REPO_ID)
    assert remote.pop(".gitattributes")
    assert remote == local


def test_wrong_token_is_a_clear_auth_error_without_retries(hub, saved_model, online_in_process):
    folder, _ = saved_model
    wrong = "hf_wrongToken0000000000000000000000"
    with pytest.raises(HubPushError, match="rejected the token") as raised:
        push_folder_to_hub(folder, REPO_ID, token=wrong, endpoint=hub.url, retries=3, retry_wait=0.01)
    assert wrong not in str(raised.value) and not raised.value.transient
    assert "HF_TOKEN" in str(raised.value)
    assert hub.calls("create_repo") == 1 and REPO_ID not in hub.repos


def test_missing_folder_is_reported_before_any_request(hub, tmp_path, online_in_process):
    with pytest.raises(FileNotFoundError, match="Save the model there first"):
        push_folder_to_hub(tmp_path / "nope", REPO_ID, token=DEFAULT_TOKEN, endpoint=hub.url)
    assert hub.requests == []


PUSH_CHILD = """
import sys
from hf_deit.hub import push_folder_to_hub
print(push_folder_to_hub(sys.argv[1], sys.argv[2], private=True))
"""

# Runs where hf_deit cannot be imported: everything must come from the Hub repo (remote code included).
LOAD_CHILD = """
import sys
sys.modules["hf_deit"] = None
try:
    import hf_deit
except ImportError:
    pass
else:
    raise SystemExit("hf_deit is importable in the child")
import json, torch
from transformers import AutoImageProcessor, AutoModelForImageClassification
repo_id, work = sys.argv[1], sys.argv[2]
model = AutoModelForImageClassification.from_pretrained(repo_id, trust_remote_code=True).eval()
assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
with torch.no_grad():
    outputs = model(pixel_values=torch.load(work + "/input.pt", weights_only=True))
torch.save({"logits": outputs.logits, "cls_logits": outputs.cls_logits}, work + "/output.pt")
processor = AutoImageProcessor.from_pretrained(repo_id)
json.dump(processor.to_dict(), open(work + "/processor.json", "w"))
"""


@pytest.mark.slow
def test_push_then_load_back_without_hf_deit_gives_identical_logits(hub, saved_model, tmp_path):
    folder, model = saved_model
    env = hub.client_env()
    env.update(HF_TOKEN=DEFAULT_TOKEN, HF_HOME=str(tmp_path / "hf-home"))  # an empty cache
    push = subprocess.run([sys.executable, "-c", PUSH_CHILD, str(folder), REPO_ID], env=env, capture_output=True, text=True, timeout=120)
    assert push.returncode == 0, push.stderr
    assert DEFAULT_TOKEN not in push.stdout + push.stderr
    assert hub.repos[REPO_ID].private

    torch.manual_seed(1)
    pixel_values = torch.randn(2, 3, 32, 32)
    torch.save(pixel_values, tmp_path / "input.pt")
    # Outside the repo, so the child's working directory does not put src/ or tests/ on its path.
    load = subprocess.run([sys.executable, "-c", LOAD_CHILD, REPO_ID, str(tmp_path)], env=env, capture_output=True, text=True, timeout=180, cwd=tmp_path)
    assert load.returncode == 0, load.stderr[-3000:] + "\n".join(map(str, hub.requests))

    loaded = torch.load(tmp_path / "output.pt", weights_only=True)
    with torch.no_grad():
        expected = model(pixel_values=pixel_values)
    torch.testing.assert_close(loaded["logits"], expected.logits, rtol=0, atol=0)
    torch.testing.assert_close(loaded["cls_logits"], expected.cls_logits, rtol=0, atol=0)
    processor = json.loads((tmp_path / "processor.json").read_text())
    assert processor["crop_size"] == {"height": 32, "width": 32} and processor["size"] == {"shortest_edge": 36}
    assert processor["image_mean"] == [0.485, 0.456, 0.406]
    assert hub.calls("resolve") > 0 and all(status < 500 for *_, status in hub.requests)
