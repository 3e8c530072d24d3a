"""Pipeline stages: one module per stage, each a function of (config, upstream outputs).

The catalog that names them is :mod:`medflow.core.catalog`.
"""
