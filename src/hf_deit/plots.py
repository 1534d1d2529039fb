"""Pictures of training runs: learning curves from a Trainer's log history, and results tables as one dot per seed.

Drawn with matplotlib (the `plots` extra: `pip install hf-deit[plots]`) on its file-only Agg backend, so that they
work on a machine without a display. The data each picture is built from comes from a plain function
(`learning_curve`), so that it can be checked without reading pixels.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

Points = list[tuple[int, float]]
TOP1_LABEL = "validation top-1 (%)"


def matplotlib_available() -> bool:
    import importlib.util

    return importlib.util.find_spec("matplotlib") is not None


def learning_curve(log_history: Sequence[Mapping], key: str = "eval_accuracy",
                   final: Mapping | None = None, final_step: int | None = None) -> Points:  # fmt: skip
    """(step, value) of every evaluation in a Trainer's `log_history` that logged `key`, by step, one per step (the
    later wins: the evaluation after training repeats the one at its last step). `final` (metrics of an evaluation
    after training, such as `all_results.json`) adds its `key` at `final_step`, for a log history saved before it."""
    points = {int(entry["step"]): float(entry[key]) for entry in log_history if key in entry and "step" in entry}
    if final is not None and key in final and final_step is not None:
        points[int(final_step)] = float(final[key])
    return sorted(points.items())


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def plot_learning_curves(panels: Mapping[str, Mapping[str, Points]], path: str | os.PathLike,
                         references: Mapping[str, Mapping[str, float]] | None = None, title: str | None = None) -> Path:
    """One panel per `panels` entry (title -> {curve label -> (step, accuracy in [0, 1])}), side by side, with the
    `references` of that panel (label -> accuracy, a teacher's for instance) as dashed horizontal lines. Writes a PNG
    to `path` and returns it."""
    plt = _pyplot()
    references = references or {}
    figure, axes = plt.subplots(1, len(panels), figsize=(5.5 * len(panels), 4), squeeze=False, sharey=True)
    for axis, (panel, curves) in zip(axes[0], panels.items()):
        for label, points in curves.items():
            if points:
                steps, values = zip(*points)
                axis.plot(steps, [100 * value for value in values], marker="o", markersize=3, label=label)
        for index, (label, value) in enumerate(references.get(panel, {}).items()):
            axis.axhline(100 * value, color=f"C{len(curves) + index}", linestyle="--", linewidth=1,
                         label=f"{label} ({100 * value:.1f})")  # fmt: skip
        axis.set_title(panel, fontsize=10)
        axis.set_xlabel("training step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=8, loc="lower right")
    axes[0][0].set_ylabel(TOP1_LABEL)
    return _save(figure, plt, path, title)


def plot_groups(groups: Mapping[str, Mapping[str, Sequence[float]]], path: str | os.PathLike,
                title: str | None = None) -> Path:
    """A results table as a picture: for each group (a table row: a recipe, a labelled fraction) its arms side by
    side, each as one dot per seed (values in %) and a bar at their mean, in a colour per arm shared by every group.
    Writes a PNG to `path` and returns it."""
    plt = _pyplot()
    arms = list(dict.fromkeys(arm for by_arm in groups.values() for arm in by_arm))
    width = 0.8 / max(len(arms), 1)
    figure, axis = plt.subplots(figsize=(min(14.0, max(5.0, 0.4 * len(groups) * max(len(arms), 2) + 2)), 4))
    for index, arm in enumerate(arms):
        in_legend = False
        for position, by_arm in enumerate(groups.values()):
            values = by_arm.get(arm)
            if not values:
                continue
            x = position - 0.4 + width * (index + 0.5)
            axis.bar(x, sum(values) / len(values), width * 0.9, color=f"C{index}", alpha=0.35,
                     label=None if in_legend else arm)  # fmt: skip
            axis.plot([x] * len(values), values, "o", color=f"C{index}", markersize=4)
            in_legend = True
    crowded = len(groups) > 3
    axis.set_xticks(range(len(groups)), list(groups), rotation=20 if crowded else 0,
                    ha="right" if crowded else "center", fontsize=8)  # fmt: skip
    every = [value for by_arm in groups.values() for values in by_arm.values() for value in values]
    if every:  # the bars start where the dots do, so that differences of a point show
        low, high = min(every), max(every)
        axis.set_ylim(max(0.0, low - max(2.0, 0.15 * (high - low))), min(100.0, high + max(1.0, 0.1 * (high - low))))
    axis.set_ylabel(TOP1_LABEL)
    axis.grid(axis="y", alpha=0.3)
    axis.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the axes: it hides no bar
    return _save(figure, plt, path, title)


def _save(figure, plt, path, title: str | None) -> Path:
    if title:
        figure.suptitle(title, fontsize=10)
    figure.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path
