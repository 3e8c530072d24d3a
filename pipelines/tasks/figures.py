"""Evaluation figures: confusion matrices and reconstruction comparisons (matplotlib, no display); the review
figures (montages, case grids, training curves) are in :mod:`medflow.review.figures`."""

from __future__ import annotations

import os

from collections.abc import Sequence

import numpy as np

from medflow.models.metrics import row_normalize


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, dest, dpi: int = 90) -> None:
    """Save ``fig`` to a path (atomically: a killed run leaves no half-written PNG) or a file object,
    and close it (pyplot keeps open figures alive)."""
    from medflow.data.atomic import write_atomic

    try:
        if isinstance(dest, (str, os.PathLike)):
            with write_atomic(dest, suffix=".png") as tmp:
                fig.savefig(tmp, dpi=dpi, format="png")
        else:
            fig.savefig(dest, dpi=dpi, format="png")
    finally:
        pyplot().close(fig)


def confusion_figure(cm: np.ndarray, classes: Sequence[str], title: str = ""):
    """Counts (left) and row-normalized recall (right), class names on both axes.

    Args:
        cm: (K, K) counts, rows true, columns predicted.
        classes: K names.
    """
    plt = pyplot()
    cm = np.asarray(cm)
    k = len(classes)
    size = max(5.0, 0.9 * k + 2.5)  # big enough that the counts read at the UI's artifact preview size
    fig, axes = plt.subplots(1, 2, figsize=(2 * size + 1, size), constrained_layout=True)
    for ax, data, name in ((axes[0], cm.astype(np.float64), "counts"), (axes[1], row_normalize(cm), "row-normalized")):
        im = ax.imshow(data if name != "counts" else np.log10(1 + data), cmap="Blues")
        ax.set_xticks(range(k), classes, rotation=45, ha="right")
        ax.set_yticks(range(k), classes)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
        ax.set_title(name + (" (colour: log10)" if name == "counts" else ""))
        hi = im.get_array().max()
        for i in range(k):
            for j in range(k):
                text = f"{int(data[i, j]):,}" if name == "counts" else f"{data[i, j]:.3f}"
                shade = im.get_array()[i, j]
                ax.text(j, i, text, ha="center", va="center", fontsize=max(7, 14 - k),
                        color="white" if hi and shade > 0.6 * hi else "black")
    if title:
        fig.suptitle(title)
    return fig


def reconstruction_figure(rows: Sequence[dict], title: str = ""):
    """One row per case: truth | each method | |last method - truth|, each with its PSNR/SSIM in the title.

    ``rows``: dicts with ``name``, ``truth`` (H, W) and ``methods``, a list of (label, (H, W) image,
    image_quality dict); the error panel shows the last method (the network).
    """
    plt = pyplot()
    n_cols = 2 + max(len(row["methods"]) for row in rows)
    fig, axes = plt.subplots(len(rows), n_cols, figsize=(2.5 * n_cols, 2.6 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows):
        lo, hi = float(row["truth"].min()), float(row["truth"].max())
        label, last, _ = row["methods"][-1]
        panels = [("truth " + row["name"], row["truth"], (lo, hi), "gray"),
                  *((f"{name} {q['psnr']:.2f} dB / {q['ssim']:.3f}", image, (lo, hi), "gray")
                    for name, image, q in row["methods"]),
                  (f"|{label} - truth|", np.abs(last - row["truth"]), (0.0, 0.25 * (hi - lo)), "magma")]
        for ax, (name, image, (vmin, vmax), cmap) in zip(ax_row, panels):
            # Array axis 0 is x: transposed so x runs left to right and y upward (origin lower).
            ax.imshow(image.T, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower", interpolation="nearest")
            ax.set_title(name, fontsize=8)
            ax.axis("off")
        for ax in ax_row[len(panels):]:
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
