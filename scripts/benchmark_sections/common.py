"""What every section shares: the settings of a run, round-robin timing, the same model built by each library, and
the machine's description."""

import os
import platform
import statistics
import time
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field

import torch
from torch import nn

from hf_deit.precision import bf16_is_faster, cpu_flags

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
    # timm teachers of the teacher_record section (empty: it runs only when named in `sections`, with its defaults),
    # and the batch at which it times the recording pass: the training batch, record_teacher.py's default (on a CPU a
    # larger one was no faster per image).
    record_teachers: tuple[str, ...] = ()
    record_batch_size: int = 32
    sections: tuple[str, ...] | None = None  # the sections' names; None: every one

    @classmethod
    def quick(cls) -> "BenchmarkSettings":
        return cls(
            geometry=QUICK_GEOMETRY, batch_size=4, rounds=1, train_batch_size=4, train_steps=1, data_images=8,
            data_image_size=64, data_workers=(0, 1), compile=False, compiled_inference=(), profile=True,
            record_teachers=("regnetx_002",), record_batch_size=8,
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




def _image_size(geometry: dict | None) -> int:
    return (geometry or {}).get("img_size", 224)



def machine_info(device: str) -> dict:
    flags = cpu_flags()
    info = {
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "cpu_native_bf16": bf16_is_faster("cpu"),  # a model of any width: the kernels alone
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


def _rate(stats: dict) -> str:
    return f"{stats['median']:.1f} ({stats['min']:.1f}-{stats['max']:.1f})"
