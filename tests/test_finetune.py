"""Fine-tuning from the checkpoints people have, in one command: each checkpoint source through `scripts/train.py
--model_name_or_path` with a teacher (hard or soft) on the embedded digits, converted on load, saved, and reloaded
with `trust_remote_code` where hf_deit cannot be imported; and fine-tuning at another resolution."""

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import (
    AutoModelForImageClassification,
    DeiTConfig,
    DeiTForImageClassificationWithTeacher,
    ResNetConfig,
    ResNetForImageClassification,
    ViTConfig,
    ViTForImageClassification,
)

from hf_deit import DistilledDeiTConfig, DistilledDeiTForImageClassification

timm = pytest.importorskip("timm")
from timm.models import save_for_hf  # noqa: E402

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from hub_server import loopback_hub, use_in_this_process  # noqa: E402

# End-to-end: a few training steps per source. The fixture trains every source (about 20 s), so every check that reads
# it is a subtest of one test: one test runs on one pytest-xdist worker, and the fixture is built once. (An xdist_group
# mark did not keep them together: pytest 9.2 with pytest-xdist 3.8 ignores it, and each worker built the fixture.)
pytestmark = pytest.mark.slow

DIGITS = {index: str(index) for index in range(10)}
# Every source: 16 px images in 4 px patches, width 32, 2 blocks of 2 heads.
TRANSFORMERS_GEOMETRY = dict(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, layer_norm_eps=1e-6)
TIMM_GEOMETRY = dict(img_size=16, patch_size=4, embed_dim=32, depth=2, num_heads=2, mlp_ratio=2.0)
# 64 training images (3 steps of 16 read 48): the teacher check before training reads every labelled training image
# through the teacher, and the timm file teacher (resnet10t) sees them at its own 224 px, which took most of the time.
RUN = ["--dataset_name", "digits", "--max_steps", "3", "--per_device_train_batch_size", "16", "--logging_steps", "1",
       "--eval_strategy", "no", "--save_strategy", "no", "--disable_tqdm", "true", "--max_train_samples", "64",
       "--max_eval_samples", "32", "--report_to", "none"]
HUB_REPO = "facebook/deit-tiny-distilled-loopback"


@torch.no_grad()
def randomise(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model.eval()


def make_sources(root: Path) -> dict[str, Path]:
    """One checkpoint of each kind a user has, random weights, other classes than the digits' 10."""
    sources = {}
    deit = randomise(DeiTForImageClassificationWithTeacher(DeiTConfig(**TRANSFORMERS_GEOMETRY, num_labels=3)))
    deit.save_pretrained(root / "transformers-deit")
    sources["transformers DeiT folder"] = root / "transformers-deit"
    sources["transformers DeiT Hub id"] = root / "transformers-deit"  # published on the loopback Hub
    vit = randomise(ViTForImageClassification(ViTConfig(**TRANSFORMERS_GEOMETRY, num_labels=3)))
    vit.save_pretrained(root / "transformers-vit")
    sources["transformers ViT folder (not distilled)"] = root / "transformers-vit"
    timm_deit = randomise(timm.create_model("deit_tiny_distilled_patch16_224", pretrained=False, num_classes=5,
                                            **TIMM_GEOMETRY))
    torch.save({"model": timm_deit.state_dict()}, root / "deit_facebook.pth")
    sources["facebook/timm file"] = root / "deit_facebook.pth"
    save_for_hf(timm_deit, root / "timm-hub-layout", safe_serialization=True)
    sources["timm Hub-layout folder"] = root / "timm-hub-layout"
    torch.manual_seed(0)
    ours = DistilledDeiTConfig(**TRANSFORMERS_GEOMETRY, num_labels=10, id2label=DIGITS)
    DistilledDeiTForImageClassification(ours).save_pretrained(root / "ours")
    sources["our own model"] = root / "ours"
    return sources


def make_teachers(root: Path) -> dict[str, Path]:
    """Random 10-class teachers as people name them: a transformers folder, a timm Hub-layout folder, a timm
    weights file named after its architecture."""
    torch.manual_seed(0)
    resnet = ResNetForImageClassification(ResNetConfig(
        embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic", num_labels=10, id2label=DIGITS,
    ))  # fmt: skip
    resnet.save_pretrained(root / "resnet-teacher")
    vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=10, embed_dim=32, depth=1,
                            num_heads=2, img_size=16, patch_size=4)
    save_for_hf(vit, root / "timm-teacher", safe_serialization=True)
    resnet10t = timm.create_model("resnet10t", pretrained=False, num_classes=10)
    torch.save(resnet10t.state_dict(), root / "resnet10t-0123abcd.pth")
    return {"transformers": root / "resnet-teacher", "timm folder": root / "timm-teacher",
            "timm file": root / "resnet10t-0123abcd.pth"}


# (source, teacher, distillation type, --image_size, other flags): every source with a teacher; the last one
# fine-tunes at another resolution (16 -> 32 px, as the paper 224 -> 384) with the teacher at the new resolution
# (the timm file teacher's own preprocessing says 224 px).
RUNS = {
    "transformers DeiT folder": ("transformers DeiT folder", "transformers", "hard", 16, ()),
    "transformers DeiT Hub id": ("transformers DeiT Hub id", "timm folder", "hard", 16, ()),
    "transformers ViT folder (not distilled)": (
        "transformers ViT folder (not distilled)", "transformers", "soft", 16, (),
    ),
    "facebook/timm file": ("facebook/timm file", "timm file", "soft", 16, ()),
    "timm Hub-layout folder": ("timm Hub-layout folder", "timm folder", "hard", 16, ()),
    "our own model": ("our own model", "transformers", "hard", 16, ()),
    "facebook/timm file at 32 px": ("facebook/timm file", "timm file", "soft", 32, ("--teacher_image_size", "student")),
}


class _Records(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.messages = []

    def emit(self, record):
        self.messages.append(record.getMessage())


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory):
    """Runs `train.main` once per entry of RUNS; each result is (output folder, log messages) or the exception."""
    import train

    root = tmp_path_factory.mktemp("finetune")
    sources, teachers = make_sources(root / "sources"), make_teachers(root / "teachers")
    results = {}
    with loopback_hub(root / "hub") as hub, pytest.MonkeyPatch.context() as monkeypatch:
        hub.publish(HUB_REPO, sources["transformers DeiT Hub id"])
        for name, (source, teacher, distillation, image_size, flags) in RUNS.items():
            out = root / "runs" / name.replace(" ", "_").replace("/", "_")
            model = HUB_REPO if source.endswith("Hub id") else str(sources[source])
            records = _Records()
            package_logger = logging.getLogger("hf_deit")
            package_logger.addHandler(records)
            level, package_logger.level = package_logger.level, logging.INFO  # as train.py's basicConfig gives
            try:
                if source.endswith("Hub id"):
                    use_in_this_process(hub, monkeypatch, root / "hub-cache")
                # A bare weights file does not say its head count (DeiT's own widths do): given as for a new model.
                overrides = ["--config_overrides", "num_attention_heads=2"] if source.endswith("file") else []
                metrics = train.main(["--output_dir", str(out), "--model_name_or_path", model, "--teacher_name_or_path",
                                      str(teachers[teacher]), "--distillation_type", distillation, "--image_size",
                                      str(image_size), *overrides, *flags, *RUN])  # fmt: skip
                results[name] = (out, records.messages, metrics, sources[source])
            except Exception as error:  # reported by the test of this run
                results[name] = error
            finally:
                package_logger.removeHandler(records)
                package_logger.setLevel(level)
                monkeypatch.undo()
    return results


def test_each_checkpoint_source_fine_tunes_with_a_teacher_in_one_command_and_loads_as_remote_code(
        finetuned, subtests, tmp_path):  # fmt: skip
    for name in RUNS:
        with subtests.test(msg=name):
            check_fine_tuned(finetuned[name], name)
    with subtests.test(msg="loaded with remote code where hf_deit is not installed"):
        check_remote_code_loads(finetuned, tmp_path)


def check_fine_tuned(result, name: str) -> None:
    if isinstance(result, Exception):
        raise result
    out, messages, metrics, source = result
    image_size = RUNS[name][3]
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0 and "eval_teacher_agreement" in metrics
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [entry["step"] for entry in history if "loss_distillation" in entry] == [1, 2, 3]
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "distilled_deit" and config["image_size"] == image_size
    assert {int(k): v for k, v in config["id2label"].items()} == DIGITS
    assert (out / "modeling_distilled_deit.py").is_file() and (out / "configuration_distilled_deit.py").is_file()
    processor = json.loads((out / "preprocessor_config.json").read_text())
    assert processor["crop_size"] == {"height": image_size, "width": image_size}
    weights = load_file(out / "model.safetensors")
    assert weights["deit.embeddings.position_embeddings"].shape == (1, 2 + (image_size // 4) ** 2, 32)

    # A log line says what was converted or loaded, and that the heads are new where the classes differ.
    loaded = [m for m in messages if m.startswith(("Converted", "Loaded")) and "into a DistilledDeiT" in m]
    if name == "our own model":  # the digits' own 10 classes at its own size: transformers loads it, heads kept
        assert loaded == []
    else:
        assert len(loaded) == 1, messages
        assert "on load" in loaded[0] and "layout" in loaded[0]
        assert any("both heads are freshly initialised" in m for m in messages)
    if image_size != 16:
        assert any("Resampled the position embeddings from a (4, 4) to a (8, 8) patch grid" in m for m in messages)
    if "not distilled" in name:
        assert any("not distilled: added a distillation token" in m for m in messages)


RELOAD_CHILD = textwrap.dedent(
    """
    import json, sys
    sys.modules["hf_deit"] = None  # as where hf_deit is not installed
    try:
        import hf_deit  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("hf_deit is importable in the child")
    import torch
    from transformers import AutoModelForImageClassification

    folders, result = json.loads(sys.argv[1]), {}
    for name, folder in folders.items():
        model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
        assert type(model).__module__.startswith("transformers_modules"), type(model).__module__
        size = model.config.image_size
        with torch.no_grad():
            result[name] = model(torch.linspace(-1, 1, 2 * 3 * size * size).reshape(2, 3, size, size)).logits
    torch.save(result, sys.argv[2])
    """
)


def check_remote_code_loads(finetuned, tmp_path) -> None:
    folders = {name: str(result[0]) for name, result in finetuned.items() if not isinstance(result, Exception)}
    assert folders, "no run finished"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "HF_HOME": str(tmp_path / "hf-home"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run([sys.executable, "-I", "-c", RELOAD_CHILD, json.dumps(folders), str(tmp_path / "out.pt")],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    logits = torch.load(tmp_path / "out.pt", weights_only=True)
    for name, folder in folders.items():
        model = AutoModelForImageClassification.from_pretrained(folder).eval()
        size = model.config.image_size
        with torch.no_grad():
            expected = model(torch.linspace(-1, 1, 2 * 3 * size * size).reshape(2, 3, size, size)).logits
        torch.testing.assert_close(logits[name], expected, rtol=0, atol=0)
