"""The executor setting: local by default and never part of a key; ray without Ray is one line naming the extra."""

from __future__ import annotations

import sys

import pytest

from medflow.cli.main import main
from medflow.core.catalog import STAGES
from medflow.core.loading import load_config
from tests.helpers import write_pipeline


def test_without_ray_the_ray_executor_names_the_extra(tmp_path, msd_root, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed: `import ray` raises ImportError
    cfg = write_pipeline(tmp_path / "p.yaml", msd_root)
    assert main(["run", str(cfg), "--stage", "ingest", "--executor", "ray"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["error: executor ray needs Ray: pip install 'medflow[ray]' (make install-ray)"]
    assert not (tmp_path / "workspace" / "stages").exists()  # refused before any stage started
    assert main(["run", str(cfg), "--stage", "ingest", "--set", "executor=ray"]) == 1  # the config's too


def test_the_executor_never_keys_a_stage(tmp_path, msd_root):
    path = write_pipeline(tmp_path / "p.yaml", msd_root)
    local, ray = load_config(path), load_config(path, ["executor=ray"])
    assert local.executor == "local"
    assert STAGES["ingest"].key(local, {}) == STAGES["ingest"].key(ray, {})


def test_an_unknown_executor_is_a_config_error(tmp_path, msd_root, capsys):
    cfg = write_pipeline(tmp_path / "p.yaml", msd_root)
    with pytest.raises(SystemExit):
        main(["run", str(cfg), "--executor", "dask"])
    assert main(["run", str(cfg), "--set", "executor=dask"]) == 2
    assert "executor" in capsys.readouterr().err
