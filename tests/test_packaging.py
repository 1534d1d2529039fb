"""The wheel built from the repository is the whole library: installed in a fresh virtual environment, with the
source tree out of reach, it imports from its own files and runs the quick main job from a folder outside the
repository (model card templates and the `evaluate` metric module shipped, --help answered from the installed flags),
with everything the quick main job promises checked on that run."""

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHIPPED_DATA = (
    "hf_deit/model_cards/distilled_deit.md",
    "hf_deit/model_cards/teacher.md",
    "hf_deit/metrics/top_k_accuracy/top_k_accuracy.py",
)
SUBPACKAGES = ("hf_deit/data/__init__.py", "hf_deit/data/transforms.py", "hf_deit/metrics/__init__.py")
# Where the fresh environment finds the two packages: found, not imported (that would take torch along).
PROBE = """
import importlib.util, json
print(json.dumps({name: importlib.util.find_spec(name).origin for name in ("hf_deit", "hf_deit_inputs")}))
"""


def build_wheel(out: Path) -> Path:
    """`python -m build --wheel` on a copy of the repository (the build writes build/ and *.egg-info beside the
    sources), against this environment's setuptools: no download."""
    source = out / "source"
    shutil.copytree(REPO, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv", "outputs", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "results",
        "benchmarks",
    ))  # fmt: skip
    result = subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out / "dist"),
                             str(source)], capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    (wheel,) = (out / "dist").glob("hf_deit-*.whl")
    return wheel


def fresh_environment(root: Path, wheel: Path) -> Path:
    """A virtual environment holding only the wheel; torch, transformers & co. come from this environment's
    site-packages through a .pth file. Paths a .pth file adds have their own .pth files ignored, so this
    environment's editable install of hf_deit (a .pth hook pointing at src/) does not follow."""
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True, timeout=300)
    python = root / "bin" / "python"
    purelib = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                             capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
    dependencies = [path for path in {*site.getsitepackages(), sysconfig.get_paths()["purelib"]} if os.path.isdir(path)]
    (Path(purelib) / "project_dependencies.pth").write_text("\n".join(dependencies) + "\n")
    result = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index",
                             "--quiet", str(wheel)], capture_output=True, text=True, timeout=300)  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return python


@pytest.mark.slow
def test_wheel_installs_and_trains_the_quick_main_job_outside_the_repository(tmp_path):
    wheel = build_wheel(tmp_path)
    names = set(zipfile.ZipFile(wheel).namelist())
    assert [name for name in (*SHIPPED_DATA, *SUBPACKAGES) if name not in names] == []

    venv = tmp_path / "venv"
    python = fresh_environment(venv, wheel)
    elsewhere = tmp_path / "elsewhere"  # neither the repository nor its src/ is on the path from here
    elsewhere.mkdir()
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    env.update(HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")

    probe = subprocess.run([str(python), "-c", PROBE], cwd=elsewhere, env=env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert probe.returncode == 0, probe.stderr[-3000:]
    installed = json.loads(probe.stdout.strip().splitlines()[-1])
    for name, path in installed.items():
        assert Path(path).resolve().is_relative_to(venv.resolve()), f"{name} comes from {path}, not the wheel"
    site_packages = Path(installed["hf_deit"]).parents[1]
    assert [name for name in (*SHIPPED_DATA, *SUBPACKAGES) if not (site_packages / name).is_file()] == []

    # --help answers from the installed flag dataclasses (hf_deit_inputs.flags), before torch is imported.
    helped = subprocess.run([str(python), str(REPO / "scripts" / "train.py"), "--help"], cwd=elsewhere, env=env,
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert helped.returncode == 0 and "--teacher_name_or_path" in helped.stdout, helped.stderr[-3000:]

    out = elsewhere / "main_job"
    job = subprocess.run([str(python), str(REPO / "scripts" / "main_job.py"), "--quick", "--dataset_name", "digits",
                          "--output_dir", str(out)], cwd=elsewhere, env=env, capture_output=True, text=True,
                         timeout=1800)  # fmt: skip
    assert job.returncode == 0, job.stdout[-2000:] + job.stderr[-3000:]
    check_quick_main_job(out, job.stdout, job.stderr)


def check_quick_main_job(out: Path, stdout: str, stderr: str) -> None:
    """What `scripts/main_job.py --quick` leaves: the side-by-side table, plain progress lines when piped, learning
    curves in the results, the figure and the cards (rendered from the shipped templates), accuracies through the
    shipped metric module. Checked on the wheel's run: one quick main job in the suite serves both claims."""
    for row in ("(a) CNN teacher, all labels", "(a) DeiT, no distillation", "(a) DeiT, hard distillation + feature maps",
                "(b) CNN teacher, 10% of the labels", "(b) DeiT, 10% of the labels alone",
                "(b) DeiT, 10% of the labels + the other 90% unlabelled"):
        assert f"| {row}" in stdout, row
    assert "points with all labels" in stdout and "points with 10% of the labels" in stdout
    results = json.loads((out / "results.json").read_text())
    assert set(results) == {"teacher", "deit_none", "deit_hard", "few_teacher", "few_labels_alone", "few_labels_pool"}
    # Accuracies through the shipped metric module (hf_deit.metrics loads it by path), per head for the students.
    assert all(0.0 <= metrics["eval_accuracy"] <= 1.0 for metrics in results.values())
    assert "eval_distillation_accuracy" in results["deit_hard"]
    # The distilled students used the recipe (feature maps), the plain ones no teacher.
    logged = lambda run: json.loads((out / run / "trainer_state.json").read_text())["log_history"]  # noqa: E731
    assert any("loss_feature_map" in entry for entry in logged("deit_hard"))
    assert any("loss_feature_map" in entry for entry in logged("few_labels/deit_pool"))
    assert not any("loss_feature_map" in entry for entry in logged("deit_none"))

    # Piped (not a terminal): plain progress lines for every student, and no carriage returns (no third-party bars).
    output = stdout + stderr
    assert "\r" not in output and "\x1b[" not in output and "Saving the dataset" not in output
    for student in ("deit_none", "deit_hard", "few_labels_alone", "few_labels_pool"):
        assert any(line.startswith(f"  {student}  [####################]  2/2  100%  done in ")
                   for line in stdout.splitlines()), student
    assert stdout.count("[progress ") >= 2
    # Learning curves: each student evaluated during training (--eval_steps 0.1 of 2 steps: steps 1 and 2), drawn
    # for the job with the teachers' accuracy, and in each student's card.
    for name in ("deit_none", "deit_hard", "few_labels_alone", "few_labels_pool"):
        curve = results[name]["learning_curve"]
        assert [step for step, _ in curve] == [1, 2] and curve[-1][1] == results[name]["eval_accuracy"]
        assert results[name]["curve_evaluation_seconds"] > 0
    import main_job

    panels, references = main_job.curve_panels(results)
    assert list(panels) == ["(a) all labels", "(b) 10% of the labels"]
    assert panels["(a) all labels"]["DeiT, hard distillation + feature maps"] == results["deit_hard"]["learning_curve"]
    assert references["(b) 10% of the labels"] == {"CNN teacher": results["few_teacher"]["eval_accuracy"]}
    from PIL import Image

    with Image.open(out / "learning_curves.png") as image:
        assert image.format == "PNG" and image.width > 900
    # Cards rendered from the shipped templates, the students' with their curves and per-head table.
    card = (out / "deit_hard" / "README.md").read_text()
    assert "is a **distilled DeiT**" in card
    assert "](learning_curves.png)" in card and "| distillation head (`distillation_logits`) |" in card
    with Image.open(out / "deit_hard" / "learning_curves.png") as image:
        assert image.format == "PNG"
    assert "is an image classifier" in (out / "teacher" / "README.md").read_text()
