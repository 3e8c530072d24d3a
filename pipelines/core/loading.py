"""Loading pipeline YAMLs: profiles, ``--set`` overrides, packaged configs, and validation into the schema.

The schema and every default live in :mod:`medflow.core.config`; this module
only reads files and applies overrides, in that order: file, profiles, ``--set``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from medflow.core.config import ConfigError, PipelineConfig
from medflow.core.workspace import workspace_root


def parse_override(item: str) -> tuple[list[str], Any]:
    """Parse ``a.b.c=value``; the value is read as YAML (numbers, lists, booleans)."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip() or not all(key.split(".")):
        raise ConfigError(f"--set {item}: expected key.path=value")
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"--set {item}: value is not valid YAML ({' '.join(str(err).split())})") from None
    return key.strip().split("."), parsed


def apply_override(doc: dict, keys: list[str], value: Any, origin: str) -> None:
    node = doc
    for i, k in enumerate(keys[:-1]):
        nxt = node.setdefault(k, {})
        if not isinstance(nxt, dict):
            raise ConfigError(f"{origin}: {'.'.join(keys[: i + 1])} is not a mapping, cannot set {'.'.join(keys)}")
        node = nxt
    node[keys[-1]] = value


def _expand(value: str, config_dir: Path) -> str:
    value = value.replace("${workspace}", str(workspace_root())).replace("${config_dir}", str(config_dir))
    value = os.path.expanduser(os.path.expandvars(value))
    # A relative path on the command line or in YAML means relative to where the user stands.
    return str(Path(value).absolute()) if value else value


def packaged_config(name: str) -> Path:
    """The path of a pipeline YAML shipped in the package (``segmentation``, ``classification``, ...)."""
    from importlib.resources import files

    return Path(str(files("medflow") / "configs" / f"{name.removesuffix('.yaml')}.yaml"))


def packaged_configs() -> list[str]:
    from importlib.resources import files

    return sorted(p.name.removesuffix(".yaml") for p in files("medflow").joinpath("configs").iterdir()
                  if p.name.endswith(".yaml"))


def resolve_pipeline(path: str | os.PathLike) -> Path:
    """A pipeline file: the path itself when it exists, else a packaged config of that name
    (``medflow run segmentation`` works from an installed wheel, outside a checkout)."""
    path = Path(path)
    if path.exists() or path.parent != Path("."):
        return path
    shipped = packaged_config(path.name)
    return shipped if shipped.exists() else path


def load_config(path: str | os.PathLike, overrides: list[str] = (), profile: str | list[str] | None = None
                ) -> PipelineConfig:
    """Load, override and validate a pipeline YAML.

    Args:
        path: the pipeline YAML.
        overrides: ``key.path=value`` strings, applied after the profile.
        profile: name(s) of ``profiles`` entries to apply first, in order (e.g. ``demo``, ``3d``).

    Raises:
        ConfigError: with every problem, one per line, each naming the key path.
    """
    path = resolve_pipeline(path)
    try:
        doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such pipeline file (packaged: {', '.join(packaged_configs())})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML ({' '.join(str(err).split())})") from None
    if not isinstance(doc, dict):
        raise ConfigError(f"{path}: a pipeline file must be a mapping at the top level")
    for name in [profile] if isinstance(profile, str) else (profile or []):
        profiles = doc.get("profiles") or {}
        if name not in profiles:
            raise ConfigError(f"{path}: unknown profile {name!r} (defined: {sorted(profiles) or 'none'})")
        for dotted, value in (profiles[name] or {}).items():
            apply_override(doc, str(dotted).split("."), value, f"{path}: profiles.{name}")
    for item in overrides:
        keys, value = parse_override(item)
        apply_override(doc, keys, value, f"--set {item}")
    for section in ("dataset", "simulate"):
        if isinstance(doc.get(section), dict) and isinstance(doc[section].get("root"), str):
            doc[section]["root"] = _expand(doc[section]["root"], path.parent.absolute())
    try:
        return PipelineConfig.model_validate(doc)
    except ValidationError as err:
        lines = []
        for e in err.errors():
            loc = ".".join(str(p) for p in e["loc"])
            msg = e["msg"].removeprefix("Value error, ")
            if e["type"] == "extra_forbidden":
                msg = "unknown key"
            lines.append(f"{path}: {loc}: {msg}" if loc else f"{path}: {msg}")
        raise ConfigError("\n".join(lines)) from None


def dump_yaml(data: Any) -> str:
    return yaml.safe_dump(data, sort_keys=False, default_flow_style=None)


def flatten(data: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten nested dicts into ``a.b.c`` keys (lists stay values), for MLflow params."""
    if not isinstance(data, dict):
        return {prefix: data}
    out: dict[str, Any] = {}
    for k, v in data.items():
        key = f"{prefix}.{k}" if prefix else str(k)
        out.update(flatten(v, key) if isinstance(v, dict) and v else {key: v})
    return out
