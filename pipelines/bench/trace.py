"""Where a training step's time goes: a TensorFlow profiler trace summed by phase, layer type and op.

``medflow bench train --trace`` traces a few steps of ``model.fit`` with
``tf.profiler`` (host tracer only, no TensorBoard needed) and reads the trace's
XPlane protobuf, which ships with TensorFlow. Every kernel event is named
``scope:OpType``; the scope says which layer the op belongs to and whether it is
the forward pass, the gradient (``gradient_tape/``), the loss, the metrics or
the optimizer's update. Kernels on TensorFlow's two inter-op threads may
overlap, so op time can exceed the step's wall time; the shares are of op time.
"""

from __future__ import annotations

import collections
import re
import tempfile
from pathlib import Path

from medflow.bench.train import leaf_layers

_SUFFIX = re.compile(r"_\d+$")  # Keras adds _1, _2 to a layer's name scope when it is called again


def layer_kinds(model) -> dict[str, str]:
    """{layer name: layer class name} over the model's leaf layers (nested models unpacked)."""
    return {layer.name: type(layer).__name__ for layer in leaf_layers(model)}


def _phase(parts: list[str], optimizer: str) -> str:
    if "gradient_tape" in parts:
        return "loss" if "compile_loss" in parts else "backward"
    if "compile_loss" in parts:
        return "loss"
    if "compile_metrics" in parts or any(p.startswith("metrics") for p in parts):
        return "metrics"
    if optimizer in parts or _SUFFIX.sub("", parts[1] if len(parts) > 1 else "") == optimizer:
        return "optimizer"
    return "forward"


def _layer(parts: list[str], kinds: dict[str, str]) -> str | None:
    for part in parts:
        for name in (part, _SUFFIX.sub("", part)):
            if name in kinds:
                return name
    return None


def summarize_events(events, kinds: dict[str, str], optimizer: str, steps: int) -> dict:
    """Sum (name, milliseconds) kernel events per step by phase, layer type, layer and op type.

    Args:
        events: iterable of (``scope:OpType`` name, duration in ms).
        kinds: {layer name: layer class}, from :func:`layer_kinds`.
        optimizer: the optimizer's name scope (``model.optimizer.name``).
        steps: traced steps, to report milliseconds per step.

    Returns:
        {"op_ms": total, "phase": {...}, "layer_type": {(type, phase): ms}, "layer": {...}, "op": {...}},
        all in milliseconds per step.
    """
    phase, layer_type, layer, op_type = (collections.Counter() for _ in range(4))
    total = 0.0
    for name, ms in events:
        scope, _, op = name.rpartition(":")
        if not scope or op in ("StatefulPartitionedCall", "PartitionedCall") or "::" in name:
            continue
        parts = scope.split("/")
        ph = _phase(parts, optimizer)
        owner = _layer(parts, kinds) if ph in ("forward", "backward") else None
        ms = ms / steps
        total += ms
        phase[ph] += ms
        op_type[op] += ms
        if owner is not None:
            layer[owner] += ms
            layer_type[(kinds[owner], "backward" if ph == "backward" else "forward")] += ms
    return {"op_ms": total, "phase": dict(phase), "layer_type": dict(layer_type), "layer": dict(layer),
            "op": dict(op_type)}


def _events(logdir: Path):
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    files = sorted(logdir.rglob("*.xplane.pb"))
    if not files:
        raise RuntimeError(f"the TensorFlow profiler wrote no trace under {logdir}")
    space = xplane_pb2.XSpace()
    space.ParseFromString(files[-1].read_bytes())
    for plane in space.planes:
        meta = plane.event_metadata
        for line in plane.lines:
            if line.name.startswith("tf_Compute"):  # the executor's threads, where kernels run
                for event in line.events:
                    yield meta[event.metadata_id].name, event.duration_ps / 1e9


def trace_fit(model, dataset, steps: int = 3) -> dict:
    """Trace ``steps`` training steps of an already compiled and warmed-up model; see :func:`summarize_events`."""
    import tensorflow as tf

    with tempfile.TemporaryDirectory(prefix="medflow-trace-") as tmp:
        options = tf.profiler.experimental.ProfilerOptions(host_tracer_level=2, python_tracer_level=0,
                                                           device_tracer_level=0)
        tf.profiler.experimental.start(tmp, options=options)
        try:
            model.fit(dataset, steps_per_epoch=steps, epochs=1, verbose=0, shuffle=False)
        finally:
            tf.profiler.experimental.stop()
        events = list(_events(Path(tmp)))
    return summarize_events(events, layer_kinds(model), model.optimizer.name, steps)


def print_trace(summary: dict, top: int = 8) -> None:
    """Print a :func:`summarize_events` result: phases, layer types (forward / backward) and the top op types."""
    total = summary["op_ms"] or 1.0
    print(f"  trace: {summary['op_ms']:.0f} ms of kernel time per step")
    print("    " + ", ".join(f"{k} {v / total:.0%}" for k, v in sorted(summary["phase"].items(), key=lambda kv: -kv[1])))
    by_type = collections.defaultdict(lambda: [0.0, 0.0])
    for (kind, ph), ms in summary["layer_type"].items():
        by_type[kind][ph == "backward"] += ms
    print(f"    {'layer type':24s} {'forward ms':>10s} {'backward ms':>11s} {'share':>6s}")
    for kind, (fwd, bwd) in sorted(by_type.items(), key=lambda kv: -sum(kv[1]))[:top]:
        print(f"    {kind:24s} {fwd:10.1f} {bwd:11.1f} {(fwd + bwd) / total:6.0%}")
    layers = sorted(summary["layer"].items(), key=lambda kv: -kv[1])[:top]
    print("    slowest layers: " + ", ".join(f"{name} {ms / total:.0%}" for name, ms in layers))
    ops = sorted(summary["op"].items(), key=lambda kv: -kv[1])[:top]
    print("    top ops: " + ", ".join(f"{op} {ms / total:.0%}" for op, ms in ops))
