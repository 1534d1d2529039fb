#!/usr/bin/env python
r"""Counts how 2-process runs end: the exit status of many consecutive runs, on a machine loaded on purpose.

    python scripts/check_clean_exits.py --runs 30 --load 2            # both checks, 2 busy processes beside them
    python scripts/check_clean_exits.py --check ddp_test --runs 10

Two checks, each run `--runs` times in a row:
- `ddp_test`: the suite's 2-process DDP test (`tests/test_trainer.py::test_two_ddp_processes_log_the_same_loss_as_one`),
  through pytest as CI runs it;
- `train_script`: `accelerate launch` of `scripts/train.py` on 2 gloo processes with a teacher (a short run that
  evaluates, saves and writes its card), as a user runs it.
`--load N` keeps N busy processes running beside them (CI runs the suite on 2 xdist workers): an abort at exit
(hf_deit.distributed) is a race, which a loaded machine makes likely. The tally goes to `--report` as JSON and to
standard output; a run that did not exit 0 keeps its output in the report.
"""

import argparse
import collections
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TRAIN_FLAGS = ["--dataset_name", "digits", "--image_size", "16", "--config_overrides",
               "image_size=16,patch_size=4,hidden_size=32,num_hidden_layers=2,num_attention_heads=2",
               "--distillation_type", "hard", "--max_steps", "4", "--logging_steps", "1", "--eval_strategy", "steps",
               "--eval_steps", "2", "--save_steps", "2", "--max_eval_samples", "64", "--disable_tqdm", "true",
               "--overwrite_output_dir", "true"]  # fmt: skip


def busy() -> None:
    while True:
        pass


def cpu_description() -> str:
    model, flags = platform.processor(), set()
    with open("/proc/cpuinfo") as cpuinfo:
        for line in cpuinfo:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    shown = [flag for flag in ("avx2", "avx512f", "avx512_bf16", "amx_bf16") if flag in flags]
    return f"{model}, {os.cpu_count()} cores ({', '.join(shown)})"


def commands(check: str, workdir: Path) -> list[str]:
    python = sys.executable
    if check == "ddp_test":
        return [python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                "tests/test_trainer.py::test_two_ddp_processes_log_the_same_loss_as_one"]  # fmt: skip
    teacher = workdir / "teacher"
    if not teacher.exists():  # a small random CNN teacher, saved as a user's teacher folder is
        from transformers import ResNetConfig, ResNetForImageClassification
        from transformers.utils.logging import disable_progress_bar

        disable_progress_bar()

        config = ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16], depths=[1, 1],
                              layer_type="basic", num_labels=10)  # fmt: skip
        ResNetForImageClassification(config).save_pretrained(teacher)
    return [python, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
            "--main_process_port", "0", "--num_cpu_threads_per_process", "1", str(ROOT / "scripts" / "train.py"),
            *TRAIN_FLAGS, "--teacher_name_or_path", str(teacher), "--output_dir", str(workdir / "run")]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", choices=["ddp_test", "train_script", "both"], default="both")
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--load", type=int, default=2, help="busy processes kept running beside the checks")
    parser.add_argument("--report", default=str(ROOT / "results" / "clean_exits.json"))
    args = parser.parse_args()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}
    checks = ["ddp_test", "train_script"] if args.check == "both" else [args.check]
    load = [multiprocessing.Process(target=busy, daemon=True) for _ in range(args.load)]
    for process in load:
        process.start()
    report = {"cpu": cpu_description(), "load": args.load, "runs": args.runs, "load_average_before": os.getloadavg(),
              "date": time.strftime("%Y-%m-%d"), "commit": _commit(), "checks": {}}  # fmt: skip
    try:
        with tempfile.TemporaryDirectory() as workdir:
            for check in checks:
                statuses, failures, started = collections.Counter(), [], time.time()
                for run in range(1, args.runs + 1):
                    result = subprocess.run(commands(check, Path(workdir)), cwd=ROOT, env=env, capture_output=True,
                                            text=True)  # fmt: skip
                    statuses[result.returncode] += 1
                    if result.returncode != 0:
                        failures.append({"run": run, "status": result.returncode,
                                         "output": (result.stdout + result.stderr)[-3000:]})  # fmt: skip
                    print(f"{check} run {run}/{args.runs}: exit {result.returncode}", flush=True)
                report["checks"][check] = {"exit_statuses": {str(k): v for k, v in sorted(statuses.items())},
                                           "seconds_per_run": round((time.time() - started) / args.runs, 1),
                                           "failures": failures}  # fmt: skip
    finally:
        for process in load:
            process.terminate()
    report["load_average_after"] = os.getloadavg()  # the machine's 1, 5 and 15 minute load, other work included
    Path(args.report).parent.mkdir(parents=True, exist_ok=True)
    Path(args.report).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({check: result["exit_statuses"] for check, result in report["checks"].items()}))
    print(f"{report['cpu']}; load {args.load}; commit {report['commit']}; report: {args.report}")


def _commit() -> str:
    result = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
    return result.stdout.strip() or "unknown"


if __name__ == "__main__":
    main()
