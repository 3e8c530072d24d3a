"""Sharding: N processes each ingest / preprocess / predict a disjoint share, and a merge equals one run."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from medflow.cli.main import main
from medflow.core.cases import parse_shard, shard_ids
from medflow.core.engine import StageFailed
from medflow.core.loading import load_config
from medflow.core.runner import run_pipeline
from medflow.data.ct.ellipses import EllipsesSpec
from medflow.inference.plan import InferencePlan
from medflow.models.reconstruction import sinogram_model
from medflow.models.registry import build_model
from tests.helpers import make_msd, write_pipeline


def _dataset(tmp_path) -> Path:
    root = make_msd(tmp_path / "msd", n=7)
    img = root / "imagesTr" / "case_03.nii.gz"
    img.write_bytes(img.read_bytes()[:200])  # truncated: quarantined by whichever shard owns it
    return root


def _manifests(workspace: Path) -> dict:
    return {stage: json.loads(next((workspace / "stages" / stage).glob("*/manifest.json")).read_text())
            for stage in ("ingest", "preprocess")}


def test_two_shards_and_a_merge_equal_one_run(tmp_path, monkeypatch):
    root = _dataset(tmp_path)
    cfg = load_config(write_pipeline(tmp_path / "p.yaml", root, stages="[ingest, preprocess]"))
    monkeypatch.setenv("MEDFLOW_WORKSPACE", str(tmp_path / "single"))
    run_pipeline(cfg, workers=1)
    single = _manifests(tmp_path / "single")

    monkeypatch.setenv("MEDFLOW_WORKSPACE", str(tmp_path / "sharded"))
    for stage in ("ingest", "preprocess"):
        reports = []
        for index in (0, 1):
            results, _ = run_pipeline(cfg, target=stage, shard=(index, 2), workers=1)
            assert results[-1].state == f"shard {index}/2"
            reports.append(json.loads((Path(results[-1].path) / "shards" / f"{index}-of-2.json").read_text()))
        done = [set(r["cases"]) | {q["case_id"] for q in r["quarantine"]} for r in reports]
        assert not done[0] & done[1]  # no case done twice
        results, _ = run_pipeline(cfg, target=stage, merge=True, workers=1)
        assert results[-1].state == "ran"
    sharded = _manifests(tmp_path / "sharded")
    for stage in ("ingest", "preprocess"):
        assert sharded[stage]["digest"] == single[stage]["digest"], stage  # same cases, quarantine and figures
    assert [q["case_id"] for q in sharded["ingest"]["quarantine"]] == ["case_03"]
    pre = next((tmp_path / "sharded/stages/preprocess").glob("*/"))
    for case_id, entry in sharded["preprocess"]["cases"].items():
        assert entry["sha256"] == single["preprocess"]["cases"][case_id]["sha256"]  # byte-identical case files
    assert (pre / "cases" / "case_00.npz").exists()


def test_merge_and_shard_misuse_are_one_line_errors(tmp_path, monkeypatch, capsys):
    root = _dataset(tmp_path)
    path = write_pipeline(tmp_path / "p.yaml", root, stages="[ingest, preprocess, split]")
    cfg = load_config(path)
    run_pipeline(cfg, target="ingest", shard=(0, 2), workers=1)
    with pytest.raises(StageFailed, match=r"shard\(s\) 1/2 have not finished"):
        run_pipeline(cfg, target="ingest", merge=True)
    with pytest.raises(StageFailed, match=r"\[ingest\] has not finished: run it"):
        run_pipeline(cfg, target="preprocess", shard=(0, 2))
    with pytest.raises(StageFailed, match="shardable stage"):
        run_pipeline(cfg, target="split", shard=(0, 2))
    assert main(["run", str(path), "--stage", "ingest", "--shard", "2/2"]) == 2
    assert "INDEX must be in 0..COUNT-1" in capsys.readouterr().err
    assert main(["run", str(path), "--stage", "ingest", "--shard", "1/2"]) == 0
    assert main(["merge", str(path), "--stage", "ingest"]) == 0


def test_shard_ids_split_every_listing_the_same_way():
    ids = [f"c{i}" for i in (5, 1, 4, 2, 3)]
    parts = [shard_ids(ids, i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == sorted(ids) and [len(p) for p in parts] == [2, 2, 1]
    assert parse_shard("1/4") == (1, 4)
    with pytest.raises(ValueError, match="expected INDEX/COUNT"):
        parse_shard("one")


def test_predict_shards_share_one_output_folder(tmp_path):
    spec = EllipsesSpec(size=16, angles=6)
    model = sinogram_model(build_model("fbpconvnet", (16, 16, 1), 1, {"depth": 1, "filters": 2}), spec.geometry())
    model.save(tmp_path / "reconstructor.keras")
    InferencePlan("reconstruction", tuple(model.input_shape[1:]), geometry=spec.geometry()).save(tmp_path)
    inputs = tmp_path / "in"
    inputs.mkdir()
    rng = np.random.default_rng(0)
    for i in range(5):
        np.save(inputs / f"s{i}.npy", rng.normal(size=model.input_shape[1:]).astype(np.float32))
    np.save(inputs / "bad.npy", np.zeros((3, 3)))
    out = tmp_path / "out"
    codes = [main(["predict", "--model", str(tmp_path / "reconstructor.keras"), "--input", str(inputs),
                   "--output", str(out), "--shard", f"{i}/2"]) for i in (0, 1)]
    assert sorted(codes) == [0, 1]  # the shard that owns bad.npy reports it
    names = sorted(p.name for p in out.iterdir())
    assert [n for n in names if n.endswith(".npy")] == [f"s{i}.npy" for i in range(5)]
    assert {"quarantine-0-of-2.json", "quarantine-1-of-2.json"} <= set(names)
    bad = sum((json.loads((out / f"quarantine-{i}-of-2.json").read_text()) for i in (0, 1)), [])
    assert [Path(q["path"]).name for q in bad] == ["bad.npy"]
    shutil.rmtree(out)
