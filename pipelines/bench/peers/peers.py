"""The peers' side of ``medflow bench peers``: MONAI and PyTorch on the same files, in their own venv.

Run by the peers' interpreter (``.venv-peers``, made by ``make bench-peers``), never imported by
medflow. Each command prints one JSON object on its last line:

    python peers.py ingest --root DATASET --spacing 1.5 --workers 2
    python peers.py infer --image MNI.nii.gz --repeats 3
    python peers.py train --steps 5 --batch 16 --size 192
    python peers.py matmul

The network is medflow's default 2D U-Net rebuilt layer for layer in PyTorch (depth 4, 16 filters,
doubling, batch norm, 4 classes; the same parameter count), so the comparison is the framework and
the pipeline around it, not the architecture.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time


def _unet(classes: int = 4, depth: int = 4, filters: int = 16):
    """medflow's default ``unet2d`` layer for layer in PyTorch: per level two 3x3 convolutions (no bias) with
    batch norm and ReLU, 2x2 max pooling, a 2x2 stride-2 transposed convolution up, concatenated skips, a
    1x1 convolution to the classes: 1 942 340 trainable parameters, as in the Keras model (which counts
    1 945 284 with the batch-norm statistics)."""
    import torch
    from torch import nn

    def block(cin, cout):
        return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True),
                             nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True))

    class UNet(nn.Module):
        def __init__(self):
            super().__init__()
            widths = [filters * 2 ** i for i in range(depth + 1)]
            self.down = nn.ModuleList(block(1 if i == 0 else widths[i - 1], widths[i]) for i in range(depth))
            self.bottleneck = block(widths[depth - 1], widths[depth])
            self.up = nn.ModuleList(nn.ConvTranspose2d(widths[i + 1], widths[i], 2, stride=2)
                                    for i in reversed(range(depth)))
            self.dec = nn.ModuleList(block(2 * widths[i], widths[i]) for i in reversed(range(depth)))
            self.head = nn.Conv2d(widths[0], classes, 1)

        def forward(self, x):
            skips = []
            for blk in self.down:
                x = blk(x)
                skips.append(x)
                x = torch.max_pool2d(x, 2)
            x = self.bottleneck(x)
            for up, dec, skip in zip(self.up, self.dec, reversed(skips)):
                x = dec(torch.cat([up(x), skip], 1))
            return self.head(x)  # logits; softmax where probabilities are needed

    return UNet()


def ingest(root: str, spacing: float, workers: int) -> dict:
    """MONAI's load -> RAS -> crop -> resample -> normalize chain over an MSD set, with a DataLoader."""
    from monai.data import DataLoader, Dataset
    from monai.transforms import (Compose, CropForegroundd, EnsureChannelFirstd, LoadImaged, NormalizeIntensityd,
                                  Orientationd, Spacingd)

    meta = json.load(open(os.path.join(root, "dataset.json")))
    files = [{"image": os.path.join(root, e["image"]), "label": os.path.join(root, e["label"])}
             for e in meta["training"]]
    chain = Compose([
        LoadImaged(keys=["image", "label"]), EnsureChannelFirstd(keys=["image", "label"]),
        Orientationd(keys=["image", "label"], axcodes="RAS"),
        CropForegroundd(keys=["image", "label"], source_key="image"),
        Spacingd(keys=["image", "label"], pixdim=(spacing,) * 3, mode=("bilinear", "nearest")),
        NormalizeIntensityd(keys="image", nonzero=True),
    ])
    loader = DataLoader(Dataset(files, chain), batch_size=1, num_workers=workers, collate_fn=lambda b: b)
    start = time.perf_counter()
    n = sum(1 for _ in loader)
    seconds = time.perf_counter() - start
    return {"cases": n, "seconds": seconds, "cases_per_s": n / seconds, "workers": workers}


def infer(image: str, repeats: int) -> dict:
    """MONAI's bare sliding_window_inference over the volume's axial slices (roi 192, overlap 0.25, gaussian)."""
    import nibabel as nib
    import torch
    from monai.inferers import sliding_window_inference

    net = _unet().eval()
    vol = torch.from_numpy(nib.load(image).get_fdata(dtype="float32"))[None, None]  # (1, 1, X, Y, Z)

    class Slices(torch.nn.Module):  # a 2D net over (N, 1, 192, 192, 1) windows
        def forward(self, x):
            return torch.softmax(net(x[..., 0]), 1)[..., None]

    model = Slices()
    times = []
    with torch.inference_mode():
        for i in range(repeats + 1):
            start = time.perf_counter()
            out = sliding_window_inference(vol, (192, 192, 1), 16, model, overlap=0.25, mode="gaussian")
            labels = out.argmax(1)
            if i:  # the first run warms up
                times.append(time.perf_counter() - start)
    return {"shape": list(vol.shape[2:]), "seconds": statistics.median(times), "labels": list(labels.shape),
            "threads": torch.get_num_threads()}


def train(steps: int, batch: int, size: int) -> dict:
    """PyTorch training samples/s of the same U-Net (channels_last, Adam, cross-entropy on random batches)."""
    import torch

    net = _unet().to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    x = torch.randn(batch, 1, size, size).to(memory_format=torch.channels_last)
    y = torch.randint(0, 4, (batch, size, size))
    loss_fn = torch.nn.CrossEntropyLoss()
    times = []
    for i in range(steps + 2):
        start = time.perf_counter()
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        if i >= 2:  # two warm-up steps
            times.append(time.perf_counter() - start)
    step = statistics.median(times)
    return {"step_s": step, "samples_per_s": batch / step, "batch": batch, "threads": torch.get_num_threads()}


def matmul(n: int = 2048, repeats: int = 5) -> dict:
    """PyTorch's float32 n x n matmul GFLOP/s, the same limit medflow measures with TensorFlow."""
    import torch

    a, b = torch.rand(n, n), torch.rand(n, n)
    a @ b
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        times.append(time.perf_counter() - start)
    return {"gflops": 2 * n ** 3 / statistics.median(times) / 1e9}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("ingest")
    s.add_argument("--root", required=True)
    s.add_argument("--spacing", type=float, default=1.5)
    s.add_argument("--workers", type=int, default=2)
    s = sub.add_parser("infer")
    s.add_argument("--image", required=True)
    s.add_argument("--repeats", type=int, default=3)
    s = sub.add_parser("train")
    s.add_argument("--steps", type=int, default=5)
    s.add_argument("--batch", type=int, default=16)
    s.add_argument("--size", type=int, default=192)
    sub.add_parser("matmul")
    a = p.parse_args()
    out = {"ingest": lambda: ingest(a.root, a.spacing, a.workers), "infer": lambda: infer(a.image, a.repeats),
           "train": lambda: train(a.steps, a.batch, a.size), "matmul": matmul}[a.cmd]()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
