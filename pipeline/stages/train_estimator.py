"""DVC stage ``train_estimator``: learn to predict the exact maps in one forward pass.

Reads ``<prepared_dir>/{train,val,test}.npz``, ``<occlusion_dir>/{train,val,test}.npz`` and
``<models_dir>/classifier.keras``; writes ``<models_dir>/estimator.keras`` (the explainer:
classifier pass + estimator [+ doubt head], stamps (N, H, W, C) -> {maps (N, H, W), target
(N,), base_prob (N,)[, doubt (N,)]}),
``<metrics_dir>/train_estimator.json`` (training figures and the test-split fidelity
report) and ``<plots_dir>/train_estimator/gallery.png``; logs the run ``train_estimator``
and registers a new version of ``occlusion-estimator`` (an MLflow pyfunc), tagged complete
as the stage's last act (``pipeline.glue.completion``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pipeline.core import fidelity, plots, selective
from pipeline.core.params import DataParams, EstimatorParams, OcclusionParams, PathsParams
from pipeline.glue import tracking
from pipeline.glue.artifacts import (
    check_maps_explain_predictions,
    load_model,
    load_stamps_and_maps,
    registered_version,
    stamp_geometry,
)
from pipeline.glue.completion import mark_complete
from pipeline.glue.files import atomic_paths, load_params, run_stage, write_json
from pipeline.glue.processes import fault_point
from pipeline.glue.registry import register_explainer

REGISTERED_NAME = "occlusion-estimator"


def main() -> None:
    params = load_params()
    paths = PathsParams.from_dict(params.get("paths", {}))
    cfg = EstimatorParams.from_dict(params.get("estimator", {}))
    data = DataParams.from_dict(params.get("data", {}))
    occlusion = OcclusionParams.from_dict(params.get("occlusion", {}))
    if occlusion.target != "predicted" or occlusion.reduce != "mean":
        raise ValueError("params.yaml: the estimator learns maps of the predicted class with "
                         "occlusion.reduce mean (what it can be conditioned on when served); "
                         f"got occlusion.target {occlusion.target!r}, reduce {occlusion.reduce!r}")
    splits = load_stamps_and_maps(paths.prepared_dir, paths.occlusion_dir)
    geometry = stamp_geometry(paths.prepared_dir)
    classifier = load_model(Path(paths.models_dir) / "classifier.keras")
    from pipeline.core.models.training import (
        condition_arrays,
        fit_estimator,
        with_quarter_turns,
    )

    if cfg.train_limit:
        splits["train"] = {key: value[:cfg.train_limit] for key, value in splits["train"].items()}
    exact_train_maps = len(splits["train"]["maps"])
    as_read = {name: dict(split) for name, split in splits.items()}  # before the turns
    turns = "off (estimator.quarter_turns false)"
    if cfg.quarter_turns:
        splits["train"], turns = with_quarter_turns(splits["train"], classifier, occlusion)
    for name, split in splits.items():
        split["condition"] = condition_arrays(classifier, cfg.condition, split["images"])
        # every condition starts with the one-hot predicted class
        check_maps_explain_predictions(paths.occlusion_dir, name, split["target"],
                                       split["condition"][:, :2].argmax(axis=1))

    def inputs(name):
        return [splits[name]["images"], splits[name]["condition"]]

    out_plots = Path(paths.plots_dir) / "train_estimator"
    with tracking.start_run("train_estimator", params={"estimator": params["estimator"]},
                            tags={"arch": cfg.arch}) as run:
        import mlflow

        from pipeline.core.models import estimators

        tracking.log_split_inputs(paths.prepared_dir, as_read, data.source)
        tracking.log_split_inputs(paths.occlusion_dir, as_read, "exact-maps",
                                  features="maps", targets="target")
        model, history, seconds = fit_estimator(
            cfg, classifier, splits, callbacks=[tracking.epoch_logger("train_estimator")],
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
        # the headline under the names every stage shares; the full report in the JSON
        mlflow.log_metrics({"train_seconds": seconds, "parameters": model.count_params(),
                            "epochs_run": figures["training"]["epochs_run"],
                            "best_val_loss": figures["training"]["best_val_loss"],
                            **tracking.fidelity_metrics(report["headline"])})

        gallery = out_plots / "gallery.png"
        with atomic_paths(gallery) as (temp,):
            val = splits["val"]
            plots.worst_and_random_gallery(
                val["images"], val["labels"], val["maps"], estimates["val"],
                f"{cfg.arch}: val stamps, worst and random, per class",
                predicted=val["target"], probability=val["base_prob"],
                channels=geometry.channels).savefig(temp, format="png")
        mlflow.log_artifact(str(gallery))

        doubt_head = None
        if cfg.doubt:
            doubt_head, figures["doubt"] = _doubt(classifier, splits, estimates, cfg)
            mlflow.log_metrics(tracking.selective_metrics(figures["doubt"]["test"]))
        mlflow.log_dict(figures, "train_estimator.json")
        explainer = estimators.explainer_with_doubt(classifier, model, cfg.condition,
                                                    doubt_head)
        target = Path(paths.models_dir) / "estimator.keras"
        classifier_version = registered_version(paths.metrics_dir, "train_classifier").get(
            "version", "")
        with atomic_paths(target) as (temp,):
            explainer.save(temp)
        fault_point("train_estimator:logged")
        # registered from its final name, so the store's copy is called estimator.keras
        version = register_explainer(target, "estimator", REGISTERED_NAME,
                                     splits["val"]["images"][:4],
                                     tags={"arch": cfg.arch, "run_id": run.info.run_id,
                                           "doubt": str(cfg.doubt).lower(),
                                           # the classifier whose exact maps it estimates:
                                           # `occmap explain --exact-share` recomputes with it
                                           "classifier_version": str(classifier_version),
                                           **{k: v for k, v in report["headline"].items()
                                              if k != "goals"}},
                                     description=_description(cfg, figures,
                                                              classifier_version))
        fault_point("train_estimator:registered")
        figures["registered"] = {"name": REGISTERED_NAME, "version": int(version.version),
                                 "run_id": run.info.run_id}

    write_json(Path(paths.metrics_dir) / "train_estimator.json", figures)
    fault_point("train_estimator:written")
    mark_complete(version)  # last: until here the version is refused by every consumer
    doubt_line = ""
    if "doubt" in figures:
        test = figures["doubt"]["test"]
        doubt_line = (f"; doubt: Spearman with the error {_fmt(test['spearman_doubt_error'])}, "
                      f"bad maps {test['bad_estimate']} -> {test['bad_delivered']} with "
                      f"{test['exact_share']:.0%} recomputed")
    head = {key: "n/a" if value is None else f"{value:.3f}"
            for key, value in report["headline"].items() if key not in ("goals", "meets_goals")}
    print(f"train_estimator: {cfg.arch} ({model.count_params()} parameters), {seconds:.0f} s; "
          f"test: median r on non-trivial maps real {head['real_median_r']} / bogus "
          f"{head['bogus_median_r']}, MSE skill {head['mse_skill_overall']}; registered "
          f"{REGISTERED_NAME} v{version.version}{doubt_line}")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _description(cfg: EstimatorParams, figures: dict, classifier_version) -> str:
    """The registered version's description: what it is and its test-split headline."""
    head = figures["test"]["headline"]
    doubt = ("with a doubt per map (Spearman with the map's error "
             f"{_fmt(figures['doubt']['test']['spearman_doubt_error'])} on the test split)"
             if "doubt" in figures else "without a doubt per map")
    return (f"One-pass estimator ({cfg.arch}, condition {cfg.condition}, "
            f"{figures['training']['parameters']:,} parameters) of the exact occlusion maps "
            f"of hits-classifier v{classifier_version or '?'}, {doubt}: stamps (N, H, W, C) "
            f"-> maps (N, H, W), target, base_prob. Test split, non-trivial maps: median r "
            f"real {_fmt(head['real_median_r'])} / bogus {_fmt(head['bogus_median_r'])}, "
            f"mean SSIM real {_fmt(head['real_mean_ssim'])} / bogus "
            f"{_fmt(head['bogus_mean_ssim'])}, MSE skill {_fmt(head['mse_skill_overall'])}.")


def _doubt(classifier, splits: dict, estimates: dict, cfg: EstimatorParams):
    """(doubt model, figures): the doubt head trained on the validation split's estimates
    (``estimates["val"]`` (N, H, W)) and their true errors, maps the estimator did not
    learn from; judged on the test split at the default operating point (``evaluate``
    judges it in full)."""
    from pipeline.core.models.training import doubt_condition, fit_doubt_head, seen_channels

    def head_condition(split):
        return doubt_condition(classifier, split["condition"], cfg.condition)

    channels = seen_channels(classifier)
    val = splits["val"]
    judged = selective.map_errors(estimates["val"], val["maps"])
    head, history, seconds = fit_doubt_head(
        {"images": val["images"], "condition": head_condition(val), "maps": estimates["val"],
         "error": judged["error"]}, channels, seed=cfg.seed, epochs=cfg.doubt_epochs,
        verbose=0)
    test = splits["test"]
    doubt = head.predict([test["images"], head_condition(test), estimates["test"]],
                         batch_size=4096, verbose=0)
    on_test = selective.map_errors(estimates["test"], test["maps"])
    report = selective.selective_report(on_test["r"], on_test["non_trivial"], doubt,
                                        test["labels"], seed=cfg.seed)
    figures = {"training": {"maps": len(judged["error"]),
                            "non_trivial": int(judged["non_trivial"].sum()),
                            "parameters": head.count_params(),
                            "epochs_run": len(history["loss"]),
                            "best_val_loss": float(np.min(history["val_loss"])),
                            "seconds": seconds},
               "test": {key: report[key] for key in (
                   "exact_share", "spearman_doubt_error", "bad_share_estimate",
                   "bad_share_delivered", "bad_estimate", "bad_delivered", "p0_1_r_estimate",
                   "p0_1_r_delivered")}}
    return head, figures


if __name__ == "__main__":
    run_stage(main)
