"""Where medflow keeps things: the project root, the workspace and the tracking store.

Generated data never goes into the source tree. The workspace defaults to
``<project>/workspace`` and ``MEDFLOW_WORKSPACE`` moves it anywhere; the
default MLflow store is SQLite under ``<project>/mlflow/``. Nothing here looks
at the current working directory.
"""

from __future__ import annotations

import os
from pathlib import Path


def project_root() -> Path:
    """The checkout holding pyproject.toml (editable install), else ``~/.medflow``."""
    here = Path(__file__).resolve().parents[2]  # <checkout>/pipelines/core/workspace.py
    if (here / "pyproject.toml").exists():
        return here
    return Path.home() / ".medflow"


def workspace_root() -> Path:
    """Root of generated data, stage outputs and exports (``MEDFLOW_WORKSPACE`` overrides)."""
    env = os.environ.get("MEDFLOW_WORKSPACE")
    return Path(env).expanduser().absolute() if env else project_root() / "workspace"


def stages_root() -> Path:
    return workspace_root() / "stages"


def sample_root(size: str) -> Path:
    return workspace_root() / "sample" / size


def mlflow_dir() -> Path:
    """Folder of the default tracking store (never a Python package: no __init__.py)."""
    return project_root() / "mlflow"
