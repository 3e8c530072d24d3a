"""Time budgets: size a training run (epochs x steps) to end within ``train.budget`` on this machine.

Machines of one kind differ by 3-4x in training speed, so a fixed epoch count is
a different run time on each. With a budget the trainer instead times a probe
copy of the model on real batches (the first steps, which pay for tracing, then
the steady step time), one validation pass, and one checkpoint save, and plans:

    left    = MARGIN x budget - time already spent in the stage - one-off costs of the real run
    epoch   = steps x step time + validation + 2 checkpoint saves
    epochs  = floor(left / epoch)                      with one pass over the data per epoch;
    if that is under MIN_EPOCHS, MIN_EPOCHS shorter epochs (fewer steps), so there are still
    several checkpoints to pick the best from and the cosine schedule still has a shape.

The plan is written to the stage folder before training starts; a resumed stage
reads it back and never re-plans, so a resumed run is the run that was planned.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from medflow.data.atomic import write_atomic

PLAN_FILE = "train_plan.json"
DEFAULT_EPOCHS = 30  # neither train.epochs nor train.budget given
MIN_EPOCHS = 3
# Plan to this share of the budget: fit's per-epoch costs that the probe does not time (metric logging,
# iterator set-up) and the stage's publishing after the last epoch made runs end 4-8 % past a plan of
# the whole budget here (train 116 s of 120 s planned at 100 %; train_recon 96 s of 90 s).
MARGIN = 0.92
# A forward pass in training mode (train.precise_bn's batches after the last epoch) against a training step
FORWARD_SHARE = 0.5
PROBE_SECONDS = 4.0  # steady-state steps are timed for at least this long ...
PROBE_MAX_STEPS = 30  # ... or this many steps, whichever comes first
_UNITS = {"s": 1, "m": 60, "h": 3600}
_BUDGET = re.compile(r"^\s*(?:(\d+(?:\.\d+)?)\s*h)?\s*(?:(\d+(?:\.\d+)?)\s*m)?\s*(?:(\d+(?:\.\d+)?)\s*s)?\s*$")


class BudgetTooSmall(ValueError):
    """The budget does not leave time for one training step and one validation pass."""


def parse_budget(text: str) -> float:
    """Seconds in a budget such as ``90s``, ``4m``, ``45m``, ``2h`` or ``1h30m``.

    Raises:
        ValueError: naming the text, when it is not of that form or is zero.
    """
    match = _BUDGET.match(str(text))
    if not match or not any(match.groups()):
        raise ValueError(f"budget {text!r}: expected a duration such as 90s, 4m, 45m, 2h or 1h30m")
    seconds = sum(float(v) * _UNITS[u] for v, u in zip(match.groups(), "hms") if v)
    if seconds <= 0:
        raise ValueError(f"budget {text!r}: must be longer than zero")
    return seconds


@dataclass(frozen=True)
class Probe:
    """What the probe measured, in seconds: the first step (tracing included), the steady step, the first
    and a repeated validation pass (loading, caching and tracing are in the first), one checkpoint save."""

    first_step: float
    step: float
    first_val: float
    val: float
    save: float


@dataclass(frozen=True)
class TrainPlan:
    """How long the run is: ``epochs`` of ``steps`` steps. With a budget, what it was planned from."""

    epochs: int
    steps: int
    natural_steps: int  # one pass over the training samples
    budget_seconds: float | None = None
    spent_seconds: float | None = None  # in the stage before planning (setup and the probe)
    step_seconds: float | None = None
    val_seconds: float | None = None
    planned_seconds: float | None = None  # the run's expected end, counted from the stage start
    reason: str = "train.epochs"

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps

    def params(self) -> dict:
        """The plan as MLflow parameters (``plan.<field>``)."""
        return {f"plan.{k}": (round(v, 4) if isinstance(v, float) else v) for k, v in asdict(self).items()
                if v is not None}


def plan_budget(budget_s: float, spent_s: float, probe: Probe, natural_steps: int,
                min_epochs: int = MIN_EPOCHS, after_steps: float = 0.0) -> TrainPlan:
    """The plan for ``budget_s`` when ``spent_s`` has gone already (pure arithmetic; see the module doc).
    ``after_steps``: the work after the last epoch (PreciseBN), in training steps, is kept out of the budget.

    Raises:
        BudgetTooSmall: when not even one step and one validation pass fit.
    """
    once = max(probe.first_step - probe.step, 0) + max(probe.first_val - probe.val, 0)  # the real run traces too
    once += after_steps * probe.step
    fixed = probe.val + 2 * probe.save  # per epoch: validation, the checkpoint and (at worst) the best model
    left = MARGIN * budget_s - spent_s - once
    step = max(probe.step, 1e-6)
    if left < fixed + step:
        raise BudgetTooSmall(
            f"train.budget {budget_s:.0f}s: setup and the timing probe took {spent_s:.0f}s and one epoch needs "
            f"at least {once + fixed + step:.0f}s more (step {probe.step:.3f}s, validation {probe.val:.1f}s); "
            f"give a longer budget or train.epochs")
    steps = max(natural_steps, 1)
    epochs = int(left // (steps * step + fixed))
    reason = f"{epochs} full passes of {steps} steps fit"
    if epochs < min_epochs:
        epochs = max(1, min(min_epochs, int(left // (fixed + step))))
        steps = max(1, min(steps, int((left - epochs * fixed) // (epochs * step))))
        reason = f"under {min_epochs} full passes fit: {epochs} shorter epochs of {steps} of {natural_steps} steps"
    planned = spent_s + once + epochs * (steps * step + fixed)
    return TrainPlan(epochs=epochs, steps=steps, natural_steps=natural_steps, budget_seconds=budget_s,
                     spent_seconds=spent_s, step_seconds=probe.step, val_seconds=probe.val,
                     planned_seconds=planned, reason=reason)


def run_probe(model, batches, val_ds, min_seconds: float = PROBE_SECONDS, max_steps: int = PROBE_MAX_STEPS) -> Probe:
    """Time ``model`` (a compiled throwaway copy: its weights change) on training batches, on ``val_ds``
    twice, and one ``.keras`` save. ``batches()`` returns a fresh iterator of (x, y) or (x, y, sample_weight).

    The first step (tracing) runs on one iterator and the steady steps on a second, fresh one: while the
    first step traces, the input pipeline fills its prefetch buffer, and steps drawn from that buffer
    hide the pipeline's own rate, which on 2 cores is often what bounds a step (augmented 3D volumes).
    Timed that way the probe said 0.35-0.49 s where fit then took 0.45-0.75 s a step.
    """
    def step(it) -> bool:
        batch = next(it, None)
        if batch is None:
            return False
        model.train_on_batch(*batch[:2], sample_weight=batch[2] if len(batch) > 2 else None)
        return True

    t0 = time.perf_counter()
    if not step(iter(batches())):
        raise ValueError("the timing probe got no training batch")
    first = time.perf_counter() - t0
    fresh = iter(batches())
    n, t1 = 0, time.perf_counter()
    while (n < 3 or (n < max_steps and time.perf_counter() - t1 < min_seconds)) and step(fresh):
        n += 1
    steady = (time.perf_counter() - t1) / n if n else first
    vals = []
    for _ in range(2):
        t = time.perf_counter()
        model.evaluate(val_ds, verbose=0)
        vals.append(time.perf_counter() - t)
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        model.save(Path(tmp) / "probe.keras")
        save = time.perf_counter() - t
    return Probe(first_step=first, step=steady, first_val=vals[0], val=vals[1], save=save)


def resolve_plan(tc, folder: Path, natural_steps: int, started: float, probe) -> TrainPlan:
    """The run's plan: the one in ``folder`` when the stage resumes, else from ``train.epochs`` or, with
    ``train.budget``, from ``probe()`` (a :class:`Probe`) and the time since ``started`` (perf_counter).
    The plan is written to ``folder`` before training starts."""
    path = Path(folder) / PLAN_FILE
    if path.exists():
        return TrainPlan(**json.loads(path.read_text()))
    if tc.budget is None:
        plan = TrainPlan(epochs=tc.epochs or DEFAULT_EPOCHS, steps=natural_steps, natural_steps=natural_steps)
    else:
        measured = probe()
        plan = plan_budget(parse_budget(tc.budget), time.perf_counter() - started, measured, natural_steps,
                           after_steps=tc.precise_bn_batches * FORWARD_SHARE)
    with write_atomic(path) as tmp:
        tmp.write_text(json.dumps(asdict(plan), indent=1))
    return plan


def describe(plan: TrainPlan) -> str:
    """One line for the log: what the run will be and why."""
    if plan.budget_seconds is None:
        return f"plan: {plan.epochs} epochs x {plan.steps} steps ({plan.reason})"
    return (f"plan: {plan.epochs} epochs x {plan.steps} steps within {plan.budget_seconds:.0f}s "
            f"(step {plan.step_seconds:.3f}s, validation {plan.val_seconds:.1f}s, expected end "
            f"{plan.planned_seconds:.0f}s; {plan.reason})")


def probe_epochs(natural_steps: int) -> range:
    """Epochs of training batches enough for the probe's steps."""
    return range(-(-PROBE_MAX_STEPS // max(natural_steps, 1)))
