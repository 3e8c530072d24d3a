"""``medflow predict``: batch inference from the command line (the work is medflow.inference.predict)."""

from __future__ import annotations

import sys
from pathlib import Path

from medflow.cli.exit_codes import EXIT_CONFIG, EXIT_FAILED


def gradient_explain(args) -> bool:
    """Whether ``--explain`` asks for Grad-CAM (auto is HiResCAM where the runtime allows it), which needs Keras."""
    return args.explain in ("auto", "hirescam", "gradcam")


def cmd_predict(args) -> int:
    from medflow.core.cases import parse_shard
    from medflow.core.engine import StageFailed
    from medflow.core.progress import Progress
    from medflow.inference.bundle import BundleError
    from medflow.inference.predict import (PredictError, list_inputs, locate_model, open_model, predict_files,
                                           resolve_runtime)
    from medflow.tasks.explanations import ExplainSettings

    explain = None if args.explain is None else ExplainSettings(args.explain, args.explain_layer)
    try:
        shard = parse_shard(args.shard) if args.shard else None
        where = locate_model(args.model)
        runtime = resolve_runtime(where, args.runtime, gradients=gradient_explain(args))
        if runtime != "onnx":
            from medflow.cli.quiet import import_tensorflow_quietly

            import_tensorflow_quietly()  # auto fell back to Keras: TensorFlow's import notices filtered
        bundle = open_model(args.model, runtime, where=where)
        files = list_inputs(args.input, bundle)
        total = len(files) if shard is None else len(files[shard[0]::shard[1]])
        with Progress(total, "predict", unit="file") as bar:
            report = predict_files(bundle, files, args.output, batch_size=args.batch, progress=bar, shard=shard,
                                   explain=explain, overwrite=args.overwrite, executor=args.executor,
                                   ray_address=args.ray_address)
    except (PredictError, BundleError, ValueError, StageFailed) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    print(f"predict ({report['family']}, {bundle.runtime}): {len(report['written'])} written to {args.output}, "
          f"{len(report['quarantine'])} quarantined")
    return EXIT_FAILED if report["quarantine"] else 0


def add_parser(sub, fmt, examples) -> None:
    p = sub.add_parser("predict", help="batch inference with an exported or registered model",
                       formatter_class=fmt, epilog=examples("""
                           medflow predict --model models:/segmentation@champion --input scans/ --output labels/
                           medflow predict --model workspace/exports/classification/<version> --input scans/ --output cls/
                           medflow predict --model models:/classification@champion --input scans/ --output cls/ --explain
                           medflow predict --model models:/reconstruction@champion --input sinograms/ --output recon/ \\
                               --runtime onnx
                       """))
    p.add_argument("--model", required=True,
                   help="export folder, models:/NAME@ALIAS or models:/NAME/VERSION, or a train stage's folder")
    p.add_argument("--input", type=Path, nargs="+", required=True,
                   help="files, or folders of NIfTI volumes / .npy sinograms (each file once), or folders of DICOM "
                        "series (each series under them, at any depth; FOLDER#SeriesInstanceUID names one)")
    p.add_argument("--output", type=Path, required=True, help="output folder (not one that holds an input)")
    p.add_argument("--overwrite", action="store_true", help="replace outputs already in --output (by default "
                                                            "the run stops before writing anything)")
    p.add_argument("--runtime", choices=("auto", "keras", "saved_model", "onnx"), default="auto",
                   help="what runs the network; auto (default): ONNX Runtime when the bundle has model.onnx and "
                        "no Grad-CAM is asked for (no TensorFlow start-up), else Keras")
    p.add_argument("--batch", type=int, default=16, help="sinograms per model call (reconstruction)")
    p.add_argument("--explain", nargs="?", const="auto", choices=("auto", "hirescam", "gradcam", "occlusion"),
                   help="classifiers: also write <name>_explanation.nii.gz on the input's grid (auto: HiResCAM on the "
                        "keras runtime, occlusion on the others)")
    p.add_argument("--explain-layer", help="the Grad-CAM layer (default: the deepest with voxels of at most 8 mm)")
    p.add_argument("--shard", metavar="INDEX/COUNT", help="do only this share of the inputs (N machines, one "
                                                           "output folder)")
    p.add_argument("--executor", choices=("local", "ray"), default="local", help="ray: each input a Ray task "
                   "(the model loaded once per worker); volume models only (default local)")
    p.add_argument("--ray-address", help="--executor ray: the cluster to join (default: RAY_ADDRESS, else a local "
                                         "Ray instance)")
    p.set_defaults(func=cmd_predict)
