"""FLOPs and matmul efficiency: FLOPs per image (ours and timm), the machine's matmul FLOP/s on large and on the
model's own shapes, and the fraction of it our forward achieves (read from the inference section's rates)."""

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .common import BenchmarkSettings, _image_size, build_ours, build_timm, time_call
from .inference import _best

NAME = "flops"


def measure(settings: BenchmarkSettings, results: dict, log: Callable[[str], None]) -> list[dict]:
    return flops_section(settings, results.get("inference", []), log)


def targets(results: dict) -> list[dict]:
    targets = []
    for entry in results["flops"]:
        for dtype, d in entry["dtypes"].items():
            for batch, fraction in ((d["batch_size"], d["fraction_of_model_shape_matmul"]),
                                    (1, d.get("batch_1", {}).get("fraction_of_model_shape_matmul"))):
                if fraction is not None:
                    targets.append({"target": f"{entry['model']} {dtype} b{batch} forward >= 55% of {dtype} linear "
                                              "FLOP/s on the model's own shapes", "value": fraction, "met": fraction >= 0.55})
    return targets


def markdown(results: dict) -> list[str]:
    lines = []
    lines += ["## FLOPs and matmul efficiency", "",
              "Reference throughput is `F.linear` (the kernel the model's Linear layers run), on a large square product "
              "and on the model's own Linear shapes at the benchmarked batch; `torch.matmul` on the large square is "
              "shown too.", "",
              "| model | GFLOPs/image ours (timm) | dtype | large linear (matmul) GFLOP/s | model-shape linear GFLOP/s | "
              "our forward GFLOP/s | fraction of model-shape linear |", "|---|---|---|---|---|---|---|"]
    for entry in results["flops"]:
        for dtype, d in entry["dtypes"].items():
            achieved = d["forward_flops_per_s"]
            lines.append(
                f"| {entry['model']} (batch {d['batch_size']}) | {entry['flops_per_image']['ours'] / 1e9:.3f} "
                f"({entry['flops_per_image']['timm'] / 1e9:.3f}) | {dtype} | {d['large_linear_flops_per_s'] / 1e9:.1f} "
                f"({d['large_torch_matmul_flops_per_s'] / 1e9:.1f}) | "
                f"{d['model_shape_matmul_flops_per_s'] / 1e9:.1f} | {achieved / 1e9 if achieved else float('nan'):.1f} | "
                f"{d['fraction_of_model_shape_matmul'] or float('nan'):.2f} |")
            if "batch_1" in d:
                b1 = d["batch_1"]
                lines.append(
                    f"| {entry['model']} (batch 1) | | {dtype} | | {b1['model_shape_matmul_flops_per_s'] / 1e9:.1f} | "
                    f"{(b1['forward_flops_per_s'] or float('nan')) / 1e9:.1f} | "
                    f"{b1['fraction_of_model_shape_matmul'] or float('nan'):.2f} |")
    return lines


def _linear_shapes(model: nn.Module, tokens: int) -> list[tuple[int, int, int, int]]:
    """(M, K, N, count) of the backbone's Linear layers for `tokens` rows (M = batch * sequence)."""
    shapes = {}
    for module in model.modules():
        if isinstance(module, nn.Linear) and "classifier" not in type(module).__name__:
            key = (tokens, module.in_features, module.out_features)
            shapes[key] = shapes.get(key, 0) + 1
    return [(*key, count) for key, count in shapes.items()]


def matmul_flops_per_s(m: int, k: int, n: int, dtype: torch.dtype, device: str, seconds: float = 0.5,
                       op: str = "linear") -> float:
    """Measured FLOP/s of an `(m, k) x (k, n)` product in `dtype`, best of repeats over about `seconds`.

    `op="linear"` times `F.linear` (weight stored `(n, k)`), the kernel every Linear layer of the model runs;
    `op="matmul"` times `torch.matmul`, which on CPUs without native bf16 takes a far slower bf16 path.
    """
    a = torch.randn(m, k, device=device).to(dtype)
    if op == "linear":
        weight = torch.randn(n, k, device=device).to(dtype)
        call = lambda: F.linear(a, weight)  # noqa: E731
    else:
        b = torch.randn(k, n, device=device).to(dtype)
        call = lambda: torch.matmul(a, b)  # noqa: E731
    call()
    best, spent = math.inf, 0.0
    while True:  # at least once
        elapsed = time_call(call, device)
        best, spent = min(best, elapsed), spent + elapsed
        if spent >= seconds:
            return 2 * m * k * n / best


def flops_section(settings: BenchmarkSettings, inference: list[dict], log: Callable[[str], None]) -> list[dict]:
    """Per model: FLOPs per image (ours and timm), the machine's matmul FLOP/s (large square and the model's own
    Linear shapes) per dtype, and the fraction of the model-shape throughput our forward achieves."""
    from torch.utils.flop_counter import FlopCounterMode

    device = settings.device
    size = _image_size(settings.geometry)
    large = 256 if settings.geometry else (8192 if device == "cuda" else 1024)
    results = []
    for model_name in settings.models:
        log(f"flops {model_name}")
        reference = build_timm(model_name, settings.geometry).to(device)
        ours = build_ours(reference, "sdpa").to(device)
        image = torch.randn(1, 3, size, size, device=device)
        counts = {}
        for name, model in (("ours", ours), ("timm", reference)):
            counter = FlopCounterMode(display=False)
            with torch.inference_mode(), counter:
                model(image)
            counts[name] = counter.get_total_flops()
        sequence = (size // ours.config.patch_size) ** 2 + 2
        entry = {"model": model_name, "flops_per_image": counts, "dtypes": {}}
        for precision, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
            case = settings.case(model_name, precision)
            if case is None:
                continue
            batch = case["batch_size"]
            large_rate = matmul_flops_per_s(large, large, large, dtype, device)
            large_matmul_rate = matmul_flops_per_s(large, large, large, dtype, device, seconds=0.0, op="matmul")
            shapes_rate = _model_shape_rate(ours, batch * sequence, dtype, device)
            achieved = _achieved_flops_per_s(inference, model_name, precision, batch, counts["ours"])
            latency = {}
            if case["latency"] and batch != 1:
                rate_1 = _model_shape_rate(ours, sequence, dtype, device)
                achieved_1 = _achieved_flops_per_s(inference, model_name, precision, 1, counts["ours"])
                latency = {"batch_1": {"model_shape_matmul_flops_per_s": rate_1, "forward_flops_per_s": achieved_1,
                                       "fraction_of_model_shape_matmul": achieved_1 / rate_1 if achieved_1 else None}}
            entry["dtypes"][precision] = {**latency,
                "batch_size": batch, "large_linear_flops_per_s": large_rate, "large_size": large,
                "large_torch_matmul_flops_per_s": large_matmul_rate,
                "model_shape_matmul_flops_per_s": shapes_rate, "forward_flops_per_s": achieved,
                "fraction_of_model_shape_matmul": achieved / shapes_rate if achieved else None,
                "fraction_of_large_linear": achieved / large_rate if achieved else None,
            }
        results.append(entry)
    return results


def _model_shape_rate(model: nn.Module, tokens: int, dtype: torch.dtype, device: str) -> float:
    """FLOP/s of `F.linear` over the model's own Linear shapes for `tokens` rows, weighted by each shape's FLOPs."""
    shape_flops = shape_time = 0.0
    for m, k, n, count in _linear_shapes(model, tokens):
        rate = matmul_flops_per_s(m, k, n, dtype, device, seconds=0.2)
        shape_flops += 2 * m * k * n * count
        shape_time += 2 * m * k * n * count / rate
    return shape_flops / shape_time


def _achieved_flops_per_s(inference: list[dict], model_name: str, precision: str, batch: int, flops: float):
    """Our fastest contender's FLOP/s at (model, precision, batch), or None where it was not measured."""
    measured = [e for e in inference
                if e["model"] == model_name and e["batch_size"] == batch and e["precision"] == precision]
    return _best(measured[0]["images_per_s"], "ours")[1] * flops if measured else None
