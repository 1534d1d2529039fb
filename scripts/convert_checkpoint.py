#!/usr/bin/env python
"""Convert a DeiT checkpoint (timm / facebook .pth, .bin, .safetensors, or a transformers DeiT folder) into an hf-deit
folder that `from_pretrained` and `pipeline("image-classification", ...)` load.

    python scripts/convert_checkpoint.py --checkpoint deit_tiny_distilled_patch16_224-b40b3cf7.pth --output_dir deit-tiny

The configuration is read from the weights (and the source's config.json when it has one); the options below
override or check it. See `hf_deit.convert` for what each source gives and how.
"""

import argparse
import json
import sys
import warnings
from pathlib import Path

from hf_deit.convert import CheckpointConversionError, convert_checkpoint


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, type=Path, help="checkpoint file or folder")
    parser.add_argument("--output_dir", required=True, type=Path, help="folder to write the converted model to")
    parser.add_argument("--image_size", type=int, nargs="+", metavar="SIZE",
                        help="H [W]: needed for non-square grids; another size resamples the position embeddings")
    parser.add_argument("--num_labels", type=int, help="another class count gives freshly initialised heads")
    parser.add_argument("--id2label_json", type=Path,
                        help='JSON file with the labels: {"0": "cat", ...} or ["cat", ...]')
    parser.add_argument("--num_attention_heads", type=int,
                        help="needed when the source has no config.json and its width is not DeiT's 192/384/768")
    parser.add_argument("--layer_norm_eps", type=float, help="default: 1e-6 for timm/facebook, the source config's")
    # These are read from the weights; given, they are checked against them.
    parser.add_argument("--patch_size", type=int, nargs="+", metavar="SIZE", help="checked against the weights")
    parser.add_argument("--hidden_size", type=int, help="checked against the weights")
    parser.add_argument("--num_hidden_layers", type=int, help="checked against the weights")
    return parser.parse_args(argv)


def _size(values):
    """`--image_size 224` -> 224, `--image_size 224 320` -> [224, 320]."""
    if values is None:
        return None
    if len(values) > 2:
        raise SystemExit(f"expected one or two sizes (H [W]), got {values}")
    return values[0] if len(values) == 1 else list(values)


def main(argv=None) -> None:
    args = parse_args(argv)
    # Conversion warnings are for the person at the terminal: the message, without a source line.
    warnings.showwarning = lambda message, *_, **__: print(f"warning: {message}", file=sys.stderr)
    id2label = json.loads(args.id2label_json.read_text()) if args.id2label_json else None
    try:
        model = convert_checkpoint(
            args.checkpoint,
            args.output_dir,
            image_size=_size(args.image_size),
            patch_size=_size(args.patch_size),
            num_labels=args.num_labels,
            id2label=id2label,
            num_attention_heads=args.num_attention_heads,
            layer_norm_eps=args.layer_norm_eps,
            hidden_size=args.hidden_size,
            num_hidden_layers=args.num_hidden_layers,
        )
    except CheckpointConversionError as error:
        sys.exit(f"error: {error}")
    config = model.config
    print(
        f"Converted {args.checkpoint} -> {args.output_dir}: hidden {config.hidden_size}, depth "
        f"{config.num_hidden_layers}, heads {config.num_attention_heads}, image {config.image_size}, patch "
        f"{config.patch_size}, {config.num_labels} classes, {model.num_parameters():,} parameters."
    )


if __name__ == "__main__":
    main()
