"""DVC stage ``prepare``: the real HiTS pickle or the synthetic twin -> validated, split .npz.

Outputs ``<prepared_dir>/{train,val,test}.npz`` (keys ``images`` (N, H, W, C), ``labels``,
``channels`` (C,) the channel names and, for the twin, the metadata keys) and
``<metrics_dir>/prepare.json``; all written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.core.data import stats, synthetic
from pipeline.core.data.hits import load_hits_pickle
from pipeline.core.data.split import SPLITS, split_indices
from pipeline.core.geometry import HITS, HITS_CHANNELS, StampGeometry
from pipeline.core.params import DataParams, PathsParams
from pipeline.glue.artifacts import CHANNELS_KEY
from pipeline.glue.files import atomic_paths, load_params, run_stage, save_npz, write_json


def main() -> None:
    params = load_params()
    paths = PathsParams.from_dict(params.get("paths", {}))
    data = DataParams.from_dict(params.get("data", {}))

    summary: dict = {"source": data.source, "seed": data.seed}
    if data.source == "hits":
        print(f"prepare: loading the real HiTS set from {data.hits_path}")
        images, labels = load_hits_pickle(data.hits_path)
        meta: dict = {}
        channels = HITS_CHANNELS
    else:
        size, channels = data.synthetic_stamp_size, tuple(data.synthetic_channels)
        print(f"prepare: generating {data.synthetic_n} synthetic {size}x{size} stamps "
              f"(preset {data.synthetic_preset!r}, channels {', '.join(channels)})")
        images, labels, meta = synthetic.make_stamps(
            data.synthetic_n, seed=data.seed, preset=data.synthetic_preset,
            stamp_size=size, channels=channels, progress=True, **data.synthetic_overrides)
        summary["preset"] = data.synthetic_preset
        summary["accuracy_ceiling"] = synthetic.accuracy_ceiling(
            data.synthetic_preset, **data.synthetic_overrides)
        # the real set's figures are those of HiTS stamps: 21x21, all four channels
        summary["calibration"] = (stats.calibration_figures(images, labels, meta)
                                  if StampGeometry(size, size, channels) == HITS else None)

    source = data.hits_path if data.source == "hits" else \
        f"the synthetic twin (data.synthetic.n = {data.synthetic_n})"
    try:
        indices = split_indices(labels, seed=data.seed, test_fraction=data.test_fraction,
                                val_fraction=data.val_fraction)
    except ValueError as err:  # nothing written yet: the old prepared data stay
        raise ValueError(f"{source}: {err}") from None
    out_dir = Path(paths.prepared_dir)
    targets = [out_dir / f"{name}.npz" for name in SPLITS]
    with atomic_paths(*targets) as temps:
        for name, temp in zip(SPLITS, temps, strict=True):
            idx = indices[name]
            arrays = {"images": images[idx], "labels": labels[idx],
                      CHANNELS_KEY: np.array(channels)}
            arrays.update({key: value[idx] for key, value in meta.items()})
            save_npz(temp, arrays)
            summary[name] = stats.describe_stamps(images[idx], labels[idx], channels)
            print(f"prepare: {name}: {len(idx)} stamps, "
                  f"{summary[name]['real_share']:.3f} real")
    summary["all"] = stats.describe_stamps(images, labels, channels)
    write_json(Path(paths.metrics_dir) / "prepare.json", summary)
    print(f"prepare: wrote {', '.join(map(str, targets))}")


if __name__ == "__main__":
    run_stage(main)
