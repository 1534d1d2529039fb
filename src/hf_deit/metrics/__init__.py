"""`evaluate` metric modules shipped with hf_deit, loadable offline by path."""

from pathlib import Path

TOP_K_ACCURACY_PATH = str(Path(__file__).parent / "top_k_accuracy")
