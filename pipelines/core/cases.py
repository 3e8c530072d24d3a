"""Per-case work: run a worker over cases (in parallel), quarantine what fails, split cases into shards.

A failing case never stops the others: it becomes a one-line quarantine record
naming its file and problem (or, with ``--strict``, fails the stage).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Any

from medflow.core.engine import RunContext, StageFailed
from medflow.core.progress import log
from medflow.data.atomic import WriteFailed
from medflow.data.nifti import CaseError


def parse_shard(text: str) -> tuple[int, int]:
    """``"INDEX/COUNT"`` -> (index, count), 0 <= index < count."""
    try:
        index, count = (int(v) for v in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard {text!r}: expected INDEX/COUNT, e.g. 0/4") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard {text}: INDEX must be in 0..COUNT-1")
    return index, count


def shard_ids(ids: list[str], index: int, count: int) -> list[str]:
    """Shard ``index`` of ``count``: every count-th case of the sorted ids, so shards differ by one at most
    and every process computes the same split from the same listing."""
    return sorted(ids)[index::count]


def quarantine_record(case_id: str, error: Exception | str, source: str = "") -> dict:
    if isinstance(error, CaseError):
        return {"case_id": case_id, "path": error.path, "problem": error.problem, "error": str(error)}
    if isinstance(error, Exception):
        problem = f"unexpected {type(error).__name__}: {' '.join(str(error).split())}"
    else:
        problem = error
    return {"case_id": case_id, "path": source, "problem": problem, "error": f"{source}: {problem}"}


def report_quarantine(record: dict, ctx: RunContext, stage: str) -> None:
    log(f"[{stage}] quarantined {record['case_id']}: {record['error']}")
    if ctx.strict:
        raise StageFailed(f"[{stage}] --strict: {record['error']}")


def settle(case_id: str, source: str, fn: Callable[[], Any], results: dict[str, Any], quarantine: list[dict],
           ctx: RunContext, desc: str) -> None:
    """``results[case_id] = fn()``; a failure quarantines the case (with --strict, fails the stage), and a
    full or read-only disk, which is no case's fault, stops the stage so that the next run resumes."""
    try:
        results[case_id] = fn()
    except StageFailed:  # the executor lost the case's worker for good: no case's fault
        raise
    except WriteFailed as err:
        raise StageFailed(f"[{desc}] {err}: stopped; nothing half-written is kept, and the next run "
                          f"resumes with the {len(results)} case(s) written") from None
    except Exception as err:  # one bad case must not stop the others
        record = quarantine_record(case_id, err, source)
        quarantine.append(record)
        report_quarantine(record, ctx, desc)


def map_cases(
    jobs: Iterable[tuple[str, str, Any]], worker: Callable[[Any], Any], ctx: RunContext, desc: str,
    *, done: int = 0, total: int | None = None,
) -> tuple[dict[str, Any], list[dict]]:
    """Run ``worker(args)`` for each (case_id, source, args): in parallel when ctx.workers > 1, or as Ray
    tasks when ctx.executor is "ray" (medflow.core.ray_exec; ``worker`` must then be importable by name).

    The worker writes its own output atomically and returns a small summary, so
    no volume travels between processes. A failing case is quarantined (or, with
    --strict, fails the stage); the other cases carry on.

    Returns:
        (summaries by case id, quarantine records).
    """
    jobs = list(jobs)
    results: dict[str, Any] = {}
    quarantine: list[dict] = []
    with ctx.progress(total if total is not None else done + len(jobs), desc) as bar:
        bar.skip(done)

        def settle_one(case_id, source, fn):
            settle(case_id, source, fn, results, quarantine, ctx, desc)
            bar.update(1)

        if ctx.executor == "ray" and jobs:
            from medflow.core.ray_exec import ray_map

            ray_map(jobs, worker, settle_one, ctx.ray_address, desc)
        elif ctx.workers <= 1 or len(jobs) <= 1:
            for case_id, source, args in jobs:
                settle_one(case_id, source, lambda: worker(args))
        else:
            from medflow.data.workers import process_context

            # forkserver: workers never inherit a parent that may hold TensorFlow or MLflow threads.
            with ProcessPoolExecutor(min(ctx.workers, len(jobs)), mp_context=process_context()) as pool:
                futures = {pool.submit(worker, args): (case_id, source) for case_id, source, args in jobs}
                try:
                    for fut in as_completed(futures):
                        settle_one(*futures[fut], fut.result)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    return results, sorted(quarantine, key=lambda r: r["case_id"])
