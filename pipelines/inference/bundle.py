"""An export bundle: the model in three runtimes plus everything needed around it.

A bundle folder (written by the export stage) holds ``model.keras``,
``saved_model/``, ``model.onnx`` (see models/runtimes.py), ``plan.json`` and
``MODEL_CARD.md``. ``plan.json`` is the whole inference path: the family, the
preprocessing plan (orientation, spacing, normalization, crop), the window or
patch settings, class names, or the CT geometry. :class:`Bundle` runs that path
on raw inputs, so a volume goes in and its result comes out in the input's own
space, whatever runtime executes the network:

- segmentation: (X, Y, Z[, C]) volume + affine -> (X, Y, Z) label map and (X, Y, Z, K) probabilities
  on the input's grid;
- classification: volume + affine -> (K,) class probabilities;
- reconstruction: (N, detectors, angles) sinograms -> (N, S, S) images.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medflow.data.nifti import CaseError, read_nifti

PLAN = "plan.json"
CARD = "MODEL_CARD.md"
FAMILIES = ("segmentation", "classification", "reconstruction")


class BundleError(ValueError):
    """The bundle folder is missing, incomplete or of an unknown family (one line)."""


@dataclass
class Bundle:
    """A loaded export bundle.

    Attributes:
        folder: the bundle folder.
        plan: the parsed ``plan.json``.
        runtime: which runtime runs the network ('keras', 'saved_model' or 'onnx').
        net: ``net(x) -> y`` over float32 batches shaped like the model's input.
    """

    folder: Path
    plan: dict
    runtime: str
    net: object

    @property
    def family(self) -> str:
        return self.plan["family"]

    @property
    def classes(self) -> list[str]:
        return self.plan.get("classes", [])

    # -- segmentation -------------------------------------------------------------------------
    def segment(self, channels: list[np.ndarray], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Segment one volume in its native space.

        Args:
            channels: one (X, Y, Z) array per input channel, on the grid of ``affine``.
            affine: (4, 4) voxel-to-world matrix of that grid.

        Returns:
            (labels (X, Y, Z) uint8, probabilities (X, Y, Z, K) float32), both on the input grid.
        """
        from medflow.data.native import plan_from_json, prepare, to_native
        from medflow.models.inference import sliding_window

        self._expect("segmentation")
        win, inf = self.plan["window"], self.plan["inference"]
        image, meta = prepare(self._check_channels(channels), affine, plan_from_json(self.plan["preprocess"]))
        probs = sliding_window(self.net, image, win["patch_size"], len(self.classes), mode=win["mode"],
                               slice_axis=win["slice_axis"], overlap=inf["overlap"], batch_size=inf["batch_size"],
                               mirror_axes=inf["mirror_axes"])
        native = to_native(probs, meta)
        return np.argmax(native, axis=-1).astype(np.uint8), native

    # -- classification -----------------------------------------------------------------------
    def classify(self, channels: list[np.ndarray], affine: np.ndarray) -> np.ndarray:
        """(K,) class probabilities of one volume: the mean over the plan's unaugmented crops."""
        from medflow.data.native import plan_from_json, prepare
        from medflow.data.sampling import SamplerConfig, cut_sample

        self._expect("classification")
        win = self.plan["window"]
        image, _ = prepare(self._check_channels(channels), affine, plan_from_json(self.plan["preprocess"]))
        sampler = SamplerConfig(mode=win["mode"], patch_size=tuple(win["patch_size"]), slice_axis=win["slice_axis"],
                                crop=win["crop"])
        spatial = image.shape[1:]
        if win["crop"] == "center":
            centres = [[s // 2 for s in spatial]]
        else:  # random crops at training: average fixed, seeded ones at inference
            rng = np.random.default_rng(self.plan["inference"].get("seed", 0))
            centres = [[int(rng.integers(s)) for s in spatial] for _ in range(self.plan["inference"]["samples"])]
        x = np.stack([np.moveaxis(cut_sample(image, None, c, sampler)[0], 0, -1) for c in centres])
        return np.asarray(self.net(x.astype(np.float32)), dtype=np.float64).mean(axis=0)

    # -- reconstruction -----------------------------------------------------------------------
    def reconstruct(self, sinograms: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """(N, S, S) float32 images from (N, detectors, angles) sinograms of the training geometry."""
        self._expect("reconstruction")
        sinograms = np.asarray(sinograms, dtype=np.float32)
        if sinograms.ndim == 2:
            sinograms = sinograms[None]
        shape = tuple(self.plan["input_shape"])
        if sinograms.shape[1:] != shape:
            raise ValueError(f"sinogram shape {sinograms.shape[1:]}, the model expects {shape} (detectors, angles)")
        out = [np.asarray(self.net(sinograms[i:i + batch_size]))[..., 0]
               for i in range(0, len(sinograms), batch_size)]
        return np.concatenate(out).astype(np.float32)

    # -- files --------------------------------------------------------------------------------
    def read_volume(self, path) -> tuple[list[np.ndarray], np.ndarray]:
        """The channels and affine of one NIfTI input; a 4D file holds the channels on its last axis.

        Raises:
            CaseError: unreadable file, or a channel count the model was not trained on.
        """
        n = len(self.plan["channels"])
        vol = read_nifti(path, expect_ndim=3 if n == 1 else 4)
        data = vol.data if vol.data.ndim == 4 else vol.data[..., None]
        if data.shape[-1] != n:
            raise CaseError(path, f"{data.shape[-1]} channel(s), the model expects {n} ({', '.join(self.plan['channels'])})")
        return [data[..., c] for c in range(n)], vol.affine

    def _check_channels(self, channels):
        n = len(self.plan["channels"])
        if len(channels) != n:
            raise ValueError(f"{len(channels)} channel(s), the model expects {n}")
        return [np.asarray(c, dtype=np.float32) for c in channels]

    def _expect(self, family: str) -> None:
        if self.family != family:
            raise BundleError(f"{self.folder}: a {self.family} model, not a {family} model")


def read_plan(folder: Path) -> dict:
    folder = Path(folder)
    path = folder / PLAN
    if not path.is_file():
        raise BundleError(f"{folder}: not an export bundle (no {PLAN})")
    try:
        plan = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise BundleError(f"{path}: unreadable plan ({err})") from None
    if plan.get("family") not in FAMILIES:
        raise BundleError(f"{path}: unknown model family {plan.get('family')!r}; known: {', '.join(FAMILIES)}")
    return plan


def load_bundle(folder: Path, runtime: str = "keras", *, threads: int = 0) -> Bundle:
    """Load the bundle in ``folder`` with the network on ``runtime``."""
    from medflow.models.runtimes import load_runtime

    folder = Path(folder)
    plan = read_plan(folder)
    try:
        net = load_runtime(folder, runtime, threads=threads)
    except FileNotFoundError as err:
        raise BundleError(str(err)) from None
    return Bundle(folder, plan, runtime, net)
