"""Reconstruction: (detectors, angles) sinograms in, (S, S) images out.

The exported network is the sinogram-input reconstructor: the FBP layer of the
training geometry, then the image-to-image network, so the plan's only
preprocessing is the geometry the sinograms must have.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from medflow.inference.plan import InferencePlan
from medflow.tasks.base import Net, Task, cell


class Reconstruction(Task):
    family = "reconstruction"
    planned_from_ingest = False  # the simulate section says what the data are
    input_kind = ".npy"
    reads_dicom = False
    trained_by = "train_recon"
    selection = {"metric": "best_val_loss", "stage": "train_recon", "greater_is_better": False}

    def loss_and_metrics(self, tc, n_classes: int, outputs: list[str] | None = None) -> tuple:
        import keras

        from medflow.models.losses import ImagePSNR

        l1 = tc.loss == "l1"
        loss = keras.losses.MeanAbsoluteError() if l1 else keras.losses.MeanSquaredError()
        other = keras.metrics.MeanSquaredError(name="mse") if l1 else keras.metrics.MeanAbsoluteError(name="mae")
        return loss, [other, ImagePSNR()]  # psnr: DIVal's per-image PSNR, so val_psnr can pick the best epoch

    def experiment_plan(self, cfg, fingerprint: dict | None, machine, budget_s: float) -> dict:
        from medflow.planning.rules import plan_images

        sim = cfg.simulate
        out = plan_images(sim.size, sim.train, machine, budget_s)
        return {**out, "data": f"{sim.train} simulated {sim.size} x {sim.size} images, {sim.angles} angles"}

    def inference_plan(self, cfg, facts: dict) -> InferencePlan:
        """``facts``: the geometry the model was trained for."""
        geometry = facts["geometry"]
        return InferencePlan(family=self.family, input_shape=(geometry["detectors"], len(geometry["angles_deg"])),
                             geometry=geometry, selection={**self.selection, "loss": cfg.train.loss})

    def export_data(self, cfg, train_info: dict, scored) -> dict:
        sim = cfg.simulate
        return {"source": sim.source if sim.source == "ellipses" else str(sim.root),
                "train_images": train_info["train_images"], "val_images": train_info["val_images"],
                "test_images": json.loads(scored.file("summary.json").read_text())["test_images"]}

    # -- inference -----------------------------------------------------------------------------
    def is_input(self, path: Path) -> bool:
        return Path(path).name.endswith(".npy")

    def case_name(self, path) -> str:
        name = Path(str(path)).name
        return name[: -len(".npy")] if name.endswith(".npy") else name

    def read_input(self, plan: InferencePlan, path, max_voxels: int | None = None) -> np.ndarray:
        """One (detectors, angles) sinogram (its shape is fixed by the plan, so ``max_voxels`` adds nothing)."""
        from medflow.inference.outputs import read_sinogram

        return read_sinogram(path, tuple(plan.input_shape))

    def infer(self, plan: InferencePlan, net: Net, case: np.ndarray, batch_size: int = 16) -> np.ndarray:
        """(N, S, S) float32 images of (N, detectors, angles) sinograms (one (D, A) sinogram: (1, S, S))."""
        sinograms = np.asarray(case, dtype=np.float32)
        if sinograms.ndim == 2:
            sinograms = sinograms[None]
        shape = tuple(plan.input_shape)
        if sinograms.shape[1:] != shape:
            raise ValueError(f"sinogram shape {sinograms.shape[1:]}, the model expects {shape} (detectors, angles)")
        out = [np.asarray(net(sinograms[i:i + batch_size]))[..., 0] for i in range(0, len(sinograms), batch_size)]
        return np.concatenate(out).astype(np.float32)

    def predict_files(self, plan, net, files, output, *, names, bad, progress=None, batch_size: int = 16,
                      suffix: str = "", explain=None) -> list[str]:
        """Sinograms go through the network ``batch_size`` at a time; a bad file leaves its batch going.
        (``explain`` is for classifiers; predict refuses it before this runs.)"""
        written = []
        for start in range(0, len(files), batch_size):
            good, arrays = [], []
            for path, name in zip(files[start:start + batch_size], names[start:start + batch_size]):
                try:
                    arrays.append(self.read_input(plan, path))
                    good.append(name)
                except ValueError as err:
                    bad(path, err)
            if arrays:
                for name, image in zip(good, self.infer(plan, net, np.stack(arrays), batch_size)):
                    self.write_result(plan, image, output, name, None)
                    written.append(name)
            if progress is not None:
                progress.update(len(files[start:start + batch_size]))
        return written

    def output_files(self, name: str, explain: bool = False) -> list[str]:
        return [f"{name}.npy", f"{name}.nii.gz"]

    def write_result(self, plan, result: np.ndarray, output: Path, name: str, case) -> None:
        from medflow.inference.outputs import write_reconstruction

        write_reconstruction(Path(output), name, result, plan.geometry or {})

    # -- serving -------------------------------------------------------------------------------
    def case_from_row(self, plan: InferencePlan, row: dict, max_voxels: int | None = None) -> np.ndarray:
        sino = cell(row, "sinogram")
        if sino is not None:
            sino = np.asarray(sino, dtype=np.float32)
            if sino.shape != tuple(plan.input_shape):
                raise ValueError(f"sinogram shape {sino.shape}, the model expects {tuple(plan.input_shape)} "
                                 "(detectors, angles)")
            if not np.all(np.isfinite(sino)):
                raise ValueError("sinogram holds NaN or infinite values")
            return sino
        path = cell(row, "path")
        if path is None:
            raise ValueError("no input: give path or sinogram")
        return self.read_input(plan, path)

    def answer(self, plan: InferencePlan, result: np.ndarray, case) -> dict:
        return {"image": result[0].tolist()}

    def signature(self, plan: InferencePlan) -> tuple[list, list]:
        return [("path", "string", False), ("sinogram", ("array", 2), False)], [("image", ("array", 2), False)]

    # -- review --------------------------------------------------------------------------------
    def card(self, plan: dict) -> dict:
        g, (d, a) = plan["geometry"], plan["input_shape"]
        s = g["image_size"]
        beam = (f"Parallel beam, {len(g['angles_deg'])} angles from {g['angles_deg'][0]} to {g['angles_deg'][-1]} "
                f"degrees, {g['detectors']} detectors")
        if g.get("model_reads") == "sinogram":  # learned primal-dual: the operator itself is in the graph
            first = (f"{beam}; the forward operator and its adjoint for this geometry are inside the model graph "
                     "(gather, multiply, sum: exported to SavedModel and ONNX alike)")
        else:
            first = (f"{beam}, FBP with the {g['fbp_filter']} filter (frequency scaling "
                     f"{g.get('frequency_scaling', 1.0)}) inside the model graph")
        carried = [first, f"Sinogram units: {g.get('units', 'line integrals')}"]
        return {"input": f"a ({d}, {a}) sinogram (detectors, angles) as `.npy`",
                "output": f"a {s}x{s} image ({g.get('units', 'attenuation')})", "carried": carried,
                "predict_input": "SINOGRAMS_DIR",
                "limits": ["Only sinograms of exactly this geometry (angles, detectors, units) are valid inputs."]}

    def summary_text(self, s: dict) -> list[str]:
        """PSNR / SSIM (mean +/- sd over the test images) per method, as DIVal reports them."""
        lines = ["", f"  test set, {s['test_images']} images; PSNR (dB) and SSIM, data_range = max(gt) - min(gt):"]
        scaling = s.get("fbp_frequency_scaling", {})
        for method, m in s["methods"].items():
            note = f"  (frequency scaling {scaling[method[4:]]})" if method[4:] in scaling else ""
            if method == "tv" and "tv" in s:
                note = f"  (weight {s['tv']['weight']:g}, {s['tv']['iterations']} iterations)"
            lines.append(f"    {method:<11} PSNR {m['psnr_mean']:.2f} +/- {m['psnr_sd']:.2f}  "
                         f"SSIM {m['ssim_mean']:.3f} +/- {m['ssim_sd']:.3f}{note}")
        second = s.get("second_simulator")
        if second:
            lines.append(f"  the same test phantoms, second simulator (replicated pixels, {second['detectors']} point "
                         f"detectors {second['pitch']}x apart, rebinned):")
            for method, m in second["methods"].items():
                lines.append(f"    {method:<11} PSNR {m['psnr_mean']:.2f} +/- {m['psnr_sd']:.2f}  "
                             f"SSIM {m['ssim_mean']:.3f} +/- {m['ssim_sd']:.3f}  "
                             f"(main - second: {second['gap_db'][method]:+.2f} dB)")
        return lines

    compare_metric = "psnr"

    def compare_scores(self, summary: dict, split: str) -> tuple[dict, list[tuple[str, dict]]]:
        """Test PSNR and SSIM (mean, sd) of the network and of each classical method scored beside it."""
        def scores(m):
            return {"psnr": m["psnr_mean"], "psnr_sd": m["psnr_sd"], "ssim": m["ssim_mean"], "ssim_sd": m["ssim_sd"]}

        methods = summary["methods"]
        return scores(methods["network"]), [(name, scores(m)) for name, m in methods.items() if name != "network"]

    def compare_figure(self, upstream: dict, evaluated: dict):
        """truth | FBP | TV | each model | |best model - truth| on the same test images (the best model's
        worst, median and best), from each evaluate stage's reconstructions.npz."""
        from medflow.tasks.evaluation.reconstruction import compare_figure

        return compare_figure(upstream, evaluated)

    def evaluate(self, cfg, upstream, out, ctx, plan, train):
        from medflow.tasks.evaluation import reconstruction

        return reconstruction.run(cfg, upstream, out, ctx, plan, train)
