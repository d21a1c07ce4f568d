"""Benchmarks that print figures: ``python -m pipeline.bench <target> [options]``.

Each target prints readable lines and, as its LAST line, one JSON object with the figures,
so scripts can parse it. Speed goals are checked here, never by timed tests.

Targets:
  generator   synthetic stamps/s and the twin's calibration against the real HiTS set
"""

from __future__ import annotations

import argparse
import json
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
    figures.update({
        "n": n,
        "preset": preset,
        "seconds": seconds,
        "stamps_per_s": n / seconds,
        "accuracy_ceiling": synthetic.accuracy_ceiling(preset),
        "channel_mean": dict(zip(synthetic.CHANNELS,
                                 images.mean(axis=(0, 1, 2), dtype=np.float64).tolist(),
                                 strict=True)),
        "channel_std": dict(zip(synthetic.CHANNELS,
                                images.std(axis=(0, 1, 2), dtype=np.float64).tolist(),
                                strict=True)),
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="target", required=True)
    gen = sub.add_parser("generator", help="synthetic stamps/s and calibration figures")
    gen.add_argument("--n", type=int, default=20_000, help="stamps to generate (default 20000)")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--preset", default="hits", choices=sorted(synthetic.PRESETS),
                     help="calibration is defined for 'hits' (default)")
    args = parser.parse_args(argv)

    if args.target == "generator":
        if args.n < 2:
            parser.error("--n must be at least 2 (one real and one bogus stamp)")
        figures = bench_generator(args.n, args.seed, args.preset)
        _print_generator(figures)
    print(json.dumps(figures, sort_keys=True))


if __name__ == "__main__":
    main()
