"""Sampling, caching and the tf.data pipeline: what training sees is what a replay shows, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from medflow.data.augment import Chain
from medflow.data.casefile import write_case
from medflow.data.loader import CaseStore, SampleSource, make_dataset
from medflow.data.sampling import cut_sample, draw_centre, foreground_points
from tests.helpers import sampler

CHAIN_2D = [{"name": "flip", "p": 0.5}, {"name": "affine2d", "p": 0.7, "rotate": (-20, 20)},
            {"name": "gamma", "p": 0.5}, {"name": "rician_noise", "p": 0.5}]
CHAIN_3D = [{"name": "flip", "p": 0.5}, {"name": "affine", "p": 0.7}, {"name": "bias_field", "p": 0.5},
            {"name": "rician_noise", "p": 0.5}]


@pytest.fixture
def case_files(tmp_path):
    files = {}
    for i in range(3):
        rng = np.random.default_rng(i)
        label = np.zeros((40, 36, 30), np.uint8)
        label[10 + i:22 + i, 8:20, 5:15] = 1
        label[25:30, 8:20, 5:15] = 2
        image = rng.normal(0, 0.1, (1, *label.shape)).astype(np.float32) + 3.0 * (label > 0)
        files[f"c{i}"] = tmp_path / f"c{i}.npz"
        write_case(files[f"c{i}"], {"image": image, "label": label}, {"case_id": f"c{i}"})
    return files


def test_store_modes_agree(case_files, tmp_path):
    ref = CaseStore(case_files, cache="memory")
    disk = CaseStore(case_files, cache="disk", cache_dir=tmp_path / "cache")
    lazy = CaseStore(case_files, cache="none")
    assert (ref.mode, disk.mode) == ("memory", "disk")
    assert isinstance(disk.arrays("c1")["image"], np.memmap)
    for cid in case_files:
        for store in (disk, lazy):
            np.testing.assert_array_equal(store.arrays(cid)["image"], ref.arrays(cid)["image"])
            np.testing.assert_array_equal(store.arrays(cid)["label"], ref.arrays(cid)["label"])
    assert CaseStore(case_files, cache="auto", memory_gb=1e-6, cache_dir=tmp_path / "c2").mode == "disk"
    assert CaseStore(case_files, cache="auto").mode == "memory"


def test_sampler_foreground_padding_and_centre():
    label = np.zeros((20, 20, 20), np.uint8)
    label[2:5, 2:5, 2:5] = 1
    image = np.where(label > 0, 5.0, -1.0)[None].astype(np.float32)
    fg = foreground_points(label)
    cfg = sampler("3d", (8, 8, 8), foreground_ratio=1.0)
    for seed in range(20):
        centre = draw_centre(label.shape, fg, cfg, np.random.default_rng(seed))
        patch, lab = cut_sample(image, label, centre, cfg)
        assert patch.shape == (1, 8, 8, 8) and (lab == 1).any()
    big = sampler("3d", (24, 22, 20), crop="center")
    patch, lab = cut_sample(image, label, draw_centre(label.shape, fg, big, None), big)
    assert patch.shape == (1, 24, 22, 20) and patch.min() == -1.0 and lab.sum() == label.sum()
    flat = sampler("2d", (16, 16), slice_axis=2, foreground_ratio=1.0)
    patch, lab = cut_sample(image, label, [3, 3, 3], flat)
    assert patch.shape == (1, 16, 16) and lab.shape == (16, 16) and (lab == 1).sum() == 9


def test_plan_is_seeded_and_complete(case_files):
    src = SampleSource(CaseStore(case_files), sampler("2d", (24, 24)), Chain([]), run_seed=1,
                       samples_per_case=3)
    p0 = src.plan(list(case_files), 0)
    assert sorted(p0) == [(c, k) for c in sorted(case_files) for k in range(3)]
    assert p0 == src.plan(list(reversed(list(case_files))), 0) and p0 != src.plan(list(case_files), 1)
    longer = src.plan(list(case_files), 0, n=16)  # e.g. steps x batch: extra rounds of every case
    assert len(longer) == 16 and set(p0) <= set(longer) and len(set(longer)) == 16


@pytest.mark.parametrize("mode,patch,chain", [("2d", (24, 24), CHAIN_2D), ("3d", (16, 16, 16), CHAIN_3D)])
def test_dataset_matches_eager_replay(case_files, mode, patch, chain):
    cutter = sampler(mode, patch, foreground_ratio=0.7)
    src = SampleSource(CaseStore(case_files), cutter, Chain.from_config(chain, len(patch)), run_seed=5,
                       samples_per_case=2)
    ids = sorted(case_files)
    ds = make_dataset(src, ids, range(2), batch_size=4)
    images, labels = zip(*[(x.numpy(), y.numpy()) for x, y in ds])
    images, labels = np.concatenate(images), np.concatenate(labels)
    assert images.shape == (12, *patch, 1) and images.dtype == np.float32 and labels.dtype == np.uint8
    expected = [src.sample(cid, e, k) for e in range(2) for cid, k in src.plan(ids, e)]
    for got_x, got_y, want in zip(images, labels, expected):
        np.testing.assert_array_equal(got_x, want.image)  # bit-identical to the eager replay
        np.testing.assert_array_equal(got_y, want.label)
    again = np.concatenate([x.numpy() for x, _ in make_dataset(src, ids, range(2), batch_size=4)])
    np.testing.assert_array_equal(again, images)
    assert any(s.applied for s in expected)


def test_classification_targets(case_files, tmp_path):
    from medflow.data.casefile import read_case

    unlabelled = {}
    for cid, path in case_files.items():
        arrays, meta = read_case(path)
        unlabelled[cid] = tmp_path / f"u_{cid}.npz"
        write_case(unlabelled[cid], {"image": arrays["image"]}, meta)
    store = CaseStore(unlabelled, {"c0": 0, "c1": 2, "c2": 1})
    src = SampleSource(store, sampler("3d", (20, 20, 20), crop="center"), Chain([]), run_seed=0)
    xs, ys = zip(*[(x.numpy(), y.numpy()) for x, y in make_dataset(src, ["c0", "c1", "c2"], range(1), batch_size=3)])
    order = [cid for cid, _ in src.plan(["c0", "c1", "c2"], 0)]
    assert ys[0].tolist() == [store.targets[c] for c in order] and ys[0].dtype == np.int32


def test_workers_split_every_global_batch(case_files):
    src = SampleSource(CaseStore(case_files), sampler("2d", (24, 24)), Chain.from_config(CHAIN_2D, 2),
                       run_seed=2, samples_per_case=4)
    ids = sorted(case_files)
    whole = [x.numpy() for x, _ in make_dataset(src, ids, range(2), batch_size=4, samples_per_epoch=12)]
    parts = [[x.numpy() for x, _ in make_dataset(src, ids, range(2), batch_size=4, samples_per_epoch=12,
                                                 worker=(w, 2))] for w in range(2)]
    assert len(whole) == len(parts[0]) == len(parts[1]) == 6 and parts[0][0].shape[0] == 2
    for step, batch in enumerate(whole):  # worker 0 holds the first half of each global batch, worker 1 the rest
        np.testing.assert_array_equal(np.concatenate([parts[0][step], parts[1][step]]), batch)
    with pytest.raises(ValueError, match="does not split over 3 workers"):
        make_dataset(src, ids, range(1), batch_size=4, worker=(0, 3))


def test_mask_targets_beside_the_class(tmp_path):
    """segcls batches: the lesion mask moved with the image, zeros for normal cases, IGNORE for weak ones,
    class weights as sample weights."""
    from medflow.data.loader import IGNORE, MaskTargets

    files = {}
    for i, has_mask in enumerate((True, False, False)):
        image = np.random.default_rng(i).normal(0, 0.1, (1, 12, 12, 12)).astype(np.float32)
        arrays = {"image": image}
        if has_mask:
            label = np.zeros((12, 12, 12), np.uint8)
            label[2:5, 3:6, 4:7] = 1
            image[0][label == 1] += 3.0
            arrays["label"] = label
        files[f"c{i}"] = tmp_path / f"c{i}.npz"
        write_case(files[f"c{i}"], arrays, {"case_id": f"c{i}"})
    store = CaseStore(files, {"c0": 1, "c1": 0, "c2": 1})  # c1 normal, c2 a lesion case without a mask
    src = SampleSource(store, sampler("3d", (12, 12, 12), crop="center"), Chain.from_config(CHAIN_3D, 3),
                       run_seed=3)
    ds = make_dataset(src, ["c0", "c1", "c2"], range(1), batch_size=3,
                      masks=MaskTargets(normal=0, class_weight={0: 0.5, 1: 2.0}))
    x, y, w = next(iter(ds))
    order = [int(t) for t in y["probabilities"].numpy()]
    masks = y["lesion"].numpy()
    replay = {cid: src.sample(cid, 0, 0) for cid in files}
    for row, cid in enumerate(c for c, _ in src.plan(["c0", "c1", "c2"], 0)):
        s = replay[cid]
        np.testing.assert_array_equal(x.numpy()[row], s.image)
        expected = s.label if cid == "c0" else np.full((12, 12, 12), 0 if cid == "c1" else IGNORE, np.uint8)
        np.testing.assert_array_equal(masks[row], expected)
        assert order[row] == store.targets[cid] and w.numpy()[row] == (0.5 if cid == "c1" else 2.0)
    # the mask moved with the image: the bright voxels are the mask's
    row = [c for c, _ in src.plan(["c0", "c1", "c2"], 0)].index("c0")
    assert x.numpy()[row][..., 0][masks[row] == 1].mean() > 2.0


def test_patch_targets_follow_what_the_patch_shows(tmp_path):
    """loader.train_patch_size: a patch holding lesion voxels keeps its case's class, one that misses the lesion
    is normal, a normal case's patch is normal, and a weakly labelled case's patch weighs nothing."""
    from medflow.data.loader import MaskTargets, Sample

    masks = MaskTargets(normal=0, class_weight={0: 0.5, 1: 2.0}, patches=True)
    image = np.zeros((4, 4, 4, 1), np.float32)
    hit, miss = np.zeros((4, 4, 4), np.uint8), np.zeros((4, 4, 4), np.uint8)
    hit[1, 1, 1] = 1

    def sample(label, target):
        return Sample(image, label, target, 0, [0, 0, 0], [])

    assert masks.target(sample(hit, 1)) == (1, 2.0)
    assert masks.target(sample(miss, 1)) == (0, 0.5)
    assert masks.target(sample(None, 0)) == (0, 0.5)  # a normal subject: no mask file, all zero
    assert masks.target(sample(None, 1)) == (1, 0.0)  # weakly labelled: the patch's class is unknown
    whole = MaskTargets(normal=0, class_weight={0: 0.5, 1: 2.0})
    assert whole.target(sample(miss, 1)) == (1, 2.0)  # a whole-volume sample keeps the case's class
    # without a lesion-free class, a patch that misses the lesion has no class
    assert MaskTargets(normal=None, class_weight={}, patches=True).target(sample(miss, 1)) == (1, 0.0)


def test_paste_sample_inverts_a_cut():
    from medflow.data.sampling import paste_sample

    vol = np.random.default_rng(0).normal(size=(20, 18, 9)).astype(np.float32)
    for centre, patch in (([10, 9, 4], (8, 8, 8)), ([2, 17, 4], (8, 8, 12)), ([10, 9, 4], (24, 22, 12))):
        cfg = sampler("3d", patch, crop="center")
        cut = cut_sample(vol[None], None, centre, cfg)[0][0]
        back = paste_sample(cut, vol.shape, centre, cfg, fill=np.nan)
        inside = ~np.isnan(back)
        np.testing.assert_array_equal(back[inside], vol[inside])  # every voxel that was cut goes home
        assert inside.sum() == np.prod([min(p, s) for p, s in zip(patch, vol.shape)])


def test_the_chain_sees_each_sample_class(case_files):
    """A transform that uses the class (lesion_synth) gets the case's class index from the store: only the
    lesion class's samples gain a marked lesion, and the replay is the same sample."""
    store = CaseStore(case_files, {"c0": 0, "c1": 1, "c2": 0})
    spec = {"name": "lesion_synth", "p": 1.0, "semi_axes": (2.0, 3.0), "label_value": 3,
            "classes": {"lesion": (0.5, 0.5)}}
    src = SampleSource(store, sampler("3d", (40, 36, 30), crop="center"),
                       Chain.from_config([spec], 3, ["normal", "lesion"]), run_seed=1)
    for cid in case_files:
        s = src.sample(cid, 0, 0)
        assert s.target == store.targets[cid]
        assert (s.label == 3).any() == (cid == "c1")
        assert [name for name, _ in s.applied] == ["lesion_synth"]
        np.testing.assert_array_equal(src.sample(cid, 0, 0).image, s.image)
