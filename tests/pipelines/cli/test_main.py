"""The medflow CLI: help with examples, exit codes, run + status against a temporary store."""

from __future__ import annotations

import pytest

from medflow.cli.main import EXIT_CONFIG, main
from tests.helpers import write_pipeline

COMMANDS = ("sample-data", "run", "status", "augment-preview", "ui", "bench")


def test_help_lists_every_command_with_examples(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    top = capsys.readouterr().out
    for cmd in COMMANDS:
        assert cmd in top
        with pytest.raises(SystemExit):
            main([cmd, "--help"])
        text = capsys.readouterr().out
        assert "examples:" in text and f"medflow {cmd}" in text


def test_config_error_exit_code(tmp_path, capsys, msd_root):
    cfg = write_pipeline(tmp_path / "p.yaml", msd_root)
    assert main(["run", str(cfg), "--set", "split.folds=-1"]) == EXIT_CONFIG
    err = capsys.readouterr().err
    assert "split.folds: Input should be greater than or equal to 1" in err


def test_run_and_status(tmp_path, capsys, msd_root):
    cfg = write_pipeline(tmp_path / "p.yaml", msd_root)
    assert main(["run", str(cfg), "--stage", "preprocess"]) == 0
    out = capsys.readouterr().out
    assert "ingest" in out and "preprocess" in out and "medflow ui" in out and "parent run" in out
    table = out.split("summary: the network against its baseline on held-out cases\n")[1].splitlines()
    assert table[0].split()[0] == "pipeline" and table[1].split() == ["test", "unet2d", "not", "evaluated"]
    assert main(["status", str(cfg)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line for line in out.splitlines() if line.strip().startswith(("ingest", "preprocess",
                                                                                         "split"))}
    assert "done" in rows["ingest"] and "done" in rows["preprocess"] and "not run" in rows["split"]
    assert len(rows["ingest"].split()[-1]) == 32  # the stage's MLflow run id


def test_strict_run_fails_with_one_line(tmp_path, capsys, msd_root):
    (msd_root / "labelsTr" / "case_01.nii.gz").write_bytes(b"junk")
    cfg = write_pipeline(tmp_path / "p.yaml", msd_root)
    assert main(["run", str(cfg), "--strict"]) == 1
    err = capsys.readouterr().err
    assert "error: [ingest] --strict: " in err and "case_01.nii.gz: not gzip data" in err


def test_augment_preview_replays_the_training_sample(tmp_path, capsys, msd_root):
    import hashlib

    import numpy as np

    from medflow.core.loading import load_config
    from medflow.core.runner import finished_output
    from medflow.data.loader import make_dataset
    from medflow.training.inputs import build_source

    extra = ("loader: {mode: 2d, patch_size: [16, 16], samples_per_case: 2, batch_size: 1}\n"
             "augment: {seed: 4, transforms: [{name: affine2d, p: 1.0, rotate: [-30, 30]}, {name: gamma}]}\n")
    cfg_path = write_pipeline(tmp_path / "p.yaml", msd_root, extra=extra)
    assert main(["run", str(cfg_path), "--stage", "preprocess"]) == 0
    capsys.readouterr()
    out_png = tmp_path / "prev.png"
    assert main(["augment-preview", str(cfg_path), "--case", "case_02", "--epoch", "3", "--index", "1",
                 "--out", str(out_png)]) == 0
    printed = capsys.readouterr().out
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "affine2d" in printed
    # The same sample as it comes out of the tf.data pipeline training uses:
    cfg = load_config(cfg_path)
    source = build_source(cfg, finished_output(cfg, "preprocess"))
    ids = sorted(source.store.files)
    plan = source.plan(ids, 3)
    pos = plan.index(("case_02", 1))
    x, y = next(iter(make_dataset(source, ids, range(3, 4), batch_size=1).skip(pos)))
    digest = hashlib.sha256(np.asarray(x[0]).tobytes() + np.asarray(y[0]).tobytes()).hexdigest()
    assert f"sample sha256 {digest}" in printed
    assert main(["augment-preview", str(cfg_path), "--case", "nope"]) == EXIT_CONFIG
