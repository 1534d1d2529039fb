"""Fixtures shared by every test module: an offline Hub and a tiny model geometry."""

import os
import sys
from pathlib import Path

import pytest

# Set before any test module imports transformers/huggingface_hub: the Hub cannot be reached from here, and a
# test that silently tried it would wait ~25 s for retries. A test that runs its own loopback Hub changes it with
# monkeypatch inside the test (huggingface_hub reads it when first imported).
os.environ["HF_HUB_OFFLINE"] = "1"

# Under pytest-xdist each worker takes its share of the cores (and so do the processes it launches). With torch's
# default, every worker runs as many OpenMP threads as there are cores: on 2 cores two workers' spinning threads
# contend, and two long training tests side by side each ran 3x slower than alone.
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _threads = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The command-line scripts import each other as a script's own folder allows (`import train`, `import
# experiment_common`); tests that call a script's `main(argv)` import it the same way, from this one place.
SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
if str(SCRIPTS) not in sys.path:
    sys.path.insert(0, str(SCRIPTS))


@pytest.fixture(autouse=True)
def _hub_offline(monkeypatch):
    """Every test starts offline, whatever an earlier test in the same worker did to the environment."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


TINY_CONFIG = dict(
    image_size=32,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_labels=5,
)


@pytest.fixture
def tiny_config():
    """A 2-block, 32-wide distilled DeiT on 32x32 images (16 patches + 2 tokens), 5 classes; no stochastic depth."""
    from hf_deit import DistilledDeiTConfig

    return DistilledDeiTConfig(**TINY_CONFIG, drop_path_rate=0.0)


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory):
    """An untrained tiny distilled DeiT (32 px, 4 px patches) and ResNet teacher on the ten digits, each saved with
    its image processor as the training scripts save them: (student folder, teacher folder)."""
    import torch
    from transformers import ResNetConfig, ResNetForImageClassification

    from hf_deit import DistilledDeiTConfig, DistilledDeiTForImageClassification
    from hf_deit.image_processing import deit_image_processor

    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    names = [str(d) for d in range(10)]
    labels = dict(num_labels=10, id2label=dict(enumerate(names)), label2id={n: i for i, n in enumerate(names)})
    student = DistilledDeiTForImageClassification(
        DistilledDeiTConfig(image_size=32, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                            **labels)  # fmt: skip
    )
    processor = deit_image_processor(32, crop_pct=1.0)
    student.save_pretrained(root / "student")
    processor.save_pretrained(root / "student")
    teacher = ResNetForImageClassification(
        ResNetConfig(embedding_size=8, hidden_sizes=[16, 32], depths=[1, 1], layer_type="basic",
                     downsample_in_first_stage=False, **labels)  # fmt: skip
    )
    teacher.save_pretrained(root / "teacher")
    processor.save_pretrained(root / "teacher")
    return root / "student", root / "teacher"
