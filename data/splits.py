"""Patient-level, stratified, seeded splits (test holdout + k folds of train/val).

Cases are never split by list position: every case of a patient lands in the
same split, and the split depends only on the set of (case, patient, stratum)
and the seed, so listing order and parallel scheduling cannot change it.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass

import numpy as np


class SplitError(ValueError):
    """Splits cannot be made as asked (one line)."""


@dataclass(frozen=True)
class SplitCase:
    case_id: str
    patient_id: str
    stratum: str | None = None  # class name for classification; None when labels do not allow
    fixed: str | None = None  # a split fixed by the dataset manifest


def _patients(cases: list[SplitCase]) -> dict[str, list[SplitCase]]:
    by_patient: dict[str, list[SplitCase]] = defaultdict(list)
    for c in cases:
        by_patient[c.patient_id].append(c)
    return dict(sorted(by_patient.items()))


def _patient_stratum(group: list[SplitCase]) -> str:
    counts = Counter(c.stratum for c in group if c.stratum is not None)
    if not counts:
        return ""
    top = max(counts.values())
    return min(s for s, n in counts.items() if n == top)


def _spread_order(patients: list[str], strata: dict[str, str], rng: np.random.Generator) -> list[str]:
    """Order patients so every stratum is spread evenly along the list.

    Each patient gets key (rank within its shuffled stratum + jitter) / stratum size;
    sorting by it interleaves the strata in proportion, so any prefix and any
    round-robin deal of the list is stratified.
    """
    by_stratum: dict[str, list[str]] = defaultdict(list)
    for p in patients:
        by_stratum[strata[p]].append(p)
    keyed = []
    for s in sorted(by_stratum):
        members = sorted(by_stratum[s])
        rng.shuffle(members)
        jitter = rng.random(len(members))
        keyed += [((rank + j) / len(members), p) for rank, (p, j) in enumerate(zip(members, jitter))]
    return [p for _, p in sorted(keyed)]


def make_splits(
    cases: list[SplitCase], *, seed: int, test_fraction: float = 0.2, folds: int = 5,
    val_fraction: float = 0.2, stratify: bool = True,
) -> dict:
    """Split cases by patient into a test holdout and ``folds`` train/val folds.

    Args:
        cases: the valid cases.
        seed: the only source of randomness.
        test_fraction: fraction of patients held out for testing (0 for none).
        folds: number of cross-validation folds over the remaining patients; with 1,
            a single train/val split of ``val_fraction`` is made.
        val_fraction: validation fraction when ``folds == 1``.
        stratify: keep class proportions in every split where strata are known.

    Returns:
        ``{"seed", "stratified", "test": [case ids], "folds": [{"train": [...], "val": [...]}],
        "counts": per-split stratum counts}``.
    """
    groups = _patients(cases)
    if not groups:
        raise SplitError("no valid cases to split")
    strata = {p: (_patient_stratum(g) if stratify else "") for p, g in groups.items()}
    fixed = {c.fixed for c in cases}
    if fixed != {None}:
        result = _fixed_splits(groups)
    else:
        result = _drawn_splits(groups, strata, seed, test_fraction, folds, val_fraction)
    result["seed"] = seed
    result["stratified"] = any(strata.values())
    stratum_of = {c.case_id: c.stratum for c in cases}
    result["counts"] = {
        "test": dict(sorted(Counter(stratum_of[c] or "all" for c in result["test"]).items())),
        "folds": [{k: dict(sorted(Counter(stratum_of[c] or "all" for c in f[k]).items())) for k in ("train", "val")}
                  for f in result["folds"]],
    }
    return result


def _ids(groups, patients) -> list[str]:
    return sorted(c.case_id for p in patients for c in groups[p])


def _drawn_splits(groups, strata, seed, test_fraction, folds, val_fraction) -> dict:
    if not 0 <= test_fraction < 1 or not 0 < val_fraction < 1 or folds < 1:
        raise SplitError(f"impossible split: test_fraction={test_fraction}, folds={folds}, val_fraction={val_fraction}")
    rng = np.random.default_rng(seed)
    order = _spread_order(list(groups), strata, rng)
    n_test = int(round(test_fraction * len(order))) if test_fraction > 0 else 0
    if test_fraction > 0 and len(order) >= 3:
        n_test = max(1, n_test)
    test, rest = order[:n_test], order[n_test:]
    if len(rest) < max(2, folds):
        raise SplitError(f"{len(rest)} patients left after the test holdout: too few for {max(2, folds)} train/val groups")
    if folds == 1:
        n_val = max(1, int(round(val_fraction * len(rest))))
        buckets = [rest[:n_val]]
    else:
        buckets = [rest[k::folds] for k in range(folds)]
    fold_list = []
    for val in buckets:
        held = set(val)
        fold_list.append({"train": _ids(groups, [p for p in rest if p not in held]), "val": _ids(groups, val)})
    return {"test": _ids(groups, test), "folds": fold_list}


def _fixed_splits(groups) -> dict:
    per_patient = {}
    for p, g in groups.items():
        names = {c.fixed for c in g}
        if None in names:
            raise SplitError("the split column must be filled for every row or for none")
        if len(names) > 1:
            raise SplitError(f"patient {p!r} has cases in several splits {sorted(names)}")
        per_patient[p] = names.pop()
    pick = lambda name: _ids(groups, [p for p, s in per_patient.items() if s == name])  # noqa: E731
    if not pick("train"):
        raise SplitError("the split column names no 'train' case")
    return {"test": pick("test"), "folds": [{"train": pick("train"), "val": pick("val")}]}
