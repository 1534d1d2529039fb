#!/usr/bin/env python
"""Deployment speed: ONNX Runtime on our export against ONNX Runtime on transformers' DeiT exported the same way,
and against our PyTorch paths (eager, and `optimize_for_inference` in fp32 and in the CPU's fastest precision),
interleaved in one process.

    python scripts/benchmark_deploy.py --output benchmarks/deploy-cpu-2026-11-30   # DeiT-Tiny geometry, batch 1 and 32
    python scripts/benchmark_deploy.py --quick --output /tmp/deploy                 # tiny geometry, seconds of timing

All contenders carry the same random weights (timm's DeiT-Tiny layout converted by `hf_deit.convert`; transformers'
`DeiTForImageClassificationWithTeacher` gets them with q/k/v split), are checked to give the same logits, and use the
same number of threads. Each round times every contender once per batch size, in turn, so that the noise of a shared
machine falls on all of them alike; the report gives the median images/s and each contender's ratio to our eager model.
"""

import argparse
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from benchmark_sections.common import build_ours, build_timm, build_transformers, interleave, summarize
from hf_deit.export import LogitsOnly, export_onnx, onnx_session
from hf_deit.inference import fastest_inference_precision, optimize_for_inference

ORT_OURS, ORT_THEIRS, EAGER = "ours, ONNX Runtime", "transformers DeiT, ONNX Runtime", "ours, PyTorch eager"
COMPILED_FP32 = "ours, optimize_for_inference fp32"
TINY_GEOMETRY = dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, num_classes=10)


def cpu_description() -> dict:
    """The CPU model and the instruction-set flags that decide the kernels (from `lscpu`, Linux)."""
    try:
        lines = dict(line.split(":", 1) for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout
                     .splitlines() if ":" in line)
    except OSError:
        return {"model": platform.processor() or platform.machine()}
    flags = lines.get("Flags", "").split()
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_int8", "amx_tile")
    return {"model": lines.get("Model name", "?").strip(), "cpus": lines.get("CPU(s)", "?").strip(),
            "flags": [flag for flag in wanted if flag in flags]}


def build_contenders(geometry: dict | None, workdir: Path, threads: int) -> tuple[dict, dict]:
    """The contenders as callables taking a float32 batch, and their largest logit differences from our eager model:
    ONNX Runtime on both exports (fp32), our eager model (fp32), `optimize_for_inference` in fp32 and, where the CPU
    runs another precision faster (bf16 with AMX), in that precision too (its default there)."""
    reference = build_timm("tiny", geometry)
    ours = build_ours(reference, "sdpa")
    theirs = build_transformers(ours, "sdpa")
    ours_path = export_onnx(ours, workdir / "ours.onnx")
    theirs_path = export_onnx(theirs, workdir / "transformers_deit.onnx")  # same wrapper: same inputs, same outputs
    # Without spinning: busy-waiting ONNX Runtime threads would take the cores from the contender timed next.
    ours_session = onnx_session(ours_path, threads, spinning=False)
    theirs_session = onnx_session(theirs_path, threads, spinning=False)
    contenders = {
        ORT_OURS: lambda x: torch.from_numpy(ours_session.run(None, {"pixel_values": x.numpy()})[0]),
        ORT_THEIRS: lambda x: torch.from_numpy(theirs_session.run(None, {"pixel_values": x.numpy()})[0]),
        EAGER: lambda x: LogitsOnly(ours)(x)[0],
        COMPILED_FP32: optimize_for_inference(build_ours(reference, "sdpa"), precision="fp32"),
    }
    fastest = fastest_inference_precision("cpu", ours.config.hidden_size)
    if fastest != "fp32":
        contenders[f"ours, optimize_for_inference {fastest} (its default here)"] = optimize_for_inference(
            build_ours(reference, "sdpa"), precision=fastest
        )
    size = ours.config.image_size
    x = torch.randn(3, 3, size, size)
    with torch.no_grad():
        expected = contenders[EAGER](x)
        # The first call of each compiled contender compiles it (for these 3 images; the timed batches recompile).
        parity = {name: (fn(x) - expected).abs().max().item() for name, fn in contenders.items() if name != EAGER}
    return contenders, parity


def run(geometry: dict | None, batch_sizes: list[int], rounds: int, log) -> dict:
    threads = torch.get_num_threads()
    with tempfile.TemporaryDirectory() as workdir, torch.no_grad():
        log(f"exporting both models, compiling ours ({threads} threads each)")
        start = time.perf_counter()
        contenders, parity = build_contenders(geometry, Path(workdir), threads)
        log(f"ready in {time.perf_counter() - start:.0f} s; max |logits - eager|: {parity}")
        size = (geometry or {}).get("img_size", 224)
        batches = {b: torch.randn(b, 3, size, size) for b in batch_sizes}
        # One timed call per contender and batch size per round, all in turn (the first round is a warm-up).
        calls = {f"{name} | {b}": (lambda fn=fn, x=x: fn(x))
                 for b, x in batches.items() for name, fn in contenders.items()}
        times = interleave(calls, rounds, "cpu")
    rows = []
    for b in batch_sizes:
        stats = {name: summarize(times[f"{name} | {b}"], b) for name in contenders}
        eager = stats[EAGER]["median"]
        for name in contenders:
            rows.append({"contender": name, "batch_size": b, **stats[name],
                         "vs_ours_eager": stats[name]["median"] / eager})
    return {"rows": rows, "parity_max_abs_diff": parity, "threads": threads}


def to_markdown(results: dict) -> str:
    lines = [
        "# Deployment speed: ONNX Runtime vs PyTorch (DeiT-Tiny geometry, distilled, random weights)", "",
        f"- Command: `{results['command']}`",
        f"- Date (UTC): {results['date']}",
        f"- CPU: {results['cpu']['model']}, {results['cpu']['cpus']} CPUs, flags {', '.join(results['cpu']['flags'])}",
        f"- Threads: {results['threads']} for torch and for each ONNX Runtime session (spinning off); "
        f"torch {results['versions']['torch']}, onnxruntime {results['versions']['onnxruntime']}, "
        f"transformers {results['versions']['transformers']}",
        f"- Geometry: {results['geometry']}; {results['rounds']} interleaved rounds after a warm-up round",
        "- Max |logits - ours eager| (3 images): "
        + ", ".join(f"{name} {diff:.1e}" for name, diff in results["parity_max_abs_diff"].items()),
        "", "| contender | batch | images/s (median) | min - max | vs ours eager |", "|---|---|---|---|---|",
    ]
    for row in results["rows"]:
        lines.append(f"| {row['contender']} | {row['batch_size']} | {row['median']:.1f} | {row['min']:.1f} - "
                     f"{row['max']:.1f} | {row['vs_ours_eager']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", required=True, help="path prefix for the .json and .md reports")
    parser.add_argument("--rounds", type=int, default=5, help="measured rounds per contender and batch size")
    parser.add_argument("--batch_sizes", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--quick", action="store_true", help="a 2-block, 32-wide model on 32 px images: seconds")
    parser.add_argument("--threads", type=int,
                        help="threads for torch and each ONNX Runtime session (default: torch's)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.rounds < 1 or min(args.batch_sizes) < 1:
        parser.error("--rounds and --batch_sizes must be positive")
    import onnxruntime
    import transformers

    log = lambda message: print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)  # noqa: E731
    geometry = TINY_GEOMETRY if args.quick else None
    results = run(geometry, args.batch_sizes, args.rounds, log)
    results.update(
        command="python scripts/benchmark_deploy.py "
        + " ".join(map(shlex.quote, sys.argv[1:] if argv is None else argv)),
        date=time.strftime("%Y-%m-%d %H:%M", time.gmtime()), cpu=cpu_description(), rounds=args.rounds,
        geometry=("tiny test geometry" if args.quick
                  else "DeiT-Tiny (224 px, patch 16, 192 wide, 12 blocks, 1000 classes)"),
        versions={"torch": torch.__version__, "onnxruntime": onnxruntime.__version__,
                  "transformers": transformers.__version__, "python": platform.python_version()},
    )
    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    Path(f"{output}.json").write_text(json.dumps(results, indent=2) + "\n")
    Path(f"{output}.md").write_text(to_markdown(results))
    print(to_markdown(results))
    return results


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
