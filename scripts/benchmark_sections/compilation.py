"""torch.compile: compile time and eager vs compiled images/s of the inference forward."""

from collections.abc import Callable

import torch

from .common import (
    BenchmarkSettings,
    _image_size,
    _rate,
    build_ours,
    build_timm,
    interleave,
    summarize,
    time_call,
)
from .training import build_teacher

NAME = "compile"


def enabled(settings: BenchmarkSettings) -> bool:
    return settings.compile


def measure(settings: BenchmarkSettings, results: dict, log: Callable[[str], None]) -> list[dict]:
    return compile_section(settings, log)


def markdown(results: dict) -> list[str]:
    lines = []
    if results["compile"]:
        lines += ["", "## torch.compile (inference)", "",
                  "| module | precision | batch | compile s | eager | compiled | speedup |", "|---|---|---|---|---|---|---|"]
        for c in results["compile"]:
            s = c["images_per_s"]
            lines.append(f"| {c['module']} | {c['precision']} | {c['batch_size']} | {c['compile_seconds']:.1f} | "
                         f"{_rate(s['eager'])} | {_rate(s['compiled'])} | {c['speedup']:.2f} |")
    return lines


def compile_section(settings: BenchmarkSettings, log: Callable[[str], None]) -> list[dict]:
    """Compile time (first call) and forward speedup of `torch.compile` for the student and the teacher, each
    compiled as `--torch_compile` compiles it in training."""
    from hf_deit.inference import compile_for_inference

    device = settings.device
    size = _image_size(settings.geometry)
    precision = settings.compile_precision
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    model_name = settings.models[0]
    batch = (settings.case(model_name, precision) or {"batch_size": settings.batch_size})["batch_size"]
    reference = build_timm(model_name, settings.geometry)
    teacher = build_teacher(settings.teacher, reference.num_classes, size)
    # Each as training compiles it: the student with `torch.compile`, the teacher through `Teacher.compile` (frozen
    # weights); the teacher also without freezing, for comparison.
    modules = {
        f"student ours/{model_name}": (build_ours(reference, "sdpa"), torch.compile),
        f"teacher {settings.teacher}, frozen weights (training's)": (
            teacher, lambda module: compile_for_inference(module, dynamic=None)),
        f"teacher {settings.teacher}, plain torch.compile": (teacher, torch.compile),
    }
    results = []
    for name, (module, compile_module) in modules.items():
        module = module.to(device, dtype).eval()
        images = torch.randn(batch, 3, size, size, device=device, dtype=dtype)
        torch._dynamo.reset()
        compiled = compile_module(module)
        log(f"compile {name}")
        with torch.inference_mode():
            compile_seconds = time_call(lambda: compiled(images), device)
            times = interleave({"eager": lambda: module(images), "compiled": lambda: compiled(images)},
                               settings.rounds, device)
        stats = {mode: summarize(t, batch) for mode, t in times.items()}
        results.append({
            "module": name, "precision": precision, "batch_size": batch, "compile_seconds": compile_seconds,
            "images_per_s": stats, "speedup": stats["compiled"]["median"] / stats["eager"]["median"],
        })
    return results
