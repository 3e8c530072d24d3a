"""A full disk or a read-only folder: one line naming the file, nothing half-written, and the next run
resumes to the same results as an uninterrupted run.

Two ways: the failure injected at seeded writes of every stage (``MEDFLOW_FAULT=enospc@STAGE:N``,
the OSError a full disk raises, anywhere), and, where this process may mount (root), the real thing:
the workspace on a 1 MiB tmpfs that fills up, and a read-only bind mount.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.faults.common import (STAGES, env_for, fingerprint, leftovers, medflow, record, reference_run,
                                 stage_folder)

pytestmark = [pytest.mark.slow, pytest.mark.faults]
WRITERS = ("ingest", "preprocess", "train", "evaluate", "export")  # split's writes are tried in the kill suite


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    ref = reference_run(tmp_path_factory.mktemp("disk"))
    return {**ref, "writes": {s: ref["points"][s].count("write") for s in STAGES}}


def one_line_error(stderr: str, words: str) -> str | None:
    """The problem with a failed run's stderr, or None: one ``error:`` line naming a file and ``words``,
    and no traceback."""
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    if "Traceback" in stderr:
        return f"traceback: {stderr[-800:]}"
    if len(errors) != 1 or words not in errors[0] or "/" not in errors[0]:
        return f"no one-line error with {words!r}: {stderr[-800:]}"
    return None


@pytest.mark.parametrize("action,words", [("enospc", "No space left on device"), ("erofs", "Read-only file system")])
def test_a_failed_write_anywhere_stops_with_one_line_and_the_next_run_resumes(reference, action, words):
    rng = random.Random(action)
    env = env_for(reference["ws"], reference["store"])
    tries, failures = 0, []
    for stage in WRITERS:
        for n in sorted(rng.sample(range(1, reference["writes"][stage] + 1), 2)):
            tries += 1
            folder = stage_folder(reference["ws"], stage)
            shutil.rmtree(folder)
            failed = medflow("run", reference["pipeline"], "--stage", stage,
                             env={**env, "MEDFLOW_FAULT": f"{action}@{stage}:{n}"})
            problems = [] if failed.returncode not in (0, -9) else [f"exit {failed.returncode}"]
            problem = one_line_error(failed.stderr, words)
            problems += [problem] if problem else []
            if folder.exists() and leftovers(folder):
                problems.append(f"left behind: {leftovers(folder)}")
            if folder.exists() and (folder / "manifest.json").exists():
                problems.append("the failed stage wrote its manifest")
            rerun = medflow("run", reference["pipeline"], "--stage", stage, env=env)
            if rerun.returncode != 0:
                problems.append(f"re-run failed: {rerun.stderr[-800:]}")
            elif fingerprint(folder) != reference["prints"][stage]:
                problems.append("re-run differs from the uninterrupted run")
            if problems:
                failures.append(f"{action}@{stage}:{n}: {'; '.join(problems)}")
    record("disk", f"{action.upper()} injected at seeded writes, then re-run", tries, tries - len(failures),
           f"2 writes in each of {', '.join(WRITERS)}; one-line error naming the file; identical after re-run")
    assert not failures, "\n".join(failures)


def _mount(*args: str) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture
def mountable(tmp_path):
    probe = tmp_path / "probe"
    probe.mkdir()
    if shutil.which("mount") is None or not _mount("-t", "tmpfs", "-o", "size=1m", "tmpfs", str(probe)):
        pytest.skip("mounting is not permitted here (not root, or no CAP_SYS_ADMIN): the injected faults cover it")
    subprocess.run(["umount", str(probe)], check=True)


def test_a_real_full_disk_then_space_freed_resumes(reference, mountable, tmp_path):
    ws = tmp_path / "ws"
    ws.mkdir()
    assert _mount("-t", "tmpfs", "-o", "size=160k", "tmpfs", str(ws))
    try:
        env = env_for(ws, f"sqlite:///{tmp_path / 'store.db'}")
        full = medflow("run", reference["pipeline"], "--stage", "preprocess", env=env)
        problems = [f"exit {full.returncode}"] if full.returncode == 0 else []
        problem = one_line_error(full.stderr, "No space left on device")
        problems += [problem] if problem else []
        problems += leftovers(ws)
        assert _mount("-o", "remount,size=64m", str(ws))
        again = medflow("run", reference["pipeline"], "--stage", "preprocess", env=env)
        if again.returncode != 0:
            problems.append(f"re-run failed: {again.stderr[-800:]}")
        done = [line.split(": ", 1)[1] for line in again.stderr.splitlines() if "already done" in line]
        for stage in ("ingest", "preprocess"):
            if again.returncode == 0 and fingerprint(stage_folder(ws, stage)) != reference["prints"][stage]:
                problems.append(f"{stage} differs from the uninterrupted run")
        error = next((x for x in full.stderr.splitlines() if x.startswith("error:")), "")
        record("disk", "workspace on a real 160 KiB tmpfs that fills, then grown", 1, int(not problems),
               f"{error.replace(str(ws), 'ws').split(': stopped')[0]}; resumed "
               f"{'with ' + ', '.join(done) if done else 'from the start of the stage it stopped in'}")
        assert not problems, problems
    finally:
        subprocess.run(["umount", "-l", str(ws)])


def test_a_real_read_only_workspace_then_writable_resumes(reference, mountable, tmp_path):
    ws = tmp_path / "ws"
    env = env_for(ws, f"sqlite:///{tmp_path / 'store.db'}")
    first = medflow("run", reference["pipeline"], "--stage", "ingest", env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert _mount("--bind", str(ws), str(ws)) and _mount("-o", "remount,ro,bind", str(ws))
    try:
        ro = medflow("run", reference["pipeline"], "--stage", "preprocess", env=env)
        problems = [f"exit {ro.returncode}"] if ro.returncode == 0 else []
        problem = one_line_error(ro.stderr, "Read-only file system")
        problems += [problem] if problem else []
    finally:
        subprocess.run(["umount", "-l", str(ws)])
    again = medflow("run", reference["pipeline"], "--stage", "preprocess", env=env)
    if again.returncode != 0:
        problems.append(f"re-run failed: {again.stderr[-800:]}")
    elif fingerprint(stage_folder(ws, "preprocess")) != reference["prints"]["preprocess"]:
        problems.append("preprocess differs from the uninterrupted run")
    error = next((line for line in ro.stderr.splitlines() if line.startswith("error:")), "")
    record("disk", "read-only workspace (real ro bind mount), then writable", 1, int(not problems),
           error.replace(str(ws), "ws").split(": stopped")[0].split(": cannot take")[0])
    assert not problems, problems
