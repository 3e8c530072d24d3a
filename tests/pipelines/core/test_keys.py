"""Code keys: the import scan that decides which modules key a stage, without importing them."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from medflow.core.keys import _module_file, _project_imports

ROOT = Path(__file__).resolve().parents[3]


def _ast_imports(path: Path) -> set[str]:
    """The reference: every project name an import statement of the file mentions (the scan it replaces)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return {n for n in names if n.split(".")[0] == "medflow"}


@pytest.mark.parametrize("folder", ["pipelines", "models", "data"])
def test_import_scan_equals_the_syntax_tree_on_every_project_module(folder):
    files = sorted((ROOT / folder).rglob("*.py"))
    assert len(files) > 10
    differ = {str(f.relative_to(ROOT)): (_ast_imports(f) ^ _project_imports(f)) for f in files
              if _ast_imports(f) != _project_imports(f)}
    assert not differ


def test_import_scan_reads_every_form(tmp_path):
    src = tmp_path / "m.py"
    src.write_text(
        "import os, medflow.core.keys as k  # medflow.not_this\n"
        "from medflow.data import (\n    nifti,  # a comment\n    geometry as g,\n)\n"
        "def f():\n    from medflow.models.registry import get_model, register_model\n"
        "    import medflow.data.images\n"
        "x = 'from elsewhere import medflow'\n", encoding="utf-8")
    assert _project_imports(src) == _ast_imports(src) == {
        "medflow.core.keys", "medflow.data", "medflow.data.nifti", "medflow.data.geometry",
        "medflow.models.registry", "medflow.models.registry.get_model", "medflow.models.registry.register_model",
        "medflow.data.images"}


def test_an_imported_attribute_is_resolved_without_importing_its_module():
    # `from medflow.data.dicom.seg import read_seg`: find_spec would import seg, and highdicom with it
    code = ("import sys\nfrom medflow.core.keys import _module_file\n"
            "assert _module_file('medflow.data.dicom.seg.write_seg') is None\n"
            "assert _module_file('medflow.data.dicom.seg').name == 'seg.py'\n"
            "print(sorted(m for m in ('highdicom', 'medflow.data.dicom.seg', 'tensorflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_module_file_finds_packages_and_modules_across_the_package_dir_mapping():
    assert _module_file("medflow.models").name == "__init__.py"
    assert _module_file("medflow.data.nifti").parent.name == "data"
    assert _module_file("medflow.stages.ingest").parent.name == "stages"
    assert _module_file("numpy") is None
