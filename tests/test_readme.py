"""The README's Python snippets run as written (offline, in a fresh process and an empty folder), and its layout map
names the modules that exist."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_python_snippets():
    assert len(SNIPPETS) >= 3


@pytest.mark.slow
def test_readme_python_snippets_run(tmp_path):
    # One process for all snippets: each import of transformers costs seconds here.
    program = "\n\n".join(f"# --- snippet {i}\n{code}" for i, code in enumerate(SNIPPETS))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "torch.Size([2, 10])" in result.stdout
    max_diff = float(re.search(r"tensor\(([-0-9.e]+)", result.stdout).group(1))
    assert max_diff <= 1e-5
    # The peft snippet: the merged LoRA model gives the adapted model's logits.
    lora_diff = float(re.search(r"LoRA merged, max \|diff\|: ([-0-9.e]+)", result.stdout).group(1))
    assert lora_diff <= 1e-5
    # The inference snippet: compiled (no fallback to eager), with the plain model's logits.
    optimized = re.search(r"optimized: (\w+) (compiled|eager) max \|diff\|: ([-0-9.e]+)", result.stdout)
    assert optimized.group(1, 2) == ("fp32", "compiled") and float(optimized.group(3)) <= 1e-4
    # The deployment snippet: ONNX Runtime on the export gives PyTorch's logits.
    onnx_diff = float(re.search(r"ONNX Runtime vs PyTorch, max \|diff\|: ([-0-9.e]+)", result.stdout).group(1))
    assert onnx_diff <= 1e-4


def test_layout_map_names_every_package_module_and_only_files_that_exist():
    layout = README.read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([\w./]+(?:\.py|/))`", layout))
    package = REPO / "src" / "hf_deit"
    missing = [name for name in named if not (REPO / name).exists() and not (package / name).exists()]
    assert missing == [], f"the README's layout names files that do not exist: {missing}"
    modules = {str(path.relative_to(package)) for path in package.rglob("*.py")
               if path.name != "__init__.py" and "top_k_accuracy" not in path.parts}  # fmt: skip
    assert sorted(modules - named) == [], "modules missing from the README's layout map"
