"""Comparing a float32 value recorded on one machine with the same value computed on another.

Two CPUs (AVX2, AVX-512, AMX; one thread or two) block and order the additions of a matrix product or a reduction
differently, so a float32 result differs in its last bits from machine to machine. The difference is bounded by the
roundings of everything that was added up, not by the result: a sum of signed terms that nearly cancel (a gradient
summed over parameters) moves by many times its own size times float32's epsilon, while a mean of positive terms (a
loss) moves by a few epsilons of itself. So a recorded value comes with its *magnitude*, the sum of the absolute values
of what produced it (for a loss, the loss itself; for a sum of gradients, their L1 norm), and the tolerance scales with
that magnitude: a behaviour change moves a value by far more, a change of CPU by far less.

Measured with `cd tests && python test_objective.py --drift` (values recorded on an Intel Xeon with AMX, recomputed on
a 2-core AMD EPYC with AVX512-BF16, one and two threads, 2026-12-07): losses moved by at most 1.03 epsilon of
themselves, gradient sums by at most 0.05 epsilon of their L1 norm (8e-6 of the sum itself in the worst case).
`ROUNDINGS` leaves a margin of 16x and more.
"""

import torch

FLOAT32_EPSILON = torch.finfo(torch.float32).eps
ROUNDINGS = 16  # how many float32 roundings of the magnitude two machines may differ by


def tolerance_across_machines(magnitude: float) -> float:
    """The largest difference a change of CPU may make to a float32 value computed from terms of this total magnitude
    (the sum of their absolute values)."""
    return ROUNDINGS * FLOAT32_EPSILON * abs(magnitude)


def assert_close_across_machines(actual: float, expected: float, magnitude: float | None = None, what: str = "") -> None:
    """`actual` (computed here) equals `expected` (recorded on any machine) within what a change of CPU can explain.

    `magnitude`: the sum of the absolute values of the terms behind the value; leave it out for a value whose terms
    share one sign (a loss, a norm): then it is the value itself."""
    magnitude = abs(expected) if magnitude is None else magnitude
    tolerance = tolerance_across_machines(magnitude)
    assert abs(actual - expected) <= tolerance, (
        f"{what or 'value'}: {actual!r} here, {expected!r} recorded: they differ by {abs(actual - expected):.3g}, more "
        f"than a change of CPU explains ({ROUNDINGS} float32 roundings of a magnitude of {magnitude:.3g}: {tolerance:.3g})"
    )
