"""The model sections: model, train, evaluate, compare, export, tracking."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from medflow.core.config.base import _Strict


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
    beta_2: float = Field(default=0.999, gt=0, lt=1, description="adam, adamw: second-moment decay (DIVal's LPD: 0.99)")
    clip_norm: float | None = Field(default=None, gt=0, description="clip the global gradient norm to this (DIVal: 1)")
    learning_rate: float = Field(default=1e-3, gt=0, description="initial learning rate")
    weight_decay: float = Field(default=0.0, ge=0, description="adamw: decoupled weight decay")
    schedule: Literal["constant", "cosine", "plateau"] = Field(
        default="cosine", description="cosine, constant or plateau (halve on a 3-epoch plateau)"
    )
    cosine_floor: float = Field(
        default=0.01, ge=0, le=1, description="cosine: the last step's learning rate as a fraction of the first "
        "(DIVal: 0.1 for FBP + U-Net, 0 for LPD)"
    )
    early_stopping_patience: int = Field(default=0, ge=0, description="epochs without improvement; 0 = off")
    monitor: str = Field(
        default="val_loss", description="epoch metric that picks the best epoch and drives early stopping"
    )
    val_samples_per_case: int = Field(
        default=2, ge=1, description="validation samples per case (and classifier crops at inference)"
    )
    class_weights: Literal["none", "balanced"] = Field(default="none", description="classification: none or balanced")
    precise_bn: int | None = Field(
        default=None, ge=0, description="after training, re-estimate every BatchNorm layer's statistics on this "
        "many training batches with the weights frozen (PreciseBN); 0: keep the moving averages; null: 20 with "
        "train.budget, else 0")
    refit_head: bool = Field(
        default=True, description="classification trained on patches (loader.train_patch_size): refit the class "
        "layer on the training cases' whole volumes after training, as inference sees them")
    refit_l2: float = Field(default=0.01, gt=0, description="train.refit_head: the ridge penalty on standardized "
                            "features")
    lesion_dice: Literal["batch", "case"] = Field(
        default="batch", description="segcls lesion loss: Dice over the batch, or per case (each lesion counts alike)")
    dihedral_augment: bool = Field(
        default=False,
        description="reconstruction: random flips and quarter turns of (FBP, truth) pairs, symmetries of the geometry",
    )
    measurement_augment: bool = Field(
        default=False, description="reconstruction: re-measure each training sinogram with a random detector blur "
        "and shift and extra noise (data/ct/measurement.py), so no one simulator is all the network sees"
    )
    augment_detector_px: float = Field(
        default=0.5, ge=0, description="measurement_augment: largest detector blur sigma (shift: half), detector px"
    )
    augment_noise_max: float = Field(
        default=2.0, ge=1, description="measurement_augment: largest total noise, as a multiple of simulate.noise"
    )
    loss: Literal["auto", "mse", "l1"] = Field(
        default="auto", description="reconstruction loss (auto: mse); other tasks fix theirs"
    )
    preview_cases: int = Field(default=4, ge=1, description="cases in the augmentation preview")
    distribute: Literal["none", "mirrored", "multi_worker", "ray"] = Field(
        default="none",
        description="tf.distribute: mirrored (this machine's devices, Keras fit), "
        "multi_worker (TF_CONFIG workers; a distributed step, since Keras fit fails there), or ray (the "
        "multi_worker step in Ray Train's TensorflowTrainer, which starts train.workers and sets TF_CONFIG)",
    )
    workers: int = Field(default=2, ge=1, description="distribute ray: training workers, one CPU each by default")

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
        if self.budget is not None and self.distribute in ("multi_worker", "ray"):
            raise ValueError("train.budget with train.distribute: multi_worker: each worker would time itself and "
                             "plan its own run; give train.epochs")
        return self

    @property
    def precise_bn_batches(self) -> int:
        """``precise_bn`` resolved: null is 20 batches for a budgeted run (its step count, and with it how far
        the moving averages lag, is known only at run time) and 0 otherwise."""
        if self.precise_bn is not None:
            return self.precise_bn
        return 20 if self.budget is not None else 0


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
        "registered z-map against the normal training subjects, top-k z, logistic regression)",
    )
    normative_register: bool = Field(
        default=True, description="normative: align every subject onto a normal training subject first (affine, "
        "mutual information); without it, head position and size swamp a lesion"
    )
    normative_highpass_mm: float | None = Field(
        default=15.0, gt=0, description="normative: the smooth part of the deviation taken out (bias field, gamma); "
        "null: none"
    )
    normative_sigma_mm: float = Field(default=3.0, gt=0, description="normative: z-map smoothing (lesion scale)")
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
    tv: bool = Field(default=True, description="reconstruction: score TV-regularized PDHG beside FBP (models/tv.py)")
    tv_tune_images: int = Field(
        default=16, ge=1, description="reconstruction: validation images that choose TV's weight and iterations"
    )
    tv_iterations: int = Field(
        default=1000, ge=1, description="reconstruction: the most PDHG iterations TV may run; the tuning scores "
        "100, 250, 500 and 1000 below it, and it"
    )
    second_simulator: bool = Field(
        default=True, description="reconstruction: also score every method on the test phantoms measured by a "
        "second simulator (data/ct/second.py), the gap a new measurement model opens"
    )
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


class CompareModel(ModelConfig):
    """One model of ``medflow compare``: a registered name, its parameters, and settings of its own."""

    settings: dict[str, Any] = Field(
        default_factory=dict, description="dotted config keys set for this model only "
        "(e.g. loader.train_patch_size: null for a model that trains on whole volumes)"
    )

    @model_validator(mode="after")
    def _not_the_model(self):
        bad = [k for k in self.settings if k.split(".")[0] in ("model", "compare", "name", "stages")]
        if bad:
            raise ValueError(f"settings may not set {bad}: name and params say which model it is")
        return self


class CompareConfig(_Strict):
    """The models ``medflow compare`` trains on the same split, each a registered name and its parameters."""

    models: list[CompareModel] = Field(
        default_factory=list, description="medflow compare: the models trained on the same split, "
        "each {name, params[, settings]}"
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
