"""Pipeline configuration: the typed schema (pydantic) and every default (loading: medflow.core.loading).

Defaults live here and only here: a YAML file states what differs. Unknown
keys, wrong types and impossible values fail before any work starts, each
error naming its key path, e.g. ``preprocess.spacing.1: Input should be greater than 0``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class ConfigError(ValueError):
    """Invalid configuration. ``str(err)`` has one line per problem: ``<file>: <key.path>: <reason>``."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DatasetConfig(_Strict):
    """The dataset: where it is and how it is laid out (required by ingest)."""

    root: str = Field(description="dataset folder; ${workspace} expands to the workspace")
    layout: Literal["msd", "csv"] = Field(description="msd: dataset.json + imagesTr/labelsTr; csv: manifest")
    manifest: str = Field(default="manifest.csv", description="csv: the manifest file, relative to root")
    modality: Literal["auto", "CT", "MR"] = Field(
        default="auto", description="auto: from the channel names; CT or MR sets the normalization"
    )
    classes: list[str] | None = Field(
        default=None, min_length=2, description="csv: class names in target order (default: sorted labels)"
    )
    include_unlabeled: bool = Field(default=False, description="msd: ingest imagesTs/ too (inference-only cases)")
    normal_class: str | None = Field(
        default=None, description="csv: the class of subjects without a lesion (an all-zero lesion mask; "
        "the normative baseline's reference)"
    )


class IngestConfig(_Strict):
    """Reading and validating every case."""

    affine_tolerance_mm: float = Field(default=1e-3, gt=0, description="image/label grids must agree this closely")
    fingerprint_seed: int = Field(default=0, description="seed of the intensity samples of the fingerprint")


class PreprocessConfig(_Strict):
    """Reorientation, cropping, resampling and normalization."""

    spacing: Literal["auto"] | tuple[float, float, float] = Field(
        default="auto", description="target voxel size (mm) in RAS order; auto = dataset median"
    )
    normalization: Literal["auto", "ct", "mr", "none"] = Field(
        default="auto", description="auto: CT window for CT channels, z-score for MR; or ct, mr, none for all"
    )
    ct_window: tuple[float, float] = Field(
        default=(-1000.0, 1000.0), description="HU window clipped and scaled to [0, 1] (ct)"
    )
    mr_percentiles: tuple[float, float] = Field(
        default=(0.5, 99.5),
        description="foreground percentiles clipped before the z-score (mr); the lesion classifier uses [0.5, 100]",
    )
    crop_to_foreground: bool = Field(default=True, description="crop to the head/body bounding box (and label)")
    crop_margin: int = Field(default=2, ge=0, description="voxels kept around that box")
    image_order: int = Field(default=1, ge=0, le=5, description="spline order for images (labels: nearest)")

    @field_validator("spacing")
    @classmethod
    def _positive_spacing(cls, v):
        if v != "auto" and any(s <= 0 for s in v):
            raise ValueError(f"every spacing must be > 0 mm, got {list(v)}")
        return v

    @field_validator("ct_window")
    @classmethod
    def _window(cls, v):
        if not v[0] < v[1]:
            raise ValueError(f"window needs lo < hi, got {list(v)}")
        return v

    @field_validator("mr_percentiles")
    @classmethod
    def _percentiles(cls, v):
        if not 0 <= v[0] < v[1] <= 100:
            raise ValueError(f"percentiles need 0 <= lo < hi <= 100, got {list(v)}")
        return v


class SplitConfig(_Strict):
    """Patient-level test holdout and cross-validation folds."""

    seed: int = Field(default=0, description="seed of the patient-level split")
    test_fraction: float = Field(default=0.2, ge=0, lt=1, description="patients held out for the final test")
    folds: int = Field(default=5, ge=1, description="cross-validation folds of the rest")
    val_fraction: float = Field(default=0.2, gt=0, lt=1, description="validation patients when folds is 1")
    stratify: bool = Field(default=True, description="classification: keep class proportions")


class LoaderConfig(_Strict):
    """How training samples are cut from the preprocessed volumes and batched (tf.data)."""

    mode: Literal["2d", "3d"] = Field(default="2d", description="2d slices or 3d patches")
    patch_size: list[int] = Field(default=[192, 192], description="2 sizes in 2d mode, 3 in 3d mode")
    slice_axis: int = Field(default=2, ge=0, le=2, description="2d mode: 0 sagittal, 1 coronal, 2 axial (RAS)")
    foreground_ratio: float = Field(default=0.67, ge=0, le=1, description="patches centred on foreground")
    crop: Literal["random", "center"] = Field(
        default="random", description="classifiers: random crops (averaged at inference) or one centred crop"
    )
    samples_per_case: int = Field(default=4, ge=1, description="samples per case per epoch")
    batch_size: int = Field(default=8, ge=1, description="samples per batch")
    cache: Literal["auto", "memory", "disk", "none"] = Field(
        default="auto", description="auto: memory below cache_memory_gb, else memory-mapped from disk"
    )
    cache_memory_gb: float = Field(default=4.0, gt=0, description="auto: memory below this, disk above")
    parallel_calls: int = Field(default=0, ge=0, description="0 = AUTOTUNE bounded by the cores")

    @model_validator(mode="after")
    def _patch_matches_mode(self):
        want = 2 if self.mode == "2d" else 3
        if len(self.patch_size) != want or any(p < 1 for p in self.patch_size):
            raise ValueError(f"patch_size needs {want} positive sizes in {self.mode} mode, got {self.patch_size}")
        return self


class AugmentConfig(_Strict):
    """The augmentation chain: a list of {name, p, **params}; see data/augment for the names."""

    seed: int = Field(default=0, description="run seed: every sample's draw derives from (seed, epoch, case, index)")
    transforms: list[dict[str, Any]] = Field(
        default_factory=list, description="a list of {name, p, ...params} (see Augmentation)"
    )


class ModelConfig(_Strict):
    """A registered model builder (models/) and its parameters."""

    name: str = Field(default="unet2d", description="a registered builder (see Models)")
    params: dict[str, Any] = Field(default_factory=dict, description="its parameters (see Models)")

    @model_validator(mode="after")
    def _known(self):
        from medflow.models.registry import check_model

        check_model(self.name, self.params)
        return self

    @property
    def family(self) -> str:
        """The task family of the model (a key of medflow.tasks.TASKS), from its registration."""
        from medflow.models.registry import check_model

        return check_model(self.name, self.params).task


class TrainConfig(_Strict):
    """The trainer: epochs, optimizer, schedule, checkpoints."""

    epochs: int | None = Field(default=None, ge=1, description="training epochs (30 when train.budget is not given)")
    budget: str | None = Field(
        default=None, description="wall time for the train stage instead of epochs (90s, 4m, 45m, 2h): "
        "the trainer times its steps and plans epochs x steps to end within it"
    )
    fold: int = Field(default=0, ge=0, description="which cross-validation fold trains")
    optimizer: Literal["adam", "adamw", "sgd"] = Field(default="adam", description="adam, adamw or sgd")
    momentum: float = Field(
        default=0.99, ge=0, lt=1, description="sgd: Nesterov momentum (0.99 as nnU-Net; classification.yaml sets 0.9)"
    )
    learning_rate: float = Field(default=1e-3, gt=0, description="initial learning rate")
    weight_decay: float = Field(default=0.0, ge=0, description="adamw: decoupled weight decay")
    schedule: Literal["constant", "cosine", "plateau"] = Field(
        default="cosine", description="cosine, constant or plateau (halve on a 3-epoch plateau)"
    )
    early_stopping_patience: int = Field(default=0, ge=0, description="epochs without improvement; 0 = off")
    monitor: str = Field(
        default="val_loss", description="epoch metric that picks the best epoch and drives early stopping"
    )
    val_samples_per_case: int = Field(
        default=2, ge=1, description="validation samples per case (and classifier crops at inference)"
    )
    class_weights: Literal["none", "balanced"] = Field(default="none", description="classification: none or balanced")
    lesion_dice: Literal["batch", "case"] = Field(
        default="batch", description="segcls lesion loss: Dice over the batch, or per case (each lesion counts alike)")
    dihedral_augment: bool = Field(
        default=False,
        description="reconstruction: random flips and quarter turns of (FBP, truth) pairs, symmetries of the geometry",
    )
    loss: Literal["auto", "mse", "l1"] = Field(
        default="auto", description="reconstruction loss (auto: mse); other tasks fix theirs"
    )
    preview_cases: int = Field(default=4, ge=1, description="cases in the augmentation preview")
    distribute: Literal["none", "mirrored", "multi_worker"] = Field(
        default="none",
        description="tf.distribute: mirrored (this machine's devices, Keras fit) or "
        "multi_worker (TF_CONFIG workers; a distributed step, since Keras fit fails there)",
    )

    @field_validator("budget")
    @classmethod
    def _budget(cls, value):
        from medflow.training.budget import parse_budget

        if value is not None:
            parse_budget(value)
        return value

    @model_validator(mode="after")
    def _epochs_or_budget(self):
        if self.epochs is not None and self.budget is not None:
            raise ValueError(f"train.epochs ({self.epochs}) and train.budget ({self.budget}) are both set; give one "
                             "(--set train.epochs=null to train to the budget)")
        if self.budget is not None and self.distribute == "multi_worker":
            raise ValueError("train.budget with train.distribute: multi_worker: each worker would time itself and "
                             "plan its own run; give train.epochs")
        return self


class EvaluateConfig(_Strict):
    """Evaluation on held-out cases, in each case's native space (segmentation)."""

    split: Literal["test", "val"] = Field(default="test", description="test holdout, or the trained fold's val cases")
    overlap: float = Field(default=0.5, ge=0, lt=1, description="sliding-window overlap")
    batch_size: int = Field(default=8, ge=1, description="windows per prediction call")
    mirror_axes: list[int] = Field(default_factory=list, description="window axes flipped for test-time augmentation")
    report_classes: list[str] | None = Field(
        default=None, description="classes averaged into mean_dice; default: every foreground class"
    )
    baseline: Literal["none", "multi_otsu", "normative"] = Field(
        default="none",
        description="scored beside the network: multi_otsu (segmentation) or normative (classification: "
        "z-map against the normal training subjects, top-k z, logistic regression)",
    )
    normative_sigma_mm: float = Field(default=4.0, gt=0, description="normative: z-map smoothing (lesion scale)")
    normative_top_k: int = Field(default=10, ge=1, description="normative: voxels averaged at each z tail")
    baseline_labels: list[int] = Field(
        default_factory=list, description="multi_otsu: label of each intensity class, darkest first"
    )
    hd95: bool = Field(default=True, description="surface distances (the slowest metric)")
    explain: Literal["auto", "hirescam", "gradcam", "occlusion", "none"] = Field(
        default="auto", description="classification: explanation maps (auto: HiResCAM where a layer is fine "
        "enough, else occlusion), their mass in the lesion and the montage"
    )
    explain_layer: str | None = Field(default=None, description="Grad-CAM layer (default: the deepest fine enough)")
    explain_max_voxel_mm: float = Field(
        default=8.0, gt=0, description="Grad-CAM: the coarsest feature voxel that still shows the smallest lesion"
    )
    occlusion_size: int = Field(default=8, ge=1, description="occlusion: cube edge and stride, in voxels")
    montage_cases: int = Field(default=4, ge=1, description="classification: correct and wrong cases in the montage")
    fbp_filters: list[Literal["ramp", "shepp-logan", "cosine", "hamming", "hann"]] = Field(
        default_factory=lambda: ["ramp", "hann"], description="reconstruction: FBP baselines scored beside the network"
    )
    figure_cases: int = Field(default=4, ge=1, description="reconstruction: cases in the comparison figure")
    fbp_tune: bool = Field(
        default=True,
        description="reconstruction: pick each FBP filter's frequency scaling "
        "by validation PSNR, as DIVal's FBP baseline does",
    )

    @model_validator(mode="after")
    def _baseline(self):
        if self.baseline == "multi_otsu" and len(self.baseline_labels) < 2:
            raise ValueError(
                "baseline multi_otsu needs baseline_labels: the label of each intensity class, "
                "darkest first, e.g. [1, 2, 3]"
            )
        return self


class SimulateConfig(_Strict):
    """CT reconstruction data: DIVal-style ellipse phantoms, noisy parallel-beam sinograms and their FBP."""

    source: Literal["ellipses", "ct_volumes"] = Field(
        default="ellipses", description="ellipses: DIVal phantoms; ct_volumes: axial slices of NIfTI CT volumes in HU"
    )
    root: str | None = Field(
        default=None,
        description="ct_volumes: folder of NIfTI volumes (split by volume with "
        "split.seed, val_fraction, test_fraction)",
    )
    pixel_mm: float = Field(
        default=1.0, gt=0, description="ct_volumes: in-plane pixel size the slices are resampled to"
    )
    photons: float | None = Field(
        default=1e5, gt=0, description="ct_volumes: incident photons per detector bin (Poisson noise); null = noiseless"
    )
    detectors: int | None = Field(default=None, ge=8, description="ct_volumes: detector count (default: one per pixel)")
    slice_step: int = Field(default=1, ge=1, description="ct_volumes: keep every n-th axial slice")
    size: int = Field(default=128, ge=16, description="image pixels per side on [-1, 1]^2")
    angles: int = Field(default=30, ge=1, description="projection angles at the midpoints of 180/angles steps")
    oversample: int = Field(default=3, ge=1, description="measurements from a phantom this many times finer (odd)")
    noise: float = Field(default=0.025, ge=0, description="Gaussian sigma as a fraction of the mean |sinogram|")
    fbp_filter: Literal["ramp", "shepp-logan", "cosine", "hamming", "hann"] = Field(
        default="hann", description="FBP filter of the network input: ramp, shepp-logan, cosine, hamming, hann"
    )
    frequency_scaling: float = Field(default=1.0, gt=0, le=1, description="FBP filter cut-off (fraction of Nyquist)")
    seed: int = Field(default=0, description="phantoms, noise and training order")
    train: int = Field(default=3200, ge=1, description="training images")
    validation: int = Field(default=320, ge=1, description="validation images")
    test: int = Field(default=320, ge=1, description="test images")
    chunk: int = Field(default=64, ge=1, description="samples per cached file")

    @model_validator(mode="after")
    def _root(self):
        if self.source == "ct_volumes" and not self.root:
            raise ValueError("source ct_volumes needs root: the folder of NIfTI CT volumes")
        return self

    @field_validator("oversample")
    @classmethod
    def _odd(cls, v):
        if v % 2 == 0:
            raise ValueError(f"oversample must be odd so the fine and coarse grids share a centre, got {v}")
        return v


class CompareConfig(_Strict):
    """The models ``medflow compare`` trains on the same split, each a registered name and its parameters."""

    models: list[ModelConfig] = Field(
        default_factory=list, description="medflow compare: the models trained on the same split, each {name, params}"
    )


class ExportConfig(_Strict):
    """The export stage: a self-contained inference bundle, logged to MLflow and registered."""

    formats: list[Literal["keras", "saved_model", "onnx"]] = Field(
        default_factory=lambda: ["keras", "saved_model", "onnx"], description="runtimes written (keras always)"
    )
    parity_tolerance: float = Field(default=1e-4, gt=0, description="largest |exported - keras| output allowed")
    to_registry: bool = Field(default=True, description="log an MLflow pyfunc model and register it")
    registered_model: str | None = Field(default=None, description="registry name; default: the pipeline name")
    runtime: Literal["keras", "saved_model", "onnx"] = Field(
        default="keras", description="runtime the MLflow model predicts with"
    )
    intended_use: str = Field(
        default="Research and method development on images like the training data; "
        "not a medical device and not for clinical decisions.",
        description="model card: intended use",
    )
    limitations: list[str] = Field(default_factory=list, description="model card: known limits, one per item")

    @field_validator("formats")
    @classmethod
    def _keras_first(cls, v):
        if "keras" not in v:
            raise ValueError("formats must include keras (the reference the others are checked against)")
        return list(dict.fromkeys(v))

    @model_validator(mode="after")
    def _runtime_written(self):
        if self.runtime not in self.formats:
            raise ValueError(f"runtime {self.runtime!r} is not among the formats written {self.formats}")
        return self


class TrackingConfig(_Strict):
    """MLflow tracking."""

    experiment: str | None = Field(default=None, description="MLflow experiment; default: the pipeline name")


class PipelineConfig(_Strict):
    name: str = Field(
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$",
        description="the pipeline's name (experiment, registered model and export folder)",
    )
    description: str = Field(default="", description="free text, shown in MLflow")
    stages: list[str] = Field(min_length=1, description="stage names in order (see medflow run --help)")
    dataset: DatasetConfig | None = Field(default=None, description="required by ingest")
    simulate: SimulateConfig = SimulateConfig()
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
                build_transform(spec, ndim)
            except ValueError as err:
                raise ValueError(f"augment.transforms.{i}: {err}") from None
        return self

    def section(self, name: str) -> Any:
        """A config section as plain JSON data (what enters a stage's cache key)."""
        return getattr(self, name).model_dump(mode="json")

    def resolved(self) -> dict:
        """The whole resolved config as plain data, without the profile table."""
        return self.model_dump(mode="json", exclude={"profiles"})
