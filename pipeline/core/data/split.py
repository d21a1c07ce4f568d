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

    Raises
    ------
    ValueError when ``labels`` hold one class only, or too few stamps for every split to
    hold both classes.
    """
    labels = np.asarray(labels)
    classes, counts = np.unique(labels, return_counts=True)
    if len(classes) < 2:
        found = f"all {len(labels)} stamps are of class {classes[0]}" if len(classes) else \
            "no stamps"
        raise ValueError(f"{found}: the split needs stamps of both classes (1 real, 0 bogus)")
    smallest = min(test_fraction, (1 - test_fraction) * val_fraction,
                   (1 - test_fraction) * (1 - val_fraction))
    per_class = ", ".join(f"{n} of class {c}" for c, n in zip(classes, counts, strict=True))
    too_few = ValueError(
        f"{len(labels)} stamps ({per_class}) are too few for the split (test "
        f"{test_fraction}, val {val_fraction} of the rest):"
        f" train, val and test each need both classes, about {int(np.ceil(1 / smallest))}"
        " stamps of each class at least")
    everything = np.arange(len(labels))
    try:
        rest, test = train_test_split(
            everything, test_size=test_fraction, stratify=labels, random_state=seed
        )
        train, val = train_test_split(
            rest, test_size=val_fraction, stratify=labels[rest], random_state=seed
        )
    except ValueError:  # scikit-learn: a class too small to stratify, a split too small
        raise too_few from None
    splits = {name: np.sort(idx).astype(np.int64) for name, idx in
              (("train", train), ("val", val), ("test", test))}
    if any(len(np.unique(labels[idx])) < len(classes) for idx in splits.values()):
        raise too_few
    return splits
