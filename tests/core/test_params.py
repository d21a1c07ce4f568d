"""params.yaml sections: the generic parser and every section's checks."""

from __future__ import annotations

import pytest

from pipeline.core.params import (
    ClassifierParams,
    DataParams,
    EstimatorParams,
    EvaluateParams,
    OcclusionParams,
    PathsParams,
    TuneParams,
    TuneTarget,
    parse_section,
)
from pipeline.glue.files import load_params


def test_repository_params_parse(repo_root):
    params = load_params(repo_root / "params.yaml")
    data = DataParams.from_dict(params["data"])
    paths = PathsParams.from_dict(params["paths"])
    assert data.source == "synthetic" and data.synthetic_n == 100_000
    assert (data.test_fraction, data.val_fraction) == (0.25, 0.25)
    assert paths.prepared_dir == "data/prepared"


@pytest.mark.parametrize(
    ("section", "message"),
    [
        ({"source": "fits"}, "data.source must be one of"),
        ({"source": "synthetic", "sede": 1}, r"unknown key\(s\) \['sede'\]"),
        ({"source": "synthetic", "synthetic": {"n": 0}}, "data.synthetic.n must be >= 1"),
        ({"source": "synthetic", "split": {"test_fraction": 1.5}}, "test_fraction must be"),
        ({"seed": 1}, "lacks the key 'source'"),
    ],
)
def test_bad_data_params_are_named(section, message):
    with pytest.raises(ValueError, match=message):
        DataParams.from_dict(section)


def test_estimator_params(repo_root):
    cfg = EstimatorParams.from_dict(load_params(repo_root / "params.yaml")["estimator"])
    assert (cfg.arch, cfg.condition, cfg.quarter_turns) == ("gated_ae", "features", True)
    tap = EstimatorParams.from_dict({"arch": "tap_ae", "condition": "taps", "quarter_turns": False})
    assert (tap.arch, tap.condition, tap.quarter_turns) == ("tap_ae", "taps", False)
    for section, message in [({"arch": "vae"}, "estimator.arch must be one of"),
                             ({"condition": "pixels"}, "estimator.condition must be one of"),
                             ({"quarter_turns": "yes"}, "quarter_turns must be true or false"),
                             ({"epochs": 0}, "estimator.epochs must be >= 1")]:
        with pytest.raises(ValueError, match=message):
            EstimatorParams.from_dict(section)


def test_values_are_coerced_by_annotation():
    # int from an integral float or a numeric string, float from a string (PyYAML reads
    # 1e-3 as a string), str from a number, tuple[int, ...] from a list
    cfg = ClassifierParams.from_dict({"epochs": 7.0, "batch_size": "32", "learning_rate": "1e-3",
                                      "optimizer": "adam", "channels": [0, "3"]})
    assert (cfg.epochs, cfg.batch_size, cfg.learning_rate) == (7, 32, 0.001)
    assert cfg.channels == (0, 3) and isinstance(cfg.channels, tuple)
    # int | str: channels by name stay names, a float is neither
    assert ClassifierParams.from_dict({"channels": ["snr_difference", 1]}).channels == (
        "snr_difference", 1)
    with pytest.raises(ValueError, match=r"classifier.channels\[0\] must be int or str"):
        ClassifierParams.from_dict({"channels": [2.5]})  # (a name the stamps lack fails
    # where the channels meet the stamps: StampGeometry.channel_indices)
    assert PathsParams.from_dict({"raw_dir": 2013}).raw_dir == "2013"
    assert OcclusionParams.from_dict({"fill": 1}).fill == 1.0
    # absent or empty (null) keys take the dataclass defaults; dicts are copied
    overrides = {"snr_scale": 0.7}
    data = DataParams.from_dict({"source": "hits", "seed": None,
                                 "synthetic": {"overrides": overrides}, "split": None})
    assert (data.seed, data.synthetic_n, data.test_fraction) == (42, 100_000, 0.25)
    assert data.synthetic_overrides == overrides and data.synthetic_overrides is not overrides
    assert ClassifierParams.from_dict({}).hparams == {}


@pytest.mark.parametrize(
    ("cls", "section", "message"),
    [
        (ClassifierParams, {"epochs": 7.5}, r"classifier.epochs must be an integer, got 7.5"),
        (ClassifierParams, {"epochs": True}, r"classifier.epochs must be an integer, got True"),
        (ClassifierParams, {"learning_rate": "fast"}, "classifier.learning_rate must be a number"),
        (ClassifierParams, {"channels": 3}, r"classifier.channels must be a list, got 3"),
        (ClassifierParams, {"channels": "3"}, r"classifier.channels must be a list"),
        (ClassifierParams, {"channels": [3, True]},
         r"classifier.channels\[1\] must be int or str, got True"),
        (ClassifierParams, {"hparams": [1]}, r"classifier.hparams must be a mapping"),
        (ClassifierParams, {"learning_rate": 0}, r"classifier.learning_rate must be > 0, got 0"),
        (PathsParams, {"raw_dir": ["a"]}, r"paths.raw_dir must be a string"),
        (EstimatorParams, {"copy_weights": 1}, "estimator.copy_weights must be true or false"),
        (EstimatorParams, {"freeze_encoder": "true"}, "freeze_encoder must be true or false"),
        (EstimatorParams, {"shape_weight": -0.1}, r"estimator.shape_weight must be >= 0"),
        (EvaluateParams, {"speed_n": 0}, r"evaluate.speed_n must be >= 1, got 0"),
        (OcclusionParams, {"target": "logit"}, "occlusion.target must be one of"),
        (OcclusionParams, ["patch", 3], "params section 'occlusion' must be a mapping, got list"),
        (TuneParams, {"workers": 0}, r"tune.workers must be >= 1, got 0"),
    ],
)
def test_badly_typed_or_checked_values_name_the_dotted_key(cls, section, message):
    with pytest.raises(ValueError, match=message):
        cls.from_dict(section)


def test_nested_yaml_keys_fill_flat_attributes():
    data = DataParams.from_dict({"source": "hits", "hits": {"path": "x.pkl"},
                                 "synthetic": {"n": 500, "preset": "hard"},
                                 "split": {"val_fraction": 0.5}})
    assert (data.hits_path, data.synthetic_n, data.synthetic_preset) == ("x.pkl", 500, "hard")
    assert (data.test_fraction, data.val_fraction) == (0.25, 0.5)
    for section, message in [
            ({"source": "hits", "synthetic": {"size": 21}},
             r"unknown key\(s\) \['size'\] in params section 'data.synthetic'; allowed: "
             r"\['channels', 'n', 'overrides', 'preset', 'stamp_size'\]"),
            ({"source": "hits", "split": {"test": 0.1}},
             r"unknown key\(s\) \['test'\] in params section 'data.split'"),
            ({"source": "hits", "hits": "x.pkl"},
             "params section 'data.hits' must be a mapping, got str"),
            ({"source": "hits", "synthetic_n": 5},  # the attribute name is not a YAML key
             r"unknown key\(s\) \['synthetic_n'\] in params section 'data'; allowed: "
             r"\['hits', 'seed', 'source', 'split', 'synthetic'\]"),
            ({"source": "hits", "split": {"val_fraction": 0}},
             r"data.split.val_fraction must be in \(0, 1\), got 0")]:
        with pytest.raises(ValueError, match=message):
            DataParams.from_dict(section)


def test_nested_sections_are_parsed_from_their_defaults():
    cfg = TuneParams.from_dict({"workers": "2", "storage": None,
                                "estimator": {"fidelity": "bogus_median_r", "n_trials": 4},
                                "classifier": None})
    assert (cfg.workers, cfg.storage) == (2, "")
    # each target's study defaults to its own name, the rest to TuneTarget's defaults
    assert (cfg.estimator.study, cfg.estimator.fidelity, cfg.estimator.n_trials) == (
        "estimator", "bogus_median_r", 4)
    assert cfg.estimator.speed_batch == 2048 and cfg.classifier == TuneTarget("classifier")
    for section, message in [
            ({"estimator": {"enqueue_defaults": "no"}},
             "tune.estimator.enqueue_defaults must be true or false, got 'no'"),
            ({"classifier": {"val_limit": -1}}, r"tune.classifier.val_limit must be >= 0, got -1"),
            ({"classifier": 3}, "params section 'tune.classifier' must be a mapping, got int"),
            ({"estimator": {"space": {}, "pruner": 1}},
             r"unknown key\(s\) \['pruner'\] in params section 'tune.estimator'")]:
        with pytest.raises(ValueError, match=message):
            TuneParams.from_dict(section)


def test_synthetic_stamp_size_and_channels():
    data = DataParams.from_dict({"source": "synthetic"})
    assert data.synthetic_stamp_size == 21
    assert data.synthetic_channels == ("template", "science", "difference", "snr_difference")
    data = DataParams.from_dict({"source": "synthetic", "synthetic": {
        "stamp_size": 11, "channels": ["snr_difference", "template"]}})
    assert (data.synthetic_stamp_size, data.synthetic_channels) == (
        11, ("snr_difference", "template"))
    assert DataParams.from_dict({"source": "synthetic",
                                 "synthetic": {"stamp_size": 31.0}}).synthetic_stamp_size == 31
    size = "data.synthetic.stamp_size must be an odd integer >= 11"
    for synthetic, message in [
            ({"stamp_size": 20}, f"{size}, got 20"),
            ({"stamp_size": 9}, f"{size}, got 9"),
            ({"stamp_size": 21.5}, "data.synthetic.stamp_size must be an integer, got 21.5"),
            ({"channels": []}, r"data.synthetic.channels must name at least one channel"),
            ({"channels": ["science", "science"]},
             r"data.synthetic.channels must name .* each once, got \['science', 'science'\]"),
            ({"channels": ["template", "snr"]},
             r"data.synthetic.channels\[1\] must be one of \('template', 'science', "
             r"'difference', 'snr_difference'\), got 'snr'"),
            ({"channels": "science"}, "data.synthetic.channels must be a list, got 'science'")]:
        with pytest.raises(ValueError, match=message):
            DataParams.from_dict({"source": "synthetic", "synthetic": synthetic})


def test_required_keys_and_direct_construction():
    with pytest.raises(ValueError, match="params section 'data' lacks the key 'source'"):
        DataParams.from_dict({"source": None})
    # TuneTarget.study has no default: parsed alone, it is required
    with pytest.raises(ValueError, match="params section 'target' lacks the key 'study'"):
        parse_section(TuneTarget, {}, "target")
    assert parse_section(TuneTarget, {"study": "s", "epochs": "3"}, "target").epochs == 3
    # only from_dict checks: a dataclass built directly keeps its defaults untouched
    assert DataParams().source == "synthetic" and OcclusionParams(stride=3).stride == 3


def test_an_imported_classifier_needs_its_file_and_one_way_to_its_size():
    cfg = ClassifierParams.from_dict({"source": "file", "file": {"path": "data/raw/net.h5",
                                                                 "pad": 3, "real_index": 0}})
    assert (cfg.file_path, cfg.file_pad, cfg.file_crop, cfg.file_real_index,
            cfg.file_output) == ("data/raw/net.h5", 3, 0, 0, "softmax")
    with pytest.raises(ValueError, match="classifier.file.path must name the model file"):
        ClassifierParams.from_dict({"source": "file"})
    with pytest.raises(ValueError, match="at most one of them may be non-zero"):
        ClassifierParams.from_dict({"file": {"pad": 1, "crop": 1}})
    with pytest.raises(ValueError, match=r"classifier.file.output must be one of"):
        ClassifierParams.from_dict({"file": {"output": "logits"}})
    with pytest.raises(ValueError, match=r"classifier.source must be one of"):
        ClassifierParams.from_dict({"source": "download"})
