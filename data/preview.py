"""Augmentation preview figures: original vs augmented sample with the label overlaid."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")  # files only, never a window

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402

_LABEL_COLOURS = ListedColormap([(0, 0, 0, 0), (0.9, 0.2, 0.2, 0.3), (0.2, 0.8, 0.3, 0.3), (0.2, 0.4, 0.95, 0.3),
                                 (0.95, 0.8, 0.1, 0.3), (0.8, 0.2, 0.9, 0.3)])


def _plane(arr: np.ndarray) -> np.ndarray:
    """A 2D view of a (*P) array: itself in 2D, the middle of the last axis in 3D."""
    return arr if arr.ndim == 2 else arr[..., arr.shape[-1] // 2]


def _show(ax, image, label, title):
    ax.imshow(_plane(image[..., 0]).T, cmap="gray", origin="lower")
    if label is not None:
        ax.imshow(_plane(label).T, cmap=_LABEL_COLOURS, vmin=0, vmax=_LABEL_COLOURS.N - 1, origin="lower",
                  interpolation="nearest")
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def preview_figure(source, items: list[tuple[str, int, int]], class_names: list[str] | None = None):
    """One row per (case id, epoch, index): original cut | augmented, label overlaid.

    Returns:
        A matplotlib Figure (close it after saving).
    """
    fig, axes = plt.subplots(len(items), 2, figsize=(6, 3 * len(items)), squeeze=False)
    for row, (cid, epoch, index) in zip(axes, items):
        plain = source.sample(cid, epoch, index, augment=False)
        aug = source.sample(cid, epoch, index)
        tag = f" [{class_names[aug.target]}]" if class_names and aug.target is not None else ""
        _show(row[0], plain.image, plain.label, f"{cid}{tag} e{epoch} #{index} original")
        names = ", ".join(n for n, _ in aug.applied) or "none drawn"
        _show(row[1], aug.image, aug.label, f"augmented: {names}")
    fig.tight_layout()
    return fig
