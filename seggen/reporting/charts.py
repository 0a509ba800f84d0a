"""The grouped bar chart of the pipeline report and the ablation page."""

from __future__ import annotations

from pathlib import Path

from seggen.io import atomic_path


def grouped_bars(
    categories: list[str],
    series: dict[str, list[float | None]],
    path: Path,
    ylabel: str,
    errors: dict[str, list[float]] | None = None,
    rotate: bool = False,
) -> Path:
    """One group of bars per category, one bar per series (labelled with its value); optional error bars."""
    import numpy as np
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, no global figure state

    x = np.arange(len(categories))
    w = 0.8 / max(1, len(series))
    fig = Figure(figsize=(2 + (0.9 if rotate else 1.6) * len(categories), 3.6 if rotate else 3.2))
    ax = fig.subplots()
    for i, (name, values) in enumerate(series.items()):
        vals = [0.0 if v is None else v for v in values]
        err = (errors or {}).get(name)
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * w, vals, w, yerr=err, capsize=3 if err else 0, label=name)
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2 if err else 0)
    ax.set_xticks(x, categories, rotation=30 if rotate else 0, ha="right" if rotate else "center", fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_xlim(-0.6, len(categories) - 0.4)  # matplotlib's 5 % margin is wide blank space with many groups
    ax.set_ylim(top=ax.get_ylim()[1] * 1.08)  # room for the value labels over the tallest bars
    # legend above the axes, in one row: inside, it covered the value labels of the tallest bars
    ax.legend(fontsize=8, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncols=len(series), frameon=False)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    return path


def note_picture(path: Path, text: str) -> Path:
    """A small white PNG saying `text`: a declared picture that has nothing to show, saying why."""
    from PIL import Image, ImageDraw

    note = Image.new("RGB", (360, 40), "white")
    ImageDraw.Draw(note).text((8, 14), text, fill="black")
    with atomic_path(path, suffix=".png") as tmp:
        note.save(tmp, format="PNG")
    return path
