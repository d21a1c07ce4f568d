"""The file glue: params.yaml loading and atomic writes."""

from __future__ import annotations

import pytest
import yaml

from pipeline.glue.files import atomic_paths, load_params, write_json


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


# --- the generic section parser -------------------------------------------------------------
