"""The input pipeline: cached volumes -> seeded samples -> augmentation -> tf.data batches.

One code path serves 2D slices and 3D patches, segmentation and classification:

* :class:`CaseStore` holds the preprocessed cases in memory, or memory-maps
  them from ``.npy`` files on disk when they would not fit (chosen by config
  and dataset size).
* :class:`SampleSource` makes sample ``(case, epoch, index)``: its seed comes
  from (run seed, epoch, case id, index), so :meth:`SampleSource.sample` called
  eagerly (``medflow augment-preview``) returns bit for bit what training saw.
* :func:`make_dataset` maps that function over a shuffled plan with a parallel
  ``tf.data`` map (AUTOTUNE, but bounded by the cores) and prefetches.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medflow.data.atomic import write_atomic
from medflow.data.augment import Chain, sample_seed
from medflow.data.casefile import read_case
from medflow.data.sampling import SamplerConfig, cut_sample, draw_centre, foreground_points

IGNORE = 255  # a voxel without a target (medflow.models.losses.IGNORE)


class CaseStore:
    """Preprocessed cases, cached in memory or memory-mapped from disk.

    Args:
        files: case id -> preprocessed ``.npz`` case file.
        targets: case id -> class index (classification) or None.
        cache: 'memory', 'disk', 'none' (read on every access) or 'auto'
            (memory when the arrays fit in ``memory_gb``, else disk).
        cache_dir: where 'disk' writes its ``.npy`` files (inside the stage folder).
        memory_gb: the memory budget for 'auto'.
    """

    def __init__(self, files: dict[str, Path], targets: dict[str, int | None] | None = None, *,
                 cache: str = "auto", cache_dir: Path | None = None, memory_gb: float = 4.0):
        self.files = {k: Path(v) for k, v in sorted(files.items())}
        self.targets = targets or {}
        self.mode = self._choose(cache, memory_gb)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._arrays: dict[str, dict[str, np.ndarray]] = {}
        self._fg: dict[str, np.ndarray] = {}
        if self.mode in ("memory", "disk"):
            for cid in self.files:
                self._arrays[cid] = self._load(cid)

    def _choose(self, cache: str, memory_gb: float) -> str:
        if cache != "auto":
            return cache
        nbytes = sum(f.stat().st_size for f in self.files.values())  # uncompressed case files
        return "memory" if nbytes <= memory_gb * 2**30 else "disk"

    def _load(self, cid: str) -> dict[str, np.ndarray]:
        if self.mode == "disk":
            if self.cache_dir is None:
                raise ValueError("cache='disk' needs a cache_dir")
            folder = self.cache_dir / cid
            if not (folder / "image.npy").exists():
                arrays, _ = read_case(self.files[cid])
                folder.mkdir(parents=True, exist_ok=True)
                for name, arr in arrays.items():
                    with write_atomic(folder / f"{name}.npy", suffix=".npy") as tmp:
                        np.save(tmp, arr)
            return {p.stem: np.load(p, mmap_mode="r") for p in sorted(folder.glob("*.npy"))
                    if not p.name.startswith(".")}
        arrays, _ = read_case(self.files[cid], names=("image", "label"))
        return arrays

    def arrays(self, cid: str) -> dict[str, np.ndarray]:
        return self._arrays[cid] if cid in self._arrays else self._load(cid)

    def foreground(self, cid: str) -> np.ndarray:
        if cid not in self._fg:
            self._fg[cid] = foreground_points(self.arrays(cid).get("label"))
        return self._fg[cid]


@dataclass
class Sample:
    """One training sample, channels-last as Keras wants it.

    Attributes:
        image: (*P, C) float32.
        label: (*P) uint8 label map (segmentation), or None.
        target: class index (classification), or None.
        seed: the sample's seed; ``applied`` lists the transforms drawn, with their draws.
    """

    image: np.ndarray
    label: np.ndarray | None
    target: int | None
    seed: int
    centre: list[int]
    applied: list


class SampleSource:
    """The replayable sample function shared by training and ``augment-preview``."""

    def __init__(self, store: CaseStore, sampler: SamplerConfig, chain: Chain, *, run_seed: int,
                 samples_per_case: int = 1):
        self.store, self.sampler, self.chain = store, sampler, chain
        self.run_seed, self.samples_per_case = run_seed, samples_per_case

    def plan(self, case_ids: list[str], epoch: int, n: int | None = None) -> list[tuple[str, int]]:
        """The epoch's (case id, index) pairs in a seeded shuffled order.

        Args:
            n: samples in the epoch; default ``samples_per_case`` per case. A larger ``n``
                draws further indices per case (every case once more per round), so an
                epoch can be exactly ``steps x batch`` samples and batches never straddle epochs.
        """
        ids = sorted(case_ids)
        n = len(ids) * self.samples_per_case if n is None else n
        rounds = max(self.samples_per_case, -(-n // len(ids)))
        items = [(cid, k) for cid in ids for k in range(rounds)]
        order = np.random.default_rng([self.run_seed, epoch, 7]).permutation(len(items))
        shuffled = [items[i] for i in order]
        # Indices below samples_per_case first, so the default plan is always inside any larger one.
        return sorted(shuffled, key=lambda item: item[1] >= self.samples_per_case)[:n]

    def sample(self, case_id: str, epoch: int, index: int, *, augment: bool = True) -> Sample:
        """Sample ``index`` of ``case_id`` in ``epoch``; ``augment=False`` gives the same cut un-augmented."""
        seed = sample_seed(self.run_seed, epoch, case_id, index)
        arrays = self.store.arrays(case_id)
        image, label = arrays["image"], arrays.get("label")
        rng = np.random.default_rng([seed, 0])  # stream 0: the sampler; the chain uses 1, 2, ...
        centre = draw_centre(image.shape[1:], self.store.foreground(case_id), self.sampler, rng)
        patch, lab = cut_sample(np.asarray(image), None if label is None else np.asarray(label), centre,
                                self.sampler)
        applied = []
        target = self.store.targets.get(case_id)
        if augment:
            patch, lab, applied = self.chain(patch, lab, seed, target)
        return Sample(np.ascontiguousarray(np.moveaxis(patch, 0, -1), dtype=np.float32),
                      None if lab is None else np.ascontiguousarray(lab, dtype=np.uint8),
                      target, seed, centre, applied)


@dataclass
class MaskTargets:
    """Voxel lesion targets beside the class target, for a classifier that segments (segcls).

    A sample's mask is its case's lesion mask moved with the image. A case without one is
    either normal (class ``normal``: the mask is all zero) or weakly labelled (every voxel is
    :data:`IGNORE`, so only the class head learns from it).

    With ``patches`` (``loader.train_patch_size``) a sample is a patch, not the case, and its class is
    what the patch shows: the case's class where the patch holds lesion voxels, ``normal`` elsewhere.
    A weakly labelled case's patch has no known class, so it trains nothing (weight 0).

    Attributes:
        normal: the class index of normal subjects, or None when no class is lesion-free.
        class_weight: class index -> sample weight (Keras's class_weight, which it refuses for
            models with two outputs); empty for unweighted.
        patches: samples are patches (see above).
    """

    normal: int | None
    class_weight: dict[int, float]
    patches: bool = False

    def mask(self, s: Sample) -> np.ndarray:
        if s.label is not None:
            return np.ascontiguousarray(s.label, dtype=np.uint8)
        fill = 0 if s.target == self.normal else IGNORE
        return np.full(s.image.shape[:-1], fill, dtype=np.uint8)

    def target(self, s: Sample) -> tuple[int, float]:
        """(class index, sample weight) of a sample."""
        if not self.patches or s.target == self.normal:
            return int(s.target), self.weight(s.target)
        if s.label is None or (self.normal is None and not s.label.any()):
            return int(s.target), 0.0  # weakly labelled (or no lesion-free class): the patch's class is unknown
        target = int(s.target) if s.label.any() else self.normal
        return target, self.weight(target)

    def weight(self, target: int) -> float:
        return self.class_weight.get(int(target), 1.0)


def make_dataset(source: SampleSource, case_ids: list[str], epochs: range, *, batch_size: int,
                 augment: bool = True, parallel: int = 0, samples_per_epoch: int | None = None,
                 worker: tuple[int, int] | None = None, masks: MaskTargets | None = None):
    """A ``tf.data.Dataset`` of (image, label-or-target) batches over ``epochs``.

    Args:
        source: the sample function.
        case_ids: the cases to draw from (e.g. a fold's training cases).
        epochs: epochs to cover; resuming at epoch e passes ``range(e, total)``.
        batch_size: samples per batch.
        augment: apply the augmentation chain (False for validation).
        parallel: map parallelism; 0 = AUTOTUNE bounded by the machine's cores.
        samples_per_epoch: samples per epoch (see :meth:`SampleSource.plan`); training passes
            steps x batch so every epoch is whole batches and a resumed run sees the same batches.
        worker: (index, count) for multi-worker training: ``batch_size`` is the global batch, and
            this worker yields rows [index * b, (index + 1) * b) of each, b = batch_size / count,
            so the workers' batches together are exactly the single-worker batch.
        masks: for a classifier that also segments the lesion (segcls): batches are then
            (image, {"lesion": mask, "probabilities": target}, sample weight); see :class:`MaskTargets`.
    """
    import tensorflow as tf

    ids = sorted(case_ids)
    plan = [(ids.index(cid), e, k) for e in epochs for cid, k in source.plan(ids, e, samples_per_epoch)]
    if worker is not None:
        index, count = worker
        if batch_size % count:
            raise ValueError(f"global batch {batch_size} does not split over {count} workers")
        batch_size //= count
        plan = [item for pos, item in enumerate(plan) if (pos % (batch_size * count)) // batch_size == index]
    channels = source.store.arrays(ids[0])["image"].shape[0]
    patch = tuple(source.sampler.patch_size)
    seg = not source.store.targets  # classification stores carry a class index per case

    def produce(case_idx, epoch, index):
        s = source.sample(ids[int(case_idx)], int(epoch), int(index), augment=augment)
        if masks is not None:
            target, weight = masks.target(s)
            return s.image, masks.mask(s), np.int32(target), np.float32(weight)
        second = s.label if seg else np.int32(s.target)
        return s.image, second

    if masks is not None:
        def mapped(case_idx, epoch, index):
            image, mask, target, weight = tf.numpy_function(
                produce, [case_idx, epoch, index], (tf.float32, tf.uint8, tf.int32, tf.float32), stateful=False)
            return (tf.ensure_shape(image, (*patch, channels)),
                    {"lesion": tf.ensure_shape(mask, patch), "probabilities": tf.ensure_shape(target, ())},
                    tf.ensure_shape(weight, ()))
    else:
        out_types = (tf.float32, tf.uint8 if seg else tf.int32)

        def mapped(case_idx, epoch, index):
            image, second = tf.numpy_function(produce, [case_idx, epoch, index], out_types, stateful=False)
            image = tf.ensure_shape(image, (*patch, channels))
            second = tf.ensure_shape(second, patch if seg else ())
            return image, second

    cores = os.cpu_count() or 1
    columns = tuple(np.array([p[i] for p in plan], dtype=np.int64) for i in range(3))
    ds = tf.data.Dataset.from_tensor_slices(columns)
    ds = ds.map(mapped, num_parallel_calls=parallel or tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)
    options = tf.data.Options()
    options.autotune.cpu_budget = cores  # AUTOTUNE may not plan for more cores than there are
    options.threading.private_threadpool_size = cores
    options.deterministic = True
    return ds.with_options(options)
