"""The original study's stratified train / validation / test split."""

from __future__ import annotations

import numpy as np
from sklearn.model_selection import train_test_split

SPLITS = ("train", "val", "test")


def split_indices(
    labels: np.ndarray, *, seed: int, test_fraction: float = 0.25, val_fraction: float = 0.25
) -> dict[str, np.ndarray]:
    """Stratified split of stamp indices.

    ``test_fraction`` of all stamps go to test; ``val_fraction`` of the rest to validation
    (0.25 and 0.25 give the study's 56,250 / 18,750 / 25,000 of 100,000).

    Parameters
    ----------
    labels : (N,) int class labels.

    Returns
    -------
    dict with ``train``, ``val``, ``test``: sorted int64 index arrays that partition
    range(N), each with the class proportions of ``labels`` (to within one stamp).
    """
    labels = np.asarray(labels)
    everything = np.arange(len(labels))
    rest, test = train_test_split(
        everything, test_size=test_fraction, stratify=labels, random_state=seed
    )
    train, val = train_test_split(
        rest, test_size=val_fraction, stratify=labels[rest], random_state=seed
    )
    return {name: np.sort(idx).astype(np.int64) for name, idx in
            (("train", train), ("val", val), ("test", test))}
