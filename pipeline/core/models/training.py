"""The training loop both stages and the searches share: fit with early stopping on the
validation loss, best weights restored, timed."""

from __future__ import annotations

import time

import keras
import numpy as np


class ArrayBatches(keras.utils.PyDataset):
    """Shuffled mini-batches (inputs, targets) cut from in-memory numpy arrays as they are
    needed. ``model.fit`` on plain arrays first copies them whole into tensors, which
    doubles the memory of large training sets (the estimator's ``taps`` conditions of a
    deep classifier: ~100 KB per stamp); this keeps one copy.

    inputs: an array, or a list of arrays, with N rows each (batches keep that form);
    targets: an array with N rows.
    """

    def __init__(self, inputs: list, targets, batch_size: int, *, shuffle: bool = True,
                 seed: int = 0):
        super().__init__()
        self.several = isinstance(inputs, (list, tuple))
        self.inputs, self.targets = list(inputs) if self.several else [inputs], targets
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self._rng = np.random.default_rng(seed)
        self._order = np.arange(len(targets))
        self.on_epoch_end()

    def __len__(self) -> int:
        return -(-len(self.targets) // self.batch_size)

    def __getitem__(self, index: int):
        rows = np.sort(self._order[index * self.batch_size:(index + 1) * self.batch_size])
        batch = tuple(array[rows] for array in self.inputs)
        return (batch if self.several else batch[0]), self.targets[rows]

    def on_epoch_end(self) -> None:
        if self.shuffle:
            self._rng.shuffle(self._order)


# Training inputs larger than this are fed batch by batch rather than copied into tensors
# whole (a deep classifier's taps for the estimator; stamps alone are far smaller).
STREAM_ABOVE_BYTES = 1 << 30


def fit_early_stopping(model: keras.Model, train: tuple, val: tuple, *, batch_size: int,
                       epochs: int, patience: int, callbacks=(), verbose: int = 0,
                       stream: bool | None = None, seed: int = 0):
    """Fit compiled ``model`` on ``train`` = (inputs, targets), early-stopping on the loss
    of ``val`` = (inputs, targets) after ``patience`` epochs without improvement, with the
    best weights restored. ``stream``: feed both from the arrays batch by batch
    (``ArrayBatches``, shuffled with ``seed``) instead of copying them into tensors first;
    None: when the training inputs exceed ``STREAM_ABOVE_BYTES``.
    Returns (history dict, training seconds)."""
    if stream is None:
        inputs = train[0] if isinstance(train[0], (list, tuple)) else [train[0]]
        stream = sum(array.nbytes for array in inputs) > STREAM_ABOVE_BYTES
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                            restore_best_weights=True)
    fit_args = {"epochs": epochs, "callbacks": [stopper, *callbacks], "verbose": verbose}
    start = time.perf_counter()
    if stream:
        history = model.fit(ArrayBatches(*train, batch_size, seed=seed),
                            validation_data=ArrayBatches(*val, batch_size, shuffle=False),
                            **fit_args).history
    else:
        history = model.fit(*train, validation_data=val, batch_size=batch_size, shuffle=True,
                            **fit_args).history
    return history, time.perf_counter() - start
