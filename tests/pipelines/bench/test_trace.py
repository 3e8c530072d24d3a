"""bench train --trace: kernel events summed by phase, layer type and op, from a real profiler trace."""

from __future__ import annotations

import keras
import pytest
from keras import layers

from medflow.bench.trace import layer_kinds, summarize_events, trace_fit
from medflow.bench.train import bench_train, synthetic_batches


def test_summarize_events_attributes_scopes():
    kinds = {"enc0_conv1": "Conv2D", "enc0_norm1": "BatchNormalization"}
    events = [
        ("StatefulPartitionedCall/unet2d_1/enc0_conv1_1/convolution:_MklNativeConv2D", 10.0),
        ("StatefulPartitionedCall/gradient_tape/unet2d_1/enc0_conv1_1/convolution/Conv2DBackpropFilter:"
         "_MklNativeConv2DBackpropFilter", 30.0),
        ("StatefulPartitionedCall/unet2d_1/enc0_norm1_1/moments/mean:Mean", 4.0),
        ("StatefulPartitionedCall/gradient_tape/unet2d_1/enc0_norm1_1/batchnorm/mul/Mul:Mul", 6.0),
        ("StatefulPartitionedCall/compile_loss/dice_ce/Sum:Sum", 2.0),
        ("StatefulPartitionedCall/gradient_tape/compile_loss/dice_ce/truediv/Neg:Neg", 2.0),
        ("StatefulPartitionedCall/adam/Sqrt_12:Sqrt", 4.0),
        ("StatefulPartitionedCall/compile_metrics/dice/Sum:Sum", 2.0),
        ("ExecutorState::Process", 999.0),       # the executor's own span around kernels: not a kernel
        ("StatefulPartitionedCall:StatefulPartitionedCall", 999.0),
    ]
    s = summarize_events(events, kinds, "adam", steps=2)
    assert s["op_ms"] == pytest.approx(30.0)
    assert s["phase"] == {"forward": 7.0, "backward": 18.0, "loss": 2.0, "optimizer": 2.0, "metrics": 1.0}
    assert s["layer_type"] == {("Conv2D", "forward"): 5.0, ("Conv2D", "backward"): 15.0,
                               ("BatchNormalization", "forward"): 2.0, ("BatchNormalization", "backward"): 3.0}
    assert s["layer"] == {"enc0_conv1": 20.0, "enc0_norm1": 5.0}
    assert s["op"]["_MklNativeConv2DBackpropFilter"] == 15.0


def test_trace_fit_reads_a_real_trace(capsys):
    inputs = keras.Input((16, 16, 1))
    x = layers.Conv2D(8, 3, padding="same", name="conv")(inputs)
    x = layers.BatchNormalization(name="norm")(x)
    outputs = layers.Conv2D(3, 1, activation="softmax", name="head")(x)
    model = keras.Model(inputs, outputs, name="tiny")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    ds = synthetic_batches(4, (16, 16, 1), 3, "segmentation")
    model.fit(ds, steps_per_epoch=1, epochs=1, verbose=0, shuffle=False)
    s = trace_fit(model, ds, steps=2)
    assert s["op_ms"] > 0 and s["phase"]["forward"] > 0 and s["phase"]["backward"] > 0
    assert s["phase"].get("optimizer", 0) > 0
    assert {kind for kind, _ in s["layer_type"]} >= {"Conv2D", "BatchNormalization"}
    assert set(s["layer"]) <= set(layer_kinds(model)) and "conv" in s["layer"]


def test_bench_train_trace_prints_the_breakdown(capsys):
    figures = bench_train("unet2d", sets=["loader.patch_size=[32,32]", "model.params={depth: 2, filters: 4}"],
                          batch=2, steps=1, trace=True)
    out = capsys.readouterr().out
    assert figures["trace"]["op_ms"] > 0
    assert "ms of kernel time per step" in out and "slowest layers:" in out and "top ops:" in out
