"""The README's parameter tables are generated from the schema and the registry: they cannot drift."""

from __future__ import annotations

from pathlib import Path

from medflow.core.reference import config_table, model_table, render

README = Path(__file__).resolve().parents[3] / "README.md"


def test_readme_tables_are_what_the_code_says():
    text = README.read_text()
    assert render(text) == text, "README parameter tables are stale: python -m medflow.core.reference README.md"


def test_tables_carry_the_schema_defaults_and_builder_signatures():
    table = config_table()
    assert "| `loader.foreground_ratio` | `0.67` |" in table and "| `train.momentum` | `0.99` |" in table
    models = model_table()
    assert "| `unet3d` | segmentation | `depth` 3, `filters` 16," in models
