"""Profile: torch.profiler's top operators (self time) of one forward of ours, per model and precision."""

from collections.abc import Callable

import torch

from .common import BenchmarkSettings, _image_size, _synchronize, build_ours, build_timm

NAME = "profile"


def enabled(settings: BenchmarkSettings) -> bool:
    return settings.profile


def measure(settings: BenchmarkSettings, results: dict, log: Callable[[str], None]) -> list[dict]:
    return profile_section(settings, log)


def markdown(results: dict) -> list[str]:
    lines = []
    if results["profile"]:
        lines += ["", "## Profile: top operators of one forward of ours (self time)", ""]
        for p in results["profile"]:
            mode = "eager, SDPA"
            if p.get("compiled"):
                mode = f"compiled, {p.get('compile_mode') or 'default'} (optimize_for_inference)"
            lines += [f"### {p['model']}, {p['precision']}, batch {p['batch_size']}, {mode}: {p.get('total_ms', 0):.0f} ms "
                      "of self time in all", "", "| op | calls | self ms | share |", "|---|---|---|---|"]
            lines += [f"| {o['op']} | {o['calls']} | {o['self_ms']:.1f} | {o['share']:.0%} |" for o in p["top_ops"]]
            lines.append("")
    return lines


def profile_section(settings: BenchmarkSettings, log: Callable[[str], None]) -> list[dict]:
    """torch.profiler's top operators (self time) of one forward of ours, per model and precision: where the time
    goes. Ours runs as `optimize_for_inference` makes it: compiled where the compiled contenders run (then the ops are
    inductor's fused kernels and the oneDNN/MKL matrix products it calls), else eager with SDPA."""
    from torch.profiler import ProfilerActivity, profile

    from hf_deit.inference import optimize_for_inference

    device = settings.device
    size = _image_size(settings.geometry)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    results = []
    cases = [(m, p) for m in settings.models for p in settings.precisions if p in ("fp32", "bf16") and settings.case(m, p)]
    for model_name, precision in cases:
        batch = settings.case(model_name, precision)["batch_size"]
        compiled = precision in settings.compiled_inference
        log(f"profile {model_name} {precision} batch {batch} ({'compiled' if compiled else 'eager'})")
        torch._dynamo.reset()
        model = optimize_for_inference(build_ours(build_timm(model_name, settings.geometry), "sdpa"),
                                       precision=precision, compile=compiled, device=device)
        images = torch.randn(batch, 3, size, size, device=device)
        model(images)
        model(images)
        with profile(activities=activities) as prof:
            model(images)
        _synchronize(device)
        events = prof.key_averages()
        time_attr = "self_device_time_total" if device == "cuda" else "self_cpu_time_total"
        total = sum(getattr(e, time_attr) for e in events) or 1.0
        top = sorted(events, key=lambda e: getattr(e, time_attr), reverse=True)[:12]
        results.append({
            "model": model_name, "precision": precision, "batch_size": batch, "compiled": model.compiled,
            "compile_mode": model.compile_mode if model.compiled else None, "total_ms": total / 1000, "top_ops": [{"op": e.key, "calls": e.count, "self_ms": getattr(e, time_attr) / 1000,
                         "share": getattr(e, time_attr) / total} for e in top],
        })
    return results
