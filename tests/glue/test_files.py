"""The file glue: params.yaml loading and atomic writes."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from pipeline.glue.files import atomic_folder, atomic_paths, load_params, write_json


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


def test_atomic_folder_swaps_in_whole_or_leaves_the_old_one(tmp_path):
    target = tmp_path / "kinds"
    target.mkdir()
    (target / "old.png").write_text("old")
    with pytest.raises(RuntimeError), atomic_folder(target) as temp:
        (temp / "new.png").write_text("new")
        raise RuntimeError("drawing failed")
    assert [p.name for p in tmp_path.iterdir()] == ["kinds"]  # no temporary folder left
    assert [p.name for p in target.iterdir()] == ["old.png"]
    with atomic_folder(target) as temp:
        (temp / "new.png").write_text("new")
    assert [p.name for p in tmp_path.iterdir()] == ["kinds"]
    assert [p.name for p in target.iterdir()] == ["new.png"]


def test_a_killed_writers_temporary_folder_is_removed_at_the_next_start(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    stale = tmp_path / f".kinds.{dead}.abcd1234.tmp"
    (stale / "sub").mkdir(parents=True)
    (stale / "sub" / "half.png").write_text("half")
    with atomic_folder(tmp_path / "kinds") as temp:
        (temp / "new.png").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kinds"]
