"""Evaluation figures: confusion matrices and image | truth | prediction montages (matplotlib, no display)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medflow.models.metrics import row_normalize


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, dest, dpi: int = 90) -> None:
    """Save ``fig`` to a path or file object and close it (pyplot keeps open figures alive)."""
    fig.savefig(dest, dpi=dpi, format="png")
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
    size = max(4.0, 0.6 * k + 2.5)
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
                ax.text(j, i, text, ha="center", va="center", fontsize=8,
                        color="white" if hi and shade > 0.6 * hi else "black")
    if title:
        fig.suptitle(title)
    return fig


def _overlay(ax, image: np.ndarray, label: np.ndarray | None, n_classes: int):
    ax.imshow(image.T, cmap="gray", origin="lower")
    if label is not None:
        masked = np.ma.masked_where(label.T == 0, label.T)
        ax.imshow(masked, cmap="tab10", vmin=0, vmax=max(9, n_classes - 1), alpha=0.45, origin="lower",
                  interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def montage_figure(rows: Sequence[dict], n_classes: int, title: str = ""):
    """One row per case: image | truth overlay | prediction overlay.

    Args:
        rows: dicts with 'title' (str), 'image', 'truth', 'pred': 2D (H, W) arrays in RAS
            order (first axis to the right, second to the front), shown radiologically upright.
        n_classes: K, for a fixed colour per class.
    """
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 3, figsize=(9, 3.1 * len(rows)), squeeze=False, constrained_layout=True)
    for r, row in enumerate(rows):
        for c, (name, label) in enumerate((("image", None), ("truth", row["truth"]), ("prediction", row["pred"]))):
            _overlay(axes[r, c], row["image"], label, n_classes)
            axes[r, c].set_title(f"{row['title']}: {name}" if c == 0 else name, fontsize=9)
    if title:
        fig.suptitle(title)
    return fig


def reconstruction_figure(rows: Sequence[dict], title: str = ""):
    """One row per case: truth | FBP | network | |network - truth|, each with its PSNR/SSIM in the title.

    ``rows``: dicts with ``name``, ``truth``, ``fbp``, ``net`` (H, W) arrays and ``fbp_q``/``net_q``
    (image_quality dicts).
    """
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 4, figsize=(10, 2.6 * len(rows)), squeeze=False)
    for ax_row, row in zip(axes, rows):
        lo, hi = float(row["truth"].min()), float(row["truth"].max())
        panels = [("truth " + row["name"], row["truth"], (lo, hi), "gray"),
                  ("FBP {psnr:.2f} dB / {ssim:.3f}".format(**row["fbp_q"]), row["fbp"], (lo, hi), "gray"),
                  ("network {psnr:.2f} dB / {ssim:.3f}".format(**row["net_q"]), row["net"], (lo, hi), "gray"),
                  ("|network - truth|", np.abs(row["net"] - row["truth"]), (0.0, 0.25 * (hi - lo)), "magma")]
        for ax, (name, image, (vmin, vmax), cmap) in zip(ax_row, panels):
            # Array axis 0 is x: transposed so x runs left to right and y upward (origin lower).
            ax.imshow(image.T, cmap=cmap, vmin=vmin, vmax=vmax, origin="lower", interpolation="nearest")
            ax.set_title(name, fontsize=8)
            ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig
