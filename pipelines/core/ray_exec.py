"""Per-case maps on Ray: each case a Ray task with retries, on a local instance or an existing cluster.

``executor: ray`` (or ``medflow run --executor ray``) sends every case of a per-case
map (ingest, preprocess, segmentation evaluate, simulate's chunks; ``medflow predict
--executor ray``'s inputs) to Ray instead of the local process pool. The contract is
the local pool's:

- a worker writes its own case file, atomically, into the shared stage folder and
  returns a small summary; the driver alone writes the manifest, the quarantine
  list and every MLflow record, so the outputs are byte for byte a local run's;
- a case that fails on its own (a CaseError) is quarantined, never retried;
- a task whose worker process or node dies is retried by Ray (``MAX_RETRIES``);
  one that still cannot finish stops the stage with one line, quarantining
  nothing, and the next run resumes with the cases written.

Workers run with ``MLFLOW_TRACKING_URI`` set to a URI no store answers, so a
worker that tried to track would fail loudly: only the driver writes the store,
which is why a ``sqlite:`` store is safe under this executor.

This module is the only one that imports Ray, and only when the executor is used:
``pip install medflow[ray]`` (``make install-ray``) provides it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from medflow.core.engine import StageFailed

MAX_RETRIES = 3
EXTRA = "ray"
NO_TRACKING_URI = "medflow-ray-workers-do-not-track://"


class RayUnavailable(StageFailed):
    """``executor: ray`` without Ray installed, or a cluster that cannot be reached (one line)."""


def require_ray():
    """The ray module, or RayUnavailable naming the extra."""
    try:
        import ray
    except ImportError:
        raise RayUnavailable(f"executor ray needs Ray: pip install 'medflow[{EXTRA}]' (make install-ray)") from None
    return ray


def connect(address: str | None = None, num_cpus: int | None = None):
    """Join ``address`` (or ``RAY_ADDRESS``), else start a local instance with ``num_cpus`` (default: this
    machine's cores); the ray module. A second call in one process reuses the connection."""
    ray = require_ray()
    if ray.is_initialized():
        return ray
    address = address or os.environ.get("RAY_ADDRESS") or None
    env = {"MLFLOW_TRACKING_URI": NO_TRACKING_URI}
    for name in ("TF_ENABLE_ONEDNN_OPTS", "MLFLOW_DISABLE_TELEMETRY", "NO_ALBUMENTATIONS_UPDATE", "PYTHONPATH",
                 "MEDFLOW_FAULT", "MEDFLOW_FAULT_COUNT", "MEDFLOW_FAULT_ONCE"):  # fault injection in workers too
        if name in os.environ:
            env[name] = os.environ[name]
    kwargs: dict[str, Any] = {"runtime_env": {"env_vars": env}, "log_to_driver": False,
                              "configure_logging": False}
    if address is None:
        # A local instance: without this Ray binds its nodes to the machine's interface address; with it,
        # to 127.0.0.1, and nothing leaves the machine.
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
        kwargs.update(include_dashboard=False, num_cpus=num_cpus)
    try:
        ray.init(address=address, **kwargs)
    except Exception as err:  # noqa: BLE001  (ray raises many types for an unreachable cluster)
        raise RayUnavailable(f"ray cluster {address or '(local)'}: {' '.join(str(err).split())[:300]}") from None
    return ray


def _run_case(worker: Callable[[Any], Any], stage: str, args: Any) -> Any:
    """A case inside a Ray worker: counted as the stage's for fault injection, as the local pool's are."""
    from medflow.data import faults

    with faults.in_stage(stage):
        return worker(args)


def _submit(ray, fn: Callable[[Any], Any], stage: str, jobs: list) -> list:
    """One Ray task per job (``fn(job)`` in a worker, retried when its worker or node dies); their refs."""
    remote = ray.remote(num_cpus=1, max_retries=MAX_RETRIES, retry_exceptions=False)(_run_case)
    fn_ref = ray.put(fn)
    return [remote.remote(fn_ref, stage, job) for job in jobs]


def _get(ray, ref, stage: str, what: str) -> Any:
    """A task's result, its job's own exception, or StageFailed for a task lost on every try."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as err:  # the job's own exception, raised in the worker
        raise err.cause if err.cause is not None else err from None
    except (ray.exceptions.WorkerCrashedError, ray.exceptions.NodeDiedError, ray.exceptions.ObjectLostError,
            ray.exceptions.TaskUnschedulableError) as err:
        raise StageFailed(f"[{stage}] {what}: its Ray worker was lost {MAX_RETRIES + 1} times "
                          f"({type(err).__name__}); stopped, nothing quarantined, and the next run resumes "
                          f"with what was written") from None


def _cancel(ray, refs) -> None:
    for ref in refs:
        ray.cancel(ref, force=True)


def ray_map(jobs: list, worker: Callable[[Any], Any], settle: Callable, address: str | None, stage: str) -> None:
    """Run ``worker(args)`` for each (case_id, source, args) as a Ray task; ``settle(case_id, source, fn)``
    receives each result (``fn()`` returns it or raises the case's own exception) as it completes.

    Raises:
        StageFailed: a task whose worker or node died ``MAX_RETRIES`` + 1 times (no case quarantined).
    """
    ray = connect(address)
    refs = _submit(ray, worker, stage, [args for _, _, args in jobs])
    pending = {ref: (case_id, source) for ref, (case_id, source, _) in zip(refs, jobs)}
    try:
        while pending:
            (ref,), _ = ray.wait(list(pending), num_returns=1)
            case_id, source = pending.pop(ref)
            settle(case_id, source, lambda: _get(ray, ref, stage, case_id))
    except BaseException:
        _cancel(ray, pending)
        raise


def ordered_mapper(address: str | None, stage: str) -> Callable:
    """``mapper(fn, jobs)``: each job a Ray task (with retries), results yielded in job order, for loops that
    need them in order (the simulate stage's chunks)."""
    def mapper(fn, jobs):
        ray = connect(address)
        refs = _submit(ray, fn, stage, list(jobs))
        try:
            for i, ref in enumerate(refs):
                yield _get(ray, ref, stage, f"job {i}")
        except BaseException:
            _cancel(ray, refs)
            raise

    return mapper
