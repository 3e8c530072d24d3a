"""bench train: layer FLOP counts against hand counts; the figures it prints."""

from __future__ import annotations

import keras
import pytest
from keras import layers

from medflow.bench.train import bench_train, forward_flops


def test_forward_flops_hand_counted():
    inp = keras.Input((8, 8, 2))
    x = layers.Conv2D(4, 3, padding="same")(inp)              # 2 * 64 px * 3*3*2*4
    x = layers.Conv2DTranspose(3, 2, strides=2)(x)            # 2 * 64 input px * 2*2*4*3
    x = layers.Conv2D(5, 3, strides=2, padding="valid")(x)    # 2 * 7*7 px * 3*3*3*5
    x = layers.GlobalAveragePooling2D()(x)
    out = layers.Dense(6)(x)                                  # 2 * 5*6
    model = keras.Model(inp, out)
    assert forward_flops(model) == 2 * 64 * 72 + 2 * 64 * 48 + 2 * 49 * 135 + 2 * 30


def test_bench_train_prints_figures(capsys):
    figures = bench_train("unet2d", sets=["loader.patch_size=[32,32]", "model.params={depth: 2, filters: 4}"],
                          batch=2, steps=1)
    out = capsys.readouterr().out
    assert figures["samples_per_s"] == pytest.approx(2 / figures["step_s"]) and figures["matmul_gflops"] > 0
    assert "medflow bench train: unet2d" in out and "samples/s -> model" in out and "float32 matmul" in out
    rate = float(out.split("GFLOP/s (before")[0].rsplit(":", 1)[1])
    assert rate > 0
    with pytest.raises(Exception, match="unknown model"):
        bench_train("no_such_model", batch=1, steps=1)


def test_bench_train_other_model_takes_its_compare_params(capsys):
    # classification.yaml's model is segcls; resnet's parameters come from its compare.models entry
    sets = ["loader.patch_size=[16,16,16]"]
    assert bench_train("resnet", sets=sets, batch=1, steps=1)["model"] == "resnet"
    out = capsys.readouterr().out
    assert "medflow bench train: resnet (filters=16, stages=[2, 2, 2]" in out
