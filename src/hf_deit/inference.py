"""The fastest way to classify images with a trained model: `optimize_for_inference(model)`.

It puts the model in eval mode without gradients, casts it to the precision that runs fastest on the device, selects
PyTorch's fused attention (SDPA), and compiles the forward with `torch.compile` with the weights frozen into the graph
(inductor's `freezing`: the weights become constants, so the Linear layers run on pre-packed MKL (fp32) or oneDNN
(bf16) weights, with the bias, GELU and residual additions fused into them). In bf16 on a CPU it also times
inductor's C++ matrix-product templates (AMX micro-kernels) against oneDNN for every Linear shape and keeps the faster
one (`compile_mode="max-autotune"`), which pays for a first compile several times longer; in fp32 the MKL kernel wins
on the model's shapes, so fp32 compiles without it (the figures: README, "Where the defaults come from").

Precision ("auto"):
    CUDA    bf16 where the GPU supports it.
    CPU     bf16 only with AMX (`amx_bf16`) and a model at least as wide as DeiT-Tiny. AVX512-BF16 alone is not enough:
            there bf16 inference ran slower than fp32 (README). With AMX, bf16 matrix products run several times
            faster than fp32 ones (the benchmark report measures both on the model's own shapes).

Where `torch.compile` cannot run (no C++ compiler, an unsupported Python, a graph it cannot trace), the model runs
eagerly with the same precision and a warning says why.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .precision import bf16_is_faster

INFERENCE_PRECISIONS = ("auto", "fp32", "bf16")
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def fastest_inference_precision(
    device: str | torch.device, hidden_size: int | None = None, flags: set[str] | None = None
) -> str:
    """"bf16" or "fp32": the faster inference precision on `device` (see the module docstring; on a CPU bf16 needs
    AMX). `flags`: the CPU's feature flags (read from /proc/cpuinfo when None)."""
    return "bf16" if bf16_is_faster(device, hidden_size, cpu_kernels=("amx_bf16",), flags=flags) else "fp32"


# Inductor settings for inference, per compile mode ("auto" picks one per precision and device, see
# `inference_compile_mode`). The benchmark compiles timm with the same ones.
COMPILE_MODES = ("auto", "default", "max-autotune")
INDUCTOR_INFERENCE_CONFIG = {
    "default": {"freezing": True},
    "max-autotune": {"freezing": True, "max_autotune": True, "max_autotune_gemm_backends": "CPP,ATEN"},
}


def inference_compile_mode(precision: str, device: str | torch.device) -> str:
    """The compile mode `compile_mode="auto"` uses: "max-autotune" for bf16 on a CPU, else "default"."""
    return "max-autotune" if precision == "bf16" and torch.device(device).type == "cpu" else "default"


def compile_for_inference(fn, compile_mode: str = "default", **compile_options):
    """`torch.compile(fn, **compile_options)` (static shapes unless `dynamic` is given) for inference, with
    `INDUCTOR_INFERENCE_CONFIG[compile_mode]` in force: call the result under `torch.no_grad()` or
    `torch.inference_mode()` (freezing applies to graphs without gradients only). Used for the trained model
    (`optimize_for_inference`) and for the teacher during training (`Teacher.compile`), whose weights never change.

    The settings are patched into inductor's config around every call rather than passed as
    `torch.compile(options=...)`: dynamo decides whether the parameters become constants from the global `freezing`
    flag when it traces (the call is when a new shape compiles), so `options={"freezing": True}` is silently ignored
    and the weights stay graph inputs, unpacked (measured with torch 2.14: no `_frozen_param` in the generated code).
    Other backends than inductor get `torch.compile` as is.
    """
    import torch._inductor.config as inductor_config

    if compile_mode not in INDUCTOR_INFERENCE_CONFIG:
        raise ValueError(f"compile mode {compile_mode!r} is not one of {tuple(INDUCTOR_INFERENCE_CONFIG)}.")
    # dynamic=False by default: each new batch size compiles its own static graph (faster than one dynamic graph).
    compiled = torch.compile(fn, **{"dynamic": False, **compile_options})
    if compile_options.get("backend", "inductor") != "inductor":
        return compiled
    settings = INDUCTOR_INFERENCE_CONFIG[compile_mode]

    def call(*args, **kwargs):
        with inductor_config.patch(settings):
            return compiled(*args, **kwargs)

    return call


class InferenceModel(nn.Module):
    """A classifier prepared for inference: call it with float32 `pixel_values`, get float32 logits.

    Attributes: `model` (the eval-mode model in `dtype`), `precision` ("fp32"/"bf16"), `compiled` (whether the
    forward runs through `torch.compile`; False after a fallback), `compile_mode`.
    """

    def __init__(self, model: nn.Module, precision: str, compile: bool, compile_mode: str = "default"):
        super().__init__()
        self.model = model
        self.precision = precision
        self.dtype = _DTYPES[precision]
        self.compiled = compile
        self.compile_mode = compile_mode
        self._compiled_logits = compile_for_inference(self._logits, compile_mode) if compile else None

    def _logits(self, pixel_values: torch.Tensor) -> torch.Tensor:
        output = self.model(pixel_values.to(self.dtype))
        logits = output.logits if hasattr(output, "logits") else output[0]
        return logits.float()

    @torch.inference_mode()
    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        if not self.compiled:
            return self._logits(pixel_values)
        # Any compiler failure falls back to eager; an error of the input itself re-raises from the eager call.
        try:
            return self._compiled_logits(pixel_values)
        except Exception as error:  # noqa: BLE001
            logits = self._logits(pixel_values)  # raises here if the input itself is wrong
            self.compiled, self._compiled_logits = False, None
            warnings.warn(
                f"torch.compile failed ({type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}); "
                "the model runs eagerly instead. Pass compile=False to skip compiling.",
                stacklevel=2,
            )
            return logits


def optimize_for_inference(
    model: nn.Module,
    precision: str = "auto",
    compile: bool = True,
    device: str | torch.device | None = None,
    compile_mode: str = "auto",
) -> InferenceModel:
    """Prepares `model` (a `DistilledDeiTForImageClassification`, or any classifier returning logits) for inference.

    precision: "auto" (the faster of fp32 and bf16 on this device, see `fastest_inference_precision`), "fp32" or
        "bf16". The model's weights are cast in place.
    compile: compile the forward with `torch.compile` and frozen weights (the first call of each new input shape
        compiles: tens of seconds on a CPU). Falls back to eager where compiling fails.
    device: where to run (default: where the model's weights are).
    compile_mode: "auto" ("max-autotune" for bf16 on a CPU, else "default"), "default" (frozen weights) or
        "max-autotune" (frozen weights, and each Linear shape timed against inductor's C++ matrix-product templates;
        about 4x the compile time, see the module docstring).

    The model is switched to eval mode, gradients are turned off and, where the model supports it, attention runs
    through SDPA (`config._attn_implementation = "sdpa"`, changed in place; attention weights are not returned).
    """
    if precision not in INFERENCE_PRECISIONS:
        raise ValueError(
            f"precision={precision!r} is not one of {INFERENCE_PRECISIONS}; use 'auto' to let the device decide."
        )
    if compile_mode not in COMPILE_MODES:
        raise ValueError(
            f"compile_mode={compile_mode!r} is not one of {COMPILE_MODES}; 'auto' picks the faster one for the "
            "precision and device."
        )
    device = torch.device(device) if device is not None else next(model.parameters()).device
    config = getattr(model, "config", None)
    if precision == "auto":
        precision = fastest_inference_precision(device, getattr(config, "hidden_size", None))
    if compile_mode == "auto":
        compile_mode = inference_compile_mode(precision, device)
    if getattr(model, "_supports_sdpa", False) and config is not None:
        config._attn_implementation = "sdpa"
    model = model.to(device, _DTYPES[precision]).eval().requires_grad_(False)
    if compile and not torch._dynamo.is_dynamo_supported():
        warnings.warn("torch.compile is not available with this Python/PyTorch; the model runs eagerly.", stacklevel=2)
        compile = False
    return InferenceModel(model, precision, compile, compile_mode)

