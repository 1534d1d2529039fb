"""Inference over a long stream of images runs in bounded memory: evaluating 10,000 images needs no more memory than
evaluating 1,000 (peak RSS of the evaluation, measured in a fresh child process for each count)."""

import json
import subprocess
import sys

import pytest

# A 10x longer stream may raise the evaluation's peak by at most this much. Measured here (2 shared CPU cores, 100
# classes): 0.6 MiB above the start at 1,000 images, 1.1 MiB at 10,000. The same loop made to keep what Trainer's
# evaluation loop keeps (the 3 heads' logits, 1.2 KB of float32 an image) measured 1.3 MiB and 20.6 MiB: it fails.
TOLERANCE_MIB = 4

CHILD = r"""
import io, json, sys
import numpy as np, torch
from datasets import ClassLabel, Dataset, Features, Image
from PIL import Image as PILImage
from hf_deit import DistilledDeiTConfig, DistilledDeiTForImageClassification
from hf_deit.evaluation import eval_transform_for, evaluate_classifier

def status(field):  # kB
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1])

count = int(sys.argv[1])
torch.set_num_threads(1)
rng = np.random.default_rng(0)
tiles = []
for _ in range(64):  # 64 distinct 16 px PNGs, repeated: the table stays small, every image is still decoded
    buffer = io.BytesIO()
    PILImage.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(buffer, "PNG")
    tiles.append(buffer.getvalue())
features = Features({"image": Image(), "label": ClassLabel(names=[str(i) for i in range(100)])})
dataset = Dataset.from_dict(
    {"image": [{"bytes": tiles[i % 64], "path": None} for i in range(count)], "label": [i % 100 for i in range(count)]},
    features=features,
)
torch.manual_seed(0)
config = DistilledDeiTConfig(image_size=16, patch_size=4, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                             intermediate_size=64, num_labels=100)
model = DistilledDeiTForImageClassification(config).eval()
transform = eval_transform_for("no-saved-preprocessing", config)
evaluate_classifier(model, dataset.select(range(200)), transform, batch_size=100)  # warm up: lazy imports, allocator
with open("/proc/self/clear_refs", "w") as f:  # reset the peak (VmHWM) to the current RSS
    f.write("5")
before = status("VmRSS")
results = evaluate_classifier(model, dataset, transform, batch_size=100)
print(json.dumps({"before_kb": before, "peak_kb": status("VmHWM"), "num_images": results["num_images"]}))
"""


def measure(count: int) -> dict:
    run = subprocess.run([sys.executable, "-c", CHILD, str(count)], capture_output=True, text=True, timeout=120,
                         env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"})  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    return json.loads(run.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_peak_memory_does_not_grow_with_the_number_of_images():
    small, large = measure(1_000), measure(10_000)
    assert small["num_images"] == 1_000 and large["num_images"] == 10_000
    growth_small = (small["peak_kb"] - small["before_kb"]) / 1024
    growth_large = (large["peak_kb"] - large["before_kb"]) / 1024
    print(f"evaluation peak above its start: {growth_small:.1f} MiB at 1,000 images, {growth_large:.1f} MiB at 10,000")
    assert growth_large <= growth_small + TOLERANCE_MIB
