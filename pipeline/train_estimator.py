"""DVC stage ``train_estimator``: learn to predict the exact maps in one forward pass.

Reads ``<prepared_dir>/{train,val,test}.npz``, ``<occlusion_dir>/{train,val,test}.npz`` and
``<models_dir>/classifier.keras``; writes ``<models_dir>/estimator.keras`` (the explainer:
classifier pass + estimator, stamps (N, 21, 21, 4) -> maps (N, 21, 21)),
``<metrics_dir>/train_estimator.json`` (training figures and the test-split fidelity
report) and ``<plots_dir>/train_estimator/gallery.png``; logs the run ``train_estimator``
and registers a new version of ``occlusion-estimator`` (an MLflow pyfunc).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pipeline.core import fidelity, plots, tracking
from pipeline.core.data.split import SPLITS
from pipeline.core.params import EstimatorParams, OcclusionParams, PathsParams
from pipeline.io import (
    atomic_paths,
    load_classifier,
    load_params,
    load_split,
    run_stage,
    write_json,
)

REGISTERED_NAME = "occlusion-estimator"


def load_inputs(paths: PathsParams) -> dict[str, dict[str, np.ndarray]]:
    """Per split: stamps, labels and the exact maps with their target class; a clear error
    when the maps and the stamps disagree in number."""
    splits = {}
    for name in SPLITS:
        stamps = load_split(Path(paths.prepared_dir) / f"{name}.npz", ("images", "labels"))
        exact_file = Path(paths.occlusion_dir) / f"{name}.npz"
        exact = load_split(exact_file, ("maps", "target", "base_prob"))
        if len(exact["maps"]) != len(stamps["labels"]):
            raise ValueError(f"{exact_file}: {len(exact['maps'])} maps for "
                             f"{len(stamps['labels'])} stamps (stale maps? run dvc repro)")
        splits[name] = stamps | exact
    return splits


def attach_conditions(splits: dict, classifier, condition: str, occlusion_dir: str) -> None:
    """Add ``condition`` (N, D) float32, what the estimator is conditioned on, to each split;
    a clear error when the maps explain another class than the classifier predicts."""
    from pipeline.core.models import estimators

    conditioner = estimators.condition_model(classifier, condition)
    width = conditioner.output.shape[-1]
    for name, split in splits.items():
        # Filled block by block: predict() would hold every block and their concatenation,
        # twice the memory of the result (~100 KB per stamp for a deep net's taps).
        split["condition"] = np.empty((len(split["images"]), width), np.float32)
        for start in range(0, len(split["images"]), 1024):
            split["condition"][start:start + 1024] = conditioner.predict_on_batch(
                split["images"][start:start + 1024])
        predicted = split["condition"][:, :2].argmax(axis=1)
        stale = float((predicted != split["target"]).mean())
        if stale > 0.001:
            raise ValueError(f"{occlusion_dir}/{name}.npz: {stale:.1%} of the maps explain "
                             "another class than the classifier predicts (stale maps? run "
                             "dvc repro)")


def add_quarter_turns(split: dict, classifier, occlusion: OcclusionParams) -> tuple[dict, str]:
    """``split`` (images, labels, maps, target, base_prob) with each map's three quarter
    turns appended when those are exact maps as well, and why or why not (for the record).

    They are when the patch grid maps onto itself under a quarter turn and the classifier's
    output does not change when a stamp is turned (checked on up to 256 of the stamps).
    """
    from pipeline.core.models.classifiers import quarter_turn_invariant
    from pipeline.core.occlusion import quarter_turn_symmetric, quarter_turns

    if not quarter_turn_symmetric(21, 21, patch=occlusion.patch, stride=occlusion.stride,
                                  padding=occlusion.padding):
        return split, "not used: the patch grid is not symmetric under a quarter turn"
    if not quarter_turn_invariant(classifier, split["images"][:256]):
        return split, "not used: the classifier's output changes when a stamp is turned"
    images, maps = quarter_turns(split["images"], split["maps"])
    turned = {key: np.tile(value, (4,) + (1,) * (value.ndim - 1))
              for key, value in split.items() if key not in ("images", "maps")}
    return turned | {"images": images, "maps": maps}, "used: 4 x the exact training maps"


def fit_estimator(cfg: EstimatorParams, classifier, splits: dict, callbacks=(),
                  verbose: int = 0):
    """Build the ``cfg`` estimator for ``classifier`` and train it on ``splits["train"]``
    (images (N, 21, 21, 4), condition (N, D), maps (N, 21, 21) in [-1, 1]), early-stopping
    on ``splits["val"]``'s loss with the best weights restored. Returns (model, history
    dict, training seconds)."""
    import keras

    from pipeline.core.models import estimators
    from pipeline.core.models.classifiers import make_optimizer
    from pipeline.core.models.training import fit_early_stopping

    keras.utils.set_random_seed(cfg.seed)
    model = estimators.build_estimator(
        cfg.arch, classifier, _seen_channels(classifier), splits["train"]["condition"].shape[1],
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


def main() -> None:
    params = load_params()
    paths = PathsParams.from_dict(params.get("paths", {}))
    cfg = EstimatorParams.from_dict(params.get("estimator", {}))
    occlusion = OcclusionParams.from_dict(params.get("occlusion", {}))
    if occlusion.target != "predicted" or occlusion.reduce != "mean":
        raise ValueError("params.yaml: the estimator learns maps of the predicted class with "
                         "occlusion.reduce mean (what it can be conditioned on when served); "
                         f"got occlusion.target {occlusion.target!r}, reduce {occlusion.reduce!r}")
    splits = load_inputs(paths)
    classifier = load_classifier(Path(paths.models_dir) / "classifier.keras")
    if cfg.train_limit:
        splits["train"] = {key: value[:cfg.train_limit] for key, value in splits["train"].items()}
    exact_train_maps = len(splits["train"]["maps"])
    turns = "off (estimator.quarter_turns false)"
    if cfg.quarter_turns:
        splits["train"], turns = add_quarter_turns(splits["train"], classifier, occlusion)
    attach_conditions(splits, classifier, cfg.condition, paths.occlusion_dir)

    def inputs(name):
        return [splits[name]["images"], splits[name]["condition"]]

    out_plots = Path(paths.plots_dir) / "train_estimator"
    with tracking.start_run("train_estimator", params={"estimator": params["estimator"]},
                            tags={"arch": cfg.arch}) as run:
        import mlflow

        from pipeline.core.models import estimators

        model, history, seconds = fit_estimator(
            cfg, classifier, splits, callbacks=[tracking.epoch_logger()],
            verbose=1 if sys.stdout.isatty() else 2)

        # The baseline is the spec's: the mean exact map of the training stamps as they are
        # (the turned copies come after them), so figures compare across settings.
        class_means = fidelity.class_mean_maps(splits["train"]["maps"][:exact_train_maps],
                                               splits["train"]["target"][:exact_train_maps])
        estimates = {name: model.predict(inputs(name), batch_size=4096, verbose=0)
                     for name in ("val", "test")}
        report = fidelity.fidelity_report(estimates["test"], splits["test"]["maps"],
                                          splits["test"]["labels"], splits["test"]["target"],
                                          class_means)
        figures = {
            "training": {"arch": cfg.arch, "condition": cfg.condition,
                         "parameters": model.count_params(),
                         "trainable_parameters": int(sum(np.prod(w.shape)
                                                         for w in model.trainable_weights)),
                         "train_maps": exact_train_maps,
                         "quarter_turns": turns,
                         "train_maps_with_turns": len(splits["train"]["maps"]),
                         "epochs_run": len(history["loss"]),
                         "best_epoch": int(np.argmin(history["val_loss"])) + 1,
                         "best_val_loss": float(np.min(history["val_loss"])),
                         "seconds": seconds},
            "test": report,
        }
        mlflow.log_metrics({"train_seconds": seconds, "parameters": model.count_params(),
                            **{f"test_{key}": float(value)
                               for key, value in report["headline"].items()
                               if isinstance(value, (int, float)) and value is not None}})

        gallery = out_plots / "gallery.png"
        with atomic_paths(gallery) as (temp,):
            plots.worst_and_random_gallery(
                splits["val"]["images"], splits["val"]["labels"], splits["val"]["maps"],
                estimates["val"], f"{cfg.arch}: val stamps, worst and random, per class",
            ).savefig(temp, format="png")
        mlflow.log_artifact(str(gallery))

        explainer = estimators.explainer(classifier, model, cfg.condition)
        target = Path(paths.models_dir) / "estimator.keras"
        with atomic_paths(target) as (temp,):
            explainer.save(temp)
            from pipeline.serving import log_estimator

            version = log_estimator(temp, "estimator", REGISTERED_NAME,
                                    splits["val"]["images"][:4],
                                    tags={"arch": cfg.arch, "run_id": run.info.run_id,
                                          **{k: v for k, v in report["headline"].items()
                                             if k != "goals"}})
        figures["registered"] = {"name": REGISTERED_NAME, "version": int(version.version),
                                 "run_id": run.info.run_id}

    write_json(Path(paths.metrics_dir) / "train_estimator.json", figures)
    head = {key: "n/a" if value is None else f"{value:.3f}"
            for key, value in report["headline"].items() if key not in ("goals", "meets_goals")}
    print(f"train_estimator: {cfg.arch} ({model.count_params()} parameters), {seconds:.0f} s; "
          f"test: median r on non-trivial maps real {head['real_median_r']} / bogus "
          f"{head['bogus_median_r']}, MSE skill {head['mse_skill_overall']}; registered "
          f"{REGISTERED_NAME} v{version.version}")


def _seen_channels(classifier) -> tuple[int, ...]:
    from pipeline.core.models.classifiers import seen_channels_predict_fn

    channels = seen_channels_predict_fn(classifier)[1]
    return tuple(channels) if channels is not None else (0, 1, 2, 3)


if __name__ == "__main__":
    run_stage(main)
