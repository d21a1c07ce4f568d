"""The real-data witnesses: two classifiers the original study trained on the REAL HiTS2013
set, and the figures that compare how they see a stamp set with how they saw the real one.

The witness files stay outside the project (``../shared/witness/`` by default, read
through ``pipeline.core.models.imported``); what is here are the facts about them (file
names, how each takes a stamp, their real-data figures from the witness README) and the
pure arithmetic of the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class Witness:
    """A classifier trained on the real set: its file name, how it takes a stamp (the
    channels it sees, zero pixels added per side) and its figures on the real test split
    (the last 25,000 stamps of the pickle)."""

    name: str
    file: str
    channels: tuple[int, ...]
    pad: int
    real_data: dict = field(default_factory=dict)  # accuracy, real_recall, bogus_recall


WITNESSES = (
    # the study's 8,112-parameter net on the SNR-difference channel: 12,386 / 105 of the
    # true reals called real / bogus, 1,242 / 11,267 of the true bogus
    Witness("seed", "seed_cnn_real_hits.h5", (3,), 0,
            {"accuracy": 0.9461, "real_recall": 0.9916, "bogus_recall": 0.9007}),
    # a Deep-HiTS-shaped net on the SNR-difference channel zero-padded to 27x27: 12,385 /
    # 106 and 1,160 / 11,349
    Witness("deep", "deep_cnn_real_hits.h5", (3,), 3,
            {"accuracy": 0.9494, "real_recall": 0.9915, "bogus_recall": 0.9073}),
)
# p(real) histogram bins of the figures
HISTOGRAM_EDGES = np.linspace(0.0, 1.0, 11)


def witness_figures(p_real: np.ndarray, labels: np.ndarray,
                    kinds: np.ndarray | None = None) -> dict:
    """How a witness sees a stamp set: ``p_real`` (N,) its probabilities of the real
    class in [0, 1], ``labels`` (N,) 1 real / 0 bogus, ``kinds`` (N,) str the twin's kind
    of each stamp (optional). A stamp is called real when p_real > 0.5.

    Returns {n, accuracy, real_recall, bogus_recall, by_kind: {kind: {n, called_bogus}},
    histogram: {edges (11,), real (10,) counts, bogus (10,) counts}}.
    """
    p_real, labels = np.asarray(p_real, np.float64), np.asarray(labels)
    called_real = p_real > 0.5
    real, bogus = labels == 1, labels == 0
    figures = {
        "n": int(len(labels)),
        "accuracy": float((called_real == real).mean()) if len(labels) else float("nan"),
        "real_recall": _share(called_real[real]),
        "bogus_recall": _share(~called_real[bogus]),
        "histogram": {"edges": HISTOGRAM_EDGES.tolist(),
                      "real": np.histogram(p_real[real], HISTOGRAM_EDGES)[0].tolist(),
                      "bogus": np.histogram(p_real[bogus], HISTOGRAM_EDGES)[0].tolist()},
    }
    if kinds is not None:
        kinds = np.asarray(kinds).astype(str)
        figures["by_kind"] = {str(kind): {"n": int((kinds == kind).sum()),
                                          "called_bogus": _share(~called_real[kinds == kind])}
                              for kind in np.unique(kinds)}
    return figures


def gaps(figures: dict, witness: Witness) -> dict:
    """Twin minus real-data figure, per headline figure, in points (x 100)."""
    return {key: 100 * (figures[key] - witness.real_data[key]) for key in witness.real_data}


def _share(flags: np.ndarray) -> float:
    return float(flags.mean()) if len(flags) else float("nan")
