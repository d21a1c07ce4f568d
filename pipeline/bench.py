"""Benchmarks that print figures: ``python -m pipeline.bench <target> [options]``.

Each target prints readable lines and, as its LAST line, one JSON object with the figures,
so scripts can parse it. Speed goals are checked here, never by timed tests.

Targets:
  generator   synthetic stamps/s and the twin's calibration against the real HiTS set
  occlusion   exact-map throughput against the classifier's own bound, and a per-stamp
              implementation (one stamp's occluded copies per call, as the study did)
  estimator   one-pass estimated maps/s (classifier pass included) against exact maps/s
  witness     how the classifiers trained on the REAL HiTS set see the twin, beside how
              they saw the real set (files in ../shared/witness, never in the project)
  consistency a net of the project's trained on the twin and tested on it, beside what
              the same kind of net scored on real data (the study's seed net, Deep-HiTS)
  serving     the REST server's memory under repeated largest requests (``occmap serve``,
              or ``mlflow models serve`` for comparison) on the project's champion
  services    load and faults on PostgreSQL + the MLflow tracking server (its own, in a
              temporary folder): concurrent clients, a database restart while a run
              logs, Optuna workers' connections (pipeline/bench_services.py)
  spark       exact maps/s by a Spark job (``--master``: local[2], or the standalone
              cluster of ``make spark-cluster``) against one process on the same stamps
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import time

import numpy as np

from pipeline.core.data import stats, synthetic
from pipeline.core.geometry import StampGeometry
from pipeline.core.params import EstimatorParams


def bench_generator(n: int, seed: int, preset: str) -> dict:
    """Time ``make_stamps(n)`` (after a small warm-up) and compute calibration figures."""
    synthetic.make_stamps(256, seed=seed + 1, preset=preset)  # warm-up: imports, caches
    start = time.perf_counter()
    images, labels, meta = synthetic.make_stamps(n, seed=seed, preset=preset)
    seconds = time.perf_counter() - start
    figures = stats.calibration_figures(images, labels, meta)
    described = stats.describe_stamps(images, labels)
    figures.update({
        "n": n,
        "preset": preset,
        "seconds": seconds,
        "stamps_per_s": n / seconds,
        "accuracy_ceiling": synthetic.accuracy_ceiling(preset),
        "channel_mean": described["channel_mean"],
        "channel_std": described["channel_std"],
    })
    return figures


def _print_generator(figures: dict) -> None:
    real = stats.REAL_SET
    print(f"generator: {figures['n']} stamps, preset {figures['preset']!r}, "
          f"{figures['seconds']:.1f} s -> {figures['stamps_per_s']:.0f} stamps/s "
          f"(goal >= 2000)")
    print(f"accuracy ceiling implied by label noise and point-like bogus: "
          f"{figures['accuracy_ceiling']:.4f}")
    print(f"{'figure':34s} {'synthetic':>10s} {'real set':>10s}")
    for key in ("pixel_mean", "pixel_std", "bogus_negative_share", "real_snr_p05",
                "real_snr_p50", "real_snr_p95", "bogus_abs_snr_p50",
                "bogus_abs_snr_over_1000_share"):
        print(f"{key:34s} {figures[key]:10.3f} {real[key]:10.3f}")
    print(f"{'real_diff_max_within_1px':34s} {figures['real_diff_max_within_1px']:10.3f} "
          f"{'>= 0.95':>10s}")
    for channel in synthetic.CHANNELS:
        print(f"  channel {channel:16s} mean {figures['channel_mean'][channel]:.3f} "
              f"std {figures['channel_std'][channel]:.3f}")
    print(f"  per class: real mean {figures['real_pixel_mean']:.3f}, "
          f"bogus mean {figures['bogus_pixel_mean']:.3f}")


# Stamps per classifier call in the engine (x 441 occluded copies): the best of 1-32 on
# this 2-core CPU; small batches keep the copies and activations in cache.
OCCLUSION_CHUNK = {"seed": 4, "deephits": 4}
# The channels each classifier sees, as params.yaml's defaults for it.
CLASSIFIER_CHANNELS = {"seed": ("snr_difference",),
                       "deephits": ("template", "science", "difference", "snr_difference")}
SLICES = 8  # bound and engine alternate over this many slices of the stamps


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def _classifier_loop(predict):
    """A compiled loop that classifies pre-made batches (steps, B, H, W, C) in-graph: the
    classifier alone, with no copying and no Python overhead per batch."""
    import tensorflow as tf

    @tf.function(reduce_retracing=True)
    def classify_all(batches):
        outputs = tf.TensorArray(tf.float32, size=tf.shape(batches)[0])
        for i in tf.range(tf.shape(batches)[0]):
            outputs = outputs.write(i, tf.cast(predict(batches[i]), tf.float32))
        return outputs.stack()
    return classify_all


def _seconds(run) -> float:
    start = time.perf_counter()
    run()
    return time.perf_counter() - start


def bench_occlusion(arch: str, n: int, seed: int, chunk_size: int | None,
                    per_stamp_n: int, stamp_size: int = 21) -> dict:
    """Classifier throughput, the bound it implies, the engine's maps/s and a per-stamp
    implementation's, on the same stamps in this process, each after a warm-up.

    The bound is the classifier alone, through a compiled in-graph loop, on the very
    images the engine classifies (the occluded copies, made beforehand), at the best of a
    few batch sizes including the engine's. The stamps are cut into ``SLICES`` slices and
    the bound and the engine are timed alternately, slice by slice, so both see the same
    moments of a shared CPU whose speed drifts by tens of percent within a minute."""
    import keras
    import tensorflow as tf

    from pipeline.core.incremental import IncrementalOcclusionEngine
    from pipeline.core.models.classifiers import build_classifier, seen_channels_predict_fn
    from pipeline.core.occlusion import OcclusionEngine, patch_masks

    chunk = chunk_size or OCCLUSION_CHUNK[arch]
    keras.utils.set_random_seed(seed)
    # Timing does not depend on the weights, so an untrained net of the same shape serves.
    stamps, _, _ = synthetic.make_stamps(n, seed=seed, preset="default", stamp_size=stamp_size)
    geometry = StampGeometry.from_stamps(stamps)
    model = build_classifier(arch, CLASSIFIER_CHANNELS[arch], geometry)
    predict, channels = seen_channels_predict_fn(model)
    engine = OcclusionEngine(predict, *geometry.map_shape, channels=channels)
    incremental = IncrementalOcclusionEngine(model, *geometry.map_shape)
    positions = engine.positions
    seen = stamps if channels is None else stamps[..., list(channels)]
    masks = patch_masks(*geometry.map_shape)[..., None]
    classify_all = _classifier_loop(predict)

    def batches_of(part: np.ndarray, size: int) -> tf.Tensor:
        """The occluded copies (fill 0) of ``part``, repeated up to whole batches."""
        copies = (part[:, None] * (1.0 - masks)).reshape(-1, *seen.shape[1:])
        steps = -(-len(copies) // size)
        return tf.constant(np.resize(copies, (steps, size, *seen.shape[1:])))

    slices = np.array_split(np.arange(n), min(SLICES, n))
    sizes = sorted({2048, 8192, chunk * positions})
    warm = {size: batches_of(seen[slices[0]], size) for size in sizes}
    rates = {}
    for size, batches in warm.items():
        classify_all(batches)  # trace
        rates[size] = batches.shape[0] * size / _seconds(lambda b=batches: classify_all(b))
    best_size = max(rates, key=rates.get)
    del warm
    engine.maps(stamps[slices[0]], chunk_size=chunk)  # warm-up: trace the block function
    incremental.maps(stamps[slices[0]], chunk_size=chunk)

    bound_images = bound_seconds = engine_seconds = incremental_seconds = 0.0
    largest_difference = 0.0
    for part in slices:
        batches = batches_of(seen[part], best_size)
        bound_seconds += _seconds(lambda b=batches: classify_all(b).numpy())
        bound_images += batches.shape[0] * best_size
        outputs = {}
        engine_seconds += _seconds(lambda p=part, o=outputs: o.update(
            batched=engine.maps(stamps[p], chunk_size=chunk)[0]))
        incremental_seconds += _seconds(lambda p=part, o=outputs: o.update(
            incremental=incremental.maps(stamps[p], chunk_size=chunk)[0]))
        largest_difference = max(largest_difference, float(
            np.abs(outputs["batched"] - outputs["incremental"]).max()))
    images_per_s = bound_images / bound_seconds
    bound = images_per_s / positions
    engine_maps_per_s = n / engine_seconds
    incremental_maps_per_s = n / incremental_seconds
    multiply_adds = incremental.multiply_adds()

    # As the study did: one stamp's occluded copies per model.predict call.
    per_stamp = stamps[:per_stamp_n]
    model.predict(per_stamp[0] * (1 - masks), verbose=0)
    start = time.perf_counter()
    for stamp in per_stamp:
        model.predict(stamp * (1 - masks), batch_size=positions, verbose=0)
    per_stamp_maps_per_s = len(per_stamp) / (time.perf_counter() - start)
    return {
        "arch": arch, "n": n, "chunk_size": chunk, "positions": positions,
        "bound_batch_size": best_size,
        "parameters": model.count_params(),
        "classifier_images_per_s": images_per_s,
        "bound_maps_per_s": bound,
        "engine_maps_per_s": engine_maps_per_s,
        "share_of_bound": engine_maps_per_s / bound,
        "per_stamp_maps_per_s": per_stamp_maps_per_s,
        "engine_over_per_stamp": engine_maps_per_s / per_stamp_maps_per_s,
        "batched_maps_per_s": engine_maps_per_s,
        "incremental_maps_per_s": incremental_maps_per_s,
        "incremental_over_batched": incremental_maps_per_s / engine_maps_per_s,
        "incremental_goal": INCREMENTAL_GOAL[arch],
        "incremental_max_abs_diff": largest_difference,
        "multiply_adds_per_map": multiply_adds,
        "multiply_add_ratio": multiply_adds["batched"] / multiply_adds["incremental"],
        "peak_rss_gb": _peak_rss_gb(),
    }


# Issue 21's goals for the incremental engine over the batched one, in one run.
INCREMENTAL_GOAL = {"seed": 3.0, "deephits": 1.3}


def _print_occlusion(f: dict) -> None:
    print(f"occlusion: {f['arch']} classifier ({f['parameters']} parameters), {f['n']} stamps, "
          f"{f['positions']} positions per map, chunks of {f['chunk_size']} stamps")
    print(f"classifier throughput     {f['classifier_images_per_s']:12.0f} images/s "
          f"(batches of {f['bound_batch_size']})")
    print(f"bound (/ positions)       {f['bound_maps_per_s']:12.1f} maps/s")
    print(f"engine                    {f['engine_maps_per_s']:12.1f} maps/s "
          f"({f['share_of_bound']:.1%} of the bound; goal >= 90 %)")
    print(f"per-stamp model.predict   {f['per_stamp_maps_per_s']:12.1f} maps/s "
          f"(engine is {f['engine_over_per_stamp']:.1f}x faster)")
    print(f"incremental engine        {f['incremental_maps_per_s']:12.1f} maps/s "
          f"({f['incremental_over_batched']:.2f}x the batched engine; goal >= "
          f"{f['incremental_goal']}x; multiply-adds {f['multiply_add_ratio']:.2f}x fewer, "
          f"the bound); max |difference| {f['incremental_max_abs_diff']:.1e}")
    print(f"peak resident memory      {f['peak_rss_gb']:12.2f} GB")


ESTIMATOR_BATCH = 4096


def bench_estimator(arch: str, estimator: str, condition: str, n: int, seed: int,
                    chunk_size: int | None, batch_size: int = ESTIMATOR_BATCH,
                    stamp_size: int = 21) -> dict:
    """Estimated maps/s (the explainer: classifier pass + estimator, compiled, batches of
    ``batch_size`` stamps) and exact maps/s (both engines: batched and incremental) on
    the same stamps, timed alternately over ``SLICES`` slices in this process after
    warm-up; the speedup over the faster engine (and over the batched one), and the
    explanation's overhead over the classifier pass alone.

    The exact engine is slow for the deep net, so ``n`` stays small there; the estimator
    then sees the same stamps repeated up to full batches, as a stream would fill them."""
    import keras
    import tensorflow as tf

    from pipeline.core.incremental import IncrementalOcclusionEngine
    from pipeline.core.models import estimators
    from pipeline.core.models.classifiers import build_classifier, seen_channels_predict_fn
    from pipeline.core.occlusion import OcclusionEngine

    chunk = chunk_size or OCCLUSION_CHUNK[arch]
    keras.utils.set_random_seed(seed)
    stamps, _, _ = synthetic.make_stamps(n, seed=seed, preset="default", stamp_size=stamp_size)
    geometry = StampGeometry.from_stamps(stamps)
    channels = geometry.channel_indices(CLASSIFIER_CHANNELS[arch])
    classifier = build_classifier(arch, channels, geometry)
    dim = estimators.condition_model(classifier, condition).output.shape[-1]
    model = estimators.build_estimator(estimator, classifier, channels, dim)
    explainer = estimators.explainer(classifier, model, condition)
    explain = tf.function(lambda x: explainer(x, training=False), reduce_retracing=True)
    # Apart, for the analysis of the speedup: the classifier pass alone (what any estimator
    # conditioned on the class must pay) and the estimator alone given that pass's output
    # (the marginal cost where a broker classifies every stamp anyway).
    conditioner = estimators.condition_model(classifier, condition)
    classify = tf.function(lambda x: classifier(x, training=False), reduce_retracing=True)
    estimate_only = tf.function(lambda x, c: model([x, c], training=False),
                                reduce_retracing=True)
    predict, seen = seen_channels_predict_fn(classifier)
    engines = {"batched": OcclusionEngine(predict, *geometry.map_shape, channels=seen),
               "incremental": IncrementalOcclusionEngine(classifier, *geometry.map_shape)}

    slices = np.array_split(np.arange(n), min(SLICES, n))
    batches = [tf.constant(np.resize(stamps[part], (batch_size, *geometry.shape)))
               for part in slices]
    conditions = [tf.constant(conditioner.predict(b, batch_size=batch_size, verbose=0))
                  for b in batches]
    explain(batches[0]).numpy()  # warm-up: trace
    classify(batches[0]).numpy()
    estimate_only(batches[0], conditions[0]).numpy()
    for engine in engines.values():
        engine.maps(stamps[slices[0]], chunk_size=chunk)
    seconds = {"estimator": 0.0, "classifier": 0.0, "estimator_only": 0.0,
               **dict.fromkeys(engines, 0.0)}
    for part, batch, vector in zip(slices, batches, conditions, strict=True):
        seconds["classifier"] += _seconds(lambda b=batch: classify(b).numpy())
        seconds["estimator"] += _seconds(lambda b=batch: explain(b).numpy())
        for name, engine in engines.items():
            seconds[name] += _seconds(lambda p=part, e=engine: e.maps(stamps[p],
                                                                      chunk_size=chunk))
        seconds["estimator_only"] += _seconds(lambda b=batch, c=vector: estimate_only(b, c).numpy())
    estimated = len(slices) * batch_size
    estimator_maps_per_s = estimated / seconds["estimator"]
    exact = {name: n / seconds[name] for name in engines}
    fastest = max(exact, key=exact.get)
    exact_maps_per_s = exact[fastest]
    return {
        "arch": arch, "estimator": estimator, "condition": condition, "n": n,
        "chunk_size": chunk, "estimator_batch": batch_size,
        "classifier_parameters": classifier.count_params(),
        "estimator_parameters": model.count_params(),
        "estimator_maps_per_s": estimator_maps_per_s,
        "exact_maps_per_s": exact_maps_per_s,
        "exact_engine": fastest,
        "batched_maps_per_s": exact["batched"],
        "incremental_maps_per_s": exact["incremental"],
        "speedup": estimator_maps_per_s / exact_maps_per_s,
        "speedup_over_batched": estimator_maps_per_s / exact["batched"],
        "speedup_goal": SPEEDUP_GOAL[arch],
        "classifier_pass_per_s": estimated / seconds["classifier"],
        "explanation_overhead": seconds["estimator"] / seconds["classifier"] - 1.0,
        "explanation_overhead_goal": EXPLANATION_OVERHEAD_GOAL.get((arch, estimator)),
        "speedup_ceiling": estimated / seconds["classifier"] / exact_maps_per_s,
        "estimator_only_maps_per_s": estimated / seconds["estimator_only"],
        "marginal_speedup": estimated / seconds["estimator_only"] / exact_maps_per_s,
        "peak_rss_gb": _peak_rss_gb(),
    }


SPEEDUP_GOAL = {"seed": 25.0, "deephits": 441.0}
# Issue 21: the deep explainer (tap_ae on deephits) at most 10 % over the classifier pass;
# no goal is set for the other pairs (the seed net's pass is so cheap that any estimator
# costs more than it).
EXPLANATION_OVERHEAD_GOAL = {("deephits", "tap_ae"): 0.10}


def _print_estimator(f: dict) -> None:
    print(f"estimator: {f['estimator']} ({f['estimator_parameters']} parameters, condition "
          f"{f['condition']!r}) for the {f['arch']} classifier "
          f"({f['classifier_parameters']} parameters), {f['n']} stamps")
    print(f"estimated maps (classifier pass included) {f['estimator_maps_per_s']:12.1f} maps/s")
    print(f"exact maps, batched engine (chunks of {f['chunk_size']}) "
          f"{f['batched_maps_per_s']:12.1f} maps/s")
    print(f"exact maps, incremental engine            {f['incremental_maps_per_s']:12.1f} maps/s")
    print(f"speedup over the {f['exact_engine']:11s} engine     {f['speedup']:12.1f}x "
          f"(goal >= {f['speedup_goal']:.0f}x; {f['speedup_over_batched']:.1f}x over the "
          "batched engine)")
    print(f"classifier pass alone                     {f['classifier_pass_per_s']:12.1f} "
          f"stamps/s: no class-conditioned estimator beats {f['speedup_ceiling']:.0f}x")
    goal = f["explanation_overhead_goal"]
    print(f"explanation overhead over that pass       {f['explanation_overhead']:12.1%} "
          + (f"(goal <= {goal:.0%})" if goal is not None else "(no goal for this pair)"))
    print(f"estimator alone, given the class          {f['estimator_only_maps_per_s']:12.1f} "
          f"maps/s: marginal speedup {f['marginal_speedup']:.0f}x (a broker classifies anyway)")


DEFAULT_WITNESS_DIR = "../shared/witness"


def bench_witness(preset: str, n: int, seed: int, witness_dir: str, gallery=None) -> dict:
    """Each witness's figures (``pipeline.core.witness``) on ``n`` twin stamps of
    ``preset``, read from ``witness_dir`` through the classifier importer; with
    ``gallery`` (a path), also a PNG of stamps of each kind and what the witnesses say."""
    from pathlib import Path

    from pipeline.core import witness
    from pipeline.core.geometry import HITS
    from pipeline.core.models.imported import import_classifier

    directory = Path(witness_dir)
    missing = [w.file for w in witness.WITNESSES if not (directory / w.file).is_file()]
    if missing:
        raise SystemExit(f"{directory}: no witness file(s) {missing} (--witness-dir names "
                         "the folder with the classifiers trained on the real set)")
    images, labels, meta = synthetic.make_stamps(n, seed=seed, preset=preset)
    figures = {"preset": preset, "n": n, "seed": seed, "witnesses": {}}
    p_of = {}
    for spec in witness.WITNESSES:
        model, facts = import_classifier(directory / spec.file, HITS, spec.channels,
                                         pad=spec.pad)
        start = time.perf_counter()
        p_real = p_of[spec.name] = model.predict(images, batch_size=4096, verbose=0)[:, 1]
        seen = witness.witness_figures(p_real, labels, meta["kind"])
        figures["witnesses"][spec.name] = {
            **seen, "real_data": spec.real_data, "gap_points": witness.gaps(seen, spec),
            "sha256": facts["sha256"], "seconds": time.perf_counter() - start}
    if gallery is not None:
        _witness_gallery(gallery, images, meta["kind"], p_of, preset)
        figures["gallery"] = str(gallery)
    return figures


def _witness_gallery(path, images, kinds, p_of: dict, preset: str, per_kind: int = 6) -> None:
    """PNG: ``per_kind`` twin stamps of each kind (the SNR-difference channel, as the
    witnesses see it), each captioned with every witness's p(real); red = called real."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.glue.files import atomic_paths

    names = [kind for kind in synthetic.KINDS if (kinds == kind).any()]
    fig, axes = plt.subplots(len(names), per_kind, figsize=(1.6 * per_kind, 1.9 * len(names)),
                             dpi=110, squeeze=False)
    for row, kind in enumerate(names):
        chosen = np.flatnonzero(kinds == kind)[:per_kind]
        for col in range(per_kind):
            ax = axes[row, col]
            ax.set_xticks([])
            ax.set_yticks([])
            if col >= len(chosen):
                ax.axis("off")
                continue
            i = chosen[col]
            ax.imshow(images[i, :, :, 3], cmap="gray", vmin=0, vmax=1)
            calls = [f"{name} {p[i]:.2f}" for name, p in p_of.items()]
            real = [p[i] > 0.5 for p in p_of.values()]
            ax.set_title("\n".join(calls), fontsize=7,
                         color="firebrick" if all(real) else
                         "darkorange" if any(real) else "black")
            if col == 0:
                ax.set_ylabel(kind.replace("_", " "), fontsize=8)
    fig.suptitle(f"twin '{preset}': SNR difference; p(real) of each witness (red: both call "
                 "it real, orange: one does)", fontsize=9)
    fig.tight_layout(rect=(0, 0, 1, 0.985))  # room for the title above the first captions
    with atomic_paths(path) as (temp,):
        fig.savefig(temp, format="png")
    plt.close(fig)


def _print_witness(figures: dict) -> None:
    print(f"witness: {figures['n']} twin stamps, preset {figures['preset']!r}, "
          f"seed {figures['seed']}")
    for name, f in figures["witnesses"].items():
        print(f"{name} witness    {'twin':>8s} {'real set':>9s} {'gap (pts)':>10s}")
        for key in ("accuracy", "real_recall", "bogus_recall"):
            print(f"  {key:16s} {f[key]:8.4f} {f['real_data'][key]:9.4f} "
                  f"{f['gap_points'][key]:+10.2f}")
        kinds = ", ".join(f"{kind} {v['called_bogus']:.0%}" for kind, v in
                          f.get("by_kind", {}).items() if kind != "real")
        print(f"  called bogus, by kind: {kinds}")
        edges = f["histogram"]["edges"]
        for cls in ("real", "bogus"):
            counts = f["histogram"][cls]
            total = max(sum(counts), 1)
            print(f"  p(real) of true {cls:5s}: " + " ".join(
                f"[{lo:.1f},{hi:.1f}) {c / total:.0%}" for lo, hi, c in
                zip(edges[:-1], edges[1:], counts, strict=True)))


# What each kind of net scored on REAL data: the study's seed net on the HiTS2013 test
# split; Deep-HiTS (Cabrera-Vives et al. 2017) on its own, far larger set of HiTS
# stamps: a reference for the deep net, not the same test.
REAL_DATA_ACCURACY = {"seed": 0.946, "deephits": 0.9947}
# The nets as params.yaml trains them (classifier section; deephits as its comment says).
CONSISTENCY_NETS = {
    "seed": {"arch": "seed", "channels": (3,)},
    "deephits": {"arch": "deephits", "channels": (0, 1, 2, 3), "optimizer": "adam",
                 "learning_rate": 0.001},
}


def bench_consistency(arch: str, preset: str, n: int, seed: int, epochs: int,
                      patience: int) -> dict:
    """Train the ``arch`` net of the project on ``n`` twin stamps of ``preset`` (the
    study's stratified split of them, early stopping on validation loss) and test it on
    the test split: accuracy, real and bogus recall, the share of each kind it calls
    bogus, beside the accuracy the same kind of net reached on real data."""
    from pipeline.core import witness
    from pipeline.core.classification import classification_figures
    from pipeline.core.data.split import split_indices
    from pipeline.core.models.training import fit_classifier
    from pipeline.core.params import ClassifierParams

    images, labels, meta = synthetic.make_stamps(n, seed=seed, preset=preset)
    index = split_indices(labels, seed=seed)
    splits = {name: {"images": images[i], "labels": labels[i]} for name, i in index.items()}
    cfg = ClassifierParams(**CONSISTENCY_NETS[arch], epochs=epochs, patience=patience,
                           seed=seed)
    model, history, seconds = fit_classifier(cfg, splits, StampGeometry.from_stamps(images))
    test = index["test"]
    probabilities = model.predict(images[test], batch_size=1024, verbose=0)
    seen = witness.witness_figures(probabilities[:, 1], labels[test], meta["kind"][test])
    return {
        "arch": arch, "preset": preset, "n": n, "seed": seed,
        "split": {name: int(len(i)) for name, i in index.items()},
        "epochs_run": len(history["loss"]), "training_seconds": seconds,
        "parameters": model.count_params(),
        "accuracy_ceiling": synthetic.accuracy_ceiling(preset),
        "test": {**seen, **{k: v for k, v in
                            classification_figures(labels[test], probabilities).items()
                            if k in ("loss", "roc_auc")}},
        "real_data_accuracy": REAL_DATA_ACCURACY[arch],
        "gap_points": 100.0 * (seen["accuracy"] - REAL_DATA_ACCURACY[arch]),
    }


def _print_consistency(f: dict) -> None:
    test = f["test"]
    print(f"consistency: {f['arch']} net ({f['parameters']} parameters) trained on "
          f"{f['split']['train']} twin stamps of preset {f['preset']!r} "
          f"({f['epochs_run']} epochs, {f['training_seconds']:.0f} s), tested on "
          f"{f['split']['test']}")
    print(f"  twin test accuracy {test['accuracy']:.4f} (ceiling {f['accuracy_ceiling']:.4f}), "
          f"real recall {test['real_recall']:.4f}, bogus recall {test['bogus_recall']:.4f}, "
          f"ROC AUC {test['roc_auc']:.4f}")
    print(f"  the same kind of net on real data: {f['real_data_accuracy']:.4f} "
          f"(gap {f['gap_points']:+.2f} points)")
    kinds = ", ".join(f"{kind} {v['called_bogus']:.0%}" for kind, v in
                      test.get("by_kind", {}).items())
    print(f"  called bogus, by kind: {kinds}")


def _tree_rss_mb(pid: int, field: str = "VmRSS") -> float:
    """Resident memory (``VmRSS``; ``VmHWM``: each process's peak) of process ``pid`` and
    all its descendants, in MiB (Linux /proc)."""
    total, pending = 0, [pid]
    while pending:
        current = pending.pop()
        try:
            with open(f"/proc/{current}/status") as handle:
                total += next(int(line.split()[1]) for line in handle
                              if line.startswith("VmRSS:"))
            for task in os.listdir(f"/proc/{current}/task"):
                with open(f"/proc/{current}/task/{task}/children") as handle:
                    pending += [int(child) for child in handle.read().split()]
        except (OSError, StopIteration):
            continue
    return total / 1024


def bench_serving(server: str, requests: int, stamps_per_request: int, port: int,
                  model: str) -> dict:
    """Start ``server`` (``occmap`` or ``mlflow``) on the project store's estimator
    ``model`` (an alias or version), send ``requests`` requests of ``stamps_per_request``
    twin stamps each, one after another, and record the server's resident memory (with
    its workers) idle and after every request."""
    import signal
    import subprocess
    import sys
    import urllib.request
    from pathlib import Path

    from pipeline.cli import ESTIMATOR_NAME, model_uri
    from pipeline.glue import tracking

    bin_dir = Path(sys.executable).parent
    uri = model_uri(ESTIMATOR_NAME, model)
    if server == "occmap":
        command = [str(bin_dir / "occmap"), "serve", "--model", model, "--port", str(port),
                   "--max-stamps", str(stamps_per_request)]
    else:
        command = [str(bin_dir / "mlflow"), "models", "serve", "-m", uri, "--env-manager",
                   "local", "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
    # mlflow models serve starts uvicorn through PATH: the venv's bin first
    env = {**os.environ, "MLFLOW_TRACKING_URI": tracking.tracking_uri(),
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    stamps, _, _ = synthetic.make_stamps(stamps_per_request, seed=0, preset="default")
    body = json.dumps({"inputs": stamps.tolist()}).encode()
    url = f"http://127.0.0.1:{port}"
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        deadline = time.monotonic() + 300
        while True:
            if process.poll() is not None:
                raise SystemExit(f"bench serving: {command[0]} exited with "
                                 f"{process.returncode} (is there a champion? dvc repro)")
            try:
                with urllib.request.urlopen(f"{url}/ping", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("bench serving: the server did not start in 300 s") \
                        from None
                time.sleep(1)
        idle = _tree_rss_mb(process.pid)
        after, seconds = [], []
        for _ in range(requests):
            request = urllib.request.Request(f"{url}/invocations", data=body,
                                             headers={"Content-Type": "application/json"})
            start = time.perf_counter()
            with urllib.request.urlopen(request, timeout=600) as answer:
                maps = np.asarray(json.loads(answer.read())["predictions"]["maps"],
                                  np.float32)
            seconds.append(time.perf_counter() - start)
            assert maps.shape == (stamps_per_request, *stamps.shape[1:3])
            after.append(_tree_rss_mb(process.pid))
        peak = _tree_rss_mb(process.pid, "VmHWM")
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
    return {"server": server, "model_uri": uri, "requests": requests,
            "stamps_per_request": stamps_per_request, "request_mb": len(body) / 2**20,
            "rss_idle_mb": idle, "rss_after_mb": after, "rss_max_mb": max(after),
            "peak_mb": peak,
            "growth_after_first_mb": after[-1] - after[0],
            "seconds_per_request": float(np.median(seconds))}


def _print_serving(f: dict) -> None:
    print(f"{f['server']} server, {f['model_uri']}: {f['requests']} requests of "
          f"{f['stamps_per_request']} stamps ({f['request_mb']:.1f} MiB of JSON each), "
          f"median {f['seconds_per_request']:.2f} s per request")
    print(f"  resident memory: idle {f['rss_idle_mb']:.0f} MiB; after each request "
          + ", ".join(f"{v:.0f}" for v in f["rss_after_mb"])
          + f" MiB; growth after the first {f['growth_after_first_mb']:+.0f} MiB; peak "
          f"(during a request) {f['peak_mb']:.0f} MiB")


def bench_spark(arch: str, n: int, seed: int, master: str, chunk_size: int | None) -> dict:
    """Exact maps/s of the project's engine in this process and by a Spark job on
    ``master`` (``pipeline.glue.spark``, the path of ``occlusion.spark_master``), on the
    same ``n`` twin stamps and an untrained net of ``arch`` (timing does not depend on the
    weights). Spark's costs are split: starting the session, a first job on a few stamps
    (executors, Python workers, TensorFlow and the model loaded in each), then the timed
    job on all ``n`` with everything warm; its maps are held to this process's."""
    import dataclasses

    import keras

    from pipeline.core.explain import engine_for
    from pipeline.core.models.classifiers import build_classifier
    from pipeline.core.params import OcclusionParams
    from pipeline.glue.spark import explain_on_spark, spark_session

    keras.utils.set_random_seed(seed)
    stamps, _, _ = synthetic.make_stamps(n, seed=seed, preset="default")
    model = build_classifier(arch, CLASSIFIER_CHANNELS[arch],
                             StampGeometry.from_stamps(stamps))
    occlusion = OcclusionParams(chunk_size=chunk_size or OCCLUSION_CHUNK[arch])
    settings = dataclasses.asdict(occlusion)
    engine = engine_for(model, occlusion)
    engine.maps(stamps[:occlusion.chunk_size], chunk_size=occlusion.chunk_size)  # warm-up
    one: dict = {}
    one_seconds = _seconds(lambda: one.update(
        maps=engine.maps(stamps, chunk_size=occlusion.chunk_size)[0]))

    session_seconds = _seconds(lambda: spark_session(master, app="occmap-bench"))
    spark = spark_session(master, app="occmap-bench")
    parallelism = spark.sparkContext.defaultParallelism
    few = min(n, 2 * parallelism)
    first_job_seconds = _seconds(lambda: explain_on_spark(stamps[:few], model, "exact",
                                                          master, settings))
    there: dict = {}
    spark_seconds = _seconds(lambda: there.update(
        maps=explain_on_spark(stamps, model, "exact", master, settings)["maps"]))
    spark.stop()
    return {
        "arch": arch, "n": n, "master": master, "parallelism": parallelism,
        "engine": engine.name, "chunk_size": occlusion.chunk_size,
        "one_process_maps_per_s": n / one_seconds,
        "spark_session_start_s": session_seconds,
        "spark_first_job_s": first_job_seconds, "spark_first_job_stamps": few,
        "spark_job_s": spark_seconds, "spark_maps_per_s": n / spark_seconds,
        "spark_over_one_process": one_seconds / spark_seconds,
        "spark_with_start_over_one_process":
            one_seconds / (session_seconds + first_job_seconds + spark_seconds),
        "max_abs_diff": float(np.abs(one["maps"] - there["maps"]).max()),
    }


def _print_spark(f: dict) -> None:
    print(f"spark: exact maps, {f['arch']} classifier ({f['engine']} engine, chunks of "
          f"{f['chunk_size']}), {f['n']} twin stamps; master {f['master']} "
          f"({f['parallelism']} cores)")
    print(f"one process               {f['one_process_maps_per_s']:10.1f} maps/s")
    print(f"Spark job (warm)          {f['spark_maps_per_s']:10.1f} maps/s "
          f"({f['spark_over_one_process']:.2f}x one process)")
    print(f"Spark's fixed costs       session {f['spark_session_start_s']:.1f} s, first job "
          f"({f['spark_first_job_stamps']} stamps: executors, workers, model) "
          f"{f['spark_first_job_s']:.1f} s; all in: "
          f"{f['spark_with_start_over_one_process']:.2f}x one process")
    print(f"max |difference|          {f['max_abs_diff']:.1e} (the same maps)")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="target", required=True)
    gen = sub.add_parser("generator", help="synthetic stamps/s and calibration figures")
    gen.add_argument("--n", type=int, default=20_000, help="stamps to generate (default 20000)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--preset", default="hits", choices=sorted(synthetic.PRESETS),
                     help="calibration is defined for 'hits' (default)")
    occ = sub.add_parser("occlusion", help="exact-map maps/s against the classifier's bound")
    occ.add_argument("--arch", default="seed", choices=sorted(OCCLUSION_CHUNK))
    occ.add_argument("--n", type=int, default=None,
                     help="stamps to map (default 2048 for seed, 64 for deephits)")
    occ.add_argument("--chunk-size", type=int, default=None,
                     help="stamps per compiled call (classifier batch / 441; default 4)")
    occ.add_argument("--per-stamp-n", type=int, default=16,
                     help="stamps for the per-stamp implementation (default 16)")
    occ.add_argument("--seed", type=int, default=0)
    occ.add_argument("--stamp-size", type=int, default=21,
                     help="side of the twin's stamps (default 21, HiTS)")
    est = sub.add_parser("estimator", help="estimated maps/s against exact maps/s")
    est.add_argument("--arch", default="seed", choices=sorted(OCCLUSION_CHUNK),
                     help="the classifier (default seed)")
    est.add_argument("--estimator", default="gated_ae",
                     choices=EstimatorParams.ARCHS, help="default gated_ae")
    est.add_argument("--condition", default="features", choices=EstimatorParams.CONDITIONS)
    est.add_argument("--n", type=int, default=None,
                     help="stamps (default 2048 for seed, 64 for deephits)")
    est.add_argument("--chunk-size", type=int, default=None)
    est.add_argument("--batch-size", type=int, default=ESTIMATOR_BATCH,
                     help=f"stamps per explainer call (default {ESTIMATOR_BATCH})")
    est.add_argument("--seed", type=int, default=0)
    est.add_argument("--stamp-size", type=int, default=21,
                     help="side of the twin's stamps (default 21, HiTS)")
    wit = sub.add_parser("witness", help="the real-data witnesses' view of the twin")
    wit.add_argument("--preset", default="hits", choices=sorted(synthetic.PRESETS))
    wit.add_argument("--n", type=int, default=20_000, help="twin stamps (default 20000)")
    wit.add_argument("--seed", type=int, default=0)
    wit.add_argument("--witness-dir", default=DEFAULT_WITNESS_DIR,
                     help=f"folder of the witness files (default {DEFAULT_WITNESS_DIR})")
    wit.add_argument("--gallery", metavar="PNG",
                     help="also write a gallery of twin stamps of each kind with the calls")
    con = sub.add_parser("consistency",
                         help="a net trained and tested on the twin against its real-data score")
    con.add_argument("--arch", default="seed", choices=sorted(CONSISTENCY_NETS))
    con.add_argument("--preset", default="hits", choices=sorted(synthetic.PRESETS))
    con.add_argument("--n", type=int, default=100_000,
                     help="twin stamps, split 56.25 / 18.75 / 25 %% (default 100000)")
    con.add_argument("--epochs", type=int, default=100, help="upper bound (default 100)")
    con.add_argument("--patience", type=int, default=5)
    con.add_argument("--seed", type=int, default=0)
    srv = sub.add_parser("serving", help="REST server memory under repeated large requests")
    srv.add_argument("--server", default="occmap", choices=("occmap", "mlflow"))
    srv.add_argument("--requests", type=int, default=8)
    srv.add_argument("--stamps", type=int, default=1000,
                     help="stamps per request (default 1000, occmap serve's limit)")
    srv.add_argument("--port", type=int, default=5077)
    srv.add_argument("--model", default="champion", help="alias or version (default champion)")
    svc = sub.add_parser("services", help="load and faults on PostgreSQL + the MLflow server")
    svc.add_argument("--clients", type=int, default=4,
                     help="concurrent clients and Optuna workers (default 4)")
    svc.add_argument("--metrics", type=int, default=200, help="metrics per client (default 200)")
    svc.add_argument("--queries", type=int, default=20,
                     help="registry queries per client (default 20)")
    svc.add_argument("--outage", type=float, default=5.0,
                     help="seconds PostgreSQL stays down in the restart test (default 5)")
    spk = sub.add_parser("spark", help="exact maps/s on Spark against one process")
    spk.add_argument("--arch", default="seed", choices=sorted(OCCLUSION_CHUNK))
    spk.add_argument("--n", type=int, default=2000, help="stamps (default 2000)")
    spk.add_argument("--master", default="local[2]",
                     help="Spark master (default local[2]; make spark-cluster prints one)")
    spk.add_argument("--chunk-size", type=int, default=None)
    spk.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.target == "spark":
        if args.n < 1:
            parser.error("--n must be >= 1")
        figures = bench_spark(args.arch, args.n, args.seed, args.master, args.chunk_size)
        _print_spark(figures)
    elif args.target == "services":
        from pipeline.bench_services import bench_services, print_services

        if args.clients < 1 or args.metrics < 1 or args.queries < 0 or args.outage <= 0:
            parser.error("--clients and --metrics must be >= 1, --queries >= 0, --outage > 0")
        figures = bench_services(args.clients, args.metrics, args.queries, args.outage)
        print_services(figures)
    elif args.target == "serving":
        if args.requests < 1 or args.stamps < 1:
            parser.error("--requests and --stamps must be >= 1")
        figures = bench_serving(args.server, args.requests, args.stamps, args.port, args.model)
        _print_serving(figures)
    elif args.target == "consistency":
        if args.n < 16 or args.epochs < 1 or args.patience < 0:
            parser.error("--n must be >= 16, --epochs >= 1 and --patience >= 0")
        figures = bench_consistency(args.arch, args.preset, args.n, args.seed, args.epochs,
                                    args.patience)
        _print_consistency(figures)
    elif args.target == "witness":
        if args.n < 2:
            parser.error("--n must be at least 2 (one real and one bogus stamp)")
        figures = bench_witness(args.preset, args.n, args.seed, args.witness_dir, args.gallery)
        _print_witness(figures)
    elif args.target == "generator":
        if args.n < 2:
            parser.error("--n must be at least 2 (one real and one bogus stamp)")
        figures = bench_generator(args.n, args.seed, args.preset)
        _print_generator(figures)
    elif args.target == "estimator":
        n = args.n or (2048 if args.arch == "seed" else 64)
        if n < 2 or args.batch_size < 1:
            parser.error("--n must be >= 2 and --batch-size >= 1")
        figures = bench_estimator(args.arch, args.estimator, args.condition, n, args.seed,
                                  args.chunk_size, args.batch_size, args.stamp_size)
        _print_estimator(figures)
    else:
        n = args.n or (2048 if args.arch == "seed" else 64)
        if n < 2 or args.per_stamp_n < 1:
            parser.error("--n must be >= 2 and --per-stamp-n >= 1")
        figures = bench_occlusion(args.arch, n, args.seed, args.chunk_size,
                                  min(args.per_stamp_n, n), args.stamp_size)
        _print_occlusion(figures)
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
