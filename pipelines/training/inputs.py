"""Build the input pipeline of a pipeline config from its preprocess stage output.

Shared by the train stage, ``medflow augment-preview`` and
``medflow bench augment``, so all three make exactly the same samples.
"""

from __future__ import annotations

import json

from medflow.core.engine import StageFailed, StageOutput
from medflow.data.augment import Chain
from medflow.data.loader import CaseStore, SampleSource
from medflow.data.sampling import SamplerConfig


def sampler_config(cfg) -> SamplerConfig:
    """How training samples are cut: the inference window, or ``loader.train_patch_size`` patches
    (random, centred on a lesion voxel with ``foreground_ratio``) for a fully convolutional classifier."""
    ld = cfg.loader
    if ld.train_patch_size is not None:
        return SamplerConfig(mode="3d", patch_size=tuple(ld.train_patch_size), slice_axis=ld.slice_axis,
                             foreground_ratio=ld.foreground_ratio, crop="random")
    return SamplerConfig(mode=ld.mode, patch_size=tuple(ld.patch_size), slice_axis=ld.slice_axis,
                         foreground_ratio=ld.foreground_ratio, crop=ld.crop)


def build_source(cfg, preprocess: StageOutput, case_ids: list[str] | None = None, *, cache: str | None = None,
                 cache_dir=None) -> SampleSource:
    """The sample source over ``case_ids`` (default: every preprocessed case)."""
    from medflow.tasks import task_for

    plan = json.loads(preprocess.file("plan.json").read_text())
    ids = sorted(case_ids if case_ids is not None else preprocess.cases)
    missing = [c for c in ids if c not in preprocess.cases]
    if missing:
        raise StageFailed(f"{preprocess.path}: no preprocessed case {missing[0]!r}")
    classes = [plan["classes"][k] for k in sorted(plan["classes"], key=int)]
    targets = {}
    class_targets = task_for(plan["task"], str(preprocess.path)).class_targets
    if class_targets:
        targets = {c: classes.index(preprocess.cases[c]["target"]) for c in ids}
    store = CaseStore({c: preprocess.file(preprocess.cases[c]["file"]) for c in ids}, targets,
                      cache=cache or cfg.loader.cache, cache_dir=cache_dir or preprocess.path / "cache",
                      memory_gb=cfg.loader.cache_memory_gb)
    chain = Chain.from_config(cfg.augment.transforms, 2 if cfg.loader.mode == "2d" else 3,
                              classes if class_targets else [])
    return SampleSource(store, sampler_config(cfg), chain, run_seed=cfg.augment.seed,
                        samples_per_case=cfg.loader.samples_per_case)
