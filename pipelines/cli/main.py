"""The ``medflow`` command line."""

from __future__ import annotations

import argparse
import json
import os
import sys
import textwrap
from pathlib import Path

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# TensorFlow turns its oneDNN kernels on by default only on some Intel CPUs. On this
# project's AVX2 machine they make a U-Net training step 1.4x and a 3D CNN step 3x
# faster (medflow bench train), so they are on unless the user says otherwise.
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")

from medflow.cli.exit_codes import EXIT_CONFIG, EXIT_FAILED  # noqa: E402  (after the environment)


def _examples(text: str) -> str:
    return "examples:\n" + textwrap.indent(textwrap.dedent(text).strip(), "  ")


def cmd_sample_data(args) -> int:
    from medflow.core.progress import Progress
    from medflow.core.workspace import sample_root
    from medflow.data.sample.build import SIZES, build_lesion, build_tissue

    root = sample_root(args.size)
    workers = args.workers or os.cpu_count() or 1
    builders = {"brain_tissue": build_tissue, "brain_lesion": build_lesion}
    for name in args.only or list(builders):
        with Progress(SIZES[args.size][name], f"sample-data {name}", unit="subject") as bar:
            path = builders[name](root, size=args.size, seed=args.seed, workers=workers, progress=bar)
        print(f"{name}: {path}")
        if args.format == "dicom":
            from medflow.data.sample.build import run_jobs
            from medflow.data.sample.dicom import lesion_to_dicom, tissue_to_dicom

            convert = {"brain_tissue": tissue_to_dicom, "brain_lesion": lesion_to_dicom}[name]
            with Progress(SIZES[args.size][name], f"sample-data {name} as DICOM", unit="subject") as bar:
                path = convert(path, workers=workers, progress=bar, run_jobs=run_jobs)
            print(f"{name}_dicom: {path}")
    return 0


def _print_summary(name: str, results, parent_id, tracker) -> None:
    from medflow.inference.plan import PLAN, load_plan
    from medflow.tasks import TASKS
    from medflow.tracking.runs import ui_url

    exp = f" (experiment {tracker.experiment_name}, parent run {parent_id})" if parent_id else ""
    print(f"\npipeline {name}{exp}")
    if parent_id:
        exp_id = tracker.client.get_run(parent_id).info.experiment_id
        print(f"  review: {ui_url(experiment_id=exp_id, run_id=parent_id)}  (report.html under Artifacts; "
              f"or medflow report {parent_id} --out DIR)")
    print(f"  {'stage':<14} {'state':<8} {'cases':>6} {'quarantined':>11} {'seconds':>8}  output")
    for r in results:
        print(f"  {r.name:<14} {r.state:<8} {r.cases:>6} {r.quarantined:>11} {r.seconds:>8.1f}  {r.path}")
        if r.error:
            print(f"  error: {r.error}")
    for r in results:
        folder = Path(r.path)
        if r.state == "failed" or not (folder / PLAN).exists():
            continue
        if (folder / "summary.json").exists():  # an evaluate stage: its task's figures
            for line in TASKS[load_plan(folder).family].summary_lines(folder):
                print(line)
        elif (folder / "MODEL_CARD.md").exists():  # an export stage
            _print_export(folder)


def _headline_row(cfg, results) -> dict:
    """The closing table's row for one pipeline: its evaluate stage's headline beside the baseline."""
    from medflow.review.spec import headline_row

    for r in results:
        manifest = Path(r.path) / "manifest.json"
        if r.state != "failed" and manifest.exists():
            review = json.loads(manifest.read_text()).get("review")
            if review:
                return headline_row(cfg.name, cfg.model.name, review)
    row = headline_row(cfg.name, cfg.model.name, None)
    if any(r.state == "failed" for r in results):
        row["verdict"] = "failed"
    return row


def _print_export(folder: Path) -> None:
    """Where the bundle is, its registry version and champion decision, and how to use it."""
    reg = json.loads((folder / "manifest.json").read_text()).get("registry")
    print(f"\n  export: {folder}")
    if reg:
        print(f"    registered {reg['name']} v{reg['version']}; champion: {reg['comparison']}")
        print(f"    medflow predict --model models:/{reg['name']}@champion --input DIR --output DIR")


def cmd_run(args) -> int:
    from medflow.cli.plan import apply_plan, planning_config
    from medflow.core.config import ConfigError
    from medflow.core.engine import StageFailed
    from medflow.core.loading import load_config
    from medflow.core.runner import run_pipeline

    spec, plans = getattr(args, "plan", None), {}
    try:  # validate every pipeline before any work starts
        load = planning_config if spec else load_config
        configs = [(p, load(p, args.set, args.profile)) for p in args.pipelines]
        if spec not in (None, "auto") and len(configs) > 1:
            raise ConfigError(f"--plan {spec}: a plan file is for one pipeline; give one, or --plan auto")
        for i, (p, _) in enumerate(configs if spec else []):
            cfg, plans[p] = apply_plan(spec, p, args.set, args.profile)
            configs[i] = (p, cfg)
    except (ConfigError, ValueError) as err:
        print(f"error: {err}" if isinstance(err, ValueError) else err, file=sys.stderr)
        return EXIT_CONFIG
    from medflow.core.cases import parse_shard
    from medflow.tracking.runs import MlflowTracker

    try:
        shard = parse_shard(args.shard) if getattr(args, "shard", None) else None
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_CONFIG
    from medflow.training.distributed import cluster

    index, count = cluster()
    # Under TF_CONFIG only the chief (worker 0) talks to MLflow; the others train and print.
    tracker = MlflowTracker() if index == 0 else None
    if tracker is None:
        print(f"worker {index}/{count}: not the chief, MLflow tracking is the chief's", flush=True)
    status, rows = 0, []
    for path, cfg in configs:
        try:
            results, parent = run_pipeline(cfg, target=args.stage, force=args.force, strict=args.strict,
                                           workers=args.workers, tracker=tracker, config_path=path,
                                           profile=args.profile, shard=shard, merge=getattr(args, "merge", False),
                                           verify=getattr(args, "verify", False),
                                           executor=getattr(args, "executor", None),
                                           ray_address=getattr(args, "ray_address", None))
        except StageFailed as err:
            print(f"error: {err}", file=sys.stderr)
            status = EXIT_FAILED
            rows.append({**_headline_row(cfg, []), "verdict": "failed"})
            continue
        if tracker is None:
            print("\n".join(f"  {r.name:<14} {r.state}" for r in results))
            continue
        if path in plans and parent:
            tracker.log_plan(parent, plans[path])
        _print_summary(cfg.name, results, parent, tracker)
        rows.append(_headline_row(cfg, results))
    if tracker is None:
        return status
    from medflow.review.spec import headline_table
    from medflow.tracking.runs import ui_url

    print(f"\nsummary: the network against its baseline on held-out cases\n{headline_table(rows)}")

    print(f"\ntracking store: {tracker.uri}")
    print(f"open the MLflow UI:  medflow ui    (then browse {ui_url()})")
    return status


def cmd_status(args) -> int:
    from medflow.core.config import ConfigError
    from medflow.core.engine import StageFailed
    from medflow.core.loading import load_config
    from medflow.core.runner import stage_states

    try:
        cfg = load_config(args.pipeline, args.set, args.profile)
        rows = stage_states(cfg)
    except (ConfigError, StageFailed) as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG
    run_ids = {}
    if any(r["key"] for r in rows):
        from medflow.tracking.runs import MlflowTracker

        tracker = MlflowTracker()
        for r in rows:
            if r["key"]:
                found = tracker.client.search_runs(
                    [e.experiment_id for e in tracker.client.search_experiments()],
                    filter_string=f"tags.`medflow.key` = '{r['key']}'", max_results=5, order_by=["start_time DESC"])
                run_ids[r["stage"]] = ",".join(run.info.run_id for run in found) or "-"
    print(f"pipeline {cfg.name}")
    from medflow.cli.plan import plan_path

    plan = plan_path(cfg.name)
    if plan.exists():  # its header: pipeline and budget, machine, data
        print(f"  plan: {plan}\n" + "\n".join(f"    {line.lstrip('# ')}" for line in plan.read_text().splitlines()[:3]))
    print(f"  {'stage':<14} {'state':<34} {'cases':>6} {'quar.':>6}  {'key':<16}  mlflow runs (newest first)")
    for r in rows:
        print(f"  {r['stage']:<14} {r['state']:<34} {r['cases'] if r['cases'] is not None else '-':>6} "
              f"{r['quarantined'] if r['quarantined'] is not None else '-':>6}  {(r['key'] or '-')[:16]:<16}  "
              f"{run_ids.get(r['stage'], '-')}")
        if r["path"]:
            print(f"  {'':<14} {r['path']}")
    return 0


def cmd_augment_preview(args) -> int:
    import hashlib

    from medflow.core.config import ConfigError
    from medflow.core.engine import StageFailed
    from medflow.core.loading import load_config
    from medflow.core.runner import finished_output
    from medflow.core.workspace import workspace_root
    from medflow.training.inputs import build_source

    try:
        cfg = load_config(args.pipeline, args.set, args.profile)
        pre = finished_output(cfg, "preprocess")
        source = build_source(cfg, pre, [args.case], cache="none")
    except (ConfigError, StageFailed) as err:
        print(err, file=sys.stderr)
        return EXIT_CONFIG
    from medflow.data.preview import preview_figure
    from medflow.tasks.figures import save_figure

    sample = source.sample(args.case, args.epoch, args.index)
    out = args.out or workspace_root() / "previews" / f"{cfg.name}_{args.case}_e{args.epoch}_{args.index}.png"
    out.parent.mkdir(parents=True, exist_ok=True)
    fig = preview_figure(source, [(args.case, args.epoch, args.index)])
    save_figure(fig, out, dpi=110)
    digest = hashlib.sha256(sample.image.tobytes() + (sample.label.tobytes() if sample.label is not None else b""))
    print(f"case {args.case}, epoch {args.epoch}, sample {args.index}: seed {sample.seed}, centre {sample.centre}")
    for name, draw in sample.applied:
        shown = {k: (v if not isinstance(v, list) or len(str(v)) < 80 else "...") for k, v in draw.items()}
        print(f"  {name}: {shown}")
    print(f"sample sha256 {digest.hexdigest()}  image {sample.image.shape}")
    print(f"wrote {out}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="medflow", formatter_class=fmt,
        description="Staged, tracked medical-imaging pipelines: ingest -> preprocess/split -> train -> evaluate -> export.",
        epilog=_examples("""
            medflow sample-data --size demo
            medflow run pipelines/configs/segmentation.yaml --profile demo
            medflow status pipelines/configs/segmentation.yaml
            medflow ui
        """))
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("sample-data", help="build the sample datasets offline from the MNI152 template",
                       formatter_class=fmt, epilog=_examples("""
                           medflow sample-data                      # demo size, seed 0
                           medflow sample-data --size full --seed 7
                           medflow sample-data --only brain_lesion
                           medflow sample-data --format dicom       # also DICOM series with SEG labels
                       """))
    p.add_argument("--seed", type=int, default=0, help="seed of every random draw (default 0)")
    p.add_argument("--size", choices=("demo", "full"), default="demo", help="demo (minutes) or full (default demo)")
    p.add_argument("--only", action="append", choices=("brain_tissue", "brain_lesion"), help="build only this set")
    p.add_argument("--workers", type=int, default=0, help="parallel workers (default: all cores)")
    p.add_argument("--format", choices=("nifti", "dicom"), default="nifti",
                   help="dicom: also write each set as DICOM series with SEG labels, <name>_dicom (default nifti)")
    p.set_defaults(func=cmd_sample_data)

    p = sub.add_parser("run", help="run pipeline stages (finished ones are skipped)", formatter_class=fmt,
                       epilog=_examples("""
                           medflow run pipelines/configs/segmentation.yaml
                           medflow run pipelines/configs/segmentation.yaml --profile demo --stage preprocess
                           medflow run pipelines/configs/segmentation.yaml --set dataset.root=/data/Task04_Hippocampus --stage ingest
                           medflow run pipelines/configs/segmentation.yaml --executor ray --ray-address ray://head:10001
                           medflow run pipelines/configs/classification.yaml --set preprocess.spacing=[2,2,2] --force
                           medflow run pipelines/configs/*.yaml --profile demo --strict
                       """))
    p.add_argument("pipelines", nargs="+", metavar="PIPELINE.yaml")
    p.add_argument("--stage", help="run up to and including this stage")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a config key (repeatable)")
    p.add_argument("--profile", action="append", help="apply a named profile from the YAML first (repeatable)")
    p.add_argument("--force", action="store_true", help="redo finished stages (only --stage's when given)")
    p.add_argument("--strict", action="store_true", help="fail a stage on any bad case instead of quarantining it")
    p.add_argument("--workers", type=int, help="parallel case workers (default: config, 0 = all cores)")
    p.add_argument("--verify", action="store_true", help="check every reused case file's sha256, not only its "
                                                         "size (a damaged one is redone)")
    p.add_argument("--plan", metavar="auto|FILE", help="apply a plan (medflow plan): auto makes one for this "
                   "machine and the config's train.budget (else 30m); FILE applies a plan file; --set still wins")
    p.add_argument("--shard", metavar="INDEX/COUNT", help="do only this share of --stage's cases (ingest, "
                                                           "preprocess); then `medflow merge`")
    p.add_argument("--executor", choices=("local", "ray"), help="per-case stages on a local process pool or as Ray "
                   "tasks with retries (default: the config's executor, local)")
    p.add_argument("--ray-address", help="executor ray: the cluster to join (default: RAY_ADDRESS, else a local "
                                         "Ray instance)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("merge", help="finish a sharded stage from its shards (all of them must have finished)",
                       formatter_class=fmt, epilog=_examples("""
                           medflow run pipelines/configs/segmentation.yaml --stage ingest --shard 0/2   # machine A
                           medflow run pipelines/configs/segmentation.yaml --stage ingest --shard 1/2   # machine B
                           medflow merge pipelines/configs/segmentation.yaml --stage ingest
                       """))
    p.add_argument("pipelines", nargs=1, metavar="PIPELINE.yaml")
    p.add_argument("--stage", required=True, help="the sharded stage")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--profile", action="append")
    p.set_defaults(func=cmd_run, merge=True, force=False, strict=False, workers=None)

    from medflow.cli.experiments import add_parsers

    add_parsers(sub, fmt, _examples)

    p = sub.add_parser("status", help="which stages are done, their keys, outputs and MLflow runs",
                       formatter_class=fmt, epilog=_examples("""
                           medflow status pipelines/configs/segmentation.yaml
                           medflow status pipelines/configs/segmentation.yaml --profile demo
                       """))
    p.add_argument("pipeline", metavar="PIPELINE.yaml")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--profile", action="append", help="named profile(s) from the YAML (repeatable)")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("augment-preview", help="replay one training sample exactly and write a PNG",
                       formatter_class=fmt, epilog=_examples("""
                           medflow augment-preview pipelines/configs/segmentation.yaml --profile demo --case brain_003
                           medflow augment-preview pipelines/configs/segmentation.yaml --case brain_003 --epoch 7 --index 2
                           medflow augment-preview pipelines/configs/classification.yaml --case lesion_010 --out /tmp/p.png
                       """))
    p.add_argument("pipeline", metavar="PIPELINE.yaml")
    p.add_argument("--case", required=True, help="case id")
    p.add_argument("--epoch", type=int, default=0)
    p.add_argument("--index", type=int, default=0, help="which of the case's samples in that epoch")
    p.add_argument("--out", type=Path, help="PNG path (default: workspace/previews/...)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--profile", action="append", help="named profile(s) from the YAML (repeatable)")
    p.set_defaults(func=cmd_augment_preview)

    from medflow.cli.plan import add_parser as add_plan_parser

    add_plan_parser(sub, fmt, _examples)
    from medflow.cli.predict import add_parser as add_predict_parser

    add_predict_parser(sub, fmt, _examples)
    from medflow.cli.serve import add_parser as add_serve_parser

    add_serve_parser(sub, fmt, _examples)

    from medflow.cli.review import add_parsers as add_review_parsers

    add_review_parsers(sub, fmt, _examples)

    from medflow.cli.bench import add_parser as add_bench_parser

    add_bench_parser(sub, fmt, _examples)
    return parser


LIGHT = {"ui"}  # starts a server and needs no TensorFlow: no import, no delay


def needs_tensorflow(args) -> bool:
    """Whether the command will load TensorFlow anyway, so it is imported first, with its notices filtered.

    ``medflow predict --runtime onnx`` runs on ONNX Runtime alone (explanations by occlusion): skipping
    the import saves its start-up (about 4.5 s on 2 cores) on every invocation.
    """
    if args.command in LIGHT:
        return False
    if args.command == "predict":  # auto: cmd_predict imports it only when it falls back to Keras
        from medflow.cli.predict import gradient_explain

        if args.runtime == "auto":
            return gradient_explain(args)
        return args.runtime != "onnx" or args.explain in ("hirescam", "gradcam")
    return True


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    if needs_tensorflow(args):
        from medflow.cli.quiet import import_tensorflow_quietly

        import_tensorflow_quietly()
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
