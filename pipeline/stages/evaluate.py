"""DVC stage ``evaluate``: how good and how fast are the estimated maps? (test split)

Reads the test split, the exact maps (test, and train for the class-mean baseline), the
classifier and the estimator; writes ``<metrics_dir>/evaluate.json`` and
``<plots_dir>/evaluate/`` (deletion.csv, fidelity_by_amplitude.csv, deletion.png,
gallery.png, confusion.png, and where the estimator has a doubt head selective.csv and
selective.png: the delivered fidelity against the share of maps recomputed exactly); logs
the MLflow run ``evaluate`` tagged with the model versions it judged.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from pathlib import Path

import numpy as np

from pipeline.core import faithfulness, fidelity, plots, selective
from pipeline.core.classification import classification_figures
from pipeline.core.data import synthetic
from pipeline.core.explain import compile_explainer, engine_for, predict_explained
from pipeline.core.params import DataParams, EvaluateParams, OcclusionParams, PathsParams
from pipeline.glue import tracking
from pipeline.glue.artifacts import (
    load_maps,
    load_model,
    load_prepared,
    load_split,
    registered_version,
    stamp_geometry,
)
from pipeline.glue.files import (
    atomic_folder,
    atomic_paths,
    load_params,
    run_stage,
    write_csv,
    write_json,
)

SNR_EDGES = (-50.0, -10.0, -5.0, 0.0, 5.0, 10.0, 20.0, 50.0)
METHODS = ("exact", "estimate", "class_mean", "random")


def main() -> None:
    params = load_params()
    paths = PathsParams.from_dict(params.get("paths", {}))
    data = DataParams.from_dict(params.get("data", {}))
    cfg = EvaluateParams.from_dict(params.get("evaluate", {}))
    occlusion = OcclusionParams.from_dict(params.get("occlusion", {}))
    test = load_prepared(paths.prepared_dir, ("test",),
                         optional=("kind", "snr", "evidence"))["test"]
    geometry = stamp_geometry(paths.prepared_dir, "test")
    exact = load_maps(paths.occlusion_dir, "test", len(test["labels"]),
                      ("maps", "target", "base_prob"))
    # the training maps give the class-mean baseline; their count checks they are current
    train_labels = load_split(Path(paths.prepared_dir) / "train.npz", ("labels",))["labels"]
    train_exact = load_maps(paths.occlusion_dir, "train", len(train_labels), ("maps", "target"))
    models = Path(paths.models_dir)
    classifier = load_model(models / "classifier.keras")
    explainer = load_model(models / "estimator.keras", made_by="train_estimator")
    versions = {name: registered_version(paths.metrics_dir, name)
                for name in ("train_classifier", "train_estimator")}

    images, labels = test["images"], test["labels"]
    _progress(f"classifying and explaining {len(labels)} test stamps")
    probabilities = classifier.predict(images, batch_size=4096, verbose=0)
    predicted = probabilities.argmax(axis=1)
    explained = predict_explained(compile_explainer(explainer),
                                  images.astype(np.float32, copy=False))
    estimate = explained["maps"]
    class_means = fidelity.class_mean_maps(train_exact["maps"], train_exact["target"])

    figures: dict = {"classifier": classification_figures(labels, probabilities)}
    figures["classifier"]["accuracy_ceiling"] = (
        synthetic.accuracy_ceiling(data.synthetic_preset, **data.synthetic_overrides)
        if data.source == "synthetic" else None)
    figures["classifier"].update(_accuracy_by_group(labels, predicted, test))
    figures["fidelity"] = fidelity.fidelity_report(estimate, exact["maps"], labels,
                                                   exact["target"], class_means)
    _progress(f"deletion curves of {cfg.faithfulness_n or len(labels)} stamps, "
              f"{len(METHODS)} methods")
    curves = _deletion(classifier, test, exact, estimate, class_means, cfg, occlusion.fill)
    figures["faithfulness"] = curves.pop("summary")
    if "evidence" in test:
        figures["localisation"] = _localisation(exact["maps"], estimate, test)
    _progress(f"sanity check: exact maps of {min(cfg.sanity_n, len(labels))} stamps "
              "under re-randomised weights")
    figures["sanity"] = _sanity(classifier, images[:cfg.sanity_n], exact["maps"][:cfg.sanity_n],
                                occlusion, cfg.seed)
    _progress(f"speed: exact engines and the explainer on {min(cfg.speed_n, len(labels))} "
              "stamps")
    figures["speed"] = _speed(classifier, explainer, images[:cfg.speed_n], occlusion)
    if "doubt" in explained:
        figures["selective"] = _selective(estimate, exact["maps"], explained["doubt"], labels,
                                          cfg, figures["speed"])
    figures["judged"] = versions

    out = Path(paths.plots_dir) / "evaluate"
    names = ["deletion.csv", "fidelity_by_amplitude.csv", "deletion.png", "gallery.png",
             "gallery_real.png", "gallery_bogus.png", "gallery_by_kind.png", "confusion.png"]
    with atomic_paths(*(out / name for name in names)) as (deletion_csv, amplitude_csv,
                                                           deletion_png, gallery_png,
                                                           real_png, bogus_png, kinds_png,
                                                           confusion_png):
        fractions = np.linspace(0, 1, cfg.deletion_steps + 1)
        write_csv(deletion_csv, ["fraction_removed", *METHODS],
                  ([f"{f:.4f}", *(f"{curves[m][i]:.6f}" for m in METHODS)]
                   for i, f in enumerate(fractions)))
        write_csv(amplitude_csv, ["amplitude", "n", "estimate_r_median",
                                  "class_mean_r_median", "estimate_ssim_mean", "mse_skill"],
                  # numbered, so that a chart sorting them as text keeps their order
                  ([f"{number}: {name}", group["n"], _fmt(group["estimate"]["r_median"]),
                    _fmt(group["class_mean"]["r_median"]), _fmt(group["estimate"]["ssim_mean"]),
                    _fmt(group["mse_skill"])]
                   for number, (name, group) in enumerate(
                       figures["fidelity"]["by_amplitude"].items(), start=1)))
        plots.deletion_curves_figure(
            fractions, curves, {m: figures["faithfulness"][f"auc_{m}"] for m in METHODS},
            figures["faithfulness"]["n"]).savefig(deletion_png, format="png")
        plots.confusion_matrix_figure(figures["classifier"]["confusion"],
                                      "classifier: test split").savefig(confusion_png,
                                                                        format="png")
        _galleries(images, labels, exact, estimate, test.get("kind"), geometry.channels,
                   {"both": gallery_png, "real": real_png, "bogus": bogus_png,
                    "kinds": kinds_png})
    _progress("galleries: one per kind of stamp")
    _write_kind_galleries(out / "kinds", images, labels, exact, estimate, test.get("kind"),
                          geometry.channels)
    _write_selective(out, figures.get("selective"))
    names += ["selective.csv", "selective.png"]

    with tracking.start_run("evaluate", params={"evaluate": params.get("evaluate", {})},
                            tags={f"{name}_version": str(v.get("version"))
                                  for name, v in versions.items()}) as run:
        import mlflow

        tracking.log_split_inputs(paths.prepared_dir, {"test": test}, data.source)
        tracking.log_split_inputs(paths.occlusion_dir, {"test": exact, "train": train_exact},
                                  "exact-maps", features="maps", targets="target")
        # The headline under the names every stage shares, each linked to the model it
        # judges (so it shows on that model's page too); the rest is in evaluate.json.
        models_judged = tracking.judged_models(versions.values())
        by_model = _headline_metrics(figures)
        for role, metrics in by_model.items():
            mlflow.log_metrics(metrics, model_id=models_judged.get(
                versions[ROLE_STAGES[role]].get("name")))
        figures["run"] = {"run_id": run.info.run_id,
                          "experiment_id": run.info.experiment_id}
        mlflow.log_dict(figures, "evaluate.json")
        for name in names:
            mlflow.log_artifact(str(out / name))
        mlflow.log_artifacts(str(out / "kinds"), "kinds")
    write_json(Path(paths.metrics_dir) / "evaluate.json", figures)
    head = figures["fidelity"]["headline"]
    print(f"evaluate: accuracy {figures['classifier']['accuracy']:.4f}; median r real "
          f"{_fmt(head['real_median_r'])} / bogus {_fmt(head['bogus_median_r'])}; deletion "
          f"AUC estimate/exact {_fmt(figures['faithfulness']['auc_ratio_estimate_to_exact'])}; "
          f"speedup {figures['speed']['speedup']:.0f}x over the "
          f"{figures['speed']['exact_engine']} engine "
          f"({figures['speed']['speedup_over_batched']:.0f}x over the batched one)"
          + _selective_line(figures.get("selective")))


def _galleries(images, labels, exact: dict, estimate, kinds, channels, pngs: dict) -> None:
    """The test split's galleries: worst and random maps of both classes, of each class,
    and a few of every kind of stamp (a note instead where the data has no kinds)."""
    common = {"predicted": exact["target"], "probability": exact["base_prob"],
              "channels": channels}
    for key, classes, rows, what in (("both", (1, 0), 12, "per class"),
                                     ("real", (1,), 8, "real stamps"),
                                     ("bogus", (0,), 8, "bogus stamps")):
        plots.worst_and_random_gallery(
            images, labels, exact["maps"], estimate,
            f"test stamps: exact vs estimated maps, worst and random, {what}",
            rows=rows, kinds=kinds, classes=classes, **common).savefig(pngs[key],
                                                                       format="png")
    if kinds is None:
        figure = plots.message_figure("no kinds of stamp: the data records none "
                                      "(the real HiTS set)")
    else:
        figure = plots.kinds_gallery(images, labels, exact["maps"], estimate, kinds,
                                     title="test stamps: two of every kind of stamp",
                                     **common)
    figure.savefig(pngs["kinds"], format="png")


def _write_kind_galleries(folder: Path, images, labels, exact: dict, estimate, kinds,
                          channels) -> None:
    """``folder``/<kind>.png: per kind of stamp (real, trail, cosmic ray, CCD defect, ...),
    its worst and random maps (up to 8 rows; note.png instead where the data records no
    kinds). Drawn in a temporary folder beside ``folder`` and swapped in whole, so a
    failure leaves no partial set."""
    import re

    import matplotlib.pyplot as plt

    with atomic_folder(folder) as temp:
        if kinds is None:
            plots.message_figure("no kinds of stamp: the data records none (the real HiTS "
                                 "set)").savefig(temp / "note.png", format="png")
        for kind in ([] if kinds is None else np.unique(kinds)):
            chosen = np.flatnonzero(kinds == kind)
            classes = tuple(sorted({int(v) for v in labels[chosen]}, reverse=True))
            figure = plots.worst_and_random_gallery(
                images[chosen], labels[chosen], exact["maps"][chosen], estimate[chosen],
                f"test stamps of kind {kind} (n = {len(chosen)}): exact vs estimated maps, "
                "worst and random", predicted=exact["target"][chosen],
                probability=exact["base_prob"][chosen], channels=channels,
                rows=max(min(8, len(chosen)), len(classes)), kinds=kinds[chosen],
                classes=classes)
            figure.savefig(temp / f"{re.sub(r'[^A-Za-z0-9_-]', '_', str(kind))}.png",
                           format="png")
            plt.close(figure)


def _selective(estimate, exact_maps, doubt, labels, cfg: EvaluateParams, speed: dict) -> dict:
    """The ``selective`` section: ``selective.selective_report`` of the doubt at
    ``cfg.exact_share``, and what the doubt and the fallback cost (from ``speed``)."""
    judged = selective.map_errors(estimate, exact_maps)
    report = selective.selective_report(judged["r"], judged["non_trivial"], doubt, labels,
                                        exact_share=cfg.exact_share, seed=cfg.seed)
    # seconds per map: the explainer with its doubt head, plus the exact engine's time
    # for the share recomputed (the recomputation is the fallback's whole cost)
    per_map = 1.0 / speed["estimator_maps_per_s"] + cfg.exact_share / speed["exact_maps_per_s"]
    report["cost"] = {
        "doubt_share_of_explainer_time": speed["doubt_share_of_explainer_time"],
        "delivered_maps_per_s": 1.0 / per_map,
        # against the exact engine alone: what the fallback leaves of the speedup
        "delivered_speedup": (1.0 / per_map) / speed["exact_maps_per_s"]}
    return report


def _selective_line(report: dict | None) -> str:
    """The print's clause on the doubt ("" without a doubt head)."""
    if report is None:
        return ""
    point = report["operating_point"]["doubt"]["all"]
    return (f"; doubt: Spearman {_fmt(report['spearman_doubt_error'])}, "
            f"{report['exact_share']:.0%} recomputed -> bad maps "
            f"{_percent(report['bad_share_estimate'])} -> "
            f"{_percent(report['bad_share_delivered'])} "
            f"({point['bad']} left), p0.1 r {_fmt(report['p0_1_r_delivered'])}, doubt "
            f"{report['cost']['doubt_share_of_explainer_time']:.1%} of the explainer's time")


def _percent(value) -> str:
    return "n/a" if value is None else f"{value:.3%}"


def _write_selective(out: Path, report: dict | None) -> None:
    """selective.csv (one row per share: median r, p1, p0.1 and bad share of the delivered
    maps for each order) and selective.png, written whole or not at all; without a doubt
    head (``report`` None) the CSV has its header only and the PNG says why."""
    if report is None:
        with atomic_paths(out / "selective.csv", out / "selective.png") as (csv_path, png):
            write_csv(csv_path, ["share"], [])
            plots.message_figure("no doubt per map: the estimator has no doubt head "
                                 "(estimator.doubt false)").savefig(png, format="png")
        return
    curves = report["curves"]
    policies = list(curves)
    columns = [f"{policy}_{figure}" for policy in policies
               for figure in ("median_r", "p1_r", "p0_1_r", "bad_share")]
    with atomic_paths(out / "selective.csv", out / "selective.png") as (csv_path, png_path):
        write_csv(csv_path, ["share", *columns],
                  ([f"{point['share']:.4f}",
                    *("" if curves[policy][i][figure] is None
                      else f"{curves[policy][i][figure]:.6g}"
                      for policy in policies
                      for figure in ("median_r", "p1_r", "p0_1_r", "bad_share"))]
                   for i, point in enumerate(curves[policies[0]])))
        plots.selective_figure(curves, report["exact_share"]).savefig(png_path, format="png")


def _fmt(value) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _accuracy_by_group(labels, predicted, test: dict) -> dict:
    """Accuracy and counts by signed-SNR bin and by generator kind (synthetic data)."""
    out: dict = {}
    correct = labels == predicted
    if "snr" in test:
        bins = np.digitize(test["snr"], SNR_EDGES)
        edges = ("-inf", *map(str, SNR_EDGES), "inf")
        out["by_snr_bin"] = {f"[{edges[b]}, {edges[b + 1]})": {
            "n": int((bins == b).sum()), "accuracy": float(correct[bins == b].mean())}
            for b in range(len(SNR_EDGES) + 1) if (bins == b).any()}
    if "kind" in test:
        out["by_kind"] = {str(kind): {"n": int((test["kind"] == kind).sum()),
                                      "accuracy": float(correct[test["kind"] == kind].mean())}
                          for kind in np.unique(test["kind"])}
    return out


def _deletion(classifier, test, exact, estimate, class_means, cfg, fill) -> dict:
    """Mean deletion curve per method on the first ``faithfulness_n`` test stamps, and
    the summary: mean AUC per method (lower is more faithful) and estimate/exact ratio."""
    n = cfg.faithfulness_n or len(test["labels"])
    stamps, target = test["images"][:n], exact["target"][:n]
    maps = {"exact": exact["maps"][:n], "estimate": estimate[:n],
            "class_mean": class_means[target],
            "random": faithfulness.random_maps(len(target), *stamps.shape[1:3],
                                               seed=cfg.seed)}

    def predict(batch):
        return classifier.predict(batch, batch_size=8192, verbose=0)

    curves, summary = {}, {"n": int(len(target)), "steps": cfg.deletion_steps}
    for method in METHODS:
        per_stamp = faithfulness.deletion_curves(predict, stamps, maps[method], target,
                                                 steps=cfg.deletion_steps, fill=fill,
                                                 batch_size=65536)
        curves[method] = per_stamp.mean(axis=0)
        auc = faithfulness.curve_auc(per_stamp)
        summary[f"auc_{method}"] = float(auc.mean())
        summary[f"auc_{method}_by_true_class"] = {
            name: float(auc[test["labels"][:n] == c].mean())
            for c, name in enumerate(fidelity.CLASS_NAMES) if (test["labels"][:n] == c).any()}
    summary["auc_ratio_estimate_to_exact"] = summary["auc_estimate"] / summary["auc_exact"]
    curves["summary"] = summary
    return curves


def _localisation(exact_maps, estimate, test) -> dict:
    """Pointing game and positive mass inside the generator's evidence mask, for the exact
    and the estimated maps, per true class and per kind (stamps with a mask only)."""
    groups = {"all": np.ones(len(exact_maps), bool)}
    groups |= {name: test["labels"] == c for c, name in enumerate(fidelity.CLASS_NAMES)}
    groups |= {f"kind:{kind}": test["kind"] == kind for kind in np.unique(test["kind"])}
    scores = {}
    for method, maps in (("exact", exact_maps), ("estimate", estimate)):
        scores[method] = {"pointing": faithfulness.pointing_game(maps, test["evidence"]),
                          "mass": faithfulness.positive_mass_in_mask(maps, test["evidence"])}
    out = {}
    for group, mask in groups.items():
        row = {"n_with_mask": int((mask & test["evidence"].any(axis=(1, 2))).sum())}
        for method in scores:
            for figure, values in scores[method].items():
                picked = values[mask]
                picked = picked[~np.isnan(picked)]
                row[f"{method}_{figure}"] = float(picked.mean()) if len(picked) else None
        out[group] = row
    return out


def _sanity(classifier, stamps, trained_maps, occlusion: OcclusionParams, seed: int) -> dict:
    """Maps of the same net with re-randomised weights: a map that explains the classifier
    must change when its weights do (low rank correlation with the trained maps)."""
    import keras

    if not len(stamps):
        return {"n": 0}
    keras.utils.set_random_seed(seed)
    randomised = keras.models.clone_model(classifier)  # fresh initial weights
    maps, _, _ = engine_for(randomised, occlusion).maps(stamps, chunk_size=occlusion.chunk_size)
    rho = faithfulness.rank_correlation(maps, trained_maps)
    rho = rho[~np.isnan(rho)]
    return {"n": int(len(stamps)), "n_defined": int(len(rho)),
            "rank_correlation_mean": float(rho.mean()) if len(rho) else None,
            "rank_correlation_median": float(np.median(rho)) if len(rho) else None}


def _speed(classifier, explainer, stamps, occlusion: OcclusionParams) -> dict:
    """Exact maps/s (the stage's engine, ``occlusion.engine``, and beside it the batched
    engine where that is another) and estimated maps/s on the same stamps, in this
    process, after warm-up. ``speedup`` is against the stage's engine (the fastest where
    ``engine`` is auto), ``speedup_over_batched`` against the batched one; both time the
    explainer as served, doubt head included. Where it has one, the explainer without it
    (the same graph, maps only) is timed too, interleaved, and
    ``doubt_share_of_explainer_time`` is the head's extra time over that explainer's."""
    import keras
    import tensorflow as tf

    engine = engine_for(classifier, occlusion)
    engines = {engine.name: engine}
    if engine.name != "batched":
        engines["batched"] = engine_for(classifier, dataclasses.replace(occlusion,
                                                                        engine="batched"))
    outputs = explainer.output
    explainers = {"served": explainer}
    if isinstance(outputs, dict) and "doubt" in outputs:
        explainers["maps_only"] = keras.Model(explainer.input, outputs["maps"])
    functions = {name: tf.function(lambda x, model=model: model(x, training=False),
                                   reduce_retracing=True)
                 for name, model in explainers.items()}
    batch = tf.constant(stamps)
    for each in engines.values():
        each.maps(stamps[: 2 * occlusion.chunk_size], chunk_size=occlusion.chunk_size)
    for function in functions.values():
        tf.nest.map_structure(lambda tensor: tensor.numpy(), function(batch))
    exact_rates = {}
    for name, each in engines.items():
        start = time.perf_counter()
        each.maps(stamps, chunk_size=occlusion.chunk_size)
        exact_rates[name] = len(stamps) / (time.perf_counter() - start)
    # rounds taken in turn, so that a slow spell of the machine falls on both explainers
    calls, seconds = dict.fromkeys(functions, 0), dict.fromkeys(functions, 0.0)
    for _ in range(5):
        for name, function in functions.items():
            repeats, start = 0, time.perf_counter()
            while repeats < 2 or time.perf_counter() - start < 0.4:
                tf.nest.map_structure(lambda tensor: tensor.numpy(), function(batch))
                repeats += 1
            calls[name] += repeats
            seconds[name] += time.perf_counter() - start
    rates = {name: calls[name] * len(stamps) / seconds[name] for name in functions}
    estimate_rate = rates["served"]
    return {"n": int(len(stamps)), "exact_engine": engine.name,
            "exact_maps_per_s": exact_rates[engine.name],
            "batched_maps_per_s": exact_rates["batched"],
            "estimator_maps_per_s": estimate_rate,
            "estimator_without_doubt_maps_per_s": rates.get("maps_only"),
            "doubt_share_of_explainer_time": (rates["maps_only"] / estimate_rate - 1.0
                                              if "maps_only" in rates else None),
            "speedup": estimate_rate / exact_rates[engine.name],
            "speedup_over_batched": estimate_rate / exact_rates["batched"]}


def _progress(message: str) -> None:
    """One progress line on stderr (the stage runs for a minute or more)."""
    print(f"evaluate: {message} ...", file=sys.stderr, flush=True)


# which stage's model each group of headline metrics judges
ROLE_STAGES = {"classifier": "train_classifier", "estimator": "train_estimator"}


def _headline_metrics(figures: dict) -> dict[str, dict[str, float]]:
    """{"classifier": metrics, "estimator": metrics}: the run's few dozen MLflow metrics,
    under the names the training stages use for the same figures (``tracking``'s
    headline names) and a few of evaluate's own (deletion, sanity, localisation, speed)."""
    faithfulness, speed = figures["faithfulness"], figures["speed"]
    estimator = {**tracking.fidelity_metrics(figures["fidelity"]["headline"]),
                 **{f"deletion_auc_{method}": faithfulness[f"auc_{method}"]
                    for method in METHODS},
                 "deletion_auc_ratio": faithfulness["auc_ratio_estimate_to_exact"],
                 "sanity_rank_correlation": figures["sanity"].get("rank_correlation_median"),
                 **{name: speed[name] for name in (
                     "speedup", "speedup_over_batched", "exact_maps_per_s",
                     "batched_maps_per_s", "estimator_maps_per_s",
                     "doubt_share_of_explainer_time")}}
    where = figures.get("localisation", {}).get("all", {})
    estimator |= {key: where.get(key) for key in (
        "exact_pointing", "estimate_pointing", "exact_mass", "estimate_mass")}
    if "selective" in figures:
        estimator |= tracking.selective_metrics(figures["selective"])
        estimator["delivered_speedup"] = figures["selective"]["cost"]["delivered_speedup"]
    classifier = {**tracking.classifier_metrics(figures["classifier"]),
                  "accuracy_ceiling": figures["classifier"].get("accuracy_ceiling")}
    return {role: {key: float(value) for key, value in metrics.items()
                   if value is not None and np.isfinite(value)}
            for role, metrics in (("classifier", classifier), ("estimator", estimator))}


if __name__ == "__main__":
    run_stage(main)
