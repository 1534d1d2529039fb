"""The benchmark's quick mode end to end (real models, real Trainer, real DataLoader workers, real files), and the
model's fast paths it measures giving the same outputs as the plain ones."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from hf_deit import DistilledDeiTForImageClassification

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))  # the benchmark is a tool beside the library, imported as the script does

from benchmark import SECTIONS  # noqa: E402
from benchmark_sections import teacher_record  # noqa: E402
from benchmark_sections.common import QUICK_GEOMETRY, BenchmarkSettings, build_timm, compiled_contenders  # noqa: E402
from benchmark_sections.common import interleave, summarize  # noqa: E402
from benchmark_sections.inference import _inference_entry  # noqa: E402
from benchmark_sections.report import check_targets  # noqa: E402


@pytest.mark.slow
def test_quick_benchmark_writes_every_section(tmp_path):
    prefix = tmp_path / "bench" / "cpu-quick"
    completed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--quick", "--output", str(prefix)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    results = json.loads(prefix.with_suffix(".json").read_text())
    markdown = prefix.with_suffix(".md").read_text()

    # Every contender of every precision, with rates and ratios, at batch 4 and batch 1.
    inference = results["inference"]
    assert {(e["precision"], e["batch_size"]) for e in inference} == {(p, b) for p in ("fp32", "bf16-autocast", "bf16") for b in (4, 1)}
    for entry in inference:
        assert set(entry["images_per_s"]) == {f"{lib}/{b}" for lib in ("ours", "timm", "transformers") for b in ("sdpa", "eager")}
        assert all(s["min"] <= s["median"] <= s["max"] and s["min"] > 0 for s in entry["images_per_s"].values())
        assert set(entry["ratios"]) == {"timm", "transformers"}
        # Same weights everywhere: every contender's fp32 logits equal ours.
        assert max(entry["max_abs_logit_diff_fp32"].values()) < 1e-4
    assert {s["batch_size"] for s in results["fastest_modes"]} == {4, 1}

    flops = results["flops"][0]
    assert flops["flops_per_image"]["ours"] < flops["flops_per_image"]["timm"]  # the last block's patch rows skipped
    assert set(flops["dtypes"]) == {"fp32", "bf16"}
    assert all(d["model_shape_matmul_flops_per_s"] > 0 and 0 < d["fraction_of_model_shape_matmul"] for d in flops["dtypes"].values())
    assert [p["precision"] for p in results["profile"]] == ["fp32", "bf16"] and results["profile"][0]["top_ops"]

    (training,) = results["training"]
    assert set(training["images_per_s"]) == {
        "ours/DistillationTrainer", "timm/hand-written loop", "ours/DistillationTrainer + attention distillation"
    }
    assert training["ratio"] > 0 and training["attention_distillation_cost"] > 0
    assert [d["workers"] for d in results["data"]] == [0, 1]
    assert all(d["images_per_s"]["median"] > 0 for d in results["data"])
    assert results["targets"] and all(isinstance(t["met"], bool) for t in results["targets"])

    # The recorded-teacher section with the quick mode's tiny teacher: the three steps, recording and the sweep.
    (record,) = results["teacher_record"]
    assert (record["student"], record["teacher"], record["batch_size"], record["image_size"]) == (
        "tiny", "regnetx_002", 4, 32)
    assert all(seconds > 0 for seconds in record["seconds_per_step"].values())
    ratios = ("live_over_plain", "record_over_plain", "recording_over_live_step",
              "three_run_sweep_with_record_over_without")
    assert all(record[ratio] > 0 for ratio in ratios)
    targets = {t["target"] for t in results["targets"]}
    assert "hard step from the record (regnetx_002) <= 1.05x the undistilled step" in targets

    for heading in ("## Targets", "## Inference: each library's fastest mode", "## Inference: every contender",
                    "## FLOPs and matmul efficiency", "## Profile", "## Training step", "## Data pipeline",
                    "## Recorded teacher outputs"):
        assert heading in markdown
    assert "python scripts/benchmark.py --quick" in markdown and "+ attention distillation" in markdown


def test_the_recorded_teacher_section_runs_when_asked_for_and_holds_the_paper_teacher_to_the_sweep_target():
    full = BenchmarkSettings()  # the full run's default: the heavy section is left out
    assert not teacher_record.enabled(full)
    assert teacher_record.enabled(BenchmarkSettings(sections=("teacher_record",)))  # --sections teacher_record
    assert teacher_record.enabled(BenchmarkSettings.quick())  # the quick mode names its tiny teacher
    entry = {"record_over_plain": 1.02,
             "three_run_sweep_with_record_over_without": 0.6}
    found = {t["target"]: t["met"] for t in teacher_record.targets({"teacher_record": [
        {**entry, "teacher": "regnety_160"}, {**entry, "teacher": "regnety_016", "record_over_plain": 1.2}]})}
    assert found == {
        "hard step from the record (regnety_160) <= 1.05x the undistilled step": True,
        "three-run sweep with regnety_160, recording included: with the record <= 0.5x without": False,
        "hard step from the record (regnety_016) <= 1.05x the undistilled step": False,
    }


def test_interleave_runs_contenders_in_turn_after_a_warm_up_round():
    calls = []
    times = interleave({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, rounds=2, device="cpu")
    assert calls == ["a", "b"] * 3
    assert [len(t) for t in times.values()] == [2, 2]
    assert summarize([1.0, 2.0, 4.0], items=8) == {"median": 4.0, "min": 2.0, "max": 8.0, "runs": 3}


def test_settings_cases_apply_overrides_and_skips():
    settings = BenchmarkSettings(overrides={"small/bf16": None, "bf16": {"batch_size": 8}, "tiny/bf16": {"backends": ("sdpa",)}})
    assert settings.case("small", "bf16") is None
    assert settings.case("tiny", "bf16") == {"batch_size": 8, "backends": ("sdpa",), "latency": True}
    assert settings.case("tiny", "fp32")["batch_size"] == 32
    cuda = BenchmarkSettings.full("cuda")
    assert cuda.models == ("small", "base") and cuda.teacher == "regnety-16gf"


@pytest.mark.slow  # four compilations, two of them autotuned
def test_compiled_contenders_carry_the_same_weights_and_time_the_compiled_graphs():
    reference = build_timm("tiny", QUICK_GEOMETRY)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    calls, compile_seconds, diffs = compiled_contenders(
        reference, "tiny", QUICK_GEOMETRY, "fp32", images, "cpu", modes=("default", "max-autotune")
    )
    names = {"ours/compiled", "timm/compiled", "ours/compiled-max-autotune", "timm/compiled-max-autotune"}
    assert set(calls) == set(compile_seconds) == set(diffs) == names
    assert all(seconds > 0 for seconds in compile_seconds.values())
    assert max(diffs.values()) < 1e-4  # every compiled graph gives ours-eager's logits
    with torch.inference_mode():
        expected = reference(images)
    for name in names:
        assert torch.allclose(calls[name](), expected, atol=1e-4), name


def test_ratios_and_targets_separate_timm_eager_from_timm_compiled():
    rate = lambda median: {"median": median, "min": median, "max": median, "runs": 1}  # noqa: E731
    rows = {"ours/sdpa": rate(60.0), "ours/compiled": rate(80.0), "timm/sdpa": rate(56.0), "timm/eager": rate(50.0),
            "timm/compiled": rate(70.0), "transformers/sdpa": rate(40.0)}
    entry = _inference_entry("tiny", "fp32", 32, rows, parity={})
    ratios = {peer: (r["ours"], r["peer"], round(r["ratio"], 3)) for peer, r in entry["ratios"].items()}
    assert ratios == {"timm": ("ours/compiled", "timm/sdpa", round(80 / 56, 3)),  # timm's fastest eager contender
                      "timm compiled": ("ours/compiled", "timm/compiled", round(80 / 70, 3)),
                      "transformers": ("ours/compiled", "transformers/sdpa", 2.0)}
    flops = {"model": "tiny", "dtypes": {"fp32": {"batch_size": 32, "fraction_of_model_shape_matmul": 0.5}}}
    targets = {t["target"]: t["met"] for t in check_targets({"inference": [entry], "flops": [flops], "training": [], "data": []}, SECTIONS)}
    assert targets == {
        "inference tiny fp32 b32: ours/timm >= 1.3": True,  # 1.43
        "inference tiny fp32 b32: ours/timm compiled >= 1.0": True,
        "inference tiny fp32 b32: ours/transformers >= 1.0": True,
        "tiny fp32 b32 forward >= 55% of fp32 linear FLOP/s on the model's own shapes": False,
    }
    # Without compiled contenders (the quick mode) there is no "timm compiled" ratio, and ours/timm falls short.
    del rows["ours/compiled"], rows["timm/compiled"]
    entry = _inference_entry("tiny", "fp32", 32, rows, parity={})
    assert set(entry["ratios"]) == {"timm", "transformers"} and entry["ratios"]["timm"]["ratio"] < 1.3


@pytest.mark.parametrize("attn_implementation", ["sdpa", "eager"])
def test_fast_paths_match_the_plain_computation(tiny_config, attn_implementation):
    """The classifier computes the last block for the two head tokens only, and the CPU patch embedding as a Linear:
    its logits equal those read from the full backbone output with the patch embedding as a convolution."""
    tiny_config._attn_implementation = attn_implementation
    torch.manual_seed(0)
    model = DistilledDeiTForImageClassification(tiny_config).eval()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        fast = model(images)
        full = model.deit(images, output_hidden_states=True)
        assert full.last_hidden_state.shape[1] == 2 + 16
        expected = (model.cls_classifier(full.pooler_output) + model.distillation_classifier(full.distillation_output)) / 2
        patches = model.deit.embeddings.patch_embeddings
        by_conv = patches.projection(images).flatten(2).transpose(1, 2)
        assert torch.allclose(patches(images), by_conv, atol=1e-5)
        only_heads = model.deit(images, token_states_only=True)
    assert only_heads.last_hidden_state.shape[1] == 2
    assert torch.allclose(fast.logits, expected, atol=1e-5)
    assert torch.allclose(only_heads.pooler_output, full.pooler_output, atol=1e-5)
