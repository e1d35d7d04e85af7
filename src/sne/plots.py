"""Plots, written once and used by every command and benchmark. Files are written atomically."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sne.io_utils import atomic_path  # noqa: E402


def scatter_predictions(
    predicted: np.ndarray, true: np.ndarray, path: str | Path, title: str, caption: str = ""
) -> Path:
    """Predicted-vs-true scatter with the identity line; ``caption`` states data, seed and command."""
    fig, ax = plt.subplots(figsize=(5.2, 5.4))
    ax.scatter(true, predicted, s=6, alpha=0.5, linewidths=0)
    low = float(min(np.min(true), np.min(predicted)))
    high = float(max(np.max(true), np.max(predicted)))
    ax.plot([low, high], [low, high], color="black", linewidth=0.8, label="y = x")
    ax.set_xlabel("true")
    ax.set_ylabel("predicted")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    if caption:
        fig.text(0.01, 0.01, caption, fontsize=6, va="bottom", wrap=True)
        fig.subplots_adjust(bottom=0.2)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format=path.suffix.lstrip(".") or "png")
    plt.close(fig)
    return path
