"""Export for deployment (`hf_deit.export`, `scripts/export_onnx.py`): torch.export and ONNX Runtime give eager's
three logits at two batch sizes from one export; the CLI refuses folders without a model."""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from hf_deit import DistilledDeiTForImageClassification
from hf_deit.export import OUTPUT_NAMES, export_program, onnx_session

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
import export_onnx  # noqa: E402

BATCH_SIZES = (1, 5)  # neither is the exporters' example batch of 2: the batch dimension really is dynamic


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from conftest import TINY_CONFIG
    from hf_deit import DistilledDeiTConfig

    torch.manual_seed(0)
    model = DistilledDeiTForImageClassification(DistilledDeiTConfig(**TINY_CONFIG, drop_path_rate=0.0)).eval()
    folder = tmp_path_factory.mktemp("model")
    model.save_pretrained(folder)
    return folder, model


@pytest.fixture(scope="module")
def onnx_file(saved_model, tmp_path_factory):
    """One ONNX export through the command line, for every test below (an export costs ~10-30 s here)."""
    folder, _ = saved_model
    path = tmp_path_factory.mktemp("onnx") / "model.onnx"
    differences = export_onnx.main([str(folder), "--output", str(path)])
    assert set(differences) == set(OUTPUT_NAMES) and max(differences.values()) <= export_onnx.TOLERANCE
    return path


def _eager(model, images):
    with torch.no_grad():
        outputs = model(pixel_values=images)
    return [getattr(outputs, name) for name in OUTPUT_NAMES]


def test_torch_export_gives_eagers_three_logits_at_two_batch_sizes(saved_model):
    _, model = saved_model
    program = export_program(model)
    for batch_size in BATCH_SIZES:
        images = torch.randn(batch_size, 3, 32, 32)
        exported = program.module()(pixel_values=images)
        for name, value, expected in zip(OUTPUT_NAMES, exported, _eager(model, images)):
            assert value.shape == (batch_size, 5), name
            torch.testing.assert_close(value, expected, rtol=0, atol=1e-4, msg=name)
    # The two heads really differ, so a swapped or duplicated output would fail above.
    logits, cls_logits, distillation_logits = _eager(model, torch.randn(2, 3, 32, 32))
    assert (cls_logits - distillation_logits).abs().max() > 1e-3


@pytest.mark.slow
def test_onnx_runtime_gives_eagers_three_logits_at_two_batch_sizes(saved_model, onnx_file):
    _, model = saved_model
    session = onnx_session(onnx_file)
    assert [i.name for i in session.get_inputs()] == ["pixel_values"]
    assert session.get_inputs()[0].shape == ["batch_size", 3, 32, 32]
    assert [o.name for o in session.get_outputs()] == list(OUTPUT_NAMES)
    for batch_size in BATCH_SIZES:
        images = torch.randn(batch_size, 3, 32, 32)
        exported = session.run(None, {"pixel_values": images.numpy()})
        for name, value, expected in zip(OUTPUT_NAMES, exported, _eager(model, images)):
            assert value.shape == (batch_size, 5), name
            np.testing.assert_allclose(value, expected.numpy(), rtol=0, atol=1e-4, err_msg=name)
    # Named outputs can be asked for alone.
    (logits,) = session.run(["logits"], {"pixel_values": np.zeros((2, 3, 32, 32), np.float32)})
    assert logits.shape == (2, 5)


@pytest.mark.slow
def test_export_cli_writes_one_self_contained_file(onnx_file, capsys, saved_model):
    # The weights are inside the file (no external-data side files), so the file alone deploys.
    assert sorted(p.name for p in onnx_file.parent.iterdir()) == ["model.onnx"]
    assert onnx_file.stat().st_size > 50_000


def test_export_cli_refuses_a_folder_without_a_model(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="holds no saved model"):
        export_onnx.main([str(empty), "--output", str(tmp_path / "m.onnx")])
    with pytest.raises(SystemExit, match="does not exist"):
        export_onnx.main([str(tmp_path / "missing"), "--output", str(tmp_path / "m.onnx")])
    (tmp_path / "weights.pth").write_bytes(b"")
    with pytest.raises(SystemExit, match="is a file"):
        export_onnx.main([str(tmp_path / "weights.pth"), "--output", str(tmp_path / "m.onnx")])
    assert not (tmp_path / "m.onnx").exists()


def test_export_cli_refuses_an_output_that_is_not_onnx(saved_model, tmp_path):
    folder, _ = saved_model
    with pytest.raises(SystemExit, match="should end in .onnx"):
        export_onnx.main([str(folder), "--output", str(tmp_path / "model.pt")])


@pytest.mark.slow  # two ONNX exports and two compiles
def test_deploy_benchmark_times_every_contender_with_eagers_logits(tmp_path):
    import benchmark_deploy

    results = benchmark_deploy.main(["--quick", "--rounds", "1", "--batch_sizes", "2", "--output", str(tmp_path / "d")])
    names = {row["contender"] for row in results["rows"]}
    assert {benchmark_deploy.ORT_OURS, benchmark_deploy.ORT_THEIRS, benchmark_deploy.EAGER,
            benchmark_deploy.COMPILED_FP32} <= names
    assert all(row["median"] > 0 for row in results["rows"])
    assert max(results["parity_max_abs_diff"].values()) < 1e-4  # the quick model is narrow: every contender in fp32
    report = (tmp_path / "d.md").read_text()
    assert "ours, optimize_for_inference fp32" in report and "vs ours eager" in report
