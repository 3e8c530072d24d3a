"""``medflow bench``: ingest, augment, train, infer and the suite, each printing its figures."""

from __future__ import annotations

import sys


def cmd_bench(args) -> int:
    from medflow.cli.exit_codes import EXIT_CONFIG
    from medflow.core.config import ConfigError
    from medflow.inference.bundle import BundleError
    from medflow.inference.predict import PredictError

    try:
        if args.what == "suite":
            from medflow.bench.suite import bench_suite

            bench_suite(repeats=args.repeats, size=args.size or "demo")
        elif args.what == "peers":
            from medflow.bench.peers_bench import PeersError, bench_peers

            try:
                bench_peers(args.peers_python, size=args.size or "demo", repeats=args.repeats, seed=args.seed)
            except PeersError as err:
                print(f"error: {err}", file=sys.stderr)
                return EXIT_CONFIG
        elif args.what == "scale":
            from medflow.bench.scale import bench_scale

            bench_scale(size=args.size or "full", seed=args.seed)
        elif args.what == "projector":
            from medflow.bench.projector import bench_projector

            bench_projector(repeats=args.repeats)
        elif args.what == "dicom":
            from medflow.bench.dicom import bench_dicom

            bench_dicom(slices=args.slices, repeats=args.repeats, seed=args.seed)
        elif args.what == "augment":
            from medflow.bench.data import bench_augment

            bench_augment(size=args.size or "demo", seed=args.seed)
        elif args.what == "infer":
            from medflow.bench.infer import bench_infer

            bench_infer(args.export, args.recon_export, repeats=args.repeats)
        elif args.what == "train":
            from medflow.bench.train import bench_train

            bench_train(args.model, args.pipeline, args.profile, args.set, batch=args.batch, steps=args.steps,
                        trace=args.trace, versus=args.versus, repeats=args.repeats)
        else:
            from medflow.bench.data import bench_ingest

            bench_ingest(size=args.size or "demo", workers=args.workers, seed=args.seed)
    except (ConfigError, BundleError, PredictError) as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    return 0


def add_parser(sub, fmt, examples) -> None:
    """Add ``medflow bench`` to the CLI's subparsers."""
    p = sub.add_parser("bench", help="benchmarks that print figures", formatter_class=fmt,
                       epilog=examples("""
                           medflow bench ingest
                           medflow bench ingest --size full --workers 2
                           medflow bench augment
                           medflow bench train --model unet2d
                           medflow bench train --model unet2d --set model.params.filters=32 --batch 8
                           medflow bench train --model cnn --trace
                           medflow bench train --model unet2d --versus loader.batch_size=32 --repeats 5
                           medflow bench infer
                           medflow bench infer --export models:/segmentation@champion
                           medflow bench suite --repeats 3
                           medflow bench dicom --repeats 5
                           medflow bench projector
                           medflow bench scale
                           medflow bench peers --peers-python .venv-peers/bin/python
                       """))
    p.add_argument("what", choices=("ingest", "augment", "train", "infer", "suite", "dicom", "scale", "peers",
                                      "projector"),
                   help="ingest: ingest+preprocess vs raw nibabel decode; augment: samples/s of the default "
                        "chains; train: train samples/s and model GFLOP/s vs float32 matmul GFLOP/s; "
                        "infer: per-volume and per-sinogram latency on Keras, SavedModel and ONNX Runtime; "
                        "suite: all four, --repeats times each, medians to JSON and Markdown; dicom: a 200-slice "
                        "512^2 CT series to a validated volume vs pydicom's raw decode; scale: ingest + preprocess "
                        "cases/s, local pools of 1 and 2 beside Ray with 1 and 2 workers (full set by default); "
                        "peers: medflow beside MONAI and PyTorch on the same files (make bench-peers); projector: "
                        "the CT ray transform (radon vs the sparse matrix; the layer's gather vs tf.sparse)")
    p.add_argument("--size", choices=("demo", "full"), default=None, help="sample set (default: demo; scale: full)")
    p.add_argument("--workers", type=int, default=0, help="default: all cores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="unet2d", help="train: a registered model name")
    p.add_argument("--pipeline", default=None, help="train: pipeline YAML (default: the one for the model's task)")
    p.add_argument("--profile", action="append", default=[], help="train: config profile(s)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="train: config overrides")
    p.add_argument("--batch", type=int, default=None, help="train: batch size (default: the config's)")
    p.add_argument("--steps", type=int, default=5, help="train: timed steps per repeat")
    p.add_argument("--versus", action="append", default=[], metavar="KEY=VALUE",
                   help="train: also time a model with these overrides, taking turns with the first, and print "
                        "the paired samples/s ratio")
    p.add_argument("--trace", action="store_true", help="train: also trace 3 steps with the TensorFlow profiler "
                                                        "and print kernel time by phase, layer type and op")
    p.add_argument("--export", default=None, help="infer: a segmentation export folder or models:/ URI "
                                                  "(default: the default config's network, untrained)")
    p.add_argument("--recon-export", default=None, help="infer: a reconstruction export folder or models:/ URI")
    p.add_argument("--slices", type=int, default=200, help="dicom: slices of the series")
    p.add_argument("--peers-python", default=".venv-peers/bin/python", help="peers: the peers' interpreter")
    p.add_argument("--repeats", type=int, default=3, help="train, infer, suite: timed repeats (the median is printed)")
    p.set_defaults(func=cmd_bench)
