"""``medflow bench peers``: medflow beside MONAI and PyTorch on the same files, in one run.

The peers run in their own venv (``make bench-peers`` makes ``.venv-peers`` from
``medflow/bench/peers/requirements.txt``; nothing of theirs enters medflow's
dependencies) through ``medflow/bench/peers/peers.py``. medflow's figures come from
the same code as ``bench ingest``, ``bench infer`` and ``bench train``. Each pair is
measured back to back, so both sides see the same machine state:

- ingest: the sample tissue set, image + label, to RAS, cropped, at 1.5 mm, normalized; medflow's
  ingest + preprocess stages with 2 workers against MONAI's LoadImaged -> Orientationd ->
  CropForegroundd -> Spacingd -> NormalizeIntensityd chain under a 2-worker DataLoader; the raw
  nibabel decode rate of the same files is the limit;
- inference: the 1 mm MNI152 T1 (197 x 233 x 189), medflow's whole path (preprocess, windows with
  the default config's overlap and mirroring, back to the native grid) on Keras and ONNX Runtime
  against MONAI's bare ``sliding_window_inference`` (roi 192, overlap 0.25, gaussian) with a
  same-size 2D U-Net;
- training: the default 2D U-Net (192^2, batch 16) against the same-size MONAI UNet in PyTorch
  (channels_last), each beside its framework's float32 matmul rate.

Prints one table and writes ``peers.json`` + ``peers.md`` to ``workspace/bench/peers-<time>/``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

SCRIPT = Path(__file__).parent / "peers" / "peers.py"
SPACING = 1.5


class PeersError(RuntimeError):
    """The peers' venv is missing or a peer command failed (one line)."""


def _peer(python: str, *args: str) -> dict:
    try:
        done = subprocess.run([python, str(SCRIPT), *args], capture_output=True, text=True, timeout=3600,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except FileNotFoundError:
        raise PeersError(f"{python}: no such interpreter; make bench-peers makes .venv-peers") from None
    if done.returncode != 0:
        raise PeersError(f"peers.py {args[0]} failed: {' '.join(done.stderr.split()[-40:])}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _medflow_ingest(data_dir: Path, workers: int) -> dict:
    from medflow.bench.data import _raw_decode, fresh_workspace
    from medflow.core.loading import load_config, packaged_config
    from medflow.core.runner import run_pipeline

    cases = sorted((data_dir / "imagesTr").glob("*.nii.gz"))
    files = [str(p) for c in cases for p in (c, data_dir / "labelsTr" / c.name)]
    raw_s, _ = _raw_decode(files, workers)
    cfg = load_config(packaged_config("segmentation"), [f"dataset.root={data_dir}",
                                                        f"preprocess.spacing=[{SPACING},{SPACING},{SPACING}]"])
    with fresh_workspace("medflow-bench-peers-"):
        start = time.perf_counter()
        run_pipeline(cfg, target="preprocess", workers=workers)
        seconds = time.perf_counter() - start
    return {"cases": len(cases), "cases_per_s": len(cases) / seconds, "raw_decode_cases_per_s": len(cases) / raw_s}


def bench_peers(python: str = ".venv-peers/bin/python", size: str = "demo", repeats: int = 3, seed: int = 0) -> dict:
    import nibabel as nib
    from nilearn import datasets

    from medflow.bench.infer import _seg_bundle, _volume_rows
    from medflow.bench.suite import machine
    from medflow.bench.train import bench_train
    from medflow.core.progress import Progress
    from medflow.core.workspace import sample_root, workspace_root
    from medflow.data.sample.build import SIZES, build_tissue

    if not SCRIPT.exists():
        raise PeersError(f"{SCRIPT}: missing; run medflow bench peers from a checkout (make bench-peers)")
    if not (Path(python).is_file() or shutil.which(python)):  # before minutes of sample data, not after
        raise PeersError(f"{python}: no such interpreter; make bench-peers makes .venv-peers")
    info = machine()
    workers = min(2, os.cpu_count() or 1)
    with Progress(SIZES[size]["brain_tissue"], "bench: sample data", unit="subject") as bar:
        data_dir = build_tissue(sample_root(size), size=size, seed=seed, workers=workers, progress=bar)
    rows = []
    ours = _medflow_ingest(data_dir, workers)
    theirs = _peer(python, "ingest", "--root", str(data_dir), "--spacing", str(SPACING), "--workers", str(workers))
    rows.append(("ingest + preprocess, cases/s (higher is better)", ours["cases_per_s"], "MONAI chain",
                 theirs["cases_per_s"], f"raw decode {ours['raw_decode_cases_per_s']:.2f}"))
    with tempfile.TemporaryDirectory(prefix="medflow-bench-peers-") as tmp:
        mni = Path(tmp) / "mni152_1mm.nii.gz"
        nib.save(datasets.load_mni152_template(resolution=1), str(mni))
        bundle = _seg_bundle(Path(tmp) / "seg")
        _, volume = _volume_rows(str(bundle), repeats)
        theirs = _peer(python, "infer", "--image", str(mni), "--repeats", str(repeats))
    for rt in ("keras", "onnx"):
        rows.append((f"whole-volume inference, s/volume, medflow {rt} (lower is better)", volume[f"volume_s_{rt}"],
                     "MONAI sliding window", theirs["seconds"], f"{theirs['shape']} at 1 mm"))
    ours = bench_train("unet2d", repeats=repeats)
    theirs_train = _peer(python, "train", "--batch", str(ours["batch"]))
    theirs_mm = _peer(python, "matmul")
    rows.append(("2D U-Net training, samples/s (higher is better)", ours["samples_per_s"], "PyTorch",
                 theirs_train["samples_per_s"], f"matmul TF {ours.get('matmul_gflops', float('nan')):.0f} / torch "
                                                f"{theirs_mm['gflops']:.0f} GFLOP/s"))
    lines = [f"medflow bench peers ({size} tissue set, MNI152 1 mm; medflow beside its peer, back to back)",
             f"machine: {info['cpu']}, {info['cores']} cores, {info['memory_gib']} GiB; Python {info['python']}, "
             f"TensorFlow {info['tensorflow']}, oneDNN {info['onednn']}",
             "", "| figure | medflow | peer | peer figure | medflow / peer | limit (same run) |",
             "| --- | --- | --- | --- | --- | --- |"]
    for name, mine, peer, value, limit in rows:
        better = mine / value if "higher" in name else value / mine
        lines.append(f"| {name} | {mine:.3g} | {peer} | {value:.3g} | {better:.2f}x | {limit} |")
    print("\n".join(lines))
    out = workspace_root() / "bench" / f"peers-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    result = {"machine": info, "rows": [dict(zip(("figure", "medflow", "peer", "peer_value", "limit"), r))
                                        for r in rows]}
    (out / "peers.json").write_text(json.dumps(result, indent=1))
    (out / "peers.md").write_text("\n".join(lines) + "\n")
    print(f"written: {out}/peers.json, peers.md")
    return result
