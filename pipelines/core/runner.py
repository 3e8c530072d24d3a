"""Run a pipeline's stages in order, each keyed, skipped when done, tracked in MLflow.

One tracking parent run per invocation and one nested run per stage. The
tracker is passed in, so the engine itself never imports mlflow.
"""

from __future__ import annotations

import functools
import os
import time
from contextlib import nullcontext
from dataclasses import dataclass, field

from medflow.core.catalog import STAGES
from medflow.core.engine import RunContext, ShardOutput, StageFailed, StageOutput
from medflow.core.locks import stage_lock
from medflow.core.progress import log
from medflow.data import faults
from medflow.data.atomic import WRITE_ERRNOS
from medflow.review.spec import run_label


@dataclass
class StageResult:
    """What one stage did in this invocation (for the summary and for tests)."""

    name: str
    key: str
    path: str
    state: str  # 'ran', 'skipped' or 'failed'
    seconds: float
    cases: int
    quarantined: int
    run_id: str | None = None
    error: str | None = None
    output: object = field(default=None, repr=False, compare=False)  # the StageOutput (or ShardOutput)


class NullTracker:
    """Tracking switched off (benchmarks); same interface as tracking.MlflowTracker."""

    experiment_name = None

    def pipeline(self, cfg, config_path=None, profile=None, run_name=None, kind="pipeline"):
        return nullcontext(None)

    def group(self, name, tags=None):
        return nullcontext(None)

    def log_to(self, run_id, metrics=None, artifacts=(), folder=None):
        pass

    review_run_id = None

    def stage(self, name, key, path, run_name=None):
        return nullcontext(None)

    def log_report(self, page, run_id=None):
        pass

    def log_stage(self, output, skipped, seconds):
        pass

    def log_failure(self, message):
        pass

    def log_metrics(self, metrics, step):
        pass

    def log_artifact(self, path, folder):
        pass

    def register_export(self, folder, info):
        return None

    def log_shard(self, output, seconds):
        pass


def plan_stages(cfg, target: str | None = None) -> list:
    """The stages to run, in pipeline order; with ``target``, that stage and what it reads from."""
    listed = list(cfg.stages)
    for name in listed:
        for dep in STAGES[name].inputs:
            if dep not in listed:
                raise StageFailed(f"stage {name!r} reads from {dep!r}, which the pipeline does not list")
            if listed.index(dep) > listed.index(name):
                raise StageFailed(f"stage {name!r} is listed before {dep!r}, which it reads from")
    if target is None:
        return [STAGES[n] for n in listed]
    if target not in listed:
        raise StageFailed(f"--stage {target}: not a stage of this pipeline (stages: {', '.join(listed)})")
    needed, todo = set(), [target]
    while todo:
        name = todo.pop()
        if name not in needed:
            needed.add(name)
            todo.extend(STAGES[name].inputs)
    return [STAGES[n] for n in listed if n in needed]


def resolve_workers(cfg, workers: int | None) -> int:
    n = workers if workers is not None else cfg.workers
    return n if n > 0 else (os.cpu_count() or 1)


def run_pipeline(cfg, *, target=None, force=False, strict=False, workers=None, tracker=None,
                 config_path=None, profile=None, shard=None, merge=False,
                 verify=False, executor: str | None = None,
                 ray_address: str | None = None) -> tuple[list[StageResult], str | None]:
    """Run (or skip) each planned stage.

    Args:
        cfg: validated PipelineConfig.
        target: run up to this stage only.
        force: redo finished stages (only ``target`` when given).
        strict: any quarantined case fails its stage.
        workers: parallel case workers (default: cfg.workers, 0 = all cores).
        tracker: tracking.MlflowTracker, or None for no tracking.
        shard: (index, count): do only this share of ``target``'s cases (its upstream must be finished).
        merge: finish ``target`` from its shards, failing if any shard has not finished.
        verify: reuse checks each case file's sha256 too, not only its size.
        executor: per-case maps on "local" or "ray" (default: cfg.executor); ray_address: the cluster to join.

    Returns:
        (one StageResult per planned stage, the parent tracking run id). A failed stage raises
        StageFailed (one line), which ends the run; its tracking run carries the line as medflow.error.
    """
    tracker = tracker or NullTracker()
    ctx = make_context(cfg, tracker, strict, workers)
    ctx.verify = verify
    ctx.executor, ctx.ray_address = executor or cfg.executor, ray_address
    if ctx.executor == "ray":
        from medflow.core.ray_exec import require_ray

        require_ray()  # one line naming the extra, before any stage starts
    if shard is not None or merge:
        if target is None or not STAGES[target].shardable:
            shardable = ", ".join(n for n in cfg.stages if STAGES[n].shardable)
            raise StageFailed(f"--shard and merge take --stage with a shardable stage ({shardable or 'none here'})")
        ctx.shard, ctx.require_shards = shard, merge
    if cfg.train.distribute == "multi_worker" and "train" in cfg.stages:
        from medflow.training.distributed import cluster

        index, count = cluster()
        if index > 0:  # a worker that is not the chief trains, and only that
            if target != "train":
                raise StageFailed(f"worker {index}/{count} of TF_CONFIG runs `--stage train` only; the chief "
                                  f"(worker 0) runs the rest")
            ctx.shard = None
            ctx.worker = True
        ctx.distributed = count > 1
    with tracker.pipeline(cfg, config_path, profile, run_name=run_label(cfg)) as parent:
        parent_id = parent.info.run_id if parent is not None else None
        outputs: dict[str, StageOutput] = {}
        planned = plan_stages(cfg, target)
        with decoded_session(ctx, planned) as ctx.decoded:
            if ctx.decoded is not None:
                from medflow.stages.preprocess import ahead_plan

                ctx.ahead = functools.partial(ahead_plan, cfg)
            try:
                results = run_stages(cfg, planned, outputs, tracker, ctx, force=force, target=target)
            finally:
                ctx.decoded = ctx.ahead = None  # the folder goes with the session
        log_report(cfg, outputs, tracker, parent_id)
    return results, parent_id


def decoded_session(ctx: RunContext, stages):
    """A folder where ingest leaves decoded volumes for preprocess (one decode per file and run), when this
    run has both stages on local workers; else nothing (yields None)."""
    names = {s.name for s in stages}
    if not {"ingest", "preprocess"} <= names or ctx.executor != "local" or ctx.shard is not None or ctx.worker:
        return nullcontext(None)
    from medflow.core.workspace import workspace_root
    from medflow.data.decoded import session

    return session(workspace_root() / "tmp")


def log_report(cfg, outputs: dict, tracker, run_id: str | None, title: str | None = None) -> None:
    """Build ``report.html`` from the finished stages and put it on ``run_id`` (nothing without tracking)."""
    if run_id is None:
        return
    from medflow.core.loading import dump_yaml
    from medflow.review.report import build_report

    finished = {n: o for n, o in outputs.items() if isinstance(o, StageOutput)}
    tracker.log_report(build_report(title or run_label(cfg), finished, description=cfg.description,
                                    config_yaml=dump_yaml(cfg.resolved()), run_id=run_id), run_id)


def make_context(cfg, tracker, strict: bool = False, workers: int | None = None) -> RunContext:
    return RunContext(strict=strict, workers=resolve_workers(cfg, workers), log_metrics=tracker.log_metrics,
                      log_artifact=tracker.log_artifact, register_export=tracker.register_export)


def run_stages(cfg, stages, outputs: dict[str, StageOutput], tracker, ctx: RunContext, *, force=False,
               target=None) -> list[StageResult]:
    """Run (or skip) ``stages`` in order inside the active tracking run; ``outputs`` gains each one's output.

    Upstream outputs already in ``outputs`` (e.g. shared by the folds of a cross-validation) are reused.
    """
    results: list[StageResult] = []
    for stage in stages:
        upstream = {n: outputs[n] for n in stage.inputs}
        key = stage.key(cfg, upstream)
        out = stage.output_dir(cfg, key)
        redo = force and (target is None or stage.name == target)
        # Shards of one stage, and the workers of one multi-worker training, share a key on purpose.
        shared = (ctx.shard is not None and stage.name == target) or (ctx.distributed and stage.name == "train")
        with nullcontext() if shared else stage_lock(stage.name, key, finished=out.complete):
            results.append(run_stage(stage, cfg, upstream, out, key, redo, tracker, ctx, target))
        outputs[stage.name] = results[-1].output
    return results


def run_stage(stage, cfg, upstream, out, key, redo, tracker, ctx, target) -> StageResult:
    """Run, resume or reuse one stage inside its tracking run (the caller holds the stage's lock, so a
    folder found finished here was finished by this run's predecessor or by a run it waited for)."""
    start = time.perf_counter()
    with tracker.stage(stage.name, key, out.path, run_name=run_label(cfg, stage.name)) as run:
        run_id = run.info.run_id if run is not None else None
        try:
            if out.complete and not redo and reusable(stage.name, out, ctx.verify):
                output, state = out.load(), "skipped"
                log(f"[{stage.name}] up to date ({out.path})")
            elif ctx.worker and stage.name != target:
                raise StageFailed(f"[{stage.name}] has not finished: the chief (or one run) finishes the "
                                  f"stages before train, then the workers join")
            elif ctx.shard is not None and stage.name != target:
                raise StageFailed(f"[{stage.name}] has not finished: run it (sharded, then `medflow merge "
                                  f"--stage {stage.name}`) before sharding {target}")
            else:
                if redo:
                    out.reset()
                log(f"[{stage.name}] running -> {out.path}")
                output, state = run_stage_fn(stage, cfg, upstream, out, ctx), "ran"
        except StageFailed as err:
            tracker.log_failure(str(err))
            raise
        seconds = time.perf_counter() - start
        if isinstance(output, ShardOutput):
            role = output.report.get("role", "shard")
            state = f"{role} {output.report['index']}/{output.report['count']}"
            tracker.log_shard(output, seconds)
        else:
            tracker.log_stage(output, state == "skipped", seconds)
    return StageResult(stage.name, key, str(out.path), state, seconds, len(output.cases),
                       len(output.quarantine), run_id, output=output)


def run_stage_fn(stage, cfg, upstream, out, ctx):
    """``stage.fn`` with its fault-injection scope; a file it could not write (full disk, read-only
    folder) becomes one line naming it, as a StageFailed (the atomic writes left nothing half-written)."""
    try:
        with faults.in_stage(stage.name):
            return stage.fn(cfg, upstream, out, ctx)
    except OSError as err:
        if err.errno not in WRITE_ERRNOS:  # a WriteFailed, or an OSError of the folder itself (mkdir)
            raise
        raise StageFailed(f"[{stage.name}] {err.filename or out.path}: {err.strerror}: stopped; nothing "
                          f"half-written is kept, and the next run resumes") from None


def reusable(name: str, out, verify: bool) -> bool:
    """True if a finished folder can be reused as it is. A damaged case file, or a damaged manifest,
    makes the folder resumable again with one line each: the stage then redoes just those cases."""
    try:
        manifest = out.load().manifest
    except (OSError, ValueError) as err:
        log(f"[{name}] {out.path / 'manifest.json'}: unreadable ({type(err).__name__}): redoing the stage's "
            f"missing cases")
        out.drop_manifest()
        return False
    damaged = out.damaged_cases(manifest, verify)
    for case_id, problem in damaged:
        log(f"[{name}] {problem}: redoing case {case_id}")
    if damaged:
        out.reopen(manifest, [c for c, _ in damaged])
    return not damaged


def stage_states(cfg) -> list[dict]:
    """For ``medflow status``: each stage's key, folder and progress, without running anything."""
    outputs: dict[str, StageOutput] = {}
    rows = []
    for stage in plan_stages(cfg):
        missing = [n for n in stage.inputs if n not in outputs]
        if missing:
            rows.append({"stage": stage.name, "state": f"waiting for {', '.join(missing)}", "key": None,
                         "path": None, "cases": None, "quarantined": None})
            continue
        upstream = {n: outputs[n] for n in stage.inputs}
        try:
            key = stage.key(cfg, upstream)
        except OSError as err:
            rows.append({"stage": stage.name, "state": f"unavailable ({err})", "key": None, "path": None,
                         "cases": None, "quarantined": None})
            continue
        out = stage.output_dir(cfg, key)
        row = {"stage": stage.name, "key": key, "path": str(out.path), "cases": None, "quarantined": None}
        if out.complete:
            outputs[stage.name] = out.load()
            row.update(state="done", cases=len(outputs[stage.name].cases),
                       quarantined=len(outputs[stage.name].quarantine))
        elif out.cases_dir.exists():
            done = sum(1 for p in out.cases_dir.iterdir() if not p.name.startswith("."))
            row.update(state=f"partial ({done} cases written)")
        else:
            row.update(state="not run")
        rows.append(row)
    return rows


def finished_outputs(cfg) -> dict[str, StageOutput]:
    """Every stage of the pipeline that has finished for this config (and whose upstream has), in one pass."""
    outputs: dict[str, StageOutput] = {}
    for st in plan_stages(cfg):
        if not all(n in outputs for n in st.inputs):
            continue
        try:
            out = st.output_dir(cfg, st.key(cfg, {n: outputs[n] for n in st.inputs}))
        except OSError:  # an input the key hashes is gone (as stage_states reports it)
            continue
        if out.complete:
            outputs[st.name] = out.load()
    return outputs


def finished_output(cfg, stage: str) -> StageOutput:
    """The finished output of ``stage`` for this config (its upstream must be finished too)."""
    outputs: dict[str, StageOutput] = {}
    for st in plan_stages(cfg, stage):
        out = st.output_dir(cfg, st.key(cfg, {n: outputs[n] for n in st.inputs}))
        if not out.complete:
            raise StageFailed(f"stage {st.name!r} has not finished for this config: run "
                              f"`medflow run <pipeline> --stage {stage}` first")
        outputs[st.name] = out.load()
    return outputs[stage]
