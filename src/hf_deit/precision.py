"""The training precision when none is asked for: bf16 autocast where it is faster than float32, else float32.

    CUDA    bf16 wherever the GPU supports it (Ampere and newer).
    CPU     bf16 only with native bf16 kernels (AMX or AVX512-BF16) and a model at least as wide as DeiT-Tiny (192).
            Narrower models lose more to the per-call casts than the faster matrix products win back (the figures:
            README, "Where the defaults come from"). Without native kernels bf16 is emulated and several times
            slower than float32 (`benchmarks/cpu-*.md`).

An explicit `--bf16`/`--fp16` (true or false) or `accelerate launch --mixed_precision` always wins.
"""

from __future__ import annotations

import torch

NARROWEST_BF16_WIDTH = 192  # DeiT-Tiny; narrower transformers stay in float32 on CPU
_NATIVE_BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")


def cpu_flags() -> set[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, as on macOS)."""
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            line = next((line for line in cpuinfo if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())


def bf16_is_faster(
    device: str | torch.device,
    hidden_size: int | None = None,
    cpu_kernels: tuple[str, ...] = _NATIVE_BF16_CPU_FLAGS,
    flags: set[str] | None = None,
) -> bool:
    """Whether bf16 beats float32 on `device` (training's autocast by default). `hidden_size`: a transformer's width
    (narrow ones lose on CPU); None for a CNN. On a CPU, bf16 needs one of `cpu_kernels` among the CPU's feature
    `flags` (read from /proc/cpuinfo when None)."""
    device_type = torch.device(device).type
    if device_type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device_type == "cpu":
        flags = cpu_flags() if flags is None else flags
        native = any(flag in flags for flag in cpu_kernels)
        return native and (hidden_size is None or hidden_size >= NARROWEST_BF16_WIDTH)
    return False
