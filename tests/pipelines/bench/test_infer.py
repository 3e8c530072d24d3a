"""Slow: ``medflow bench infer`` times every runtime on a 1 mm brain volume and on sinograms."""

from __future__ import annotations

import re

import pytest

from medflow.cli.main import main

pytestmark = pytest.mark.slow


def test_bench_infer_prints_a_row_per_runtime(capsys):
    assert main(["bench", "infer", "--repeats", "1"]) == 0
    out = capsys.readouterr().out
    volume, sinogram = out.split("reconstruction, ")
    assert "1 mm brain volume (197, 233, 189) -> labels on its grid (197, 233, 189)" in volume
    for runtime in ("keras", "saved_model", "onnx"):
        seconds, net, share, calls = re.search(rf"\n  {runtime} +([\d.]+) +([\d.]+) +(\d+)% +(\d+)", volume).groups()
        assert 0 < float(net) <= float(seconds) and int(calls) > 0
        ms, rate = re.search(rf"\n  {runtime} +([\d.]+) +([\d.]+)", sinogram).groups()
        assert float(ms) > 0 and float(rate) > 0
