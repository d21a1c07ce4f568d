"""The witnesses' figures by hand, and `python -m pipeline.bench witness` on stand-in
witness files written here (the real ones stay outside the project)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import seed_like_model, write_legacy_sequential
from pipeline.core.data.synthetic import make_stamps
from pipeline.core.geometry import HITS
from pipeline.core.models.imported import import_classifier
from pipeline.core.witness import WITNESSES, gaps, witness_figures


def test_figures_worked_out_by_hand():
    p_real = np.array([0.95, 0.62, 0.25, 0.75, 0.15, 0.5])  # off the bin edges but 0.5
    labels = np.array([1, 1, 1, 0, 0, 0])
    kinds = np.array(["real", "real", "real", "trail", "trail", "noise_excursion"])
    f = witness_figures(p_real, labels, kinds)
    # called real: 0.95, 0.62, 0.75 (0.5 is not above 0.5)
    assert f["accuracy"] == pytest.approx(4 / 6)
    assert f["real_recall"] == pytest.approx(2 / 3) and f["bogus_recall"] == pytest.approx(2 / 3)
    assert f["by_kind"]["trail"] == {"n": 2, "called_bogus": 0.5}
    assert f["by_kind"]["noise_excursion"]["called_bogus"] == 1.0
    assert f["histogram"]["real"] == [0, 0, 1, 0, 0, 0, 1, 0, 0, 1]
    assert f["histogram"]["bogus"] == [0, 1, 0, 0, 0, 1, 0, 1, 0, 0]
    seed = WITNESSES[0]
    assert gaps(f, seed)["accuracy"] == pytest.approx(100 * (4 / 6 - 0.9461))


@pytest.mark.slow
def test_bench_witness_reads_the_files_through_the_importer(tmp_path):
    seed_file = write_legacy_sequential(seed_like_model(seed=3), tmp_path / "seed_cnn_real_hits.h5",
                                        (21, 21, 1))
    write_legacy_sequential(seed_like_model((27, 27, 1), seed=4),
                            tmp_path / "deep_cnn_real_hits.h5", (27, 27, 1))
    command = [sys.executable, "-m", "pipeline.bench", "witness", "--n", "300", "--seed", "5",
               "--preset", "default", "--witness-dir", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout.strip().splitlines()[-1])
    images, labels, meta = make_stamps(300, seed=5, preset="default")
    model, _ = import_classifier(seed_file, HITS, [3])
    expected = witness_figures(model.predict(images, verbose=0)[:, 1], labels, meta["kind"])
    got = figures["witnesses"]["seed"]
    assert got["accuracy"] == pytest.approx(expected["accuracy"])
    assert got["by_kind"] == expected["by_kind"] and got["histogram"] == expected["histogram"]
    assert got["real_data"]["accuracy"] == 0.9461 and set(figures["witnesses"]) == {"seed",
                                                                                  "deep"}
    assert "seed witness" in result.stdout and "called bogus, by kind" in result.stdout

    (tmp_path / "deep_cnn_real_hits.h5").unlink()
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "no witness file(s) ['deep_cnn_real_hits.h5']" in result.stderr
