"""Files of finished stages damaged afterwards (deleted, truncated, grown, one byte flipped, a garbled
manifest): the next run notices with one line per file, redoes those cases only, and ends with the
results of an uninterrupted run. A flipped byte keeps the size, so it takes ``--verify``."""

from __future__ import annotations

import pytest

from tests.faults.common import env_for, fingerprint, make_pipeline, medflow, record, stage_folder

pytestmark = [pytest.mark.slow, pytest.mark.faults]


def _damage(path, how: str) -> None:
    data = path.read_bytes()
    if how == "deleted":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "grown":
        path.write_bytes(data + b"\0" * 64)
    elif how == "byte flipped":
        path.write_bytes(data[:-9] + bytes([data[-9] ^ 0xFF]) + data[-8:])


def test_damaged_case_files_are_detected_and_redone(tmp_path):
    pipeline = make_pipeline(tmp_path)
    ws = tmp_path / "ws"
    env = env_for(ws, f"sqlite:///{tmp_path / 'store.db'}")
    done = medflow("run", pipeline, "--stage", "preprocess", env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    prints = {s: fingerprint(stage_folder(ws, s)) for s in ("ingest", "preprocess")}
    tries, failures = 0, []
    for stage in ("ingest", "preprocess"):
        folder = stage_folder(ws, stage)
        cases = sorted((folder / "cases").glob("*"))
        for i, how in enumerate(("deleted", "truncated", "grown", "byte flipped")):
            tries += 1
            victim = cases[i % len(cases)]
            _damage(victim, how)
            again = medflow("run", pipeline, "--stage", "preprocess", *(["--verify"] if how == "byte flipped" else []),
                            env=env)
            notice = [line for line in again.stderr.splitlines() if "redoing case" in line]
            problems = [] if again.returncode == 0 else [f"exit {again.returncode}: {again.stderr[-800:]}"]
            if len(notice) != 1 or str(victim) not in notice[0]:
                problems.append(f"notice lines: {notice}")
            problems += [f"{s} differs" for s in prints if fingerprint(stage_folder(ws, s)) != prints[s]]
            if problems:
                failures.append(f"{stage} {victim.name} {how}: {problems}")
    tries += 1
    manifest = stage_folder(ws, "preprocess") / "manifest.json"
    manifest.write_text(manifest.read_text()[:100])
    again = medflow("run", pipeline, "--stage", "preprocess", env=env)
    if again.returncode != 0 or "unreadable" not in again.stderr or \
            fingerprint(stage_folder(ws, "preprocess")) != prints["preprocess"]:
        failures.append(f"garbled manifest: {again.stderr[-800:]}")
    record("damage", "case files deleted, truncated, grown, byte-flipped (--verify); a garbled manifest",
           tries, tries - len(failures), "each noticed with one line and redone; results identical")
    assert not failures, "\n".join(failures)
