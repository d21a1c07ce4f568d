"""Regenerate the README's results section from the metrics files: ``python -m pipeline.report``
(or ``make report``) after ``make repro``.

Rewrites the text between the ``<!-- results:start -->`` and ``<!-- results:end -->``
markers of README.md from ``metrics/*.json``, and copies the evaluate stage's gallery to
``docs/gallery.png`` (a documentation figure, small, kept in git so the README shows it).
Nothing in the section is typed by hand.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline.core.fidelity import AMPLITUDE_BINS
from pipeline.core.params import PathsParams
from pipeline.io import atomic_paths, load_params, run_stage

START, END = "<!-- results:start -->", "<!-- results:end -->"
README = Path("README.md")
GALLERY_COPY = Path("docs/gallery.png")


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def results_markdown(metrics: dict[str, dict]) -> str:
    """The results section (markdown) from the stages' metrics dicts, keyed by stage."""
    train_c, occ = metrics["train_classifier"], metrics["occlusion_maps"]
    train_e, ev = metrics["train_estimator"], metrics["evaluate"]
    clf, fid, faith = ev["classifier"], ev["fidelity"], ev["faithfulness"]
    lines = [
        f"Classifier `{train_c['training']['arch']}` "
        f"({train_c['training']['parameters']:,} parameters): test accuracy "
        f"{_pct(clf['accuracy'])} (ceiling of the data {_pct(clf.get('accuracy_ceiling'))}), "
        f"ROC AUC {_num(clf['roc_auc'])}. Estimator `{train_e['training']['arch']}` "
        f"({train_e['training']['parameters']:,} parameters, condition "
        f"`{train_e['training']['condition']}`), trained on "
        f"{train_e['training']['train_maps']:,} exact maps.",
        "",
        "Fidelity on the test split (estimated vs exact maps; non-trivial = max |d| >= 0.05; "
        "baseline = the class-mean map of the training maps):",
        "",
        "| maps | n | median r (estimate / class-mean) | mean SSIM (estimate / class-mean) "
        "| top-44 IoU | MSE skill |",
        "|---|---|---|---|---|---|",
    ]
    groups = [("all", fid["overall"])]
    groups += [(f"true {name}", fid["by_true_class"][name]) for name in ("real", "bogus")]
    groups += [(f"non-trivial, true {name}", fid["non_trivial"][name])
               for name in ("real", "bogus")]
    groups += [(f"amplitude {name}", fid["by_amplitude"][name])
               for name in AMPLITUDE_BINS if name in fid["by_amplitude"]]
    for name, group in groups:
        est, base = group["estimate"], group["class_mean"]
        lines.append(
            f"| {name} | {group['n']:,} | {_num(est['r_median'])} / {_num(base['r_median'])} | "
            f"{_num(est['ssim_mean'])} / {_num(base['ssim_mean'])} | {_num(est['iou_mean'])} | "
            f"{_num(group['mse_skill'])} |")
    head = fid["headline"]
    lines += ["", f"Goals (median r >= 0.95 and mean SSIM >= 0.9 on the non-trivial maps of each "
              f"class, MSE skill >= 0.8 overall and per class): "
              f"{'met' if head['meets_goals'] else 'NOT met'}.", ""]
    lines += [
        "| check | exact maps | estimated maps | class-mean map | random map |",
        "|---|---|---|---|---|",
        f"| deletion AUC, {faith['n']:,} stamps (lower = more faithful) | "
        f"{_num(faith['auc_exact'])} | {_num(faith['auc_estimate'])} | "
        f"{_num(faith['auc_class_mean'])} | {_num(faith['auc_random'])} |",
    ]
    if "localisation" in ev:
        for group in ("real", "bogus"):
            row = ev["localisation"][group]
            lines.append(f"| pointing game, true {group} | {_pct(row['exact_pointing'])} | "
                         f"{_pct(row['estimate_pointing'])} | | |")
            lines.append(f"| positive mass in the evidence mask, true {group} | "
                         f"{_pct(row['exact_mass'])} | {_pct(row['estimate_mass'])} | | |")
    sanity, speed = ev["sanity"], ev["speed"]
    lines += [
        "",
        f"Sanity: exact maps of the same net with re-randomised weights have a mean rank "
        f"correlation of {_num(sanity.get('rank_correlation_mean'))} with the trained net's "
        f"({sanity['n']} stamps). Speed, same {speed['n']:,} test stamps, one process: exact "
        f"{speed['exact_maps_per_s']:,.0f} maps/s, estimator (classifier pass included) "
        f"{speed['estimator_maps_per_s']:,.0f} maps/s: **{speed['speedup']:,.0f}x**.",
        "",
        "| stage | wall time of its main step |",
        "|---|---|",
        f"| train_classifier | {train_c['training']['seconds']:.0f} s "
        f"({train_c['training']['epochs_run']} epochs) |",
        f"| occlusion_maps | {sum(occ[s]['seconds'] for s in ('train', 'val', 'test')):.0f} s "
        f"({sum(occ[s]['n'] for s in ('train', 'val', 'test')):,} maps) |",
        f"| train_estimator | {train_e['training']['seconds']:.0f} s "
        f"({train_e['training']['epochs_run']} epochs) |",
    ]
    promote = metrics.get("promote")
    if promote:
        pair = " + ".join(f"{v['name']} v{v['version']}"
                          for v in promote["candidate"]["versions"].values())
        lines += ["", f"Promotion: **{promote['decision']}**"
                  f"{' (forced)' if promote.get('forced') else ''}, {pair}: "
                  f"{promote['reason']}."]
    lines += ["", f"![exact vs estimated maps]({GALLERY_COPY.as_posix()})"]
    return "\n".join(lines)


def main() -> None:
    paths = PathsParams.from_dict(load_params().get("paths", {}))
    metrics = {}
    for stage in ("train_classifier", "occlusion_maps", "train_estimator", "evaluate"):
        file = Path(paths.metrics_dir) / f"{stage}.json"
        if not file.is_file():
            raise FileNotFoundError(f"{file}: not found (run make repro first)")
        metrics[stage] = json.loads(file.read_text())
    promote_file = Path(paths.metrics_dir) / "promote.json"
    if promote_file.is_file():  # the promote stage runs last; older runs may lack it
        metrics["promote"] = json.loads(promote_file.read_text())
    text = README.read_text()
    if text.count(START) != 1 or text.count(END) != 1:
        raise ValueError(f"{README}: needs exactly one {START} and one {END} marker")
    head, rest = text.split(START)
    _, tail = rest.split(END)
    gallery = Path(paths.plots_dir) / "evaluate" / "gallery.png"
    with atomic_paths(README, GALLERY_COPY) as (readme_temp, gallery_temp):
        readme_temp.write_text(f"{head}{START}\n{results_markdown(metrics)}\n{END}{tail}")
        shutil.copyfile(gallery, gallery_temp)
    print(f"report: rewrote the results section of {README} and {GALLERY_COPY}")


if __name__ == "__main__":
    run_stage(main)
