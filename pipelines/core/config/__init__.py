"""Pipeline configuration: the typed schema (pydantic) and every default (loading: medflow.core.loading).

Defaults live in this package and only here (sections in data.py and model.py): a YAML file states what differs. Unknown
keys, wrong types and impossible values fail before any work starts, each
error naming its key path, e.g. ``preprocess.spacing.1: Input should be greater than 0``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medflow.core.config.base import ConfigError, _Strict
from medflow.core.config.data import (
    AugmentConfig,
    DatasetConfig,
    DicomConfig,
    IngestConfig,
    LoaderConfig,
    PreprocessConfig,
    SimulateConfig,
    SplitConfig,
)
from medflow.core.config.model import (
    CompareConfig,
    EvaluateConfig,
    ExportConfig,
    ModelConfig,
    TrackingConfig,
    TrainConfig,
)

__all__ = ["AugmentConfig", "CompareConfig", "ConfigError", "DatasetConfig", "DicomConfig", "EvaluateConfig", "ExportConfig",
           "IngestConfig", "LoaderConfig", "ModelConfig", "PipelineConfig", "PreprocessConfig", "SimulateConfig",
           "SplitConfig", "TrackingConfig", "TrainConfig"]


class PipelineConfig(_Strict):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="the pipeline's name (experiment, registered model and export folder)",
    )
    description: str = Field(default="", description="free text, shown in MLflow")
    stages: list[str] = Field(min_length=1, description="stage names in order (see medflow run --help)")
    dataset: DatasetConfig | None = Field(default=None, description="required by ingest")
    simulate: SimulateConfig = SimulateConfig()
    dicom: DicomConfig = DicomConfig()
    ingest: IngestConfig = IngestConfig()
    preprocess: PreprocessConfig = PreprocessConfig()
    split: SplitConfig = SplitConfig()
    loader: LoaderConfig = LoaderConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    evaluate: EvaluateConfig = EvaluateConfig()
    compare: CompareConfig = CompareConfig()
    export: ExportConfig = ExportConfig()
    tracking: TrackingConfig = TrackingConfig()
    workers: int = Field(default=0, ge=0, description="parallel case workers; 0 = all cores")
    executor: Literal["local", "ray"] = Field(
        default="local", description="per-case work (ingest, preprocess, segmentation evaluate, simulate): local (a "
        "process pool) or ray (a Ray task per case, with retries; pip install 'medflow[ray]'); never part of a key")
    profiles: dict[str, dict[str, Any]] = Field(default_factory=dict, description="named --set bundles")

    @field_validator("stages")
    @classmethod
    def _known_stages(cls, v):
        from medflow.core.catalog import STAGES  # registry; imported late to avoid a cycle

        unknown = [s for s in v if s not in STAGES]
        if unknown:
            raise ValueError(f"unknown stage(s) {unknown}; known: {sorted(STAGES)}")
        if len(set(v)) != len(v):
            raise ValueError(f"a stage is listed twice: {v}")
        return v

    @model_validator(mode="after")
    def _consistent(self):
        if self.dataset is None:
            if "ingest" in self.stages:
                raise ValueError("dataset: required, because the pipeline runs the ingest stage")
        elif self.dataset.layout == "msd" and self.dataset.classes is not None:
            raise ValueError("dataset.classes is for the csv layout; msd datasets declare labels in dataset.json")
        from medflow.data.augment import build_transform  # the registry validates each transform's parameters

        ndim = 2 if self.loader.mode == "2d" else 3
        for i, spec in enumerate(self.augment.transforms):
            try:
                build_transform(spec, ndim, self.dataset.classes if self.dataset is not None else None)
            except ValueError as err:
                raise ValueError(f"augment.transforms.{i}: {err}") from None
        return self

    @model_validator(mode="after")
    def _variants_valid(self):
        for i, variant in enumerate(self.compare.models):
            if variant.settings:
                try:
                    self.variant(variant)
                except ConfigError as err:
                    raise ValueError(f"compare.models.{i}.settings: {err}") from None
        return self

    def variant(self, model) -> PipelineConfig:
        """This config for one compare entry: its model, and its ``settings`` applied (validated again)."""
        from pydantic import ValidationError

        from medflow.core.loading import apply_override  # loading imports this package

        plain = ModelConfig(name=model.name, params=model.params)
        if not getattr(model, "settings", None):
            return self.model_copy(update={"model": plain})
        doc = {**self.model_dump(mode="json"), "model": plain.model_dump(mode="json"), "compare": {"models": []}}
        for dotted, value in model.settings.items():
            apply_override(doc, str(dotted).split("."), value, f"settings.{dotted}")
        try:
            return PipelineConfig.model_validate(doc)
        except ValidationError as err:
            raise ConfigError("; ".join(
                f"{'.'.join(str(p) for p in e['loc'])}: "
                + ("unknown key" if e["type"] == "extra_forbidden" else e["msg"].removeprefix("Value error, "))
                for e in err.errors())) from None

    def section(self, name: str) -> Any:
        """A config section as plain JSON data (what enters a stage's cache key)."""
        return getattr(self, name).model_dump(mode="json")

    def resolved(self) -> dict:
        """The whole resolved config as plain data, without the profile table."""
        return self.model_dump(mode="json", exclude={"profiles"})
