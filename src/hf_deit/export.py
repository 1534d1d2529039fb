"""Export the distilled DeiT for deployment: `torch.export` programs and ONNX files with a dynamic batch.

Both paths trace a small wrapper that returns the three logits as a plain tuple, in the order of `OUTPUT_NAMES`:
the averaged `logits` (what to serve), then the class head's and the distillation head's. The ONNX file names its
input `pixel_values` and its outputs by those names, and its first dimension is symbolic, so one file serves any
batch size.

    from hf_deit.export import export_onnx, onnx_session
    export_onnx(model, "model.onnx")
    logits, cls_logits, distillation_logits = onnx_session("model.onnx").run(None, {"pixel_values": images})

onnx, onnxscript (the exporter needs it) and onnxruntime are an extra: `pip install hf-deit[onnx]`.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from hf_deit_inputs.checks import install_hint

INPUT_NAME = "pixel_values"
OUTPUT_NAMES = ("logits", "cls_logits", "distillation_logits")
# The exporters refuse a dynamic dimension whose example size is 0 or 1 (they specialise it): trace with 2 images.
_EXAMPLE_BATCH = 2
_DYNAMIC_BATCH = {INPUT_NAME: {0: torch.export.Dim("batch_size")}}


class LogitsOnly(nn.Module):
    """The classifier's three logits as a tuple, for exporters that want tensors rather than a `ModelOutput`.

    Works for any classifier whose output has `logits`, `cls_logits` and `distillation_logits` (ours, and
    transformers' `DeiTForImageClassificationWithTeacher`)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        outputs = self.model(pixel_values=pixel_values, return_dict=True)
        return tuple(getattr(outputs, name) for name in OUTPUT_NAMES)


def example_input(model: nn.Module, batch_size: int = _EXAMPLE_BATCH) -> torch.Tensor:
    """Random images of the size the model's config says it takes."""
    config = model.config
    height, width = (config.image_size, config.image_size) if isinstance(config.image_size, int) else config.image_size
    parameter = next(model.parameters())
    return torch.randn(batch_size, config.num_channels, height, width, dtype=parameter.dtype, device=parameter.device)


def export_program(model: nn.Module) -> torch.export.ExportedProgram:
    """`torch.export` of the model in eval mode; `program.module()(pixel_values)` returns the three logits."""
    return torch.export.export(LogitsOnly(model).eval(), (), kwargs={INPUT_NAME: example_input(model)},
                               dynamic_shapes=_DYNAMIC_BATCH)


def export_onnx(model: nn.Module, path: str | Path, opset_version: int | None = None) -> Path:
    """Write the model (eval mode, float32 as it is) as one ONNX file with the weights inside; returns the path.

    Uses the dynamo exporter (`torch.onnx.export(..., dynamo=True)`), which needs onnxscript."""
    _require("onnxscript", "the ONNX exporter")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with torch.no_grad():
        program = torch.onnx.export(
            LogitsOnly(model).eval(), (), kwargs={INPUT_NAME: example_input(model)}, dynamic_shapes=_DYNAMIC_BATCH,
            input_names=[INPUT_NAME], output_names=list(OUTPUT_NAMES), opset_version=opset_version, dynamo=True,
            verbose=False,
        )
    program.save(str(path), external_data=False)
    return path


def onnx_session(path: str | Path, threads: int | None = None, spinning: bool = True):
    """An onnxruntime CPU session for an exported file, with all graph optimisations on; `threads` limits the
    intra-op thread pool (default: onnxruntime's, one per core). `spinning=False` lets the pool's threads sleep
    between calls instead of busy-waiting: slower for ONNX Runtime alone, but its idle threads no longer take the
    cores from other work in the same process (at batch 1 they slowed the next PyTorch call 4x)."""
    onnxruntime = _require("onnxruntime", "ONNX Runtime inference")
    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        options.intra_op_num_threads = threads
    if not spinning:
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _require(module: str, purpose: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{purpose} needs the `{module}` package, which is not installed: {install_hint('onnx')} installs "
            "onnx, onnxscript and onnxruntime at the tested versions."
        ) from error
