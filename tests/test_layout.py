"""The package layout the design fixes: one import name, every package installed, no bare imports,
no family string comparisons outside medflow.tasks, and nothing written into the checkout."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.helpers import make_msd, write_pipeline

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"pipelines": "medflow", "models": "medflow.models", "data": "medflow.data"}


def _sources():
    for folder in FOLDERS:
        yield from sorted((ROOT / folder).rglob("*.py"))


def test_every_package_is_installed_under_medflow():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert meta["package-dir"] == {"medflow": "pipelines", "medflow.models": "models", "medflow.data": "data"}
    found = set()
    for folder, name in FOLDERS.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    data_only = set(meta.get("package-data", {})) - found  # folders of data (configs/*.yaml), no code
    assert all(not any((ROOT / "pipelines" / name.split(".", 1)[1]).glob("*.py")) for name in data_only)
    assert found | data_only == set(meta["packages"]), sorted((found | data_only) ^ set(meta["packages"]))
    assert not (ROOT / "mlflow" / "__init__.py").exists()  # it would shadow the mlflow library


def test_no_bare_imports_of_the_folders():
    bare = re.compile(r"^\s*(from|import)\s+(pipelines|models|data)(\.|\s|$)", re.M)
    offenders = [str(p.relative_to(ROOT)) for p in [*_sources(), *(ROOT / "tests").rglob("*.py")]
                 if bare.search(p.read_text())]
    assert not offenders


def test_family_names_are_compared_only_in_tasks():
    families = "segmentation|classification|reconstruction"
    compare = re.compile(rf"""(==|!=)\s*["']({families})["']|["']({families})["']\s*(==|!=)""")
    offenders = [f"{p.relative_to(ROOT)}:{i}" for p in _sources() if "tasks" not in p.relative_to(ROOT).parts
                 for i, line in enumerate(p.read_text().splitlines(), 1) if compare.search(line)]
    assert not offenders


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs a git checkout")
def test_a_pipeline_run_from_the_repo_root_writes_nothing_into_the_checkout(tmp_path):
    def status() -> set[str]:
        out = subprocess.run(["git", "status", "--porcelain", "--ignored"], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.splitlines()
        return {line for line in out if "__pycache__" not in line and ".pytest_cache" not in line}

    before = status()
    root = make_msd(tmp_path / "msd", n=4)
    extra = """
loader: {mode: 2d, patch_size: [16, 16], samples_per_case: 2, batch_size: 4}
augment: {seed: 1, transforms: []}
model: {name: unet2d, params: {depth: 1, filters: 2}}
train: {epochs: 1, monitor: val_dice, val_samples_per_case: 1, preview_cases: 1}
evaluate: {hd95: false}
split: {test_fraction: 0.25, folds: 1}
"""
    pipeline = write_pipeline(tmp_path / "p.yaml", root, extra=extra,
                              stages="[ingest, preprocess, split, train, evaluate, export]")
    env = dict(os.environ, MEDFLOW_WORKSPACE=str(tmp_path / "ws"), MLFLOW_TRACKING_URI=f"sqlite:///{tmp_path / 's.db'}")
    done = subprocess.run([sys.executable, "-m", "medflow.cli.main", "run", str(pipeline)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert status() == before
    assert (tmp_path / "artifacts").is_dir()  # the store's artifacts lie beside its database
