"""Where masks exist: lesion Dice, lesion-wise detection, how much explanation falls in the lesion, a montage.

Everything here is measured on the network's first input crop of each case (the
preprocessed grid), the grid the explanation and the lesion map live on: the
true mask is the preprocess stage's mask cut by the same crop. A normal subject's
mask is all zero; a lesion case without a mask is weakly labelled and left out of
the lesion figures (it still counts for accuracy).

Detection is lesion-wise, as nnDetection and the MSD lesion challenges count it:
connected components (26-neighbourhood) of the true mask and of the thresholded
lesion map; a true lesion is found when a predicted component overlaps it, and a
predicted component that overlaps no true lesion is a false positive.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

_STRUCTURE = np.ones((3, 3, 3), dtype=bool)


def true_masks(cfg, plan, pre, ids: list[str]) -> dict[str, np.ndarray | None]:
    """case id -> (*P) uint8 mask on the first crop, zeros for normal subjects, None where unknown."""
    from medflow.data.casefile import read_case
    from medflow.data.sampling import cut_sample
    from medflow.tasks.classification import crop_centres

    win, sampler = plan.window, plan.window.sampler()
    normal = cfg.dataset.normal_class
    masks = {}
    for cid in ids:
        record = pre.cases[cid]
        if record.get("has_label"):
            arrays, _ = read_case(pre.file(record["file"]), names=("image", "label"))
            centre = crop_centres(plan, arrays["image"].shape[1:])[0]
            masks[cid] = (cut_sample(arrays["image"], arrays["label"], centre, sampler)[1] > 0).astype(np.uint8)
        elif normal is not None and record["target"] == normal:
            masks[cid] = np.zeros(tuple(win.patch_size), np.uint8)
        else:
            masks[cid] = None
    return masks


def lesion_figures(lesion_maps: dict[str, np.ndarray], masks: dict[str, np.ndarray | None],
                   threshold: float = 0.5) -> dict:
    """Lesion Dice (mean over cases with a lesion in their mask), detection sensitivity and false positives
    per case, over the cases whose mask is known. NaN where there is nothing to count."""
    dice, found, lesions, false_pos, cases = [], 0, 0, 0, 0
    for cid, truth in masks.items():
        if truth is None or cid not in lesion_maps:
            continue
        pred = lesion_maps[cid] > threshold
        cases += 1
        t_lab, n_t = ndimage.label(truth > 0, structure=_STRUCTURE)
        p_lab, n_p = ndimage.label(pred, structure=_STRUCTURE)
        if n_t:
            dice.append(2.0 * np.logical_and(pred, truth > 0).sum() / (pred.sum() + (truth > 0).sum()))
        lesions += n_t
        found += len(set(np.unique(t_lab[pred])) - {0})
        false_pos += len(set(range(1, n_p + 1)) - set(np.unique(p_lab[truth > 0])))
    return {"lesion_dice": float(np.mean(dice)) if dice else float("nan"),
            "detection_sensitivity": found / lesions if lesions else float("nan"),
            "false_positives_per_case": false_pos / cases if cases else float("nan"),
            "lesions": lesions, "cases_with_masks": cases}


def explanation_figures(maps: dict[str, np.ndarray], masks: dict[str, np.ndarray | None]) -> dict:
    """Mean share of explanation mass inside the lesion over lesion cases with a mask, beside its chance
    level (the lesion's share of the crop): a map that points at the lesion is near 1, a blind one near chance."""
    from medflow.models.explain import mass_in_mask

    ids = [c for c, m in masks.items() if m is not None and m.any() and c in maps]
    if not ids:
        return {"explanation_mass_in_lesion": float("nan"), "explanation_mass_chance": float("nan"),
                "explanation_peak_in_lesion": float("nan"), "cases": 0}
    mass = mass_in_mask(np.stack([maps[c] for c in ids]), np.stack([masks[c] for c in ids]))
    chance = [float(masks[c].mean()) for c in ids]
    # The pointing game (Zhang et al. 2018): does the map's maximum fall in the lesion? (An all-zero map: no.)
    peaks = [bool(maps[c].max() > 0 and masks[c][np.unravel_index(np.argmax(maps[c]), maps[c].shape)]) for c in ids]
    return {"explanation_mass_in_lesion": float(np.nanmean(mass)) if np.isfinite(mass).any() else 0.0,
            "explanation_mass_chance": float(np.mean(chance)), "explanation_peak_in_lesion": float(np.mean(peaks)),
            "cases": len(ids)}


def montage_rows(ids, y, probs, classes, views, maps, lesion_maps, masks, per_group: int) -> list[dict]:
    """Up to ``per_group`` correct and ``per_group`` wrong cases, each at the axial slice through its lesion
    (the true mask's centre of mass), or else through the explanation's peak."""
    pred = [int(np.argmax(p)) for p in probs]
    correct = [i for i in range(len(ids)) if pred[i] == y[i]]
    wrong = [i for i in range(len(ids)) if pred[i] != y[i]]
    rows = []
    for i in correct[:per_group] + wrong[:per_group]:
        cid, mask = ids[i], masks.get(ids[i])
        expl = maps[cid]
        if mask is not None and mask.any():
            z = int(round(ndimage.center_of_mass(mask)[2]))
        else:
            z = int(np.unravel_index(np.argmax(expl), expl.shape)[2])
        verdict = "correct" if pred[i] == y[i] else "WRONG"
        rows.append({"title": f"{cid} ({verdict})\ntrue {classes[y[i]]}\npred {classes[pred[i]]} {probs[i][pred[i]]:.2f}",
                     "image": views[cid][..., 0][:, :, z], "explanation": expl[:, :, z],
                     "lesion": None if cid not in lesion_maps else lesion_maps[cid][:, :, z],
                     "mask": None if mask is None else mask[:, :, z]})
    return rows


def montage_figure(rows: list[dict], method: str, title: str = ""):
    """One row per case: image | explanation | predicted lesion map (segcls) | true mask."""
    from medflow.tasks.figures import pyplot

    plt = pyplot()
    panels = ["image", "explanation", "lesion", "mask"]
    fig, axes = plt.subplots(max(1, len(rows)), 4, figsize=(11, 3.3 * max(1, len(rows))), squeeze=False,
                             constrained_layout=True)
    for ax in axes.ravel():
        ax.axis("off")
    if not rows:
        axes[0, 0].text(0.5, 0.5, "no case", ha="center", va="center")
    for r, row in enumerate(rows):
        for c, name in enumerate(panels):
            ax = axes[r, c]
            ax.imshow(row["image"].T, cmap="gray", origin="lower")
            layer = row[name] if name != "image" else None
            if name != "image" and layer is None:
                ax.set_title(f"{name}: none", fontsize=8)
                continue
            if layer is not None:
                cmap = {"explanation": "jet", "lesion": "autumn", "mask": "summer"}[name]
                shown = np.ma.masked_where(layer.T <= (0.05 if name == "explanation" else 0.5), layer.T)
                ax.imshow(shown, cmap=cmap, vmin=0, vmax=1, alpha=0.5, origin="lower", interpolation="nearest")
            label = {"image": row["title"], "explanation": method, "lesion": "predicted lesion (p > 0.5)",
                     "mask": "true mask"}[name]
            ax.set_title(label, fontsize=7 if name == "image" else 8)
    if title:
        fig.suptitle(title)
    return fig
