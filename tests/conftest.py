"""Shared fixtures: an isolated workspace and MLflow store per test, and a tiny MSD dataset."""

from __future__ import annotations

import os

import pytest

from tests.helpers import make_msd

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")  # the kernels the CLI runs with


@pytest.fixture(autouse=True)
def isolated(tmp_path, monkeypatch):
    """Every test gets its own workspace and MLflow store; nothing touches the project folders."""
    monkeypatch.setenv("MEDFLOW_WORKSPACE", str(tmp_path / "workspace"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path


@pytest.fixture
def msd_root(tmp_path):
    return make_msd(tmp_path / "msd", n=4)
