"""The inference plan: everything needed to run a trained model on a raw case, typed.

The train stage writes it as ``plan.json`` beside ``model.keras``, so a train
folder is self-contained (as nnU-Net's trained-model folder is). Evaluate writes
the plan it actually ran (the train plan with the evaluate section's inference
settings); export copies that one into the bundle; ``medflow predict``, serving
and ``medflow bench infer`` load it. All of them hand it to
``TASKS[plan.family].infer``, so the metrics evaluate logs are the exported model's.

The JSON form is the bundle ``plan.json`` of earlier releases, key for key, so
registered models keep loading.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from medflow.data.native import plan_from_json
from medflow.data.preprocess import PreprocessPlan

PLAN = "plan.json"


class PlanError(ValueError):
    """A plan file is missing, unreadable or incomplete (one line, naming the file)."""


@dataclass(frozen=True)
class Window:
    """How the network sees a volume: 2D slices or 3D patches of ``patch_size``.

    Attributes:
        mode: '2d' or '3d'.
        patch_size: (H, W) or (X, Y, Z) in voxels of the preprocessed grid.
        slice_axis: 2D mode: the axis sliced (0 sagittal, 1 coronal, 2 axial; RAS).
        crop: classifiers: 'center' (one centred crop) or 'random' (trained on random crops).
    """

    mode: str
    patch_size: tuple[int, ...]
    slice_axis: int
    crop: str

    def sampler(self):
        """The unaugmented SamplerConfig that cuts this window (no foreground draws)."""
        from medflow.data.sampling import SamplerConfig

        return SamplerConfig(mode=self.mode, patch_size=tuple(self.patch_size), slice_axis=self.slice_axis,
                             foreground_ratio=0.0, crop=self.crop)


@dataclass(frozen=True)
class InferenceSettings:
    """Settings of the inference pass itself (evaluate's section; they do not re-key training).

    Attributes:
        overlap: sliding-window overlap (segmentation).
        batch_size: windows or crops per network call.
        mirror_axes: spatial axes of the test-time mirroring (segmentation).
        samples: classifier crops averaged per case (1 for 'center').
        seed: seed of the classifier's crop centres.
    """

    overlap: float
    batch_size: int
    mirror_axes: tuple[int, ...]
    samples: int
    seed: int


@dataclass(frozen=True)
class InferencePlan:
    """One model's inference path.

    Attributes:
        family: the task family, a key of ``medflow.tasks.TASKS``.
        classes: class names, index = network output channel (empty for reconstruction).
        channels: input channel names of volume models (empty for reconstruction).
        input_shape: the network's input shape without the batch axis.
        preprocess: the preprocessing plan of volume models (None for reconstruction).
        window: the slice/patch rule of volume models.
        inference: the inference settings of volume models.
        geometry: the CT geometry of reconstruction models.
        selection: how the registry picks its champion: metric, stage, greater_is_better.
        info: provenance the export adds (pipeline, version, model, metrics, data, ...).
    """

    family: str
    input_shape: tuple[int, ...]
    classes: tuple[str, ...] = ()
    channels: tuple[str, ...] = ()
    preprocess: PreprocessPlan | None = None
    window: Window | None = None
    inference: InferenceSettings | None = None
    geometry: dict | None = None
    selection: dict = field(default_factory=dict)
    info: dict = field(default_factory=dict)

    def with_inference(self, **changes) -> "InferencePlan":
        """The plan with some inference settings replaced (evaluate's section)."""
        return replace(self, inference=replace(self.inference, **changes)) if self.inference else self

    def with_info(self, **more) -> "InferencePlan":
        return replace(self, info={**self.info, **more})

    # -- JSON ----------------------------------------------------------------------------------
    def to_json(self) -> dict:
        out: dict[str, Any] = {"family": self.family, "classes": list(self.classes),
                               "channels": list(self.channels), "input_shape": list(self.input_shape),
                               "selection": dict(self.selection)}
        if self.preprocess is not None:
            out["preprocess"] = self.preprocess.to_json()
        if self.window is not None:
            out["window"] = _lists(asdict(self.window))
        if self.inference is not None:
            out["inference"] = _lists(asdict(self.inference))
        if self.geometry is not None:
            out["geometry"] = self.geometry
        return {**self.info, **out}

    @classmethod
    def from_json(cls, doc: dict, source: str = "plan") -> "InferencePlan":
        """Parse a plan document; PlanError names ``source`` and the missing or bad key."""
        try:
            known = {"family", "classes", "channels", "input_shape", "preprocess", "window", "inference",
                     "geometry", "selection"}
            pre = doc.get("preprocess")
            return cls(
                family=str(doc["family"]),
                input_shape=tuple(int(v) for v in doc["input_shape"]),
                classes=tuple(doc.get("classes", ())),
                channels=tuple(doc.get("channels", ())),
                preprocess=None if pre is None else plan_from_json(pre),
                window=None if doc.get("window") is None else _dataclass(Window, doc["window"]),
                inference=None if doc.get("inference") is None else _dataclass(InferenceSettings, doc["inference"]),
                geometry=doc.get("geometry"),
                selection=dict(doc.get("selection", {})),
                info={k: v for k, v in doc.items() if k not in known},
            )
        except KeyError as err:
            raise PlanError(f"{source}: no {err.args[0]!r} in the inference plan") from None
        except (TypeError, ValueError) as err:
            raise PlanError(f"{source}: invalid inference plan ({err})") from None

    def save(self, folder: Path, writer=None) -> Path:
        """Write ``plan.json`` into ``folder`` (through ``writer(relpath, obj)``, e.g. a StageDir's)."""
        if writer is not None:
            return writer(PLAN, self.to_json())
        from medflow.data.atomic import write_atomic

        dest = Path(folder) / PLAN
        with write_atomic(dest) as tmp:
            tmp.write_text(json.dumps(self.to_json(), indent=1, sort_keys=True))
        return dest


def load_plan(folder: Path) -> InferencePlan:
    """The plan in ``folder`` (a train, evaluate or export folder)."""
    path = Path(folder) / PLAN
    if not path.is_file():
        raise PlanError(f"{folder}: no {PLAN} (not a trained-model or export folder)")
    try:
        doc = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise PlanError(f"{path}: unreadable plan ({err})") from None
    if not isinstance(doc, dict):
        raise PlanError(f"{path}: a plan is a JSON object")
    return InferencePlan.from_json(doc, str(path))


def _dataclass(kind, doc: dict):
    """``kind(**doc)`` over the keys it has (lists become tuples; extra keys such as orientation ignored)."""
    names = {f.name for f in fields(kind)}
    return kind(**{k: tuple(v) if isinstance(v, list) else v for k, v in doc.items() if k in names})


def _lists(doc: dict) -> dict:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in doc.items()}
