"""The training the stages and the searches share: one fit loop with early stopping on the
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


# ----------------------------------------------------------------------------------------
# The fit workflows of the stages and the searches: params section + splits -> model
# ----------------------------------------------------------------------------------------

def fit_classifier(cfg, splits: dict, geometry, callbacks=(), verbose: int = 0):
    """Build the ``cfg`` (``ClassifierParams``) net for stamps of ``geometry`` and train it
    on ``splits["train"]`` (images (N, H, W, C) in [0, 1], labels (N,) class indices),
    early-stopping on ``splits["val"]``'s loss with the best weights restored.
    Returns (model, history dict, training seconds)."""
    from pipeline.core.models.classifiers import build_classifier, compile_classifier

    keras.utils.set_random_seed(cfg.seed)
    model = compile_classifier(build_classifier(cfg.arch, cfg.channels, geometry, **cfg.hparams),
                               cfg.optimizer, cfg.learning_rate)
    history, seconds = fit_early_stopping(
        model, (splits["train"]["images"], splits["train"]["labels"]),
        (splits["val"]["images"], splits["val"]["labels"]), batch_size=cfg.batch_size,
        epochs=cfg.epochs, patience=cfg.patience, callbacks=callbacks, verbose=verbose)
    return model, history, seconds


def condition_arrays(classifier, condition: str, images: np.ndarray,
                     block: int = 1024) -> np.ndarray:
    """(N, D) float32: what an estimator is conditioned on (``estimators.condition_model``)
    for ``images`` (N, H, W, C), computed block by block: ``predict`` would hold every
    block and their concatenation, twice the memory of the result (~100 KB per stamp for
    a deep net's taps)."""
    from pipeline.core.models import estimators

    conditioner = estimators.condition_model(classifier, condition)
    out = np.empty((len(images), conditioner.output.shape[-1]), np.float32)
    for start in range(0, len(images), block):
        out[start:start + block] = conditioner.predict_on_batch(images[start:start + block])
    return out


def with_quarter_turns(split: dict, classifier, occlusion) -> tuple[dict, str]:
    """``split`` (images (N, H, W, C), maps (N, H, W) and per-stamp arrays) with each
    map's three quarter turns appended when those are exact maps as well, and why or why
    not (for the record).

    They are when the patch grid of ``occlusion`` (an ``OcclusionParams``) maps onto itself
    under a quarter turn and the classifier's output does not change when a stamp is
    turned (checked on up to 256 of the stamps).
    """
    from pipeline.core.models.classifiers import quarter_turn_invariant
    from pipeline.core.occlusion import quarter_turn_symmetric, quarter_turns

    height, width = split["images"].shape[1:3]
    if not quarter_turn_symmetric(height, width, patch=occlusion.patch,
                                  stride=occlusion.stride, padding=occlusion.padding):
        return split, "not used: the patch grid is not symmetric under a quarter turn"
    if not quarter_turn_invariant(classifier, split["images"][:256]):
        return split, "not used: the classifier's output changes when a stamp is turned"
    images, maps = quarter_turns(split["images"], split["maps"])
    turned = {key: np.tile(value, (4,) + (1,) * (value.ndim - 1))
              for key, value in split.items() if key not in ("images", "maps")}
    return turned | {"images": images, "maps": maps}, "used: 4 x the exact training maps"


def seen_channels(classifier) -> tuple[int, ...]:
    """The stamp channels ``classifier`` reads (all of them where it selects none)."""
    from pipeline.core.models.classifiers import seen_channels_predict_fn

    seen = seen_channels_predict_fn(classifier)[1]
    return tuple(seen) if seen is not None else tuple(range(classifier.input.shape[-1]))


def doubt_condition(classifier, condition: np.ndarray, kind: str) -> np.ndarray:
    """The leading columns of an estimator's ``condition`` (N, D) of kind ``kind``
    (``EstimatorParams.condition``) that the doubt head reads: all but the flattened
    taps of a ``taps`` condition (``doubt.doubt_condition_size``)."""
    from pipeline.core.models import doubt, estimators

    taps = int(np.prod(estimators.tap_shape(classifier))) if kind == "taps" else 0
    return condition[:, :doubt.doubt_condition_size(condition.shape[1], taps)]


def fit_estimator(cfg, classifier, splits: dict, callbacks=(), verbose: int = 0):
    """Build the ``cfg`` (``EstimatorParams``) estimator for ``classifier`` and train it on
    ``splits["train"]`` (images (N, H, W, C), condition (N, D), maps (N, H, W) in [-1, 1]),
    early-stopping on ``splits["val"]``'s loss with the best weights restored. Returns
    (model, history dict, training seconds)."""
    from pipeline.core.models import estimators
    from pipeline.core.models.classifiers import make_optimizer

    keras.utils.set_random_seed(cfg.seed)
    model = estimators.build_estimator(
        cfg.arch, classifier, seen_channels(classifier), splits["train"]["condition"].shape[1],
        copy_weights=cfg.copy_weights, freeze_encoder=cfg.freeze_encoder, **cfg.hparams)
    model.compile(optimizer=make_optimizer(cfg.optimizer, cfg.learning_rate),
                  loss=estimators.relative_map_loss(cfg.shape_weight), metrics=["mse"])
    history, seconds = fit_early_stopping(
        model, ([splits["train"]["images"], splits["train"]["condition"]],
                splits["train"]["maps"]),
        ([splits["val"]["images"], splits["val"]["condition"]], splits["val"]["maps"]),
        batch_size=cfg.batch_size, epochs=cfg.epochs, patience=cfg.patience,
        callbacks=callbacks, verbose=verbose, seed=cfg.seed)
    return model, history, seconds


def fit_doubt_head(split: dict, channels, *, seed: int = 0, epochs: int = 30,
                   patience: int = 4, batch_size: int = 256, learning_rate: float = 0.001,
                   holdout: float = 0.2, callbacks=(), verbose: int = 0):
    """Train the doubt head (``doubt.build_doubt_head``) on ``split``: images (N, H, W, C)
    in [0, 1], condition (N, D) (without the taps, ``doubt.doubt_condition_size``),
    estimated maps (N, H, W) of stamps the estimator did NOT learn from (the validation
    split: on its training maps its errors are too small) and error (N,), their true
    error (``selective.error_of``). The last ``holdout`` share of the rows (after a seeded
    shuffle) early-stops the fit. Returns (doubt model [stamps, condition, maps] ->
    doubt (N,) in [0, 2], history dict, training seconds)."""
    from pipeline.core.models import doubt
    from pipeline.core.models.classifiers import make_optimizer

    n = len(split["error"])
    if n < 10:
        raise ValueError(f"the doubt head needs at least 10 maps to learn from, got {n}")
    keras.utils.set_random_seed(seed)
    order = np.random.default_rng(seed).permutation(n)
    cut = n - max(1, int(round(holdout * n)))
    rows = {"train": np.sort(order[:cut]), "val": np.sort(order[cut:])}
    target = doubt.doubt_target(split["error"])
    head = doubt.build_doubt_head(split["images"].shape[1:], tuple(channels),
                                  split["condition"].shape[1])
    head.compile(optimizer=make_optimizer("adam", learning_rate), loss="mse")

    def part(name):
        picked = rows[name]
        return ([split["images"][picked], split["condition"][picked],
                 split["maps"][picked]], target[picked])

    history, seconds = fit_early_stopping(head, part("train"), part("val"),
                                          batch_size=batch_size, epochs=epochs,
                                          patience=patience, callbacks=callbacks,
                                          verbose=verbose, seed=seed)
    return doubt.doubt_model(head), history, seconds
