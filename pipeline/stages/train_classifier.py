"""DVC stage ``train_classifier``: train the CNN the maps explain (``classifier.source:
train``) or import the user's own model file (``source: file``), log it to MLflow.

Reads ``<prepared_dir>/{train,val,test}.npz``; writes ``<models_dir>/classifier.keras``,
``<metrics_dir>/train_classifier.json`` and ``<plots_dir>/train_classifier/*``; logs the
run ``train_classifier`` and registers a new version of ``hits-classifier``, tagged
complete as the stage's last act (``pipeline.glue.completion``).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from pipeline.core import plots
from pipeline.core.classification import classification_figures
from pipeline.core.data import synthetic
from pipeline.core.params import ClassifierParams, DataParams, PathsParams
from pipeline.glue import tracking
from pipeline.glue.artifacts import load_prepared, stamp_geometry
from pipeline.glue.completion import mark_complete
from pipeline.glue.files import atomic_paths, load_params, run_stage, write_csv, write_json
from pipeline.glue.processes import fault_point
from pipeline.glue.registry import register_keras_model

REGISTERED_NAME = "hits-classifier"


def main() -> None:
    params = load_params()
    paths = PathsParams.from_dict(params.get("paths", {}))
    data = DataParams.from_dict(params.get("data", {}))
    cfg = ClassifierParams.from_dict(params.get("classifier", {}))
    splits = load_prepared(paths.prepared_dir)
    geometry = stamp_geometry(paths.prepared_dir)
    # An imported file is read and checked before any run starts: a bad file leaves no run,
    # no version and no output. TensorFlow starts only here or in fit_classifier.
    imported = _import(cfg, geometry, splits["val"]["images"]) if cfg.source == "file" else None
    arch = cfg.arch if imported is None else "imported"

    out_plots = Path(paths.plots_dir) / "train_classifier"
    tags = {"arch": arch, "classifier.source": cfg.source}
    if imported is not None:
        tags |= {f"file.{key}": imported[1][key] for key in ("name", "format", "sha256")}
    with tracking.start_run("train_classifier",
                            params={"classifier": params["classifier"], "data": params["data"]},
                            tags=tags) as run:
        import mlflow

        tracking.log_split_inputs(paths.prepared_dir, splits, data.source)
        if imported is None:
            from pipeline.core.models.training import fit_classifier

            model, history, seconds = fit_classifier(
                cfg, splits, geometry, callbacks=[tracking.epoch_logger("train_classifier")],
                verbose=1 if sys.stdout.isatty() else 2)
        else:
            (model, facts), history = imported, {"loss": []}
            seconds = facts.pop("seconds")
            source = Path(cfg.file_path)
            # the user's own file, as it was read: the version's provenance
            (mlflow.log_artifacts if source.is_dir() else mlflow.log_artifact)(
                str(source), "source_file" if source.is_dir() else None)

        figures = {}
        for name in ("val", "test"):
            probabilities = model.predict(splits[name]["images"], batch_size=4096, verbose=0)
            figures[name] = classification_figures(splits[name]["labels"], probabilities)
        test_predicted = probabilities.argmax(axis=1)
        figures["training"] = {
            "arch": arch, "source": cfg.source, "channels": list(cfg.channels),
            "parameters": model.count_params(),
            "stamp_shape": list(geometry.shape), "stamp_channels": list(geometry.channels),
            "epochs_run": len(history["loss"]),
            "best_epoch": (int(np.argmin(history["val_loss"])) + 1 if history["loss"]
                           else None),
            "seconds": seconds,
        }
        if imported is not None:
            figures["training"]["file"] = facts
        figures["accuracy_ceiling"] = (
            synthetic.accuracy_ceiling(data.synthetic_preset, **data.synthetic_overrides)
            if data.source == "synthetic" else None)

        # The headline under the names every stage shares (step 0: MLflow links those to
        # the model logged below); "best_val_": the restored best epoch, apart from Keras's
        # per-epoch "val_" curves. The full figures go in the run's JSON.
        mlflow.log_metrics({**tracking.classifier_metrics(figures["test"]),
                            **tracking.classifier_metrics(figures["val"], "best_val_"),
                            "train_seconds": seconds, "parameters": model.count_params()})
        mlflow.log_dict(figures, "train_classifier.json")
        _write_plots(out_plots, history, splits["test"]["labels"], test_predicted,
                     figures["test"]["confusion"], arch, geometry.classes)
        summary: list[str] = []
        model.summary(print_fn=lambda line, **_: summary.append(line))
        mlflow.log_text("\n".join(summary), "model_summary.txt")
        for png in ("confusion.png", "curves.png"):
            mlflow.log_artifact(str(out_plots / png))
        fault_point("train_classifier:logged")
        how = (f"{seconds:.0f} s" if imported is None else
               f"imported {cfg.file_path} ({facts['format']}, sha256 {facts['sha256'][:12]})")
        version = register_keras_model(
            model, "classifier", REGISTERED_NAME, splits["val"]["images"][:4],
            tags={**tags, "test_accuracy": tracking.rounded(figures["test"]["accuracy"]),
                  "run_id": run.info.run_id},
            description=(f"The {arch} classifier ({model.count_params():,} parameters, "
                         f"channels {list(cfg.channels)}) that the occlusion maps explain: "
                         f"stamps (N, {', '.join(map(str, geometry.shape))}) -> class "
                         f"probabilities (N, {len(geometry.classes)}). Test accuracy "
                         f"{figures['test']['accuracy']:.4f} on {data.source} data; "
                         + (f"trained in {how}." if imported is None else f"{how}.")))
        fault_point("train_classifier:registered")
        figures["registered"] = {"name": REGISTERED_NAME, "version": int(version.version),
                                 "run_id": run.info.run_id}

    target = Path(paths.models_dir) / "classifier.keras"
    with atomic_paths(target) as (temp,):
        model.save(temp)
    write_json(Path(paths.metrics_dir) / "train_classifier.json", figures)
    fault_point("train_classifier:written")
    mark_complete(version)  # last: until here the version is refused by every consumer
    print(f"train_classifier: {arch} test accuracy {figures['test']['accuracy']:.4f} "
          f"(ceiling {figures['accuracy_ceiling']}), {how}, "
          f"registered {REGISTERED_NAME} v{version.version}")


def _import(cfg: ClassifierParams, geometry, val_images):
    """(wrapper, facts) of the classifier file ``cfg.file_path`` for stamps of
    ``geometry``; ``ValueError`` naming the file when it cannot be imported or its outputs
    on the validation stamps are not probabilities."""
    import time

    from pipeline.core.models.imported import import_classifier

    start = time.perf_counter()
    model, facts = import_classifier(
        cfg.file_path, geometry, cfg.channels, pad=cfg.file_pad, crop=cfg.file_crop,
        real_index=cfg.file_real_index, output=cfg.file_output, check_on=val_images)
    facts |= {"name": Path(cfg.file_path).name, "path": cfg.file_path, "pad": cfg.file_pad,
              "crop": cfg.file_crop, "real_index": cfg.file_real_index,
              "output": cfg.file_output, "seconds": time.perf_counter() - start}
    return model, facts


def _write_plots(out: Path, history: dict, labels, predicted, confusion: dict,
                 arch: str, classes: tuple[str, ...]) -> None:
    """DVC plot data (history.csv, confusion.csv) and the PNGs, each written atomically."""
    names = ["history.csv", "confusion.csv", "confusion.png", "curves.png"]
    with atomic_paths(*(out / n for n in names)) as (history_csv, confusion_csv, cm_png,
                                                      curves_png):
        keys = list(history)
        write_csv(history_csv, ["epoch", *keys],
                  ([epoch + 1, *(f"{history[k][epoch]:.6g}" for k in keys)]
                   for epoch in range(len(history["loss"]))))
        names_of = np.array(classes)
        write_csv(confusion_csv, ["actual", "predicted"],
                  zip(names_of[labels], names_of[predicted], strict=True))
        plots.confusion_matrix_figure(confusion, f"{arch}: test split").savefig(cm_png)
        plots.training_curves_figure(history, f"{arch} classifier").savefig(curves_png)


if __name__ == "__main__":
    run_stage(main)
