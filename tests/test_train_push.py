"""`scripts/train.py --push_to_hub` against the loopback Hub, in real processes: the token is nowhere in the logs or
the output folder (training_args.bin included), the pushed repo loads back without hf_deit, and a failed push
leaves the output intact and prints the retry command."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from hub_server import DEFAULT_TOKEN, loopback_hub  # noqa: E402
from test_hub import LOAD_CHILD, folder_digest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
REPO_ID = "loopback-user/tiny"
TINY_STUDENT = "image_size=16,patch_size=4,hidden_size=32,num_hidden_layers=2,num_attention_heads=2"


def train_command(output_dir: Path, *extra: str) -> list[str]:
    return [
        sys.executable, str(REPO / "scripts" / "train.py"), "--output_dir", str(output_dir), "--dataset_name", "digits",
        "--config_overrides", TINY_STUDENT, "--image_size", "16", "--max_steps", "3", "--per_device_train_batch_size",
        "16", "--max_eval_samples", "32", "--eval_strategy", "no", "--save_strategy", "steps", "--save_steps", "2",
        "--disable_tqdm", "true", "--report_to", "none", "--push_to_hub", "--hub_model_id", REPO_ID, *extra,
    ]  # fmt: skip


def files_containing(folder: Path, secret: str) -> list[str]:
    return [str(path) for path in folder.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]


@pytest.fixture
def hub(tmp_path):
    with loopback_hub(tmp_path / "hub-storage", hang_seconds=5) as server:
        yield server


@pytest.mark.slow
def test_push_from_training_hides_the_token_and_loads_back_without_hf_deit(hub, tmp_path):
    out = tmp_path / "run"
    env = hub.client_env()
    env["HF_HOME"] = str(tmp_path / "hf-home")
    run = subprocess.run(train_command(out, "--hub_token", DEFAULT_TOKEN), env=env, capture_output=True, text=True,
                         timeout=240, cwd=tmp_path)  # fmt: skip
    assert run.returncode == 0, run.stderr[-4000:]
    assert DEFAULT_TOKEN not in run.stdout + run.stderr
    assert (out / "checkpoint-2" / "training_args.bin").is_file() and (out / "training_args.bin").is_file()
    assert files_containing(out, DEFAULT_TOKEN) == []  # card, trainer_state.json, every training_args.bin
    assert files_containing(out, DEFAULT_TOKEN[3:]) == []

    remote = hub.files(REPO_ID)
    assert {"model.safetensors", "config.json", "modeling_distilled_deit.py", "preprocessor_config.json",
            "README.md"} <= set(remote)  # fmt: skip
    assert not any(name.startswith(("checkpoint-", ".partial-")) for name in remote)
    assert all(DEFAULT_TOKEN.encode() not in content for content in remote.values())

    torch.manual_seed(0)
    torch.save(torch.randn(2, 3, 16, 16), tmp_path / "input.pt")
    load = subprocess.run([sys.executable, "-c", LOAD_CHILD, REPO_ID, str(tmp_path)], env=env, capture_output=True,
                          text=True, timeout=180, cwd=tmp_path)  # fmt: skip
    assert load.returncode == 0, load.stderr[-3000:]
    from transformers import AutoModelForImageClassification

    import hf_deit  # noqa: F401

    local = AutoModelForImageClassification.from_pretrained(out).eval()
    with torch.no_grad():
        expected = local(pixel_values=torch.load(tmp_path / "input.pt", weights_only=True)).logits
    torch.testing.assert_close(torch.load(tmp_path / "output.pt", weights_only=True)["logits"], expected, rtol=0, atol=0)


@pytest.mark.slow
def test_failed_push_from_training_keeps_the_output_and_prints_the_retry_command(hub, tmp_path):
    out = tmp_path / "run"
    env = hub.client_env()
    env.update(HF_TOKEN=DEFAULT_TOKEN, HF_HOME=str(tmp_path / "hf-home"))  # the token from the environment this time
    hub.fail("commit", "500", times=10)  # every attempt, retries included
    run = subprocess.run(train_command(out), env=env, capture_output=True, text=True, timeout=240, cwd=tmp_path)
    assert run.returncode == 1, run.stderr[-4000:]
    message = run.stderr
    assert "the push failed" in message and "local output is intact" in message
    assert f"hf upload {REPO_ID} {out} . --exclude 'checkpoint-*'" in message
    assert DEFAULT_TOKEN not in run.stdout + run.stderr and files_containing(out, DEFAULT_TOKEN) == []
    assert hub.calls("commit") == 3  # the first try and push_folder_to_hub's 2 retries
    assert REPO_ID not in hub.repos or hub.files(REPO_ID).keys() <= {".gitattributes"}

    before = folder_digest(out)
    assert {"model.safetensors", "config.json", "README.md", "preprocessor_config.json"} <= set(before)
    from transformers import AutoModelForImageClassification

    import hf_deit  # noqa: F401

    AutoModelForImageClassification.from_pretrained(out)  # the output is whole and loads
    assert folder_digest(out) == before
