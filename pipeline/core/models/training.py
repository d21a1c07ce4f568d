"""The training loop both stages and the searches share: fit with early stopping on the
validation loss, best weights restored, timed."""

from __future__ import annotations

import time

import keras


def fit_early_stopping(model: keras.Model, train: tuple, val: tuple, *, batch_size: int,
                       epochs: int, patience: int, callbacks=(), verbose: int = 0):
    """Fit compiled ``model`` on ``train`` = (inputs, targets), early-stopping on the loss
    of ``val`` = (inputs, targets) after ``patience`` epochs without improvement, with the
    best weights restored. Returns (history dict, training seconds)."""
    stopper = keras.callbacks.EarlyStopping(monitor="val_loss", patience=patience,
                                            restore_best_weights=True)
    start = time.perf_counter()
    history = model.fit(*train, validation_data=val, batch_size=batch_size, epochs=epochs,
                        shuffle=True, callbacks=[stopper, *callbacks], verbose=verbose).history
    return history, time.perf_counter() - start
