"""The stage engine: keyed output folders, atomic writes, per-case resume.

A stage writes only into ``<workspace>/stages/<stage>/<key>/``, where the key
hashes its resolved config sections, its upstream manifests and the code
version. Case files are written to a temporary name and renamed; the manifest
is written last, so a folder with a manifest is complete and a folder without
one can be resumed case by case.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from medflow.core.keys import code_version, digest
from medflow.core.progress import Progress
from medflow.data.atomic import write_atomic
from medflow.data.casefile import file_sha256

MANIFEST = "manifest.json"
WALL_CLOCK = ("seconds", "_per_s")  # metric name endings that measure time, not content


class StageFailed(RuntimeError):
    """A stage could not finish (``--strict`` and a bad case, or a dataset-level error)."""


@dataclass
class RunContext:
    """What a stage may use besides its config and upstream outputs."""

    strict: bool = False
    workers: int = 1
    log_metrics: Callable[[dict, int], None] = lambda metrics, step: None  # live metrics (per epoch)
    log_artifact: Callable[[Path, str], None] = lambda path, folder: None  # e.g. a figure as it is made
    # An export bundle to log as a model and register: (folder, info) -> registry record, or None untracked.
    register_export: Callable[[Path, dict], dict | None] = lambda folder, info: None
    shard: tuple[int, int] | None = None  # (index, count): this process does only its share of the cases
    require_shards: bool = False  # `medflow merge`: finish a sharded stage only if every shard has finished
    worker: bool = False  # a multi-worker training process that is not the chief: trains, writes nothing
    distributed: bool = False  # one of several TF_CONFIG workers: they all train one key together, unlocked
    verify: bool = False  # reuse checks each case file's checksum, not only its size (`medflow run --verify`)
    executor: str = "local"  # per-case maps: "local" (process pool) or "ray" (medflow.core.ray_exec)
    ray_address: str | None = None  # executor ray: the cluster to join (None: RAY_ADDRESS, else a local instance)
    decoded: str | None = None  # this run's decoded volumes (medflow.data.decoded), when ingest feeds preprocess
    # With ``decoded``: the dataset's channels -> preprocess's job plan, so that ingest preprocesses each case
    # ahead; None, or a None plan, when the plan waits on ingest's fingerprint
    ahead: Callable[[list[str]], dict | None] | None = None

    def progress(self, total: int, desc: str) -> Progress:
        return Progress(total, desc)


@dataclass(frozen=True)
class Stage:
    """A stage declared once: what it is called, what it reads, what keys its output.

    Attributes:
        name: stage name, also its folder name.
        fn: ``fn(cfg, upstream, out, ctx) -> StageOutput``.
        inputs: names of upstream stages whose outputs ``fn`` receives.
        sections: config sections that enter the key.
        extra_key: more key material from outside the config (e.g. the dataset listing).
        outputs: what the folder holds, for ``--help`` and status.
        parent: ``parent(cfg) -> Path``: the folder of its keyed folders, when it is not
            ``<workspace>/stages/<name>`` (exports live where people look for them).
        shardable: ``fn`` honours ``ctx.shard`` (see :meth:`StageDir.shard_jobs`).
    """

    name: str
    fn: Callable
    inputs: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    extra_key: Callable[[Any], Any] | None = None
    outputs: str = ""
    parent: Callable[[Any], Path] | None = None
    shardable: bool = False  # per-case work that N processes can split (`--shard`, then `medflow merge`)

    def output_dir(self, cfg, key: str) -> "StageDir":
        """The folder this stage writes for ``key``."""
        from medflow.core.workspace import stages_root

        return StageDir(stages_root(), self.name, key, self.fn.__module__,
                        parent=self.parent(cfg) if self.parent else None)

    def key(self, cfg, upstream: dict[str, "StageOutput"]) -> str:
        return digest({
            "stage": self.name,
            "config": {s: cfg.section(s) for s in self.sections},
            "upstream": {n: upstream[n].digest for n in self.inputs},
            "code": code_version(self.fn.__module__),
            "extra": self.extra_key(cfg) if self.extra_key else None,
        })


@dataclass
class StageOutput:
    """A finished stage folder, read through its manifest."""

    name: str
    path: Path
    manifest: dict = field(repr=False)

    @property
    def digest(self) -> str:
        return self.manifest["digest"]

    @property
    def cases(self) -> dict[str, dict]:
        return self.manifest.get("cases", {})

    @property
    def quarantine(self) -> list[dict]:
        return self.manifest.get("quarantine", [])

    def file(self, relpath: str) -> Path:
        return self.path / relpath


class StageDir:
    """The output folder of one stage run, written atomically."""

    def __init__(self, root: Path, name: str, key: str, module: str = "medflow.core.engine", parent: Path | None = None):
        self.name, self.key, self.module = name, key, module
        self.path = Path(parent if parent is not None else Path(root) / name) / key[:16]
        self.cases_dir = self.path / "cases"

    @property
    def complete(self) -> bool:
        return (self.path / MANIFEST).exists()

    def load(self) -> StageOutput:
        return StageOutput(self.name, self.path, json.loads((self.path / MANIFEST).read_text()))

    def prepare(self) -> None:
        """Create the folder and drop temporaries left by a killed run."""
        self.cases_dir.mkdir(parents=True, exist_ok=True)
        self.sweep()

    def sweep(self) -> None:
        """Drop temporaries: files, and folders such as a half-written checkpoint, at any depth."""
        for tmp in sorted(self.path.rglob(".tmp-*"), key=lambda p: len(p.parts)):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)

    def reset(self) -> None:
        """Remove the folder (``--force``); a rename first, so no half-deleted folder is ever visible."""
        if self.path.exists():
            trash = self.path.with_name(f".trash-{self.path.name}-{os.getpid()}")
            os.replace(self.path, trash)
            shutil.rmtree(trash, ignore_errors=True)

    def case_path(self, case_id: str, suffix: str) -> Path:
        return self.cases_dir / f"{case_id}{suffix}"

    def has(self, case_id: str, suffix: str) -> bool:
        return self.case_path(case_id, suffix).exists()

    def write_text(self, relpath: str, text: str) -> Path:
        dest = self.path / relpath
        with write_atomic(dest) as tmp:
            tmp.write_text(text, encoding="utf-8")
        return dest

    def write_json(self, relpath: str, obj: Any) -> Path:
        return self.write_text(relpath, json.dumps(obj, indent=1, sort_keys=True))

    # -- sharding: N processes (machines sharing the workspace) each do 1/N of the cases ------------
    def shard_jobs(self, jobs: list, ids: list[str], ctx: RunContext) -> tuple[list, list[dict], list[str]]:
        """This process's share of ``jobs`` (the (case_id, source, args) still to do, out of ``ids``).

        Sharded: the jobs of this shard's cases. Unsharded (a plain run or a merge): every job, except
        cases a shard already quarantined, whose records are reused rather than retried.

        Returns:
            (jobs to run, quarantine records carried over from shards, the case ids in scope).
        """
        if ctx.shard is not None:
            from medflow.core.cases import shard_ids  # cases builds on this module

            mine = set(shard_ids(ids, *ctx.shard))
            return [j for j in jobs if j[0] in mine], [], [c for c in ids if c in mine]
        reports = self.shard_reports(ctx.require_shards)
        prior = {r["case_id"]: r for rep in reports for r in rep["quarantine"]}
        return [j for j in jobs if j[0] not in prior], sorted(prior.values(), key=lambda r: r["case_id"]), ids

    def shard_reports(self, require: bool = False) -> list[dict]:
        """The finished shards' reports (``shards/<i>-of-<n>.json``); with ``require``, all of one count."""
        reports = [json.loads(p.read_text()) for p in sorted((self.path / "shards").glob("*-of-*.json"))]
        if require:
            counts = {r["count"] for r in reports}
            if len(counts) != 1:
                raise StageFailed(f"{self.path}: nothing to merge" if not counts else
                                  f"{self.path}: shards of different counts {sorted(counts)}; re-run them")
            count = counts.pop()
            missing = sorted(set(range(count)) - {r["index"] for r in reports})
            if missing:
                raise StageFailed(f"{self.path}: shard(s) {', '.join(f'{i}/{count}' for i in missing)} "
                                  f"have not finished")
        return reports

    def finish_shard(self, shard: tuple[int, int], cases: list[str], quarantine: list[dict]) -> "ShardOutput":
        """Record that this shard's cases are done (no manifest: the stage is complete only after a merge)."""
        index, count = shard
        bad = {r["case_id"] for r in quarantine}
        report = {"index": index, "count": count, "cases": [c for c in cases if c not in bad], "quarantine": quarantine}
        self.write_json(f"shards/{index}-of-{count}.json", report)
        return ShardOutput(self.name, self.path, report)

    # -- integrity of what is reused ------------------------------------------------------------
    def damaged_cases(self, manifest: dict, verify: bool = False) -> list[tuple[str, str]]:
        """(case id, one line) for each case file of ``manifest`` that is missing or not what was written.

        The size is always checked (a stat per file); the sha256 too with ``verify``, or when the
        manifest predates sizes.
        """
        out = []
        for case_id, entry in manifest.get("cases", {}).items():
            if not isinstance(entry, dict) or "file" not in entry:
                continue
            path = self.path / entry["file"]
            try:
                size = path.stat().st_size
            except OSError:
                out.append((case_id, f"{path}: missing"))
                continue
            if "size" in entry and size != entry["size"]:
                out.append((case_id, f"{path}: {size} bytes where the manifest says {entry['size']}"))
            elif (verify or "size" not in entry) and "sha256" in entry and file_sha256(path) != entry["sha256"]:
                out.append((case_id, f"{path}: content differs from its sha256 in the manifest"))
        return out

    def reopen(self, manifest: dict, case_ids: list[str]) -> None:
        """Make a finished folder resumable with ``case_ids`` to redo: the manifest goes first (so the
        folder never reads as complete with a case missing), then those cases' files."""
        self.drop_manifest()
        for case_id in case_ids:
            entry = manifest.get("cases", {}).get(case_id) or {}
            if "file" in entry:
                (self.path / entry["file"]).unlink(missing_ok=True)

    def drop_manifest(self) -> None:
        """Remove the manifest (atomically: a rename, then the unlink), so the folder reads as unfinished."""
        tmp = self.path / f".tmp-{MANIFEST}-{os.getpid()}"
        os.replace(self.path / MANIFEST, tmp)
        tmp.unlink()

    def finish(self, cfg, upstream: dict[str, StageOutput], body: dict) -> StageOutput:
        """Write the manifest (last). ``body`` holds cases, quarantine, artifacts, metrics.

        Each case entry with a ``file`` gains its ``size`` and ``sha256`` (unless the stage gave them),
        so reuse can tell a damaged or missing file (:meth:`damaged_cases`).

        Temporaries still in the folder are dropped first: every case is settled when a stage finishes,
        so one left now is a write whose worker died and was retried elsewhere (a Ray task).
        """
        self.sweep()
        for entry in body.get("cases", {}).values():
            if isinstance(entry, dict) and "file" in entry:
                path = self.path / entry["file"]
                entry.setdefault("size", path.stat().st_size)
                if "sha256" not in entry:  # not setdefault: that would hash every file the stage already hashed
                    entry["sha256"] = file_sha256(path)
        manifest = {
            "stage": self.name, "key": self.key, "code_version": code_version(self.module),
            "upstream": {n: o.digest for n, o in upstream.items()},
            **body,
        }
        manifest["digest"] = content_digest(manifest)
        self.write_json(MANIFEST, manifest)
        return StageOutput(self.name, self.path, manifest)


def content_digest(manifest: dict) -> str:
    """The digest that keys every downstream folder. It leaves out wall-clock figures, the case files'
    checksums (a case file may record its own timing) and the registry record: a resumed or repeated
    run that produced the same results keys the same downstream folders."""
    cases = {c: {k: v for k, v in e.items() if k not in ("size", "sha256")} if isinstance(e, dict) else e
             for c, e in manifest.get("cases", {}).items()}
    metrics = {k: v for k, v in manifest.get("metrics", {}).items() if not k.endswith(WALL_CLOCK)}
    # The registry record (model ids, the champion line) is where the bundle went, not what it holds.
    return digest({**{k: v for k, v in manifest.items() if k != "registry"}, "cases": cases, "metrics": metrics})


@dataclass
class ShardOutput:
    """What one shard of a stage did: its cases and quarantine (the stage has no manifest yet)."""

    name: str
    path: Path
    report: dict

    @property
    def cases(self) -> list[str]:
        return self.report["cases"]

    @property
    def quarantine(self) -> list[dict]:
        return self.report["quarantine"]


