"""The README's parameter tables, generated from the schema and the model registry so they cannot drift.

``python -m medflow.core.reference README.md`` rewrites the blocks between
``<!-- BEGIN name -->`` and ``<!-- END name -->``; a test fails when the README
differs from what this module generates.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from pathlib import Path

BLOCKS = ("config-reference", "model-reference")


def _value(v) -> str:
    if hasattr(v, "model_dump"):
        return "(section)"
    text = json.dumps(v, default=str)
    return f"`{text}`"


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def config_table() -> str:
    """Every config key with its default and description, section by section."""
    from pydantic_core import PydanticUndefined

    from medflow.core.config import PipelineConfig

    rows = ["| key | default | what it is |", "| --- | --- | --- |"]
    for name, field in PipelineConfig.model_fields.items():
        kind = field.annotation
        section = next((a for a in getattr(kind, "__args__", (kind,)) if hasattr(a, "model_fields")), None)
        if section is None:
            default = "required" if field.default is PydanticUndefined else _value(field.default)
            rows.append(f"| `{name}` | {default} | {_cell(field.description or '')} |")
            continue
        doc = (section.__doc__ or "").strip().splitlines()[0] if section.__doc__ else ""
        rows.append(f"| **`{name}`** | | {_cell(doc if 'A base class' not in doc else '')} |")
        for key, sub in section.model_fields.items():
            if sub.default_factory is not None:
                default = _value(sub.default_factory())
            elif sub.default is PydanticUndefined:
                default = "required"
            else:
                default = _value(sub.default)
            rows.append(f"| `{name}.{key}` | {default} | {_cell(sub.description or '')} |")
    return "\n".join(rows)


def model_table() -> str:
    """Every registered model: its task and its ``model.params`` with their defaults."""
    from medflow.models.registry import MODELS, _load_all

    _load_all()
    rows = ["| name | task | `model.params` (defaults) |", "| --- | --- | --- |"]
    for name in sorted(MODELS, key=lambda n: (MODELS[n].task, n)):
        fn = MODELS[name]
        params = [f"`{p.name}` {json.dumps(p.default)}" for p in inspect.signature(fn).parameters.values()
                  if p.name not in ("input_shape", "n_classes")]
        rows.append(f"| `{name}` | {fn.task} | {', '.join(params)} |")
    return "\n".join(rows)


def generated() -> dict[str, str]:
    return {"config-reference": config_table(), "model-reference": model_table()}


def render(text: str) -> str:
    """``text`` with every generated block replaced by its current content."""
    for name, body in generated().items():
        pattern = re.compile(rf"(<!-- BEGIN {name} -->\n).*?(<!-- END {name} -->)", re.S)
        if not pattern.search(text):
            raise ValueError(f"no <!-- BEGIN {name} --> ... <!-- END {name} --> block")
        text = pattern.sub(lambda m: m.group(1) + body + "\n" + m.group(2), text)
    return text


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    path = Path(args[0] if args else "README.md")
    path.write_text(render(path.read_text()))
    print(f"{path}: parameter tables regenerated")
    return 0


if __name__ == "__main__":
    sys.exit(main())
