"""Benchmarks that print figures: ``python -m pipeline.bench <target> [options]``.

Each target prints readable lines and, as its LAST line, one JSON object with the figures,
so scripts can parse it. Speed goals are checked here, never by timed tests.

Targets:
  generator   synthetic stamps/s and the twin's calibration against the real HiTS set
  occlusion   exact-map throughput against the classifier's own bound, and a per-stamp
              implementation (one stamp's occluded copies per call, as the study did)
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np

from pipeline.core.data import stats, synthetic


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


# Stamps per compiled call: the deep net's activations for 441 copies of 32 stamps would
# need ~6 GB, so it takes smaller chunks.
OCCLUSION_CHUNK = {"seed": 4, "deephits": 4}


def _peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def bench_occlusion(arch: str, n: int, seed: int, chunk_size: int | None,
                    per_stamp_n: int) -> dict:
    """Classifier throughput, the bound it implies, the engine's maps/s and a per-stamp
    implementation's, on the same stamps in this process, each after a warm-up."""
    import keras
    import tensorflow as tf

    from pipeline.core.models.classifiers import build_classifier, seen_channels_predict_fn
    from pipeline.core.occlusion import OcclusionEngine, patch_masks

    chunk = chunk_size or OCCLUSION_CHUNK[arch]
    keras.utils.set_random_seed(seed)
    # Timing does not depend on the weights, so an untrained net of the same shape serves.
    model = build_classifier(arch, (3,) if arch == "seed" else (0, 1, 2, 3))
    stamps, _, _ = synthetic.make_stamps(n, seed=seed, preset="default")
    predict, channels = seen_channels_predict_fn(model)
    engine = OcclusionEngine(predict, 21, 21, channels=channels)
    positions = engine.positions

    # The bound: the classifier alone on the channels it sees (no copying, no channel
    # selection), at its best batch size among a few, including the engine's.
    seen = stamps if channels is None else stamps[..., list(channels)]
    compiled = tf.function(predict, reduce_retracing=True)
    images_per_s = 0.0
    for size in sorted({2048, 8192, chunk * positions}):
        batch = np.resize(seen, (size, *seen.shape[1:]))
        compiled(batch)
        repeats, start = 0, time.perf_counter()
        while repeats < 3 or time.perf_counter() - start < 2.0:
            compiled(batch).numpy()
            repeats += 1
        images_per_s = max(images_per_s, repeats * size / (time.perf_counter() - start))
    bound = images_per_s / positions

    engine.maps(stamps[: 2 * chunk], chunk_size=chunk)  # warm-up: trace both chunk shapes
    start = time.perf_counter()
    engine.maps(stamps, chunk_size=chunk)
    engine_maps_per_s = n / (time.perf_counter() - start)

    # As the study did: one stamp's occluded copies per model.predict call.
    masks = patch_masks(21, 21)[..., None]
    per_stamp = stamps[:per_stamp_n]
    model.predict(per_stamp[0] * (1 - masks), verbose=0)
    start = time.perf_counter()
    for stamp in per_stamp:
        model.predict(stamp * (1 - masks), batch_size=positions, verbose=0)
    per_stamp_maps_per_s = len(per_stamp) / (time.perf_counter() - start)
    return {
        "arch": arch, "n": n, "chunk_size": chunk, "positions": positions,
        "parameters": model.count_params(),
        "classifier_images_per_s": images_per_s,
        "bound_maps_per_s": bound,
        "engine_maps_per_s": engine_maps_per_s,
        "share_of_bound": engine_maps_per_s / bound,
        "per_stamp_maps_per_s": per_stamp_maps_per_s,
        "engine_over_per_stamp": engine_maps_per_s / per_stamp_maps_per_s,
        "peak_rss_gb": _peak_rss_gb(),
    }


def _print_occlusion(f: dict) -> None:
    print(f"occlusion: {f['arch']} classifier ({f['parameters']} parameters), {f['n']} stamps, "
          f"{f['positions']} positions per map, chunks of {f['chunk_size']} stamps")
    print(f"classifier throughput     {f['classifier_images_per_s']:12.0f} images/s")
    print(f"bound (/ positions)       {f['bound_maps_per_s']:12.1f} maps/s")
    print(f"engine                    {f['engine_maps_per_s']:12.1f} maps/s "
          f"({f['share_of_bound']:.1%} of the bound; goal >= 90 %)")
    print(f"per-stamp model.predict   {f['per_stamp_maps_per_s']:12.1f} maps/s "
          f"(engine is {f['engine_over_per_stamp']:.1f}x faster)")
    print(f"peak resident memory      {f['peak_rss_gb']:12.2f} GB")


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
                     help="stamps per compiled call (default 32 seed, 4 deephits)")
    occ.add_argument("--per-stamp-n", type=int, default=16,
                     help="stamps for the per-stamp implementation (default 16)")
    occ.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    if args.target == "generator":
        if args.n < 2:
            parser.error("--n must be at least 2 (one real and one bogus stamp)")
        figures = bench_generator(args.n, args.seed, args.preset)
        _print_generator(figures)
    else:
        n = args.n or (2048 if args.arch == "seed" else 64)
        if n < 2 or args.per_stamp_n < 1:
            parser.error("--n must be >= 2 and --per-stamp-n >= 1")
        figures = bench_occlusion(args.arch, n, args.seed, args.chunk_size,
                                  min(args.per_stamp_n, n))
        _print_occlusion(figures)
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
