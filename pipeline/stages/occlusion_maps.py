"""DVC stage ``occlusion_maps``: exact occlusion maps of every split under the classifier.

Reads ``<prepared_dir>/{train,val,test}.npz`` and ``<models_dir>/classifier.keras``; writes
``<occlusion_dir>/{train,val,test}.npz`` (``maps`` (N, H, W) float32 raw, ``target``
(N,) int, ``base_prob`` (N,) float32) and ``<metrics_dir>/occlusion_maps.json`` (the
settings and the maps/s achieved). All outputs are written atomically. With
``occlusion.spark_master`` set, each split's maps are computed by a Spark job on that
master (``pipeline.glue.spark``: the same engine in each executor; the maps equal those of
one process to float rounding, ~1e-7).
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
from pipeline.glue.spark import explain_on_spark


def main() -> None:
    params = load_params()
    paths = PathsParams.from_dict(params.get("paths", {}))
    cfg = OcclusionParams.from_dict(params.get("occlusion", {}))
    splits = load_prepared(paths.prepared_dir)
    classifier = load_model(Path(paths.models_dir) / "classifier.keras")
    engine = engine_for(classifier, cfg)
    summary: dict = {"settings": dataclasses.asdict(cfg) | {"positions": engine.positions},
                     "engine_used": engine.name}
    where = f" on Spark ({cfg.spark_master})" if cfg.spark_master else ""
    summary["spark_master"] = cfg.spark_master or None
    print(f"occlusion_maps: the {engine.name} exact engine{where}")
    out_dir = Path(paths.occlusion_dir)
    with atomic_paths(*(out_dir / f"{name}.npz" for name in SPLITS)) as temps:
        for name, temp in zip(SPLITS, temps, strict=True):
            split = splits[name]
            print(f"occlusion_maps: {name}: {len(split['labels'])} stamps")
            start = time.perf_counter()
            labels = split["labels"] if cfg.target == "label" else None
            if cfg.spark_master:
                outputs = explain_on_spark(split["images"], classifier, "exact",
                                           cfg.spark_master, dataclasses.asdict(cfg),
                                           targets=labels)
                maps, target, base_prob = (outputs[key] for key in
                                           ("maps", "target", "base_prob"))
            else:
                maps, target, base_prob = engine.maps(
                    split["images"], chunk_size=cfg.chunk_size, progress=True,
                    target=labels)
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
