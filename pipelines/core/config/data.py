"""The data sections: dataset, ingest, preprocess, split, loader, augment, simulate."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medflow.core.config.base import _Strict


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


class DicomConfig(_Strict):
    """DICOM series inputs: geometry exceptions and de-identification."""

    allow_tilt: bool = Field(default=False, description="resample a gantry-tilted series onto an orthogonal grid "
                             "(default: refuse it)")
    log_identifiers: bool = Field(default=False, description="use the raw PatientID as patient id (default: a salted "
                                  "hash; nothing identifying reaches MLflow or the logs)")
    id_salt: str = Field(default="", description="salt of the hashed case and patient ids (a per-site value keeps "
                         "ids from matching across sites; medflow predict names outputs with the empty salt)")


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
    train_patch_size: list[int] | None = Field(
        default=None, description="3d, lesion-segmenting classifiers (segcls): train on patches of this size, "
        "centred on a lesion voxel with foreground_ratio; inference still sees patch_size"
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
        if self.train_patch_size is not None:
            if self.mode != "3d" or len(self.train_patch_size) != 3 or any(p < 1 for p in self.train_patch_size):
                raise ValueError(f"train_patch_size needs 3 positive sizes and mode 3d, got {self.train_patch_size}")
        return self


class AugmentConfig(_Strict):
    """The augmentation chain: a list of {name, p, **params}; see data/augment for the names."""

    seed: int = Field(default=0, description="run seed: every sample's draw derives from (seed, epoch, case, index)")
    transforms: list[dict[str, Any]] = Field(
        default_factory=list, description="a list of {name, p, ...params} (see Augmentation)"
    )


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
