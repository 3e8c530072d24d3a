"""Review figures: training curves, three-plane contour montages with difference maps, case grids."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from medflow.tasks.figures import pyplot

SKIP = ("epoch", "epoch_seconds", "train_samples_per_s", "learning_rate")
PLANES = (("axial", 2), ("coronal", 1), ("sagittal", 0))


def training_curves_figure(history: Sequence[dict], title: str = ""):
    """One panel per metric, training and validation together, plus the learning rate.

    Args:
        history: one dict per epoch (history.csv rows): ``epoch``, ``loss``, ``val_loss``, ...
    """
    from matplotlib.ticker import MaxNLocator

    plt = pyplot()
    keys = [k for k in history[0] if k not in SKIP and not k.startswith("val_")] if history else []
    keys += [k[4:] for k in (history[0] if history else {}) if k.startswith("val_") and k[4:] not in keys]
    keys.sort(key=lambda k: (not k.endswith("loss"), k))
    panels = keys + (["learning_rate"] if history and "learning_rate" in history[0] else [])
    cols = min(3, max(1, len(panels)))
    rows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False, constrained_layout=True)
    for ax in axes.ravel():
        ax.axis("off")
    epochs = [int(float(h.get("epoch", i))) for i, h in enumerate(history)]

    def series(key):
        return [float(h[key]) if h.get(key) not in (None, "") else np.nan for h in history]

    for ax, key in zip(axes.ravel(), panels):
        ax.axis("on")
        if key in history[0]:
            ax.plot(epochs, series(key), label="train" if key != "learning_rate" else key, color="tab:blue")
        if f"val_{key}" in history[0]:
            ax.plot(epochs, series(f"val_{key}"), label="validation", color="tab:orange")
        ax.set_title(key, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if not panels:
        axes[0, 0].text(0.5, 0.5, "no epochs recorded", ha="center", va="center")
    fig.suptitle(title or "training curves")
    return fig


def _plane(vol: np.ndarray, axis: int, index: int) -> np.ndarray:
    """A 2D slice (rows, cols) shown upright: RAS volumes, first remaining axis to the right."""
    return np.take(vol, index, axis=axis).T


def difference_map(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(wrong, missed) boolean maps of two label maps of one shape.

    wrong: predicted foreground that is not the true class there (a false positive, or the wrong class);
    missed: true foreground the prediction left as background (a false negative).
    """
    return (pred > 0) & (pred != truth), (truth > 0) & (pred == 0)


def ortho_montage_figure(rows: Sequence[dict], class_names: Sequence[str], title: str = ""):
    """Per case: axial, coronal and sagittal planes through the case's centre, each as
    image + contours (truth solid, prediction dashed) and image + difference map.

    Args:
        rows: dicts with ``title``, ``image`` (X, Y, Z) float, ``truth`` and ``pred`` (X, Y, Z) int
            label maps on the image's grid in RAS order, ``centre`` (3,) voxel indices and optionally
            ``spacing`` (3,) mm, so anisotropic voxels are drawn at their true proportions.
        class_names: K names, index 0 background (not drawn).
    """
    plt = pyplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    colors = plt.get_cmap("tab10")
    fig, axes = plt.subplots(len(rows), 6, figsize=(19, 3.3 * len(rows)), squeeze=False, constrained_layout=True)
    for r, row in enumerate(rows):
        image, truth, pred = row["image"], row["truth"], row["pred"]
        lo, hi = np.percentile(image, [1, 99.5])
        spacing = row.get("spacing", (1.0, 1.0, 1.0))
        for p, (plane, axis) in enumerate(PLANES):
            idx = int(row["centre"][axis])
            first, second = (a for a in range(3) if a != axis)  # shown along columns, rows
            aspect = float(spacing[second]) / float(spacing[first])
            img, t, q = (_plane(v, axis, idx) for v in (image, truth, pred))
            ax_c, ax_d = axes[r, 2 * p], axes[r, 2 * p + 1]
            for ax in (ax_c, ax_d):
                ax.imshow(img, cmap="gray", vmin=lo, vmax=hi, origin="lower", interpolation="nearest", aspect=aspect)
                ax.set_xticks([])
                ax.set_yticks([])
            for k in range(1, len(class_names)):
                for lab, style in ((t, "solid"), (q, "dashed")):
                    if (lab == k).any() and not (lab == k).all():
                        ax_c.contour(lab == k, [0.5], colors=[colors(k % 10)], linewidths=0.9, linestyles=style)
            wrong, missed = difference_map(t, q)
            overlay = np.zeros((*img.shape, 4))
            overlay[wrong] = (1.0, 0.15, 0.15, 0.8)
            overlay[missed] = (0.2, 0.5, 1.0, 0.8)
            ax_d.imshow(overlay, origin="lower", interpolation="nearest", aspect=aspect)
            ax_c.set_title(f"{row['title']}\n{plane} {idx}" if p == 0 else f"{plane} {idx}", fontsize=9)
            ax_d.set_title(f"{plane}: difference", fontsize=9)
    handles = [Line2D([], [], color=colors(k % 10), label=class_names[k]) for k in range(1, len(class_names))]
    handles += [Line2D([], [], color="k", ls="solid", label="truth"), Line2D([], [], color="k", ls="dashed",
                                                                          label="prediction"),
                Patch(color=(1.0, 0.15, 0.15), label="false positive / wrong class"),
                Patch(color=(0.2, 0.5, 1.0), label="false negative (missed)")]
    fig.legend(handles=handles, loc="lower center", ncol=len(handles), fontsize=9, bbox_to_anchor=(0.5, -0.02))
    fig.suptitle(title)
    return fig


def case_grid_figure(views: Sequence[np.ndarray], titles: Sequence[str], correct: Sequence[bool], title: str = "",
                     cols: int = 6):
    """Central slice (axial for volumes) of each case, titled with its true and predicted class and the
    probability; green frame when right, red when wrong.

    Args:
        views: (X, Y[, Z]) arrays, one per case, in RAS order.
    """
    plt = pyplot()
    n = max(1, len(views))
    cols = min(cols, n)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.9 * cols, 3.2 * rows), squeeze=False, constrained_layout=True)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, view, text, ok in zip(axes.ravel(), views, titles, correct):
        image = view[:, :, view.shape[2] // 2] if view.ndim == 3 else view
        ax.axis("on")
        ax.imshow(image.T, cmap="gray", origin="lower")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_color("tab:green" if ok else "tab:red")
            spine.set_linewidth(3)
        ax.set_title(text, fontsize=8)
    fig.suptitle(title)
    return fig
