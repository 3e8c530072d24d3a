"""Ingest -> preprocess -> split on tiny datasets: outputs, quarantine, strict mode, skipping, keys."""

from __future__ import annotations

import gzip
import json
import shutil
import struct

import numpy as np
import pytest

from medflow.core.engine import StageFailed
from medflow.core.loading import load_config
from medflow.core.runner import run_pipeline, stage_states
from medflow.data.casefile import file_sha256, read_case
from medflow.data.geometry import voxel_to_world
from tests.helpers import add_msd_case, cube_case, make_affine, make_msd, save, write_pipeline


def _run(cfg_path, **kw):
    return run_pipeline(load_config(cfg_path, kw.pop("overrides", [])), **kw)[0]


def test_pipeline_outputs(tmp_path, msd_root):
    results = _run(write_pipeline(tmp_path / "p.yaml", msd_root))
    assert [(r.name, r.state, r.cases, r.quarantined) for r in results] == [
        ("ingest", "ran", 4, 0), ("preprocess", "ran", 4, 0), ("split", "ran", 4, 0)]
    pre = json.loads((tmp_path / "workspace/stages/preprocess").glob("*/manifest.json").__next__().read_text())
    src_aff = make_affine()
    _, src_label = cube_case((16, 14, 12), seed=0)
    arrays, meta = read_case(tmp_path / "workspace/stages/preprocess" / pre["key"][:16] / "cases/case_00.npz")
    assert meta["axcodes"] == "RAS" and meta["spacing"] == [1.0, 1.0, 1.0]
    assert arrays["image"].shape == (1, *arrays["label"].shape) and set(np.unique(arrays["label"])) == {0, 1, 2}
    centre = lambda lab, aff: voxel_to_world(aff, [np.argwhere(lab == 1).mean(0)])[0]  # noqa: E731
    np.testing.assert_allclose(centre(arrays["label"], np.array(meta["affine"])), centre(src_label, src_aff), atol=0.6)
    splits = json.loads(next((tmp_path / "workspace/stages/split").glob("*/splits.json")).read_text())
    assert len(splits["test"]) == 1 and len(splits["folds"]) == 2
    plan = json.loads(next((tmp_path / "workspace/stages/preprocess").glob("*/plan.json")).read_text())
    assert plan["spacing"] == [1.0, 1.0, 1.0] and plan["normalization"] == ["mr"] and plan["orientation"] == "RAS"


def _bad_dataset(root):
    """Two good cases plus one case per kind of bad input; returns {case id: expected message part}."""
    make_msd(root, n=2)
    aff = make_affine()
    img, lab = cube_case((16, 14, 12))
    good_label = root / "labelsTr" / "case_00.nii.gz"
    expect = {}

    def case(name, fragment, image=None, label=None):
        if image is not None:
            image(root / "imagesTr" / f"{name}.nii.gz")
        if label is not None:
            label(root / "labelsTr" / f"{name}.nii.gz")
        else:
            shutil.copy(good_label, root / "labelsTr" / f"{name}.nii.gz")
        add_msd_case(root, name)
        expect[name] = fragment

    case("missing", "missing file")
    case("empty", "empty file", image=lambda p: p.write_bytes(b""))
    case("text", "not gzip data", image=lambda p: p.write_text("plain text"))
    blob = save(root / "tmp.nii.gz", img, aff, np.float32).read_bytes()
    (root / "tmp.nii.gz").unlink()
    case("truncated", "truncated or corrupt gzip", image=lambda p: p.write_bytes(blob[: len(blob) // 3]))
    raw = gzip.decompress(blob)
    lying = raw[:40] + struct.pack("<8h", 3, 16, 14, 40, 1, 1, 1, 1) + raw[56:]
    case("liar", "need", image=lambda p: p.write_bytes(gzip.compress(lying)))
    case("flat", "2D image", image=lambda p: save(p, img[:, :, 0], aff))
    case("movie", "4D image", image=lambda p: save(p, np.stack([img, img], -1), aff))
    nan = img.copy()
    nan[3, 3, 3] = np.nan
    case("nan", "1 NaN/Inf voxels", image=lambda p: save(p, nan, aff))
    zero = raw[:40] + struct.pack("<8h", 3, 16, 0, 12, 1, 1, 1, 1) + raw[56:]
    case("zero", "zero-size axis", image=lambda p: p.write_bytes(gzip.compress(zero)))
    case("shape", "label shape (16, 14, 11) does not match image shape (16, 14, 12)",
         image=lambda p: save(p, img, aff, np.int16), label=lambda p: save(p, lab[:, :, :11], aff, np.uint8))
    moved = aff.copy()
    moved[0, 3] += 2.0
    case("shifted", "label affine differs from the image affine by up to 2 mm",
         image=lambda p: save(p, img, aff, np.int16), label=lambda p: save(p, lab, moved, np.uint8))
    lab9 = lab.copy()
    lab9[0, 0, 0] = 9
    case("extra_class", "label values [9] outside the declared classes [0, 1, 2]",
         image=lambda p: save(p, img, aff, np.int16), label=lambda p: save(p, lab9, aff, np.uint8))
    case("constant", "no intensity range: every voxel is 0", image=lambda p: save(p, np.zeros_like(img), aff))
    speck = np.zeros_like(img)
    speck[2, 2, 2] = 1000.0
    case("speck", "no usable foreground: 1 of 2688 voxels", image=lambda p: save(p, speck, aff))
    elsewhere = np.zeros_like(lab)
    elsewhere[12:15, 11:13, 9:11] = 1  # in the dim background, far from the bright cube
    case("misplaced", "label foreground lies entirely outside the image's foreground",
         image=lambda p: save(p, img, aff, np.int16), label=lambda p: save(p, elsewhere, aff, np.uint8))
    outside = save(root.parent / "outside.nii.gz", img, aff)
    add_msd_case(root, "escape", image_path="../outside.nii.gz")
    add_msd_case(root, "absolute", image_path=str(outside))
    add_msd_case(root, "case_01", image_path="./imagesTr/case_01.nii.gz")  # duplicate id
    return expect


def test_bad_inputs_are_quarantined_and_the_rest_completes(tmp_path):
    root = tmp_path / "msd"
    expect = _bad_dataset(root)
    cfg = write_pipeline(tmp_path / "p.yaml", root, stages="[ingest, preprocess]")
    results = _run(cfg, workers=2)  # through the process pool
    assert (results[0].cases, results[1].cases) == (2, 2)
    ingest_dir = tmp_path / "workspace/stages/ingest" / results[0].key[:16]
    quarantine = json.loads((ingest_dir / "quarantine.json").read_text())
    by_id = {}
    for q in quarantine:
        by_id.setdefault(q["case_id"], []).append(q)
    for name, fragment in expect.items():
        (q,) = by_id[name]
        assert fragment in q["error"], (name, q["error"])
        assert q["error"].startswith(q["path"] + ": ") and name in q["path"] and "\n" not in q["error"]
    outside = [q["error"] for q in quarantine if q["case_id"] == "outside"]
    assert len(outside) == 2 and all("resolves outside the dataset root" in e for e in outside)
    assert any("duplicate case id 'case_01'" in q["error"] for q in by_id["case_01"])
    assert not [p for p in ingest_dir.rglob(".tmp-*")]
    manifest = json.loads((ingest_dir / "manifest.json").read_text())
    assert sorted(manifest["cases"]) == ["case_00", "case_01"] and manifest["quarantine"] == quarantine


def test_strict_fails_and_leaves_no_manifest(tmp_path):
    root = tmp_path / "msd"
    make_msd(root, n=5)
    (root / "imagesTr" / "case_01.nii.gz").write_bytes(b"")
    with pytest.raises(StageFailed, match="--strict: .*case_01.nii.gz: empty file"):
        _run(write_pipeline(tmp_path / "p.yaml", root), strict=True)
    assert not list((tmp_path / "workspace/stages/ingest").glob("*/manifest.json"))
    results = _run(write_pipeline(tmp_path / "p.yaml", root))  # without --strict it completes
    assert results[0].quarantined == 1


def test_skip_force_and_keys(tmp_path, msd_root):
    cfg = write_pipeline(tmp_path / "p.yaml", msd_root)
    first = _run(cfg)
    again = _run(cfg)
    assert [r.state for r in again] == ["skipped"] * 3
    assert [r.key for r in again] == [r.key for r in first]
    spacing = _run(cfg, overrides=["preprocess.spacing=[2,2,2]"])
    assert [r.state for r in spacing] == ["skipped", "ran", "skipped"]
    assert spacing[1].key != first[1].key
    forced = _run(cfg, target="preprocess", force=True)
    assert [(r.name, r.state) for r in forced] == [("ingest", "skipped"), ("preprocess", "ran")]
    # A changed dataset (one more case) is a new ingest key, and everything downstream follows.
    img, lab = cube_case((16, 14, 12), seed=9)
    save(msd_root / "imagesTr" / "case_09.nii.gz", img, make_affine(), np.int16)
    save(msd_root / "labelsTr" / "case_09.nii.gz", lab, make_affine(), np.uint8)
    add_msd_case(msd_root, "case_09")
    grown = _run(cfg)
    assert [r.state for r in grown] == ["ran"] * 3 and grown[0].cases == 5
    states = stage_states(load_config(cfg))
    assert [s["state"] for s in states] == ["done"] * 3


def test_stage_selection_errors(tmp_path, msd_root):
    with pytest.raises(StageFailed, match="not a stage of this pipeline"):
        _run(write_pipeline(tmp_path / "p.yaml", msd_root, stages="[ingest]"), target="preprocess")
    with pytest.raises(StageFailed, match="reads from 'ingest'"):
        _run(write_pipeline(tmp_path / "q.yaml", msd_root, stages="[preprocess]"))


def test_csv_classification_dataset(tmp_path):
    root = tmp_path / "cls"
    rows = ["path,label,patient_id"]
    for i in range(12):
        img, _ = cube_case((12, 10, 8), lo=(2, 2, 2), hi=(6, 6, 5), seed=i)
        save(root / "images" / f"s{i:02d}.nii.gz", img, make_affine((2.0, 2.0, 3.0), "LAS"), np.int16)
        rows.append(f"images/s{i:02d}.nii.gz,{'ab'[i % 2]},pat{i // 2}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    cfg = write_pipeline(tmp_path / "p.yaml", root, layout="csv", extra="")
    results = _run(cfg, overrides=["dataset.classes=[a, b]", "preprocess.spacing=[2,2,2]"])
    assert [r.cases for r in results] == [12, 12, 12]
    split = json.loads(next((tmp_path / "workspace/stages/split").glob("*/splits.json")).read_text())
    test_patients = {c[:3] for c in split["test"]}
    assert split["stratified"] and len(split["test"]) in (2, 4)
    fold_cases = {c for f in split["folds"] for c in f["train"] + f["val"]}
    assert not fold_cases & set(split["test"])
    assert test_patients  # patients pat0..pat5 each own s(2k) and s(2k+1): pairs stay together
    pairs = {(int(c[1:]) // 2) for c in split["test"]}
    assert len(split["test"]) == 2 * len(pairs)
    fp = json.loads(next((tmp_path / "workspace/stages/ingest").glob("*/fingerprint.json")).read_text())
    assert fp["class_counts"] == {"a": 6, "b": 6} and fp["axcodes"] == {"LAS": 12}


def test_code_version_follows_the_stage_imports():
    from medflow.core.keys import _module_file, _project_imports, code_version

    ingest_deps = _project_imports(_module_file("medflow.stages.ingest"))
    assert {"medflow.data.nifti", "medflow.data.fingerprint", "medflow.data.layouts", "medflow.core.engine"} <= ingest_deps
    assert not any(d.startswith("medflow.data.augment") for d in ingest_deps)
    versions = {m: code_version(f"medflow.stages.{m}") for m in ("ingest", "preprocess", "split")}
    assert len(set(versions.values())) == 3  # each stage is keyed by its own code


def test_damaged_or_missing_case_files_are_redone_on_reuse(tmp_path, msd_root, capsys):
    cfg = write_pipeline(tmp_path / "p.yaml", msd_root, stages="[ingest, preprocess]")
    first = _run(cfg)
    pre = tmp_path / "workspace/stages/preprocess" / first[1].key[:16]
    manifest = json.loads((pre / "manifest.json").read_text())
    entry = manifest["cases"]["case_01"]
    assert entry["size"] == (pre / entry["file"]).stat().st_size and len(entry["sha256"]) == 64
    intact = (pre / entry["file"]).read_bytes()
    capsys.readouterr()

    (pre / entry["file"]).write_bytes(intact[: len(intact) // 2])  # truncated by a full disk, say
    (pre / "cases" / "case_02.npz").unlink()
    again = _run(cfg)
    err = capsys.readouterr().err
    assert "bytes where the manifest says" in err and "redoing case case_01" in err
    assert "case_02.npz: missing: redoing case case_02" in err
    assert [r.state for r in again] == ["skipped", "ran"] and again[1].key == first[1].key
    assert (pre / entry["file"]).read_bytes() == intact  # the same bytes as before: deterministic redo
    assert json.loads((pre / "manifest.json").read_text())["digest"] == manifest["digest"]

    flipped = bytearray(intact)
    flipped[len(flipped) // 2] ^= 0xFF  # same size, other content: only --verify reads it
    (pre / entry["file"]).write_bytes(bytes(flipped))
    assert [r.state for r in _run(cfg)] == ["skipped", "skipped"]
    assert [r.state for r in _run(cfg, verify=True)] == ["skipped", "ran"]
    assert "content differs from its sha256" in capsys.readouterr().err
    assert (pre / entry["file"]).read_bytes() == intact

    (pre / "manifest.json").write_text('{"stage": "prepro')  # a manifest cut short
    assert [r.state for r in _run(cfg)] == ["skipped", "ran"]
    assert "manifest.json: unreadable" in capsys.readouterr().err
    assert json.loads((pre / "manifest.json").read_text())["digest"] == manifest["digest"]


def test_one_decode_per_file_and_run_with_the_same_case_files(tmp_path, msd_root, monkeypatch):
    import collections
    import os

    import medflow.data.images as images

    decodes = collections.Counter()
    real = images.read_nifti

    def counting(path, **kw):
        decodes[os.path.basename(os.path.dirname(path)) + "/" + os.path.basename(path)] += 1
        return real(path, **kw)

    import medflow.stages.ingest as ingest_stage
    import medflow.stages.preprocess as preprocess_stage

    made = collections.Counter()
    for module in (ingest_stage, preprocess_stage):
        def making(*args, _real=module.preprocess_record, _by=module.__name__.rsplit(".", 1)[1]):
            made[_by] += 1
            return _real(*args)

        monkeypatch.setattr(module, "preprocess_record", making)
    monkeypatch.setattr(images, "read_nifti", counting)  # workers: 1, so every case runs in this process
    cfg = write_pipeline(tmp_path / "p.yaml", msd_root, stages="[ingest, preprocess]")
    fused = _run(cfg)
    assert [r.state for r in fused] == ["ran", "ran"]
    assert len(decodes) == 8 and set(decodes.values()) == {1}  # 4 images and 4 labels, each read once
    assert made == {"ingest": 4}  # each case preprocessed ahead by ingest, and taken as it was by preprocess
    assert os.listdir(tmp_path / "workspace" / "tmp") == []  # the run's folder went with the run
    fused_cases = json.loads((fused[1].output.path / "manifest.json").read_text())["cases"]

    monkeypatch.setenv("MEDFLOW_WORKSPACE", str(tmp_path / "apart"))
    decodes.clear()
    _run(cfg, target="ingest")
    made.clear()
    apart = _run(cfg)  # preprocess in a run of its own decodes the files itself
    assert set(decodes.values()) == {2} and made == {"preprocess": 4}
    assert apart[1].key == fused[1].key
    apart_cases = json.loads((apart[1].output.path / "manifest.json").read_text())["cases"]
    assert {c: v["sha256"] for c, v in apart_cases.items()} == {c: v["sha256"] for c, v in fused_cases.items()}
    for case_id, entry in fused_cases.items():  # the moved file is the one its manifest names, bit for bit
        assert file_sha256(fused[1].output.path / entry["file"]) == entry["sha256"]
        assert (fused[1].output.path / entry["file"]).read_bytes() == (apart[1].output.path / entry["file"]).read_bytes()

    # spacing: auto waits on ingest's fingerprint: nothing ahead, the files decoded once all the same
    monkeypatch.setenv("MEDFLOW_WORKSPACE", str(tmp_path / "auto"))
    decodes.clear()
    made.clear()
    auto = _run(cfg, overrides=["preprocess.spacing=auto"])
    assert [r.state for r in auto] == ["ran", "ran"] and made == {"preprocess": 4}
    assert set(decodes.values()) == {1}
