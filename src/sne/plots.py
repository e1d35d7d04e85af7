"""Plots, written once and used by every command and benchmark. Files are written atomically."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: never needs a display
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from sne.io_utils import atomic_path, bounded_path  # noqa: E402


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
    add_caption(fig, caption)
    if caption:
        fig.subplots_adjust(bottom=0.2)
    return save_figure(fig, path, dpi=120)


CAPTION_POINTS = 6


def caption_lines(fig, caption: str) -> list[str]:
    """``caption`` wrapped to the width of ``fig`` in small print (about half a point-size per character)."""
    if not caption:
        return []
    return textwrap.wrap(caption, width=max(20, int(fig.get_figwidth() * 72 / (0.55 * CAPTION_POINTS))))


def add_caption(fig, caption: str) -> float:
    """Small print under a figure: the data, seed, hardware and command that made it. Returns the
    height it takes, in inches (0 without a caption)."""
    lines = caption_lines(fig, caption)
    if lines:
        fig.text(0.01, 0.01, "\n".join(lines), fontsize=CAPTION_POINTS, va="bottom")
    return len(lines) * CAPTION_POINTS * 1.3 / 72 + 0.1 if lines else 0.0


def scatter_grid(panels: list[tuple[str, np.ndarray, np.ndarray]], path: str | Path, title: str, caption: str = "") -> Path:
    """One predicted-vs-true panel per ``(label, predicted, true)``, side by side, sharing axes."""
    from scipy.stats import kendalltau

    columns = min(4, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 3.2 * rows + 0.9), squeeze=False)
    values = np.concatenate([np.concatenate([p, t]) for _, p, t in panels])
    low, high = float(values.min()), float(values.max())
    for ax, (label, predicted, true) in zip(axes.flat, panels):
        ax.scatter(true, predicted, s=4, alpha=0.5, linewidths=0)
        ax.plot([low, high], [low, high], color="black", linewidth=0.7)
        tau = kendalltau(predicted, true).statistic if len(true) > 1 else float("nan")
        ax.set_title(f"{label} (tau {tau:.3f}, n={len(true)})", fontsize=8)
        ax.set_xlabel("true", fontsize=8)
        ax.set_ylabel("predicted", fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title, fontsize=9)
    add_caption(fig, caption)
    fig.tight_layout(rect=(0, 0.12 if caption else 0, 1, 0.95))
    return save_figure(fig, path)


def embedding_map(codes: np.ndarray, groups: list[str], path: str | Path, title: str, caption: str = "",
                  seed: int = 0) -> Path:
    """A 2-D t-SNE map of encodings ``codes`` (one row per network), coloured by ``groups`` (fewer
    than four networks: their principal axes)."""
    from sklearn.manifold import TSNE

    codes = np.asarray(codes, dtype=np.float64)
    if len(codes) < 4:
        # t-SNE needs more points than its perplexity: a handful is drawn on its principal axes.
        centred = codes - codes.mean(0)
        points = np.zeros((len(codes), 2))
        axes = np.linalg.svd(centred, full_matrices=False)[2][:2] if len(codes) > 1 else np.zeros((0, codes.shape[1]))
        points[:, : len(axes)] = centred @ axes.T
    else:
        perplexity = float(min(30.0, max(2.0, (len(codes) - 1) / 3)))
        points = TSNE(n_components=2, perplexity=perplexity, init="pca", random_state=seed).fit_transform(codes)
    fig, ax = plt.subplots(figsize=(6, 6.2))
    for group in dict.fromkeys(groups):
        chosen = np.array([g == group for g in groups])
        ax.scatter(points[chosen, 0], points[chosen, 1], s=5, alpha=0.6, linewidths=0, label=group)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, markerscale=3)
    add_caption(fig, caption)
    fig.subplots_adjust(bottom=0.16 if caption else 0.05)
    return save_figure(fig, path)


def error_curves(curves: dict[str, tuple[list[float], list[float], list[float]]], path: str | Path, title: str,
                 xlabel: str, ylabel: str, caption: str = "") -> Path:
    """One line per ``label: (x, mean, std)`` with error bars of one standard deviation."""
    fig, ax = plt.subplots(figsize=(5.6, 4.6))
    for label, (x, mean, std) in curves.items():
        ax.errorbar(x, mean, yerr=std, marker="o", capsize=3, linewidth=1.2, markersize=4, label=label)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    plot_height = fig.get_figheight()
    caption_inches = add_caption(fig, caption)
    if caption_inches:
        # Grown by the caption's height, so that a caption of many commands stays clear of the axis.
        fig.set_figheight(plot_height + caption_inches)
        fig.subplots_adjust(bottom=(caption_inches + 0.12 * plot_height) / fig.get_figheight())
    return save_figure(fig, path, dpi=120)


def save_figure(fig, path: str | Path, dpi: int = 110) -> Path:
    """Write ``fig`` atomically (format from the suffix) and close it; PNGs get a 256-colour palette.
    Returns where it went: ``path``, with its name shortened if too long for a file system (:func:`bounded_path`)."""
    path = bounded_path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, format=path.suffix.lstrip(".") or "png")
        if path.suffix.lower() == ".png":
            to_palette(tmp)
    plt.close(fig)
    return path


def to_palette(path: str | Path) -> None:
    """Rewrite a PNG with a 256-colour adaptive palette: plots of a few colours lose nothing visible
    and shrink about 3x, which keeps the committed result plots small."""
    from PIL import Image

    with Image.open(path) as image:
        if image.mode == "P":
            return
        quantized = image.convert("RGB").quantize(colors=256)
    quantized.save(path, format="PNG", optimize=True)
