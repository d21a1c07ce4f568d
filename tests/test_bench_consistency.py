"""`python -m pipeline.bench consistency`: a net trained and tested on the twin, its figures
re-counted by hand from the same training repeated here."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from pipeline.bench import CONSISTENCY_NETS, REAL_DATA_ACCURACY, bench_consistency
from pipeline.core.data import synthetic
from pipeline.core.data.split import split_indices
from pipeline.core.geometry import StampGeometry
from pipeline.core.models.training import fit_classifier
from pipeline.core.params import ClassifierParams


def test_consistency_figures_are_the_test_split_counted_by_hand():
    n, seed = 320, 3
    got = bench_consistency("seed", "default", n, seed, epochs=1, patience=0)

    images, labels, meta = synthetic.make_stamps(n, seed=seed, preset="default")
    index = split_indices(labels, seed=seed)
    assert got["split"] == {"train": 180, "val": 60, "test": 80}
    splits = {k: {"images": images[i], "labels": labels[i]} for k, i in index.items()}
    cfg = ClassifierParams(**CONSISTENCY_NETS["seed"], epochs=1, patience=0, seed=seed)
    model, _, _ = fit_classifier(cfg, splits, StampGeometry.from_stamps(images))
    test = index["test"]
    called_real = model.predict(images[test], verbose=0)[:, 1] > 0.5
    truth = labels[test] == 1

    assert got["test"]["n"] == 80
    assert got["test"]["accuracy"] == pytest.approx(np.mean(called_real == truth))
    assert got["test"]["real_recall"] == pytest.approx(called_real[truth].mean())
    assert got["test"]["bogus_recall"] == pytest.approx((~called_real[~truth]).mean())
    kinds = meta["kind"][test]
    for kind, figures in got["test"]["by_kind"].items():
        assert figures["n"] == (kinds == kind).sum()
        assert figures["called_bogus"] == pytest.approx((~called_real[kinds == kind]).mean())
    assert got["gap_points"] == pytest.approx(100 * (got["test"]["accuracy"] - 0.946))
    assert got["accuracy_ceiling"] == synthetic.accuracy_ceiling("default")


def test_consistency_command_prints_json_last_and_refuses_tiny_sets(repo_root):
    command = [sys.executable, "-m", "pipeline.bench", "consistency", "--arch", "seed",
               "--preset", "hits", "--n", "200", "--epochs", "1"]
    result = subprocess.run(command, cwd=repo_root, capture_output=True, text=True,
                            timeout=300, check=True)
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    assert figures["preset"] == "hits" and figures["epochs_run"] == 1
    assert figures["real_data_accuracy"] == REAL_DATA_ACCURACY["seed"]
    assert "the same kind of net on real data: 0.9460" in result.stdout
    refused = subprocess.run([*command[:-4], "--n", "8"], cwd=repo_root, capture_output=True,
                             text=True, timeout=120)
    assert refused.returncode == 2 and "--n must be >= 16" in refused.stderr
