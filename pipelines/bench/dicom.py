"""``medflow bench dicom``: reading a DICOM series to a validated RAS volume beside pydicom's raw decode.

The series is written for the run (a CT of ``slices`` slices of 512 x 512, 12 of
16 bits stored unsigned with a -1024 HU intercept, files in shuffled order). Two readers take turns on
the same files, ``repeats`` times each, and the medians are compared:

* raw decode: ``pydicom.dcmread`` and ``pixel_array`` of every file, nothing else
  (no grouping, sorting, checks, rescale or stacking);
* medflow: :func:`medflow.data.images.read_image` on the folder: the header scan,
  grouping by series, every geometry and consistency check, the rescale to HU
  and the (X, Y, Z) volume with its affine.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def _raw_decode(files: list[str]) -> int:
    import pydicom

    return sum(int(pydicom.dcmread(f).pixel_array.nbytes) for f in files)


def _series(folder: Path, slices: int, size: int, seed: int) -> list[str]:
    from medflow.data.dicom.write import write_series

    rng = np.random.default_rng(seed)
    data = rng.integers(-1024, 3071, (size, size, slices)).astype(np.float32)
    affine = np.diag([0.7, 0.7, 1.25, 1.0])
    names = [f"IM{i:05d}" for i in rng.permutation(slices)]
    return write_series(folder, data, affine, modality="CT", intercept=-1024.0, file_names=names, bits_stored=12,
                        signed=False)  # as CT scanners store it: 12 of 16 bits, unsigned, shifted to HU


def bench_dicom(slices: int = 200, size: int = 512, repeats: int = 5, seed: int = 0) -> dict:
    from medflow.bench.suite import machine
    from medflow.data.images import read_image

    info = machine()
    with tempfile.TemporaryDirectory(prefix="medflow-bench-dicom-") as tmp:
        files = _series(Path(tmp) / "ct", slices, size, seed)
        disk_mb = sum(os.path.getsize(f) for f in files) / 1e6
        _raw_decode(files), read_image(Path(tmp) / "ct")  # warm the page cache and imports alike
        raw, ours = [], []
        for _ in range(repeats):  # taking turns, so drift in the machine hits both
            start = time.perf_counter()
            nbytes = _raw_decode(files)
            raw.append(time.perf_counter() - start)
            start = time.perf_counter()
            vol = read_image(Path(tmp) / "ct")
            ours.append(time.perf_counter() - start)
    raw_s, ours_s = statistics.median(raw), statistics.median(ours)
    print(f"\nmedflow bench dicom: a {slices}-slice {size}x{size} CT series (12-bit unsigned, uncompressed, shuffled "
          f"file order), {disk_mb:.1f} MB on disk, {nbytes / 1e6:.1f} MB of pixels; median of {repeats}")
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; Python {info['python']}")
    print(f"  {'':<46} {'seconds':>8} {'slices/s':>9} {'MB/s':>7}")
    for name, sec in (("raw decode (pydicom dcmread + pixel_array)", raw_s),
                      ("medflow read_image (validated RAS volume, HU)", ours_s)):
        print(f"  {name:<46} {sec:>8.3f} {slices / sec:>9.0f} {disk_mb / sec:>7.0f}")
    print(f"  medflow reads at {raw_s / ours_s:.0%} of pydicom's raw decode rate "
          f"(target >= 50%); volume {vol.data.shape} {vol.data.dtype}, spacing "
          f"{', '.join(f'{s:g}' for s in vol.spacing)} mm")
    return {"slices": slices, "raw_decode_s": raw_s, "medflow_s": ours_s, "fraction_of_raw": raw_s / ours_s}
