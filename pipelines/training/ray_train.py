"""``train.distribute: ray``: medflow's own multi-worker step inside Ray Train's ``TensorflowTrainer``.

Ray starts ``train.workers`` workers and writes each one's ``TF_CONFIG``; nobody
writes one by hand. Each worker runs the train stage exactly as a ``multi_worker``
worker does (:mod:`medflow.training.distributed`): it reads its slice of every
global batch, rank 0 (the chief) alone writes the stage folder, its checkpoints
(atomically) and the manifest, and the others keep theirs apart.

The driver holds the stage's lock and talks to MLflow: after training it replays
the chief's ``history.csv`` as the stage's per-epoch metrics, so no worker ever
writes the tracking store (a ``sqlite:`` store stays safe). A worker that dies
makes Ray restart the group (``MAX_FAILURES``); every worker then resumes from the
chief's last checkpoint, as a killed ``multi_worker`` run does.
"""

from __future__ import annotations

import csv
import json
import shutil
import tempfile
from pathlib import Path

from medflow.core.engine import MANIFEST, StageDir, StageFailed, StageOutput

MAX_FAILURES = 2


def _worker_loop(config: dict) -> None:
    """One Ray Train worker: the train stage under the TF_CONFIG Ray set (runs in the worker process)."""
    from medflow.core.config import PipelineConfig
    from medflow.core.engine import RunContext
    from medflow.data import faults
    from medflow.stages import train

    cfg = PipelineConfig.model_validate(config["cfg"])
    upstream = {name: StageOutput(name, Path(path), json.loads((Path(path) / MANIFEST).read_text()))
                for name, path in config["upstream"].items()}
    where = Path(config["out"]["path"])
    out = StageDir(where.parent, "train", config["out"]["key"], config["out"]["module"], parent=where.parent)
    with faults.in_stage("train"):
        train.run(cfg, upstream, out, RunContext(workers=1, distributed=True))


def train_on_ray(cfg, upstream: dict[str, StageOutput], out: StageDir, ctx) -> StageOutput:
    """Run the train stage on ``cfg.train.workers`` Ray Train workers; the chief's StageOutput."""
    from medflow.core.ray_exec import connect

    connect(ctx.ray_address)
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.tensorflow import TensorflowTrainer

    # The workers run the multi_worker step; the folder and its key stay the ones this run computed.
    worker_cfg = cfg.model_copy(update={"train": cfg.train.model_copy(update={"distribute": "multi_worker"})})
    out.path.mkdir(parents=True, exist_ok=True)
    storage = Path(tempfile.mkdtemp(prefix=".tmp-ray-train-", dir=out.path))  # Ray Train's own records
    payload = {"cfg": worker_cfg.model_dump(mode="json"),
               "upstream": {name: str(o.path) for name, o in upstream.items()},
               "out": {"path": str(out.path), "key": out.key, "module": out.module}}
    trainer = TensorflowTrainer(
        _worker_loop, train_loop_config=payload,
        scaling_config=ScalingConfig(num_workers=cfg.train.workers, use_gpu=False),
        run_config=RunConfig(name="train", storage_path=str(storage),
                             failure_config=FailureConfig(max_failures=MAX_FAILURES)))
    try:
        result = trainer.fit()
    except Exception as err:  # noqa: BLE001  (Ray Train wraps the workers' errors in several types)
        cause = getattr(err, "cause", None) or err
        raise StageFailed(f"train on Ray ({cfg.train.workers} workers): "
                          f"{' '.join(str(cause).split())[:400]}") from None
    finally:
        shutil.rmtree(storage, ignore_errors=True)
    if getattr(result, "error", None):
        raise StageFailed(f"train on Ray: {' '.join(str(result.error).split())[:400]}")
    output = out.load()
    _replay_history(out.path / "history.csv", ctx.log_metrics)
    return output


def _replay_history(path: Path, log_metrics) -> None:
    """The chief's per-epoch metrics, logged by the driver (the only process that writes the store)."""
    if not path.exists():
        return
    with open(path, newline="") as fh:
        for row in csv.DictReader(fh):
            epoch = int(row.pop("epoch", 0) or 0)
            values = {k: float(v) for k, v in row.items() if v not in ("", None)}
            log_metrics(values, epoch)
