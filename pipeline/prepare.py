"""DVC stage ``prepare``: the real HiTS pickle or the synthetic twin -> validated, split .npz.

Outputs ``<prepared_dir>/{train,val,test}.npz`` (keys ``images``, ``labels`` and, for the
twin, the metadata keys) and ``<metrics_dir>/prepare.json``; all written atomically.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.data import stats, synthetic
from pipeline.core.data.hits import load_hits_pickle
from pipeline.core.data.split import SPLITS, split_indices
from pipeline.core.params import DataParams, PathsParams
from pipeline.io import atomic_paths, load_params, run_stage, save_npz, write_json


def main() -> None:
    params = load_params()
    paths = PathsParams.from_dict(params.get("paths", {}))
    data = DataParams.from_dict(params.get("data", {}))

    summary: dict = {"source": data.source, "seed": data.seed}
    if data.source == "hits":
        print(f"prepare: loading the real HiTS set from {data.hits_path}")
        images, labels = load_hits_pickle(data.hits_path)
        meta: dict = {}
    else:
        print(f"prepare: generating {data.synthetic_n} synthetic stamps "
              f"(preset {data.synthetic_preset!r})")
        images, labels, meta = synthetic.make_stamps(
            data.synthetic_n, seed=data.seed, preset=data.synthetic_preset,
            progress=True, **data.synthetic_overrides)
        summary["preset"] = data.synthetic_preset
        summary["accuracy_ceiling"] = synthetic.accuracy_ceiling(
            data.synthetic_preset, **data.synthetic_overrides)
        summary["calibration"] = stats.calibration_figures(images, labels, meta)

    indices = split_indices(labels, seed=data.seed, test_fraction=data.test_fraction,
                            val_fraction=data.val_fraction)
    out_dir = Path(paths.prepared_dir)
    targets = [out_dir / f"{name}.npz" for name in SPLITS]
    with atomic_paths(*targets) as temps:
        for name, temp in zip(SPLITS, temps, strict=True):
            idx = indices[name]
            arrays = {"images": images[idx], "labels": labels[idx]}
            arrays.update({key: value[idx] for key, value in meta.items()})
            save_npz(temp, arrays)
            summary[name] = stats.describe_stamps(images[idx], labels[idx])
            print(f"prepare: {name}: {len(idx)} stamps, "
                  f"{summary[name]['real_share']:.3f} real")
    summary["all"] = stats.describe_stamps(images, labels)
    write_json(Path(paths.metrics_dir) / "prepare.json", summary)
    print(f"prepare: wrote {', '.join(map(str, targets))}")


if __name__ == "__main__":
    run_stage(main)
