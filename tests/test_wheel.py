"""An installed wheel outside the checkout: one top-level package, packaged configs, the entry point."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_installs_medflow_only_and_runs_outside_a_checkout(tmp_path):
    src = tmp_path / "src"  # setuptools builds in the source tree (build/): build a copy, not the checkout
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("pipelines", "models", "data"):
        shutil.copytree(ROOT / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True)
    (wheel,) = (tmp_path / "dist").glob("medflow-*.whl")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    # The dependencies come from this environment's site-packages as a plain path: its .pth files (the
    # editable install's finder among them) are not processed, so `medflow` can only be the wheel's.
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", str(wheel)], check=True,
                   capture_output=True)
    names = {p.name for p in site.iterdir()}
    assert "medflow" in names and not names & {"pipelines", "models", "data"}
    assert (site / "medflow" / "configs" / "segmentation.yaml").exists()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MEDFLOW_WORKSPACE")}
    env.update(MEDFLOW_WORKSPACE=str(tmp_path / "ws"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 's.db'}",
               HOME=str(tmp_path / "home"))
    where = subprocess.run([str(python), "-c", "import medflow; print(medflow.__file__)"], cwd=tmp_path, env=env,
                           check=True, capture_output=True, text=True).stdout
    assert where.startswith(str(site))
    medflow = venv / "bin" / "medflow"

    def run(*args):
        done = subprocess.run([str(medflow), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=900)
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    run("sample-data", "--size", "demo", "--only", "brain_tissue")
    out = run("run", "segmentation", "--profile", "demo", "--stage", "split")
    assert "ingest" in out and "split" in out and str(tmp_path / "ws") in out
    out = run("bench", "ingest", "--size", "demo")
    assert "ingest + preprocess runs at" in out
