#!/usr/bin/env python
"""Measure hf-deit against timm and transformers side by side (the measurements are in `benchmark_sections/`, one
module per section).

    python scripts/benchmark.py --quick --output /tmp/bench            # seconds: tiny geometry, CI
    python scripts/benchmark.py --output benchmarks/cpu-2025-01-01      # the full CPU run (20-40 min on 2 cores)
    python scripts/benchmark.py --device cuda --output benchmarks/gpu-h100  # DeiT-S/B, RegNetY-16GF-sized teacher
    python scripts/benchmark.py --sections teacher_record --output benchmarks/teacher-record-cpu  # asked for by name
"""

import argparse
import shlex
import sys
import time

from benchmark_sections import compilation, data, flops, inference, profile, teacher_record, training
from benchmark_sections.common import BenchmarkSettings
from benchmark_sections.report import run_benchmark, to_markdown, write_report

# The sections, in the order they run and appear in the report; a new one is a module of benchmark_sections and a
# line here.
SECTIONS = (
    inference,
    flops,
    profile,
    training,
    data,
    compilation,
    teacher_record,
)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--quick", action="store_true", help="Tiny geometry, one round: a smoke test in seconds.")
    parser.add_argument("--output", help="Path prefix for .json and .md (default benchmarks/<device>-<date>).")
    parser.add_argument("--rounds", type=int, help="Measured rounds per contender (override).")
    parser.add_argument("--no-compile", action="store_true", help="Skip the torch.compile section.")
    parser.add_argument("--models", nargs="+", choices=["tiny", "small", "base"], help="Models to measure (override).")
    parser.add_argument("--precisions", nargs="+", choices=["fp32", "bf16-autocast", "bf16"], help="Inference precisions.")
    parser.add_argument("--sections", nargs="+", choices=[section.NAME for section in SECTIONS],
                        help="Run only these sections (default: all).")
    parser.add_argument("--record_teachers", nargs="+", metavar="TIMM_NAME",
                        help="Teachers of the teacher_record section (default: regnety_160 and regnety_016).")
    parser.add_argument("--record_batch_size", type=int, help="The teacher_record section's recording batch (64).")
    parser.add_argument("--data_image_size", type=int, help="The data section's image size (224; the digits: 28).")
    parser.add_argument("--no-compiled-inference", action="store_true",
                        help="Leave out the compiled inference contenders (ours via optimize_for_inference, timm compiled).")
    args = parser.parse_args(argv)

    settings = BenchmarkSettings.quick() if args.quick else BenchmarkSettings.full(args.device)
    settings.device = args.device
    if args.rounds:
        settings.rounds = args.rounds
    if args.no_compile:
        settings.compile = False
    if args.models:
        settings.models = settings.train_models = tuple(args.models)
    if args.precisions:
        settings.precisions = tuple(args.precisions)
    if args.sections:
        settings.sections = tuple(args.sections)
    if args.record_teachers:
        settings.record_teachers = tuple(args.record_teachers)
    if args.record_batch_size:
        settings.record_batch_size = args.record_batch_size
    if args.no_compiled_inference:
        settings.compiled_inference = ()
    if args.data_image_size:
        settings.data_image_size = args.data_image_size
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: no CUDA device is visible to torch.")

    output = args.output or f"benchmarks/{args.device}-{time.strftime('%Y-%m-%d')}"
    command = "python scripts/benchmark.py " + " ".join(shlex.quote(a) for a in (sys.argv[1:] if argv is None else argv))
    results = run_benchmark(
        settings,
        SECTIONS,
        log=lambda message: print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True),
        on_section=lambda partial: write_report(partial, SECTIONS, output, command),  # a cut-short run keeps what it measured
    )
    json_path, md_path = write_report(results, SECTIONS, output, command)
    print(to_markdown(results, SECTIONS, command))
    print(f"wrote {json_path} and {md_path}")
    return results


if __name__ == "__main__":
    main()
