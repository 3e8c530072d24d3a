"""Cache keys: canonical JSON digests and the code version of a stage's module.

A stage's key hashes its config sections, its upstream manifests and the code
that can change its outputs: its module and every medflow module it imports,
found through the import system (``find_spec``), so the package-dir mapping and
an installed wheel key alike.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Any

_PROJECT = "medflow"  # the one import name; medflow.models and medflow.data live in other folders


def canonical_json(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


def digest(obj: Any) -> str:
    return hashlib.sha256(canonical_json(obj).encode()).hexdigest()


@lru_cache(maxsize=None)
def _module_file(name: str) -> Path | None:
    """The source file of project module ``name``, wherever the package-dir mapping puts it."""
    import importlib.util

    if name.split(".")[0] != _PROJECT:
        return None
    parent = name.rpartition(".")[0]
    if "." in parent and (up := _module_file(parent)) is not None and up.name != "__init__.py":
        # `from pkg.module import attribute`: no module. find_spec would import pkg.module to say so,
        # and keying ingest would then import highdicom (1-2 s) through medflow.data.dicom.seg.
        return None
    try:
        spec = importlib.util.find_spec(name)
    except (ImportError, ValueError):  # `from pkg import attribute`: pkg.attribute is no module
        return None
    if spec is None or not spec.origin or not spec.origin.endswith(".py"):
        return None
    return Path(spec.origin)


# `from medflow.x import a, b` (parenthesized over lines too) and `import medflow.x [as y], ...`, at any
# indentation (lazy imports count). A regex instead of ast.walk: the same names for every project module
# (tests/pipelines/core/test_keys.py checks), in a twentieth of the time, which every stage's key pays.
_FROM = re.compile(r"^[ \t]*from[ \t]+(medflow(?:\.\w+)*)[ \t]+import[ \t]+(\([^)]*\)|[^\n]*)", re.M)
_IMPORT = re.compile(r"^[ \t]*import[ \t]+([^\n]*)", re.M)


def _project_imports(path: Path) -> set[str]:
    """Names of the project modules a file imports, anywhere in it (lazy imports included)."""
    text = path.read_text(encoding="utf-8")
    names = set()
    for module, what in _FROM.findall(text):
        names.add(module)
        what = re.sub(r"#[^\n]*", "", what) if what.startswith("(") else what.split("#")[0]
        names.update(f"{module}.{part.split()[0]}" for part in what.strip("()").split(",") if part.strip())
    for what in _IMPORT.findall(text):
        names.update(part.split()[0] for part in what.split("#")[0].split(",") if part.strip())
    return {n for n in names if n.split(".")[0] == _PROJECT}


@lru_cache(maxsize=None)
def code_version(module: str) -> str:
    """Package version plus a hash of ``module`` and every project module it imports, transitively.

    Only code that can change a stage's outputs enters its key: editing the
    augmentation code re-keys training, not ingest.
    """
    from importlib.metadata import PackageNotFoundError, version

    try:
        ver = version("medflow")
    except PackageNotFoundError:
        ver = "0+unknown"
    seen: dict[str, Path] = {}
    todo = [module]
    while todo:
        name = todo.pop()
        path = _module_file(name)
        if name in seen or path is None:
            continue
        seen[name] = path
        todo.extend(_project_imports(path))
    # Parent packages' __init__ files run on import too; their own imports (often a registry of
    # sibling modules) are not followed, or every stage would depend on every other.
    parents = {p for n in seen for p in (n.rsplit(".", i)[0] for i in range(1, n.count(".") + 1))}
    modules = dict(seen) | {p: f for p in parents if (f := _module_file(p)) is not None}
    h = hashlib.sha256()
    for name in sorted(modules):  # module names, not paths: a checkout and a wheel key alike
        h.update(name.encode())
        h.update(modules[name].read_bytes())
    return f"{ver}+{h.hexdigest()[:12]}"
