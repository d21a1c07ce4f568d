"""DVC stage ``occlusion_maps``: exact occlusion maps of every split under the classifier.

Reads ``<prepared_dir>/{train,val,test}.npz`` and ``<models_dir>/classifier.keras``; writes
``<occlusion_dir>/{train,val,test}.npz`` (``maps`` (N, H, W) float32 raw, ``target``
(N,) int, ``base_prob`` (N,) float32) and ``<metrics_dir>/occlusion_maps.json`` (the
settings and the maps/s achieved). All outputs are written atomically.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np

from pipeline.core.data.split import SPLITS
from pipeline.core.explain import engine_for
from pipeline.core.params import OcclusionParams, PathsParams
from pipeline.glue.artifacts import load_model, load_prepared
from pipeline.glue.files import atomic_paths, load_params, run_stage, save_npz, write_json


def main() -> None:
    params = load_params()
    paths = PathsParams.from_dict(params.get("paths", {}))
    cfg = OcclusionParams.from_dict(params.get("occlusion", {}))
    splits = load_prepared(paths.prepared_dir)
    engine = engine_for(load_model(Path(paths.models_dir) / "classifier.keras"), cfg)
    summary: dict = {"settings": dataclasses.asdict(cfg) | {"positions": engine.positions},
                     "engine_used": engine.name}
    print(f"occlusion_maps: the {engine.name} exact engine")
    out_dir = Path(paths.occlusion_dir)
    with atomic_paths(*(out_dir / f"{name}.npz" for name in SPLITS)) as temps:
        for name, temp in zip(SPLITS, temps, strict=True):
            split = splits[name]
            print(f"occlusion_maps: {name}: {len(split['labels'])} stamps")
            start = time.perf_counter()
            maps, target, base_prob = engine.maps(
                split["images"], chunk_size=cfg.chunk_size, progress=True,
                target=split["labels"] if cfg.target == "label" else None)
            seconds = time.perf_counter() - start
            save_npz(temp, {"maps": maps, "target": target, "base_prob": base_prob})
            amplitude = np.abs(maps).reshape(len(maps), -1).max(axis=1)
            summary[name] = {"n": len(maps), "seconds": seconds,
                             "maps_per_s": len(maps) / seconds if seconds else None,
                             "median_max_abs_drop": float(np.median(amplitude)),
                             "trivial_share": float((amplitude < 0.01).mean())}
    total = sum(summary[name]["n"] for name in SPLITS)
    seconds = sum(summary[name]["seconds"] for name in SPLITS)
    summary["maps_per_s"] = total / seconds if seconds else None
    write_json(Path(paths.metrics_dir) / "occlusion_maps.json", summary)
    print(f"occlusion_maps: {total} maps at {summary['maps_per_s']:.0f} maps/s")


if __name__ == "__main__":
    run_stage(main)
