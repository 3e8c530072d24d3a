"""Config: defaults in one place, --set overrides, profiles, and errors naming the key path."""

from __future__ import annotations

import pytest

from medflow.core.config import ConfigError
from medflow.core.loading import flatten, load_config, parse_override
from tests.helpers import write_pipeline


def test_defaults_and_overrides(tmp_path):
    path = write_pipeline(tmp_path / "p.yaml", tmp_path / "data")
    cfg = load_config(path)
    assert cfg.preprocess.spacing == (1.0, 1.0, 1.0)
    assert cfg.preprocess.ct_window == (-1000.0, 1000.0)  # a default from the schema
    cfg = load_config(path, ["preprocess.spacing=[2, 2, 3]", "split.seed=7", "dataset.root=${workspace}/x"])
    assert cfg.preprocess.spacing == (2.0, 2.0, 3.0) and cfg.split.seed == 7
    assert cfg.dataset.root.endswith("/workspace/x")


def test_profile(tmp_path):
    path = write_pipeline(tmp_path / "p.yaml", tmp_path / "data",
                          extra="profiles:\n  demo:\n    split.folds: 3\n    dataset.root: /tmp/demo\n")
    cfg = load_config(path, ["split.folds=4"], profile="demo")
    assert cfg.dataset.root == "/tmp/demo" and cfg.split.folds == 4  # --set wins over the profile
    with pytest.raises(ConfigError, match="unknown profile 'nope'"):
        load_config(path, profile="nope")


@pytest.mark.parametrize("override,expect", [
    ("preprocess.spacnig=[1,1,1]", "p.yaml: preprocess.spacnig: unknown key"),
    ("split.folds=three", "p.yaml: split.folds: Input should be a valid integer"),
    ("split.test_fraction=1.5", "p.yaml: split.test_fraction: Input should be less than 1"),
    ("preprocess.spacing=[1,0,1]", "p.yaml: preprocess.spacing: every spacing must be > 0 mm"),
    ("preprocess.ct_window=[500,-500]", "p.yaml: preprocess.ct_window: window needs lo < hi"),
    ("stages=[ingest,trian]", "p.yaml: stages: unknown stage(s) ['trian']"),
    ("dataset.layout=dicom", "p.yaml: dataset.layout: Input should be 'msd' or 'csv'"),
])
def test_errors_name_the_key(tmp_path, override, expect):
    path = write_pipeline(tmp_path / "p.yaml", tmp_path / "data")
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    assert expect in str(info.value)


def test_every_error_is_reported(tmp_path):
    path = write_pipeline(tmp_path / "p.yaml", tmp_path / "data")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["split.folds=0", "ingest.colour=red"])
    lines = str(info.value).splitlines()
    assert len(lines) == 2 and any("split.folds" in ln for ln in lines) and any("ingest.colour" in ln for ln in lines)


def test_bad_files_and_overrides(tmp_path):
    with pytest.raises(ConfigError, match="no such pipeline file"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml: invalid YAML"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="expected key.path=value"):
        parse_override("novalue")
    path = write_pipeline(tmp_path / "p.yaml", tmp_path / "data")
    with pytest.raises(ConfigError, match="name is not a mapping"):
        load_config(path, ["name.x=1"])


def test_shipped_configs_validate():
    from medflow.core.workspace import project_root

    for name in ("segmentation", "classification"):
        path = project_root() / "pipelines" / "configs" / f"{name}.yaml"
        assert load_config(path).name == name
        assert "demo" in load_config(path, profile="demo").dataset.root


def test_flatten():
    assert flatten({"a": {"b": 1, "c": [1, 2]}, "d": {}}) == {"a.b": 1, "a.c": [1, 2], "d": {}}


@pytest.mark.parametrize("override,expect", [
    ("augment.transforms=[{name: flip}, {name: swirl}]", "p.yaml: augment.transforms.1: unknown transform 'swirl'"),
    ("augment.transforms=[{name: affine, scale: [1.2, 0.8]}]", "augment.transforms.0: affine: scale: range needs lo <= hi"),
    ("augment.transforms=[{name: elastic2d, alpha: 1}]", None),
    ("loader.patch_size=[64, 64, 64]", "patch_size needs 2 positive sizes in 2d mode"),
    ("loader.train_patch_size=[32, 32, 32]", "train_patch_size needs 3 positive sizes and mode 3d"),
    ("compare.models=[{name: unet2d, settings: {loader.crop: sideways}}]",
     "compare.models.0.settings: loader.crop: Input should be 'random' or 'center'"),
    ("compare.models=[{name: unet2d, settings: {model.name: cnn}}]", "settings may not set ['model.name']"),
    ("compare.models=[{name: unet2d, settings: {loader.bach_size: 2}}]", "settings: loader.bach_size: unknown key"),
    ("model.name=transformer", "unknown model 'transformer'"),
    ("model.params={depth: 3, colour: red}", "model 'unet2d' has no parameter(s) ['colour']"),
])
def test_augment_loader_model_errors(tmp_path, override, expect):
    path = write_pipeline(tmp_path / "p.yaml", tmp_path / "data")
    if expect is None:
        load_config(path, [override])
        return
    with pytest.raises(ConfigError) as info:
        load_config(path, [override])
    assert expect in str(info.value)


def test_3d_mode_rejects_2d_only_transforms(tmp_path):
    path = write_pipeline(tmp_path / "p.yaml", tmp_path / "data")
    with pytest.raises(ConfigError, match="augment.transforms.0: transform 'affine2d' works on 2D samples"):
        load_config(path, ["loader.mode=3d", "loader.patch_size=[8,8,8]", "augment.transforms=[{name: affine2d}]"])


def test_compare_settings_apply_to_their_model_only(tmp_path):
    path = write_pipeline(tmp_path / "p.yaml", tmp_path / "data")
    cfg = load_config(path, ["compare.models=[{name: unet2d, params: {depth: 3}, settings: {loader.batch_size: 3}},"
                             " {name: unet2d}]"])
    first, second = (cfg.variant(m) for m in cfg.compare.models)
    assert first.loader.batch_size == 3 and first.model.params == {"depth": 3}
    assert second.loader.batch_size == cfg.loader.batch_size and second.model.name == "unet2d"
    assert cfg.loader.batch_size != 3  # the pipeline's own config is untouched
