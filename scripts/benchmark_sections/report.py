"""The run and its report: every section in turn, the report rewritten after each one (a run cut short on a busy
machine keeps what it measured), the targets of all sections, and the markdown.

A section is a module of this package with

    NAME                                  its key in the results and its --sections name
    measure(settings, results, log)       its measurements (a list; `results` holds the earlier sections')
    enabled(settings)          optional   whether the settings switch it on (default: yes)
    summaries(results)         optional   values derived from its measurements, put in the results
    targets(results)           optional   the speed targets it checks: {"target", "value", "met"}
    markdown(results)          optional   its part of the report, as lines

`benchmark.py` lists the sections it runs, in order.
"""

import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict

from .common import BenchmarkSettings, machine_info


def run_benchmark(settings: BenchmarkSettings, sections: Sequence, log: Callable[[str], None] = print,
                  on_section: Callable[[dict], None] | None = None) -> dict:  # fmt: skip
    """Runs the `sections` (modules, see above) that `settings.sections` names (None: all) in order; after each one
    calls `on_section(results so far)`."""
    started = time.perf_counter()
    results = {"settings": asdict(settings), "machine": machine_info(settings.device), "date": time.strftime("%Y-%m-%d"),
               **{section.NAME: [] for section in sections}, "targets": [], "wall_seconds": 0.0}
    for section in sections:
        wanted = settings.sections is None or section.NAME in settings.sections
        if wanted and getattr(section, "enabled", lambda _settings: True)(settings):
            results[section.NAME] = section.measure(settings, results, log)
        for each in sections:
            results.update(each.summaries(results) if hasattr(each, "summaries") else {})
        results["targets"] = check_targets(results, sections)
        results["wall_seconds"] = time.perf_counter() - started
        results["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
        if on_section is not None:
            on_section(results)
    return results


def check_targets(results: dict, sections: Sequence) -> list[dict]:
    """The speed targets of every section, each with the measured value and whether it is met."""
    return [target for section in sections if hasattr(section, "targets") for target in section.targets(results)]


def to_markdown(results: dict, sections: Sequence, command: str = "") -> str:
    """The report: the run's command and machine, the targets, then each section's tables."""
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
    for section in sections:
        if hasattr(section, "markdown"):
            lines += ["", *section.markdown(results)]
    return "\n".join(line for line in lines if line is not None) + "\n"


def write_report(results: dict, sections: Sequence, prefix: str, command: str = "") -> tuple[str, str]:
    """Writes `prefix.json` and `prefix.md`; returns their paths."""
    os.makedirs(os.path.dirname(os.path.abspath(prefix)), exist_ok=True)
    json_path, md_path = prefix + ".json", prefix + ".md"
    with open(json_path, "w") as handle:
        json.dump({**results, "command": command}, handle, indent=1)
    with open(md_path, "w") as handle:
        handle.write(to_markdown(results, sections, command))
    return json_path, md_path
