"""Inference: images/s of ours, timm and transformers (eager per attention backend, and compiled), per model,
precision and batch size, and the ratios of ours to each peer."""

from collections.abc import Callable

import torch
from torch import nn

from .common import (
    COMPILED,
    PAPER_V100_INFERENCE,
    WIDTHS,
    BenchmarkSettings,
    _Contender,
    _image_size,
    _logits,
    _rate,
    _set_timm_fused_attention,
    build_ours,
    build_timm,
    build_transformers,
    compiled_contenders,
    interleave,
    summarize,
)

NAME = "inference"


def measure(settings: BenchmarkSettings, results: dict, log: Callable[[str], None]) -> list[dict]:
    if settings.device == "cuda":
        results["paper_v100_fp32_inference"] = PAPER_V100_INFERENCE
    # What `optimize_for_inference(precision="auto")` picks here for each real model (the fastest-mode table shows
    # whether that is the faster one).
    if settings.geometry is None:
        from hf_deit.inference import fastest_inference_precision

        results["auto_precision"] = {m: fastest_inference_precision(settings.device, WIDTHS[m]) for m in settings.models}
    return inference_section(settings, log)


def summaries(results: dict) -> dict:
    return {"fastest_modes": fastest_mode_ratios(results.get(NAME, []))}


def targets(results: dict) -> list[dict]:
    """Ours (fastest contender, compiled included) against timm eager >= 1.3x, timm compiled the same way >= 1.0x and
    transformers >= 1.0x, per model, precision and batch size (1 and 32)."""
    targets = []
    needed = {"timm": 1.3, "timm compiled": 1.0, "transformers": 1.0}
    for entry in results["inference"]:
        if entry["precision"] in ("fp32", "bf16"):
            for peer, ratio in entry["ratios"].items():
                targets.append({"target": f"inference {entry['model']} {entry['precision']} b{entry['batch_size']}: "
                                          f"ours/{peer} >= {needed[peer]}", "value": ratio["ratio"],
                                "met": ratio["ratio"] >= needed[peer]})
    return targets


def markdown(results: dict) -> list[str]:
    lines = []
    lines += ["## Inference: each library's fastest mode", "",
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
    return lines + paper_markdown(results)


def paper_markdown(results: dict) -> list[str]:
    lines = []
    if "paper_v100_fp32_inference" in results:
        lines += ["", "## Against the paper (V100, fp32, images/s)", "", "| model | precision | ours | paper V100 |",
                  "|---|---|---|---|"]
        for entry in results["inference"]:
            paper = results["paper_v100_fp32_inference"].get(entry["model"])
            if paper and entry["batch_size"] > 1:
                _, ours = _best(entry["images_per_s"], "ours")
                lines.append(f"| {entry['model']} | {entry['precision']} | {ours:.0f} | {paper:.0f} |")
    return lines


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
