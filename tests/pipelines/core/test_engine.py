"""StageDir: a resumed stage starts from clean temporaries."""

from __future__ import annotations

from medflow.core.engine import StageDir


def test_prepare_sweeps_half_written_files_and_folders(tmp_path):
    out = StageDir(tmp_path, "train", "k" * 16)
    out.prepare()
    (out.path / ".tmp-ckpt-0003-x").mkdir()  # a checkpoint folder a killed run left half-written
    (out.path / ".tmp-ckpt-0003-x" / "model.keras").write_text("half")
    (out.cases_dir / ".tmp-a.json-y").write_text("half")
    (out.cases_dir / "a.json").write_text("{}")
    out.prepare()
    assert sorted(p.name for p in out.path.iterdir()) == ["cases"]
    assert [p.name for p in out.cases_dir.iterdir()] == ["a.json"]
