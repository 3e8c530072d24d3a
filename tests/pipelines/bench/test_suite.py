"""The bench suite's bookkeeping: medians over repeats, same-run references, JSON and Markdown out."""

from __future__ import annotations

import json

import pytest

from medflow.bench import suite as bench_suite


def test_suite_reports_medians_with_references(tmp_path, monkeypatch, capsys):
    runs = {
        "ingest": [{"pipeline_volumes_per_s": v, "raw_decode_volumes_per_s": 2 * v} for v in (3.0, 1.0, 2.0)],
        "train": [{"samples_per_s": s, "model_gflops": g, "matmul_gflops": 100.0, "cnn_samples_per_s": s / 2,
                   "cnn_model_gflops": g + 10, "cnn_matmul_gflops": m}
                  for s, g, m in ((5.0, 40.0, 90.0), (6.0, 50.0, 95.0), (7.0, 45.0, 99.0))],
        "augment": [{"input_wait_fraction": f} for f in (0.001, 0.003, 0.002)],
    }
    monkeypatch.setattr(bench_suite, "_runs", lambda repeats, size: runs)
    out = bench_suite.bench_suite(repeats=3, out=tmp_path / "b")
    data = json.loads((out / "bench.json").read_text())
    rows = {r["figure"]: r for r in data["rows"]}
    assert rows["pipeline_volumes_per_s"]["median"] == 2.0 and rows["pipeline_volumes_per_s"]["min"] == 1.0
    assert rows["pipeline_volumes_per_s"]["reference_median"] == 4.0
    assert rows["model_gflops"]["median"] == 45.0 and rows["model_gflops"]["reference_median"] == 100.0
    assert rows["cnn_samples_per_s"]["median"] == 3.0 and rows["cnn_model_gflops"]["reference_median"] == 95.0
    assert data["runs"] == runs and data["machine"]["cores"] >= 1 and "tensorflow" in data["machine"]
    table = (out / "bench.md").read_text()
    assert "| ingest | volumes/s | 2 | 1–3 (n=3) | 4 raw nibabel decode, volumes/s |" in table
    assert "| augment | of a U-Net step | 0.20% | 0.10%–0.30% (n=3) | - |" in table
    assert "| train | 3D CNN GFLOP/s | 55 | 50–60 (n=3) | 95 float32 matmul GFLOP/s |" in table
    assert table in capsys.readouterr().out
    assert "infer" not in table  # a benchmark that did not run is left out, not reported as zero


def test_machine_description_names_the_cpu():
    info = bench_suite.machine()
    assert info["cpu"] and info["memory_gib"] > 0 and info["onednn"] in ("0", "1", "unset")
    with pytest.raises(KeyError):
        bench_suite.summarize({"train": [{"samples_per_s": 1.0, "model_gflops": 1.0}]})  # reference missing
