#!/usr/bin/env python
"""Export a saved hf-deit model to one ONNX file for ONNX Runtime, with a dynamic batch dimension.

    python scripts/export_onnx.py deit-tiny --output deit-tiny.onnx

The file takes `pixel_values` (batch, channels, height, width; float32, normalised as the model's image processor
does) and returns `logits` (the two heads averaged: what to serve), `cls_logits` and `distillation_logits`. The
export is checked against the PyTorch model in ONNX Runtime before the script reports success.
"""

import argparse
import sys
from pathlib import Path

# Checked against eager PyTorch on random images; ONNX Runtime's fused kernels differ by float rounding only.
TOLERANCE = 1e-4


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model_dir", type=Path, help="folder with a saved hf-deit model (config.json and weights)")
    parser.add_argument("--output", required=True, type=Path, help="the .onnx file to write")
    parser.add_argument("--opset", type=int, help="ONNX opset version (default: the exporter's)")
    return parser.parse_args(argv)


def check_inputs(args: argparse.Namespace) -> None:
    """Refuse, before any model work, a model folder that is not there or holds no saved model."""
    folder = args.model_dir
    if not folder.exists():
        raise SystemExit(f"error: model folder {folder} does not exist; give the folder a training run or "
                         "`save_pretrained` wrote (it holds config.json and model.safetensors).")
    if not folder.is_dir():
        raise SystemExit(f"error: {folder} is a file; give the folder that holds config.json and the weights "
                         "(convert a checkpoint file first with scripts/convert_checkpoint.py).")
    if not (folder / "config.json").is_file():
        raise SystemExit(f"error: {folder} holds no saved model (no config.json); give the folder a training run or "
                         "`save_pretrained` wrote.")
    if args.output.suffix != ".onnx":
        raise SystemExit(f"error: --output {args.output} should end in .onnx")


def main(argv=None) -> dict:
    args = parse_args(argv)
    check_inputs(args)
    import torch

    from hf_deit import DistilledDeiTForImageClassification
    from hf_deit.export import OUTPUT_NAMES, example_input, export_onnx, onnx_session

    try:
        model = DistilledDeiTForImageClassification.from_pretrained(args.model_dir).eval()
    except (OSError, ValueError) as error:
        raise SystemExit(f"error: could not load a model from {args.model_dir}: {error}")
    path = export_onnx(model, args.output, opset_version=args.opset)

    images = example_input(model, batch_size=3)
    with torch.no_grad():
        expected = model(pixel_values=images)
    exported = onnx_session(path).run(None, {"pixel_values": images.numpy()})
    differences = {name: float(abs(value - getattr(expected, name).numpy()).max())
                   for name, value in zip(OUTPUT_NAMES, exported)}
    worst = max(differences.values())
    if worst > TOLERANCE:
        sys.exit(f"error: the ONNX export differs from PyTorch by {worst:.2e} (> {TOLERANCE}): {differences}")
    print(f"Exported {args.model_dir} -> {path} ({path.stat().st_size / 1e6:.1f} MB); "
          f"outputs {', '.join(OUTPUT_NAMES)}; max |ONNX Runtime - PyTorch| {worst:.1e}.")
    return differences


if __name__ == "__main__":
    main()
