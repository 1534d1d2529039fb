#!/usr/bin/env python
"""On-paper cost of distillation training from FLOPs: GPU-hours for a student, a forward-only teacher, a dataset and
a number of epochs, at assumed utilisations of the GPUs' published peaks. Replace the assumption by a measured
per-device throughput (`python scripts/benchmark.py --device cuda`) when a GPU is available.

    python scripts/training_cost.py    # ImageNet-1k, 300 epochs, DeiT-S + RegNetY-16GF, 8 GPUs

The published "GFLOPs" of DeiT (fvcore) and RegNet count multiply-adds; one multiply-add is 2 FLOP.
"""

import argparse

# bf16 (V100: fp16) dense tensor-core peaks, TFLOP/s, as the vendors publish them.
GPU_PEAKS = {"V100 (fp16)": 125, "A100": 312, "H100 SXM": 989}


def cost_table(student_gmacs, teacher_gmacs, images, epochs, gpus, utilisations):
    # Training a layer costs ~3x its forward (forward, input gradients, weight gradients); the teacher runs forward
    # only.
    flop_per_image = 2e9 * (3 * student_gmacs + teacher_gmacs)
    total = flop_per_image * images * epochs
    rows = []
    for gpu, peak in GPU_PEAKS.items():
        for utilisation in utilisations:
            seconds = total / (gpus * peak * 1e12 * utilisation)
            rows.append(dict(gpu=gpu, utilisation=utilisation, hours=seconds / 3600,
                             images_per_s_per_gpu=images * epochs / seconds / gpus))
    return flop_per_image, total, rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--student_gmacs", type=float, default=4.6, help="DeiT-S at 224 px")
    parser.add_argument("--teacher_gmacs", type=float, default=16.0, help="RegNetY-16GF at 224 px")
    parser.add_argument("--images", type=int, default=1_281_167, help="ImageNet-1k training images")
    parser.add_argument("--epochs", type=int, default=300)
    parser.add_argument("--gpus", type=int, default=8)
    parser.add_argument("--utilisations", type=float, nargs="+", default=[0.2, 0.4])
    args = parser.parse_args(argv)
    flop_per_image, total, rows = cost_table(args.student_gmacs, args.teacher_gmacs, args.images, args.epochs,
                                             args.gpus, args.utilisations)
    teacher_share = args.teacher_gmacs / (3 * args.student_gmacs + args.teacher_gmacs)
    print(f"{flop_per_image / 1e9:.1f} GFLOP per training image, {total:.2e} FLOP in all "
          f"({teacher_share:.0%} of it the teacher's forward)")
    print(f"| {args.gpus} x GPU | utilisation | hours | images/s per GPU |\n|---|---|---|---|")
    for row in rows:
        print(f"| {row['gpu']} | {row['utilisation']:.0%} | {row['hours']:.1f} | {row['images_per_s_per_gpu']:,.0f} |")
    return rows


if __name__ == "__main__":
    main()
