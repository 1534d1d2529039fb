"""Side-by-side speed measurements: our distilled DeiT vs timm and transformers (eager, and compiled with inference
settings: ours through `hf_deit.inference.optimize_for_inference`, timm with the same `torch.compile` options), the
training step vs a hand-written loop, the data pipeline, FLOPs and matmul efficiency, `torch.compile`.

Everything runs in one process and the contenders of a comparison take turns (round-robin over `rounds`), so that
the noise of a shared machine falls on all of them alike; results are medians with min/max, and ratios of medians.
One module per section (inference.py, flops.py, profile.py, training.py, data.py, compilation.py, teacher_record.py),
what they share in common.py, the run and the report in report.py (which also says what a section module holds).
`benchmark.py` beside this package is the command line and lists the sections it runs; this package is a tool, not
part of the library.
"""
