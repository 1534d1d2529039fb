"""`optimize_for_inference`: the precision chosen per CPU, outputs equal to the plain model's (compiled, bf16), and the
eager fallback where `torch.compile` fails."""

import warnings

import pytest
import torch

from hf_deit import DistilledDeiTForImageClassification
from hf_deit.inference import fastest_inference_precision, inference_compile_mode, optimize_for_inference


@pytest.mark.parametrize("flags, hidden_size, expected", [
    ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, 192, "bf16"),  # Sapphire Rapids and newer
    ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, None, "bf16"),  # a CNN
    ({"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}, 128, "fp32"),  # narrower than DeiT-Tiny
    ({"avx2", "avx512f", "avx512_bf16"}, 384, "fp32"),  # AVX512-BF16 without AMX: bf16 measured slower
    ({"avx2", "fma"}, 384, "fp32"),  # AVX2 only: bf16 is emulated
    (set(), 384, "fp32"),  # no /proc/cpuinfo (macOS)
])  # fmt: skip
def test_cpu_precision_follows_the_cpu_flags(flags, hidden_size, expected):
    assert fastest_inference_precision("cpu", hidden_size, flags=flags) == expected


def test_other_devices_and_bad_precision():
    assert fastest_inference_precision("meta", 384) == "fp32"
    model = DistilledDeiTForImageClassification.__new__(DistilledDeiTForImageClassification)
    with pytest.raises(ValueError, match="precision='fp16' is not one of"):
        optimize_for_inference(model, precision="fp16")


@pytest.fixture
def model_and_images(tiny_config):
    tiny_config._attn_implementation = "eager"
    torch.manual_seed(0)
    model = DistilledDeiTForImageClassification(tiny_config).train()
    images = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model.eval()(images).logits
    return model.train(), images, expected


def test_eager_fp32_prepares_the_model_and_keeps_its_outputs(model_and_images):
    model, images, expected = model_and_images
    fast = optimize_for_inference(model, precision="fp32", compile=False)
    assert (fast.precision, fast.compiled) == ("fp32", False)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert model.config._attn_implementation == "sdpa"  # fused attention, whatever the model was built with
    logits = fast(images)
    assert logits.dtype == torch.float32 and not logits.requires_grad
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


def test_bf16_casts_the_weights_and_takes_float32_images(model_and_images):
    model, images, expected = model_and_images
    fast = optimize_for_inference(model, precision="bf16", compile=False)
    assert fast.precision == "bf16" and next(model.parameters()).dtype == torch.bfloat16
    logits = fast(images)  # float32 in, float32 out
    assert logits.dtype == torch.float32
    # bf16 keeps 8 bits of mantissa: close to the fp32 logits, not equal.
    assert (logits - expected).abs().max() < 0.05 * expected.abs().max()
    assert not torch.equal(logits, expected)


def test_auto_precision_on_cpu_is_the_flag_rule(model_and_images):
    model, images, _ = model_and_images
    fast = optimize_for_inference(model, compile=False)
    assert fast.precision == fastest_inference_precision("cpu", model.config.hidden_size)
    assert fast.precision == "fp32"  # the test model is 32 wide: narrow models stay in float32 on every CPU


@pytest.mark.slow  # compiles (20-60 s on a busy 2-core machine)
def test_compiled_forward_matches_eager_with_its_weights_frozen_and_packed(model_and_images):
    """The compiled forward gives eager's logits, also for a new batch size (which recompiles); the weights become
    constants of the generated code and the Linear layers run on packed weights (MKL in fp32). Passed as
    `torch.compile(options={"freezing": True})` instead, freezing is silently ignored: the weights stay graph inputs
    and every Linear is a plain `addmm`."""
    from torch._inductor.utils import run_and_get_code

    model, images, expected = model_and_images
    fast = optimize_for_inference(model, precision="fp32", compile=True)
    logits, (code, *_) = run_and_get_code(fast, images)
    assert fast.compiled  # no fallback happened
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(fast(images[:1]), expected[:1], atol=1e-4, rtol=1e-4)  # a new batch size recompiles
    assert "_frozen_param" in code
    if torch._C.has_mkl:
        assert "_mkl_linear" in code and "extern_kernels.addmm" not in code


def test_auto_compile_mode_autotunes_bf16_on_cpu_only(model_and_images):
    assert inference_compile_mode("bf16", "cpu") == "max-autotune"  # inductor's AMX templates beat oneDNN at batch 1
    assert inference_compile_mode("fp32", "cpu") == "default"  # MKL's packed GEMM wins on the model's shapes
    assert inference_compile_mode("bf16", "cuda") == "default"
    model, _, _ = model_and_images
    assert optimize_for_inference(model, precision="bf16", compile=False).compile_mode == "max-autotune"
    assert optimize_for_inference(model, precision="fp32", compile=False).compile_mode == "default"


def test_unknown_compile_mode_names_the_choices(model_and_images):
    model, _, _ = model_and_images
    with pytest.raises(ValueError, match=r"compile_mode='autotune' is not one of \('auto', 'default', 'max-autotune'\)"):
        optimize_for_inference(model, compile_mode="autotune")


def _failing_compile(fn, **kwargs):
    def compiled(*args):
        raise RuntimeError("InductorError: no C++ compiler found\n(long compiler log)")

    return compiled


def test_a_failing_compile_falls_back_to_eager_with_a_warning(model_and_images, monkeypatch):
    model, images, expected = model_and_images
    monkeypatch.setattr(torch, "compile", _failing_compile)
    fast = optimize_for_inference(model, precision="fp32", compile=True)
    assert fast.compiled
    with pytest.warns(UserWarning, match=r"torch.compile failed \(RuntimeError: InductorError: no C\+\+ compiler found\)"):
        logits = fast(images)
    assert not fast.compiled
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # stays eager: no second attempt, no second warning
        torch.testing.assert_close(fast(images), expected, atol=1e-5, rtol=1e-5)


def test_a_bad_input_raises_its_own_error_not_a_compile_warning(model_and_images, monkeypatch):
    model, images, _ = model_and_images
    monkeypatch.setattr(torch, "compile", _failing_compile)
    fast = optimize_for_inference(model, precision="fp32", compile=True)
    with pytest.raises(ValueError, match="channels but the model expects 3"):
        fast(images[:, :2])


def test_without_dynamo_the_model_runs_eagerly(model_and_images, monkeypatch):
    model, images, expected = model_and_images
    monkeypatch.setattr(torch._dynamo, "is_dynamo_supported", lambda: False)
    with pytest.warns(UserWarning, match="torch.compile is not available"):
        fast = optimize_for_inference(model, precision="fp32", compile=True)
    assert not fast.compiled
    torch.testing.assert_close(fast(images), expected, atol=1e-5, rtol=1e-5)
