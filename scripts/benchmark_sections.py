"""Side-by-side speed measurements: our distilled DeiT vs timm and transformers (eager, and compiled with inference
settings: ours through `hf_deit.inference.optimize_for_inference`, timm with the same `torch.compile` options), the
training step vs a hand-written loop, the data pipeline, FLOPs and matmul efficiency, `torch.compile`.

Everything runs in one process and the contenders of a comparison take turns (round-robin over `rounds`), so that
the noise of a shared machine falls on all of them alike; results are medians with min/max, and ratios of medians.
`run_benchmark(settings)` returns a JSON-ready dict; `write_report(results, prefix)` writes `prefix.json` and
`prefix.md`. `benchmark.py` beside it is the command line; this module is a tool, not part of the library.
"""

import copy
import io
import json
import math
import os
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from hf_deit.precision import cpu_flags, cpu_has_native_bf16

# The paper's Table 1 throughput (one 16 GB V100, fp32, largest batch that fits), images/s.
PAPER_V100_INFERENCE = {"small": 940.0, "base": 292.0, "tiny": 2536.0}

TIMM_NAMES = {
    "tiny": "deit_tiny_distilled_patch16_224",
    "small": "deit_small_distilled_patch16_224",
    "base": "deit_base_distilled_patch16_224",
}
WIDTHS = {"tiny": 192, "small": 384, "base": 768}
# A geometry small enough for CI: 2 blocks, 32 wide, 32 px images in 8 px patches.
QUICK_GEOMETRY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)

# Inference precisions: weights and input in float32; float32 weights under bf16 autocast (per-call casts); the
# model and input cast to bfloat16 once (`model.to(torch.bfloat16)`).
PRECISIONS = ("fp32", "bf16-autocast", "bf16")
# The compiled contenders: ours through `optimize_for_inference`, timm through the same `compile_for_inference`, in
# each compile mode: "<library>/compiled" (frozen weights) and "<library>/compiled-max-autotune".
COMPILED = "/compiled"
SECTIONS = ("inference", "flops", "profile", "training", "data", "compile")
ATTENTION_CONTENDER = "ours/DistillationTrainer + attention distillation"


@dataclass
class BenchmarkSettings:
    """What to measure and how long. `quick()` and `full(device)` give the two standard runs."""

    device: str = "cpu"
    models: tuple[str, ...] = ("tiny",)
    geometry: dict | None = None  # timm constructor overrides (QUICK_GEOMETRY); None = the real 224 px models
    batch_size: int = 32
    latency: bool = True  # also batch 1
    precisions: tuple[str, ...] = PRECISIONS
    backends: tuple[str, ...] = ("sdpa", "eager")
    # Exceptions per (model, precision): {"small/bf16": {"batch_size": 8, "backends": ["sdpa"]}, "small/bf16-autocast":
    # None (skipped)}; keys may also be just a model or a precision.
    overrides: dict = field(default_factory=dict)
    rounds: int = 3  # measured rounds per contender, after one warm-up round
    train_models: tuple[str, ...] = ("tiny",)
    train_precisions: tuple[str, ...] = ("fp32",)
    train_batch_size: int = 32
    train_steps: int = 2  # measured steps per round (one more warms up)
    teacher: str = "regnet-small"  # or "regnety-16gf"
    data_images: int = 96
    data_image_size: int = 224
    data_workers: tuple[int, ...] = (0, 1, 2)
    compile: bool = True
    compile_precision: str = "fp32"
    # Precisions ("fp32", "bf16") in which the inference section also runs the compiled contenders (each compiles
    # once per model, precision and batch size: 10-20 s apiece on a 2-core CPU), and those in which it also runs them
    # compiled with max-autotune (~40 s apiece; on an AMX CPU inductor's bf16 templates beat oneDNN on most shapes).
    compiled_inference: tuple[str, ...] = ("fp32", "bf16")
    autotuned_inference: tuple[str, ...] = ()
    profile: bool = True
    sections: tuple[str, ...] = SECTIONS

    @classmethod
    def quick(cls) -> "BenchmarkSettings":
        return cls(
            geometry=QUICK_GEOMETRY, batch_size=4, rounds=1, train_batch_size=4, train_steps=1, data_images=8,
            data_image_size=64, data_workers=(0, 1), compile=False, compiled_inference=(), profile=True,
        )

    @classmethod
    def full(cls, device: str = "cpu") -> "BenchmarkSettings":
        if device == "cuda":
            # DeiT-S/B with the paper's teacher size, bf16 (what an Ampere+ GPU runs best) and fp32 for the paper.
            return cls(
                device="cuda", models=("small", "base"), batch_size=128, precisions=("fp32", "bf16-autocast", "bf16"),
                overrides={"fp32": {"latency": False}, "bf16-autocast": {"latency": False}},
                rounds=5, train_models=("small", "base"), train_precisions=("bf16-autocast",), train_batch_size=128,
                train_steps=5, teacher="regnety-16gf", data_workers=(), compile=True, compile_precision="bf16",
            )
        settings = cls(models=("tiny", "small"), rounds=2, train_steps=2)
        if machine_info("cpu")["cpu_native_bf16"]:
            # Native bf16: both models in fp32 and bf16 weights, eager (SDPA) and compiled, batch 32 and 1. Autocast
            # and the eager-attention contenders are left out (a training mode, and a slower backend of each library).
            settings.precisions, settings.backends = ("fp32", "bf16"), ("sdpa",)
            settings.autotuned_inference = ("bf16",) if "amx_bf16" in cpu_flags() else ()
        else:
            # Without AMX/AVX512-BF16 every bf16 kernel is emulated and ~5x slower than fp32: bf16 is measured at a
            # smaller batch, and DeiT-S only in fp32 with SDPA, so that a run on 2 cores stays under ~8 minutes.
            settings.overrides = {
                "tiny/bf16": {"batch_size": 8}, "tiny/bf16-autocast": {"batch_size": 8, "latency": False},
                "small/fp32": {"backends": ("sdpa",), "latency": False}, "small/bf16": None, "small/bf16-autocast": None,
            }
        return settings

    def case(self, model: str, precision: str) -> dict | None:
        """Batch size, backends and latency for one (model, precision), or None when it is skipped."""
        case = {"batch_size": self.batch_size, "backends": tuple(self.backends), "latency": self.latency}
        for key in (model, precision, f"{model}/{precision}"):
            if key in self.overrides:
                if self.overrides[key] is None:
                    return None
                case.update(self.overrides[key])
        return case


# ---------------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------------


def _synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def time_call(fn: Callable[[], object], device: str) -> float:
    _synchronize(device)
    start = time.perf_counter()
    fn()
    _synchronize(device)
    return time.perf_counter() - start


def summarize(seconds: list[float], items: int) -> dict:
    """items/s statistics over per-round times: median, min, max (of the rate)."""
    rates = [items / s for s in seconds]
    return {"median": statistics.median(rates), "min": min(rates), "max": max(rates), "runs": len(rates)}


def interleave(contenders: dict[str, Callable[[], object]], rounds: int, device: str) -> dict[str, list[float]]:
    """Times every contender once per round, in turn; one unrecorded warm-up round first."""
    times = {name: [] for name in contenders}
    for round_index in range(rounds + 1):
        for name, fn in contenders.items():
            elapsed = time_call(fn, device)
            if round_index > 0:
                times[name].append(elapsed)
    return times


# ---------------------------------------------------------------------------------------------------------------------
# Models with the same weights
# ---------------------------------------------------------------------------------------------------------------------


def build_timm(model: str, geometry: dict | None, drop_path_rate: float = 0.0) -> nn.Module:
    """timm's distilled DeiT, randomly initialised with a fixed seed (so two calls give the same weights)."""
    import timm

    torch.manual_seed(0)
    return timm.create_model(TIMM_NAMES[model], pretrained=False, drop_path_rate=drop_path_rate, **(geometry or {})).eval()


def build_ours(timm_model: nn.Module, attn_implementation: str, drop_path_rate: float = 0.0) -> nn.Module:
    """Our model carrying the timm model's weights (converted by `hf_deit.convert`)."""
    from hf_deit.convert import convert_state_dict
    from hf_deit.modeling_distilled_deit import DistilledDeiTForImageClassification

    state_dict, config, _ = convert_state_dict(
        timm_model.state_dict(), num_attention_heads=timm_model.blocks[0].attn.num_heads, drop_path_rate=drop_path_rate
    )
    config._attn_implementation = attn_implementation
    model = DistilledDeiTForImageClassification(config)
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def build_transformers(ours: nn.Module, attn_implementation: str) -> nn.Module:
    """transformers' DeiTForImageClassificationWithTeacher with our weights (its keys are ours with qkv split)."""
    from transformers import DeiTConfig, DeiTForImageClassificationWithTeacher

    c = ours.config
    config = DeiTConfig(
        image_size=c.image_size, patch_size=c.patch_size, hidden_size=c.hidden_size, num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads, intermediate_size=c.intermediate_size, num_labels=c.num_labels,
        layer_norm_eps=c.layer_norm_eps, qkv_bias=c.qkv_bias, attn_implementation=attn_implementation,
    )
    model = DeiTForImageClassificationWithTeacher(config)
    state_dict = {}
    for key, value in ours.state_dict().items():
        if key.endswith(("attention.qkv.weight", "attention.qkv.bias")):
            prefix, kind = key.rsplit(".qkv.", 1)
            for name, part in zip(("q_proj", "k_proj", "v_proj"), value.chunk(3, dim=0)):
                state_dict[f"{prefix}.{name}.{kind}"] = part
        else:
            state_dict[key] = value
    model.load_state_dict(state_dict, strict=True)
    return model.eval()


def _set_timm_fused_attention(model: nn.Module, fused: bool) -> nn.Module:
    for module in model.modules():
        if hasattr(module, "fused_attn"):
            module.fused_attn = fused
    return model


class _Contender:
    """One model in one precision: a callable running a forward pass without gradients."""

    def __init__(self, model: nn.Module, precision: str, device: str):
        self.model = model
        self.precision = precision
        self.device = device

    def forward(self, images: torch.Tensor):
        autocast = (
            torch.autocast(self.device, dtype=torch.bfloat16) if self.precision == "bf16-autocast" else nullcontext()
        )
        with torch.inference_mode(), autocast:
            return self.model(images)


def _logits(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    return output.logits if hasattr(output, "logits") else output[0]


def compiled_contenders(
    reference: nn.Module, model_name: str, geometry: dict | None, precision: str, images: torch.Tensor, device: str,
    modes: tuple[str, ...] = ("default",),
) -> tuple[dict[str, Callable[[], object]], dict[str, float], dict[str, float]]:
    """Ours through `optimize_for_inference` and timm through the same `compile_for_inference`, both in `precision`,
    in each compile mode of `modes`, compiled for the shape of `images` (float32): the calls to time, each one's
    compile time (its first call), and each one's max |logits - ours eager| in that precision."""
    from hf_deit.inference import compile_for_inference, optimize_for_inference

    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    cast = images.to(dtype)
    with torch.inference_mode():
        expected = _logits(build_ours(reference, "sdpa").to(device, dtype)(cast)).float()
    calls, compile_seconds, diffs = {}, {}, {}
    for mode in modes:
        suffix = COMPILED + ("" if mode == "default" else f"-{mode}")
        # Each (model, precision, batch, mode) compiles afresh: a shape already seen would make dynamo compile a
        # dynamic graph.
        torch._dynamo.reset()
        ours = optimize_for_inference(build_ours(reference, "sdpa"), precision=precision, device=device,
                                      compile_mode=mode)
        timm_model = _set_timm_fused_attention(build_timm(model_name, geometry), fused=True).to(device, dtype).eval()
        timm_compiled = compile_for_inference(timm_model.requires_grad_(False), mode)
        timm_call = lambda timm_compiled=timm_compiled: _inference_call(timm_compiled, cast)  # noqa: E731
        with torch.inference_mode():
            for name, call in ((f"ours{suffix}", lambda ours=ours: ours(images)), (f"timm{suffix}", timm_call)):
                start = time.perf_counter()
                logits = call()
                compile_seconds[name] = time.perf_counter() - start
                diffs[name] = float((_logits(logits).float() - expected).abs().max())
                calls[name] = call
        if not ours.compiled:
            raise RuntimeError(
                "optimize_for_inference fell back to eager (see the warning above): nothing compiled to time."
            )
    return calls, compile_seconds, diffs


def _inference_call(model: nn.Module, images: torch.Tensor):
    with torch.inference_mode():
        return model(images)


# ---------------------------------------------------------------------------------------------------------------------
# Sections
# ---------------------------------------------------------------------------------------------------------------------


def _image_size(geometry: dict | None) -> int:
    return (geometry or {}).get("img_size", 224)


def inference_section(settings: BenchmarkSettings, log: Callable[[str], None]) -> list[dict]:
    """Images/s of every contender, per model, batch size and precision; ratios of ours (fastest backend) to each peer
    (its fastest backend)."""
    device = settings.device
    results = []
    for model_name in settings.models:
        reference = build_timm(model_name, settings.geometry)
        all_backends = sorted({b for p in settings.precisions for b in (settings.case(model_name, p) or {}).get("backends", ())})
        fp32_models = {}
        for backend in all_backends:
            fp32_models[f"ours/{backend}"] = build_ours(reference, backend)
        ours_any = build_ours(reference, "eager")
        for backend in all_backends:
            fp32_models[f"timm/{backend}"] = _set_timm_fused_attention(
                build_timm(model_name, settings.geometry), fused=backend == "sdpa"
            )
            fp32_models[f"transformers/{backend}"] = build_transformers(ours_any, backend)
        size = _image_size(settings.geometry)
        parity = _parity(fp32_models, size, device)
        # bf16 last: casting the weights to bf16 and back rounds them (the same for every contender).
        for precision in sorted(settings.precisions, key=lambda p: p == "bf16"):
            case = settings.case(model_name, precision)
            if case is None:
                continue
            batch = case["batch_size"]
            batch_sizes = [batch] + ([1] if case["latency"] and batch != 1 else [])
            dtype = torch.bfloat16 if precision == "bf16" else torch.float32
            contenders = {
                name: _Contender(model.to(device, dtype), precision, device)
                for name, model in fp32_models.items()
                if name.split("/")[1] in case["backends"]
            }
            for batch_size in batch_sizes:
                images_fp32 = torch.randn(batch_size, 3, size, size, generator=torch.Generator().manual_seed(1)).to(device)
                images = images_fp32.to(dtype)
                # Batch 1 is a latency measurement: several calls per timed round, so that a round is not 5 ms.
                calls = 1 if batch_size > 1 else 4
                forwards = {name: (lambda c=c: c.forward(images)) for name, c in contenders.items()}
                compiled = {}
                if precision in settings.compiled_inference:
                    log(f"compile {model_name} {precision} batch {batch_size}")
                    modes = ("default",) + (("max-autotune",) if precision in settings.autotuned_inference else ())
                    compiled_calls, compile_seconds, compiled_diffs = compiled_contenders(
                        reference, model_name, settings.geometry, precision, images_fp32, device, modes
                    )
                    forwards.update(compiled_calls)
                    compiled = {"compile_seconds": compile_seconds, "max_abs_logit_diff_to_ours_eager": compiled_diffs}
                calls_of = {name: (lambda f=f: [f() for _ in range(calls)]) for name, f in forwards.items()}
                log(f"inference {model_name} {precision} batch {batch_size}")
                times = interleave(calls_of, settings.rounds, device)
                rows = {name: summarize(t, batch_size * calls) for name, t in times.items()}
                results.append({**_inference_entry(model_name, precision, batch_size, rows, parity), **compiled})
            for model in fp32_models.values():
                model.to(torch.float32)
    return results


def _parity(models: dict[str, nn.Module], size: int, device: str) -> dict[str, float]:
    """Max |logits - ours| in fp32: evidence that every contender carries the same weights."""
    images = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(2)).to(device)
    with torch.inference_mode():
        outputs = {name: _logits(model.to(device)(images)).float() for name, model in models.items()}
    reference = next(iter(outputs.values()))
    return {name: float((logits - reference).abs().max()) for name, logits in outputs.items()}


def _best(rows: dict[str, dict], library: str, compiled: bool | None = None) -> tuple[str, float]:
    """The fastest contender of `library` ("ours", "timm", "transformers"); `compiled`: only compiled (True) or only
    eager (False) contenders, or either (None)."""
    names = [n for n in rows if n.startswith(library + "/") and compiled in (None, COMPILED in n)]
    name = max(names, key=lambda n: rows[n]["median"])
    return name, rows[name]["median"]


# Peers of ours in the ratios: each library's fastest eager contender, and timm compiled where it ran.
PEERS = {"timm": ("timm", False), "timm compiled": ("timm", True), "transformers": ("transformers", None)}


def _inference_entry(model_name, precision, batch_size, rows, parity) -> dict:
    ours_name, ours = _best(rows, "ours")
    ratios = {}
    for peer, (library, compiled) in PEERS.items():
        if compiled and not any(n.startswith("timm" + COMPILED) for n in rows):
            continue
        peer_name, peer_rate = _best(rows, library, compiled)
        ratios[peer] = {"ours": ours_name, "peer": peer_name, "ratio": ours / peer_rate}
    return {
        "model": model_name, "precision": precision, "batch_size": batch_size, "images_per_s": rows,
        "ratios": ratios, "max_abs_logit_diff_fp32": parity,
    }


def fastest_mode_ratios(inference: list[dict]) -> list[dict]:
    """Per model and batch size: each library's fastest (precision, backend) and ours/peer at those modes."""
    summary = []
    keys = sorted({(e["model"], e["batch_size"]) for e in inference}, key=lambda k: (k[0], -k[1]))
    for model_name, batch_size in keys:
        entries = [e for e in inference if e["model"] == model_name and e["batch_size"] == batch_size]
        best = {}
        for library in ("ours", "timm", "transformers"):
            candidates = [(e["precision"], *_best(e["images_per_s"], library)) for e in entries]
            precision, name, rate = max(candidates, key=lambda c: c[2])
            best[library] = {"precision": precision, "contender": name, "images_per_s": rate}
        summary.append({
            "model": model_name, "batch_size": batch_size, "fastest": best,
            "ratio_vs_timm": best["ours"]["images_per_s"] / best["timm"]["images_per_s"],
            "ratio_vs_transformers": best["ours"]["images_per_s"] / best["transformers"]["images_per_s"],
        })
    return summary


# ---- FLOPs and matmul efficiency ----


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


# ---- training step ----


def build_teacher(kind: str, num_labels: int, image_size: int) -> nn.Module:
    """A randomly initialised transformers RegNet: 'regnet-small' (CPU-sized, ~RegNetY-200MF) or 'regnety-16gf'
    (the paper's teacher's size, as timm's regnety_160)."""
    from transformers import RegNetConfig, RegNetForImageClassification

    if kind == "regnety-16gf":
        config = RegNetConfig(embedding_size=32, hidden_sizes=[224, 448, 1232, 3024], depths=[2, 4, 11, 1],
                              groups_width=112, layer_type="y", num_labels=num_labels)
    elif kind == "regnet-small":
        config = RegNetConfig(embedding_size=32, hidden_sizes=[24, 56, 152, 368], depths=[1, 1, 4, 7],
                              groups_width=8, layer_type="y", num_labels=num_labels)
    else:
        raise ValueError(f"Unknown teacher {kind!r}: use 'regnet-small' or 'regnety-16gf'.")
    torch.manual_seed(1)
    return RegNetForImageClassification(config).eval()


class _StepTimer:
    """A TrainerCallback recording the wall time of every optimizer step (from one step's end to the next's)."""

    def __init__(self, device: str):
        from transformers import TrainerCallback

        timer = self

        class Callback(TrainerCallback):
            def on_step_end(self, args, state, control, **kwargs):
                _synchronize(timer.device)
                timer.stamps.append(time.perf_counter())

        self.device = device
        self.stamps: list[float] = []
        self.callback = Callback()


def _train_batches(batch_size: int, size: int, num_labels: int, count: int, device: str) -> list[dict]:
    generator = torch.Generator().manual_seed(3)
    batches = []
    for _ in range(count):
        labels = torch.randint(0, num_labels, (batch_size,), generator=generator)
        # Soft targets, as the mixup collator hands them to the loss.
        soft = F.one_hot(labels, num_labels).float() * 0.9 + 0.1 / num_labels
        batches.append({"pixel_values": torch.randn(batch_size, 3, size, size, generator=generator), "labels": soft})
    return batches


def training_section(settings: BenchmarkSettings, log: Callable[[str], None]) -> list[dict]:
    """One optimisation step (student forward + teacher forward + hard-distillation loss + backward + grad clipping +
    AdamW + LR schedule), images/s: `DistillationTrainer.train()` vs the same work written by hand on timm's model.

    Both start from the same weights and see the same pre-made batches (soft targets, as after mixup), so the data
    pipeline is not in it. The trainer's time per step is measured between consecutive `on_step_end` callbacks.
    """
    from transformers import default_data_collator

    from hf_deit.arguments import DistillationConfig
    from hf_deit.teacher import Teacher
    from hf_deit.trainer import DistillationTrainer

    device = settings.device
    size = _image_size(settings.geometry)
    results = []
    for model_name in settings.train_models:
        reference = build_timm(model_name, settings.geometry)
        num_labels = reference.num_classes
        batch_size = settings.train_batch_size
        steps = settings.train_steps + 1  # the first step of each round warms up
        batches = _train_batches(batch_size, size, num_labels, steps, "cpu")
        for precision in settings.train_precisions:
            bf16 = precision != "fp32"
            # The paper's stochastic depth (0.1) in both students.
            timm_model = build_timm(model_name, settings.geometry, drop_path_rate=0.1).train()
            ours = build_ours(timm_model, "sdpa", drop_path_rate=0.1).train()
            timm_model.set_distilled_training(True)
            timm_teacher = Teacher(build_teacher(settings.teacher, num_labels, size)).to(device)
            timm_model.to(device)
            timm_optimizer = torch.optim.AdamW(timm_model.parameters(), lr=5e-4, weight_decay=0.05)

            # Both loops collate the same in-memory examples with the same collator (the Trainer's default).
            rows = [dict(pixel_values=b["pixel_values"][i], labels=b["labels"][i]) for b in batches for i in range(batch_size)]
            hand_loader = torch.utils.data.DataLoader(rows, batch_size=batch_size, shuffle=True, collate_fn=default_data_collator)
            timer, attention_timer = _StepTimer(device), _StepTimer(device)
            ours_for_attention = copy.deepcopy(ours)
            with tempfile.TemporaryDirectory() as output_dir:
                settings_of_both = dict(
                    output_dir=output_dir, per_device_train_batch_size=batch_size, max_steps=steps, learning_rate=5e-4,
                    weight_decay=0.05, bf16=bf16, use_cpu=device == "cpu", report_to=[], save_strategy="no",
                    eval_strategy="no", logging_strategy="no", dataloader_num_workers=0, disable_tqdm=True,
                    data_seed=0, seed=0, lr_scheduler_type="linear", warmup_steps=0, distillation_type="hard",
                )
                args = DistillationConfig(**settings_of_both)
                trainer = DistillationTrainer(
                    model=ours, args=args, train_dataset=rows, teacher=build_teacher(settings.teacher, num_labels, size),
                    callbacks=[timer.callback],
                )
                # The same step plus the attention-map term: the student's last block returns its attention
                # weights (eager there, SDPA elsewhere) and the teacher's last-stage activations become a map.
                attention_trainer = DistillationTrainer(
                    model=ours_for_attention, args=DistillationConfig(**settings_of_both, attention_distillation_weight=1.0),
                    train_dataset=rows, teacher=build_teacher(settings.teacher, num_labels, size),
                    callbacks=[attention_timer.callback],
                )  # fmt: skip

                def run_trainer():
                    timer.stamps.clear()
                    trainer.train()

                def run_attention_trainer():
                    attention_timer.stamps.clear()
                    attention_trainer.train()

                def run_hand_loop():
                    autocast = torch.autocast(device, dtype=torch.bfloat16) if bf16 else nullcontext()
                    for batch in hand_loader:
                        pixel_values = batch["pixel_values"].to(device)
                        labels = batch["labels"].to(device)
                        with autocast:
                            cls_logits, dist_logits = timm_model(pixel_values)
                            with torch.no_grad():
                                teacher_logits = timm_teacher.logits(pixel_values)
                        loss = 0.5 * torch.sum(-labels * F.log_softmax(cls_logits.float(), -1), -1).mean()
                        loss = loss + 0.5 * F.cross_entropy(dist_logits.float(), teacher_logits.argmax(1))
                        loss.backward()
                        nn.utils.clip_grad_norm_(timm_model.parameters(), 1.0)
                        timm_optimizer.step()
                        timm_optimizer.zero_grad(set_to_none=True)
                        _synchronize(device)
                        hand_stamps.append(time.perf_counter())

                log(f"training {model_name} {precision} batch {batch_size}")
                step_times = {"ours/DistillationTrainer": [], "timm/hand-written loop": [], ATTENTION_CONTENDER: []}
                for _ in range(settings.rounds):
                    run_trainer()
                    step_times["ours/DistillationTrainer"] += list(_diffs(timer.stamps))
                    run_attention_trainer()
                    step_times[ATTENTION_CONTENDER] += list(_diffs(attention_timer.stamps))
                    hand_stamps = []
                    run_hand_loop()
                    step_times["timm/hand-written loop"] += list(_diffs(hand_stamps))
            stats = {name: summarize(t, batch_size) for name, t in step_times.items()}
            results.append({
                "model": model_name, "precision": precision, "batch_size": batch_size, "teacher": settings.teacher,
                "images_per_s": stats,
                "ratio": stats["ours/DistillationTrainer"]["median"] / stats["timm/hand-written loop"]["median"],
                # Step time with the attention-map term over step time without it.
                "attention_distillation_cost": stats["ours/DistillationTrainer"]["median"] / stats[ATTENTION_CONTENDER]["median"],
            })
    return results


def _diffs(stamps: list[float]) -> list[float]:
    """Durations between consecutive step ends: the first step (warm-up, and the loop's setup) is not among them."""
    return [b - a for a, b in zip(stamps, stamps[1:])]


# ---- data pipeline ----


def make_image_dataset(count: int, size: int, num_labels: int = 10):
    """A `datasets` dataset of `count` encoded images (alternately JPEG and PNG) of about `size` px with smooth random
    content (noise would make PNG decoding unrealistically slow), and integer labels."""
    import numpy as np
    from datasets import ClassLabel, Dataset, Features, Image
    from PIL import Image as PILImage

    rng = np.random.default_rng(0)
    records = []
    for index in range(count):
        height, width = size + int(rng.integers(0, size // 4)), size + int(rng.integers(0, size // 4))
        coarse = rng.integers(0, 256, size=(height // 16 + 1, width // 16 + 1, 3), dtype=np.uint8)
        image = PILImage.fromarray(coarse).resize((width, height), PILImage.BILINEAR)
        buffer = io.BytesIO()
        image.save(buffer, format="JPEG" if index % 2 == 0 else "PNG", **({"quality": 90} if index % 2 == 0 else {}))
        records.append({"image": {"bytes": buffer.getvalue(), "path": None}, "label": index % num_labels})
    features = Features({"image": Image(), "label": ClassLabel(num_classes=num_labels)})
    return Dataset.from_list(records, features=features)


def data_section(settings: BenchmarkSettings, log: Callable[[str], None]) -> list[dict]:
    """Images/s of decode + DeiT train transforms + mixup/cutmix collation through a DataLoader, per worker count.
    Each round is a full pass; time is counted from the first batch (so worker start-up is excluded)."""
    from hf_deit.data import apply_transforms, build_collator, build_train_transform, recipe_defaults

    num_labels = 10
    dataset = make_image_dataset(settings.data_images, settings.data_image_size, num_labels)
    recipe = recipe_defaults(settings.data_image_size)
    from datasets import DatasetDict

    train = apply_transforms(DatasetDict(train=dataset), build_train_transform(recipe), build_train_transform(recipe))["train"]
    collator = build_collator(recipe, num_labels)
    batch_size = min(settings.train_batch_size, max(1, settings.data_images // 4))
    results = []
    loaders = {
        workers: torch.utils.data.DataLoader(
            train, batch_size=batch_size, num_workers=workers, collate_fn=collator, persistent_workers=workers > 0,
            drop_last=True,
        )
        for workers in settings.data_workers
    }
    times = {workers: [] for workers in loaders}
    counted = {}
    for round_index in range(settings.rounds + 1):
        for workers, loader in loaders.items():
            log(f"data workers={workers} round {round_index}")
            iterator = iter(loader)
            next(iterator)
            start, images = time.perf_counter(), 0
            for batch in iterator:
                images += batch["pixel_values"].shape[0]
            if round_index > 0:
                times[workers].append(time.perf_counter() - start)
                counted[workers] = images
    for workers, seconds in times.items():
        results.append({"workers": workers, "batch_size": batch_size, "image_size": settings.data_image_size,
                        "images_per_s": summarize(seconds, counted[workers])})
    return results


# ---- torch.compile ----


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


# ---------------------------------------------------------------------------------------------------------------------
# Run and report
# ---------------------------------------------------------------------------------------------------------------------


def machine_info(device: str) -> dict:
    flags = cpu_flags()
    info = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "amx": "amx_bf16" in flags,
        "cpu_model": _cpu_model(),
        "cpu_flags": sorted(flags),
        # How busy the machine was (1/5/15-minute load averages) when the run started: other processes share the
        # cores, and absolute rates fall with them (the interleaved ratios much less).
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name()
    try:
        import timm
        import transformers

        info.update(transformers=transformers.__version__, timm=timm.__version__)
    except ImportError:
        pass
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            return next((line.partition(":")[2].strip() for line in cpuinfo if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


def run_benchmark(
    settings: BenchmarkSettings, log: Callable[[str], None] = print, on_section: Callable[[dict], None] | None = None
) -> dict:
    """Runs every section; after each one calls `on_section(results so far)` (the script writes the report then, so
    that a run cut short on a busy machine still leaves what it measured)."""
    started = time.perf_counter()
    results = {"settings": asdict(settings), "machine": machine_info(settings.device), "date": time.strftime("%Y-%m-%d"),
               "inference": [], "fastest_modes": [], "flops": [], "profile": [], "training": [], "data": [],
               "compile": [], "targets": [], "wall_seconds": 0.0}
    if settings.device == "cuda":
        results["paper_v100_fp32_inference"] = PAPER_V100_INFERENCE
    # What `optimize_for_inference(precision="auto")` picks here for each real model (the fastest-mode table shows
    # whether that is the faster one).
    if settings.geometry is None:
        from hf_deit.inference import fastest_inference_precision

        results["auto_precision"] = {m: fastest_inference_precision(settings.device, WIDTHS[m]) for m in settings.models}

    def finished(name: str, value) -> None:
        results[name] = value
        results["fastest_modes"] = fastest_mode_ratios(results["inference"])
        results["targets"] = check_targets(results)
        results["wall_seconds"] = time.perf_counter() - started
        results["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        if on_section is not None:
            on_section(results)

    def run(name: str, section: Callable[[], list], enabled: bool = True) -> None:
        finished(name, section() if enabled and name in settings.sections else [])

    run("inference", lambda: inference_section(settings, log))
    run("flops", lambda: flops_section(settings, results["inference"], log))
    run("profile", lambda: profile_section(settings, log), settings.profile)
    run("training", lambda: training_section(settings, log))
    run("data", lambda: data_section(settings, log), bool(settings.data_workers))
    run("compile", lambda: compile_section(settings, log), settings.compile)
    return results


def check_targets(results: dict) -> list[dict]:
    """The speed targets (ours against timm and transformers, fraction of matmul throughput), each with the measured
    value and whether it is met."""
    targets = []
    # Ours (fastest contender, compiled included) against timm eager >= 1.3x, timm compiled the same way >= 1.0x and
    # transformers >= 1.0x, per model, precision and batch size (1 and 32).
    needed = {"timm": 1.3, "timm compiled": 1.0, "transformers": 1.0}
    for entry in results["inference"]:
        if entry["precision"] in ("fp32", "bf16"):
            for peer, ratio in entry["ratios"].items():
                targets.append({"target": f"inference {entry['model']} {entry['precision']} b{entry['batch_size']}: "
                                          f"ours/{peer} >= {needed[peer]}", "value": ratio["ratio"],
                                "met": ratio["ratio"] >= needed[peer]})
    for entry in results["flops"]:
        for dtype, d in entry["dtypes"].items():
            for batch, fraction in ((d["batch_size"], d["fraction_of_model_shape_matmul"]),
                                    (1, d.get("batch_1", {}).get("fraction_of_model_shape_matmul"))):
                if fraction is not None:
                    targets.append({"target": f"{entry['model']} {dtype} b{batch} forward >= 55% of {dtype} linear "
                                              "FLOP/s on the model's own shapes", "value": fraction, "met": fraction >= 0.55})
    for entry in results["training"]:
        targets.append({"target": f"trainer step {entry['model']} {entry['precision']} >= 0.9x hand-written loop",
                        "value": entry["ratio"], "met": entry["ratio"] >= 0.9})
    two_workers = [d for d in results["data"] if d["workers"] == 2]
    if two_workers and results["training"]:
        train_rate = max(t["images_per_s"]["ours/DistillationTrainer"]["median"] for t in results["training"])
        ratio = two_workers[0]["images_per_s"]["median"] / train_rate
        targets.append({"target": "data pipeline (2 workers) >= 2x training step images/s", "value": ratio,
                        "met": ratio >= 2.0})
    return targets


def _rate(stats: dict) -> str:
    return f"{stats['median']:.1f} ({stats['min']:.1f}-{stats['max']:.1f})"


def to_markdown(results: dict, command: str = "") -> str:
    m = results["machine"]
    lines = [
        f"# hf-deit benchmark, {results['date']}",
        "",
        f"- command: `{command}`" if command else "",
        f"- machine: {m.get('gpu') or m.get('cpu_model') or m['processor']}, {m['threads']} threads, cpu capability "
        f"{m['cpu_capability']}, native bf16 on CPU: {m['cpu_native_bf16']}, AMX: {m.get('amx')}; torch {m['torch']}, "
        f"transformers {m.get('transformers')}, timm {m.get('timm')}",
        f"- load average (1/5/15 min) at start {m.get('load_average_at_start')}, at end "
        f"{results.get('load_average_at_end')} (other processes shared the cores)",
        f"- CPU flags: {' '.join(m.get('cpu_flags', []))}",
        f"- wall time: {results['wall_seconds']:.0f} s; rates are images/s, median (min-max) over "
        f"{results['settings']['rounds']} interleaved rounds after a warm-up round",
        "",
        "## Targets",
        "",
        "| target | value | met |",
        "|---|---|---|",
    ]
    lines += [f"| {t['target']} | {t['value']:.2f} | {'yes' if t['met'] else 'NO'} |" for t in results["targets"]]
    if results.get("auto_precision"):
        lines.insert(lines.index("## Targets"), "- `optimize_for_inference` chooses here (precision='auto'): " + ", ".join(
            f"{model} {precision}" for model, precision in results["auto_precision"].items()) + "\n")
    lines += ["", "## Inference: each library's fastest mode", "",
              "| model | batch | ours | timm | transformers | ours/timm | ours/transformers |", "|---|---|---|---|---|---|---|"]
    for s in results["fastest_modes"]:
        cells = [f"{s['fastest'][lib]['images_per_s']:.1f} ({s['fastest'][lib]['precision']}, "
                 f"{s['fastest'][lib]['contender'].split('/')[1]})" for lib in ("ours", "timm", "transformers")]
        lines.append(f"| {s['model']} | {s['batch_size']} | {' | '.join(cells)} | {s['ratio_vs_timm']:.2f} | "
                     f"{s['ratio_vs_transformers']:.2f} |")
    lines += ["", "## Inference: every contender", ""]
    for entry in results["inference"]:
        lines += [f"### {entry['model']}, {entry['precision']}, batch {entry['batch_size']}", "",
                  "| contender | images/s | max abs logit diff to ours (fp32) |", "|---|---|---|"]
        for name, stats in entry["images_per_s"].items():
            lines.append(f"| {name} | {_rate(stats)} | {entry['max_abs_logit_diff_fp32'].get(name, 0):.1e} |")
        ratio_text = ", ".join(f"{r['ours']} / {r['peer']} = {r['ratio']:.2f}" for r in entry["ratios"].values())
        lines += ["", f"Ratios: {ratio_text}", ""]
        if "compile_seconds" in entry:
            compiled_text = ", ".join(
                f"{name} {seconds:.0f} s (max abs logit diff to ours eager, {entry['precision']}: "
                f"{entry['max_abs_logit_diff_to_ours_eager'][name]:.1e})" for name, seconds in entry["compile_seconds"].items())
            lines += [f"Compile time (first call): {compiled_text}", ""]
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
    lines += ["## Training step (student + teacher forward, loss, backward, clipping, AdamW)", "",
              "| model | precision | batch | teacher | DistillationTrainer | hand-written loop (timm) | ratio | "
              "+ attention distillation | its step-time cost |",
              "|---|---|---|---|---|---|---|---|---|"]
    for t in results["training"]:
        s = t["images_per_s"]
        lines.append(f"| {t['model']} | {t['precision']} | {t['batch_size']} | {t['teacher']} | "
                     f"{_rate(s['ours/DistillationTrainer'])} | {_rate(s['timm/hand-written loop'])} | {t['ratio']:.2f} | "
                     f"{_rate(s[ATTENTION_CONTENDER])} | {t['attention_distillation_cost']:.2f}x |")
    if results["data"]:
        lines += ["", "## Data pipeline (decode + DeiT train transforms + mixup/cutmix collation)", "",
                  "| workers | batch | image px | images/s |", "|---|---|---|---|"]
        lines += [f"| {d['workers']} | {d['batch_size']} | {d['image_size']} | {_rate(d['images_per_s'])} |"
                  for d in results["data"]]
    if results["compile"]:
        lines += ["", "## torch.compile (inference)", "",
                  "| module | precision | batch | compile s | eager | compiled | speedup |", "|---|---|---|---|---|---|---|"]
        for c in results["compile"]:
            s = c["images_per_s"]
            lines.append(f"| {c['module']} | {c['precision']} | {c['batch_size']} | {c['compile_seconds']:.1f} | "
                         f"{_rate(s['eager'])} | {_rate(s['compiled'])} | {c['speedup']:.2f} |")
    if "paper_v100_fp32_inference" in results:
        lines += ["", "## Against the paper (V100, fp32, images/s)", "", "| model | precision | ours | paper V100 |",
                  "|---|---|---|---|"]
        for entry in results["inference"]:
            paper = results["paper_v100_fp32_inference"].get(entry["model"])
            if paper and entry["batch_size"] > 1:
                _, ours = _best(entry["images_per_s"], "ours")
                lines.append(f"| {entry['model']} | {entry['precision']} | {ours:.0f} | {paper:.0f} |")
    return "\n".join(line for line in lines if line is not None) + "\n"


def write_report(results: dict, prefix: str, command: str = "") -> tuple[str, str]:
    """Writes `prefix.json` and `prefix.md`; returns their paths."""

    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    json_path, md_path = prefix + ".json", prefix + ".md"
    with open(json_path, "w") as handle:
        json.dump({**results, "command": command}, handle, indent=1)
    with open(md_path, "w") as handle:
        handle.write(to_markdown(results, command))
    return json_path, md_path
