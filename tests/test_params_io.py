"""params.yaml sections and the atomic-write glue."""

from __future__ import annotations

import pytest
import yaml

from pipeline.core.params import DataParams, EstimatorParams, PathsParams
from pipeline.io import atomic_paths, load_params, write_json


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


def test_load_params_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="params file not found"):
        load_params(tmp_path / "params.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("data: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        load_params(bad)


def test_atomic_paths_leave_nothing_on_failure(tmp_path):
    targets = [tmp_path / "out" / "a.npz", tmp_path / "out" / "b.npz"]
    with pytest.raises(RuntimeError), atomic_paths(*targets) as temps:
        temps[0].write_text("half")
        raise RuntimeError("interrupted")
    assert list((tmp_path / "out").iterdir()) == []


def test_atomic_paths_rename_all_on_success(tmp_path):
    targets = [tmp_path / "a.txt", tmp_path / "b.txt"]
    with atomic_paths(*targets) as temps:
        for temp, text in zip(temps, ("A", "B"), strict=True):
            temp.write_text(text)
    assert [t.read_text() for t in targets] == ["A", "B"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "b.txt"]


def test_write_json(tmp_path):
    write_json(tmp_path / "m" / "x.json", {"b": 1, "a": {"c": 2.5}})
    assert yaml.safe_load((tmp_path / "m" / "x.json").read_text()) == {"a": {"c": 2.5}, "b": 1}
