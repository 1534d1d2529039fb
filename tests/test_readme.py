"""The README and the pages of docs/ stay true to the repository: their Python blocks run as written (offline, each
document in a fresh process and an empty folder) and print what their comments promise; the links, files and package
names they mention exist; the README stays an entry page whose layout map names every module; its main-job table and
gains are those of results/main_job/results.json."""

import ast
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"
DOCUMENTS = [README, *sorted((REPO / "docs").glob("*.md"))]
README_MAX_CHARACTERS = 20_000


def python_blocks(document: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", document.read_text(), flags=re.S)


def _number(pattern: str, output: str) -> float:
    match = re.search(pattern, output)
    assert match, f"no output matching {pattern!r}"
    return float(match.group(1))


def _check_readme(output: str):
    assert "torch.Size([2, 10])" in output
    # The conversion block: a timm DeiT's logits, reproduced by the converted folder.
    assert _number(r"tensor\(([-0-9.e]+)", output) <= 1e-5
    # The pipeline block: the saved labels, as probabilities.
    printed = re.search(r"pipeline: (\[.*\])", output)
    assert printed, "the pipeline block printed nothing"
    predictions = ast.literal_eval(printed.group(1))
    assert {p["label"] for p in predictions} == {"cat", "dog", "fox"}
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-4)
    # The Python API block: the learning rate sized for a new model on 64 images, as its comment says.
    assert re.search(r"^0\.0005 ", output, flags=re.M)


def _check_speed(output: str):
    optimized = re.search(r"optimized: (\w+) (compiled|eager) max \|diff\|: ([-0-9.e]+)", output)
    assert optimized, "the optimize_for_inference block printed nothing"
    assert optimized.group(1, 2) == ("fp32", "compiled") and float(optimized.group(3)) <= 1e-4
    assert _number(r"ONNX Runtime vs PyTorch, max \|diff\|: ([-0-9.e]+)", output) <= 1e-4


def _check_contracts(output: str):
    # The peft block: the merged LoRA model gives the adapted model's logits.
    assert _number(r"LoRA merged, max \|diff\|: ([-0-9.e]+)", output) <= 1e-5


# What each document's blocks print, checked on that document's own output: a block moved elsewhere fails here.
OUTPUT_CHECKS = {
    "README.md": _check_readme,
    "docs/speed.md": _check_speed,
    "docs/transformers-contracts.md": _check_contracts,
}


def _name(document: Path) -> str:
    return str(document.relative_to(REPO))


def test_readme_is_an_entry_page():
    text = README.read_text()
    assert len(text) <= README_MAX_CHARACTERS, f"README.md has {len(text):,} characters"
    assert len(python_blocks(README)) >= 3


# Another page's author writes this one; until it lands, links to it are allowed.
PAGES_WRITTEN_ELSEWHERE = {"docs/teacher-records.md"}


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_relative_links_resolve(document):
    for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", document.read_text()):
        if re.match(r"\w+://", target):
            continue
        path = (document.parent / target).resolve()
        assert path.exists() or _name(path) in PAGES_WRITTEN_ELSEWHERE, f"{_name(document)} links to {target}"


@pytest.mark.parametrize("document", DOCUMENTS, ids=_name)
def test_named_files_exist(document):
    """Scripts, tests and configs named anywhere (commands included), and repository paths named alone in backticks."""
    text = document.read_text()
    named = set(re.findall(r"(?<![\w/.])((?:scripts|tests|configs)/[\w/-]+\.(?:py|yaml|json))", text))
    named |= set(re.findall(r"`((?:src|benchmarks|results|model_cards)/[\w./-]*)`", text))
    missing = sorted(name for name in named if not (REPO / name).exists())
    assert missing == [], f"{_name(document)} names files that do not exist: {missing}"


def _top_level_names(module: Path) -> set[str]:
    """What a module defines or imports at its top level, read from its source (nothing is imported)."""
    names = set()
    for node in ast.parse(module.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names |= {(alias.asname or alias.name).split(".")[0] for alias in node.names}
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {target.id for target in targets if isinstance(target, ast.Name)}
    return names


def _module_file(dotted: str) -> Path | None:
    path = REPO / "src" / Path(*dotted.split("."))
    return next((file for file in (path.with_suffix(".py"), path / "__init__.py") if file.exists()), None)


def test_named_package_objects_exist():
    """Every `hf_deit.module.name` the documents name is a module, or a name its module defines or imports."""
    named = {name for document in DOCUMENTS for name in re.findall(r"`(hf_deit(?:\.\w+)+)", document.read_text())}
    assert named, "no package object named in the documents"
    missing = []
    for name in sorted(named):
        module, _, attribute = name.rpartition(".")
        if _module_file(name) is None and not (_module_file(module) and attribute in _top_level_names(
                _module_file(module))):
            missing.append(name)
    assert missing == [], f"the documents name what the package lacks: {missing}"


def test_every_checked_document_has_python_blocks():
    for name in OUTPUT_CHECKS:
        assert python_blocks(REPO / name), f"{name} has no Python block left to check"


@pytest.mark.slow
@pytest.mark.parametrize("document", [d for d in DOCUMENTS if python_blocks(d)], ids=_name)
def test_python_blocks_run(document, tmp_path):
    # One process per document: each import of transformers costs seconds here.
    program = "\n\n".join(f"# --- block {i}\n{code}" for i, code in enumerate(python_blocks(document)))
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    result = subprocess.run([sys.executable, "-c", program], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    check = OUTPUT_CHECKS.get(_name(document))
    if check:
        check(result.stdout)


def test_layout_map_names_every_package_module_and_only_files_that_exist():
    layout = README.read_text().split("## Layout", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"`([\w./]+(?:\.py|/))`", layout))
    package = REPO / "src" / "hf_deit"
    missing = [name for name in named if not (REPO / name).exists() and not (package / name).exists()]
    assert missing == [], f"the README's layout names files that do not exist: {missing}"
    modules = {str(path.relative_to(package)) for path in package.rglob("*.py")
               if path.name != "__init__.py" and "top_k_accuracy" not in path.parts}  # fmt: skip
    assert sorted(modules - named) == [], "modules missing from the README's layout map"


# The main job's table: each row's results.json entry.
MAIN_JOB_ROWS = {
    "(a) CNN teacher, all labels": "teacher",
    "(a) DeiT, no distillation": "deit_none",
    "(a) DeiT, hard distillation + feature maps": "deit_hard",
    "(b) CNN teacher, 10% of the labels": "few_teacher",
    "(b) DeiT, 10% of the labels alone": "few_labels_alone",
    "(b) DeiT, 10% of the labels + the other 90% unlabelled (teacher)": "few_labels_pool",
}
MAIN_JOB_COLUMNS = ["eval_accuracy", "eval_cls_accuracy", "eval_distillation_accuracy", "eval_teacher_agreement"]


def _main_job_table(text: str) -> dict[str, list[str]]:
    rows = {}
    for line in text.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if cells[0] in MAIN_JOB_ROWS:
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.parametrize("document", [README, REPO / "docs" / "results.md"], ids=_name)
def test_main_job_table_is_the_results_file(document):
    results = json.loads((REPO / "results" / "main_job" / "results.json").read_text())
    table = _main_job_table(document.read_text())
    assert sorted(table) == sorted(MAIN_JOB_ROWS), f"{_name(document)} lacks rows of the main job's table"
    for label, key in MAIN_JOB_ROWS.items():
        run = results[key]
        expected = [f"{100 * run[column]:.1f}" if column in run else "-" for column in MAIN_JOB_COLUMNS]
        expected.append(f"{run['wall_seconds']:.1f}")
        assert table[label] == expected, f"{_name(document)}, row {label!r}"


def test_readme_gains_are_the_results_file():
    results = json.loads((REPO / "results" / "main_job" / "results.json").read_text())
    gain = 100 * (results["deit_hard"]["eval_accuracy"] - results["deit_none"]["eval_accuracy"])
    pool_gain = 100 * (results["few_labels_pool"]["eval_accuracy"] - results["few_labels_alone"]["eval_accuracy"])
    text = " ".join(README.read_text().split())
    assert f"+{gain:.1f} points from the teacher with all labels" in text
    assert f"+{pool_gain:.1f} with 10% of the labels" in text
