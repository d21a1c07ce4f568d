"""Write the results page and the README's headline from the metrics files:
``python -m pipeline.report`` (or ``make report``) after ``make repro``.

Writes ``docs/results.md`` (the full results, from ``metrics/*.json``), rewrites only the
text between the ``<!-- headline:start -->`` and ``<!-- headline:end -->`` markers of
README.md (a few lines: accuracy, fidelity per class, speedup, promotion decision), and
copies the evaluate stage's gallery to ``docs/gallery.png`` (a documentation figure,
small, kept in git so the results page shows it). Nothing in either is typed by hand; all
three files are replaced together or not at all.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline.core.fidelity import AMPLITUDE_BINS
from pipeline.core.params import PathsParams
from pipeline.glue.files import atomic_paths, load_params, run_stage

START, END = "<!-- headline:start -->", "<!-- headline:end -->"
README = Path("README.md")
RESULTS_PAGE = Path("docs/results.md")
GALLERY_COPY = Path("docs/gallery.png")  # beside RESULTS_PAGE, which links it by name


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.2f} %"


def _num(value, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _pair(promote: dict) -> str:
    return " + ".join(f"{v['name']} v{v['version']}"
                      for v in promote["candidate"]["versions"].values())


def results_markdown(metrics: dict[str, dict], gallery: str = GALLERY_COPY.name) -> str:
    """The full results (markdown) from the stages' metrics dicts, keyed by stage;
    ``gallery`` is the figure's link, relative to the page that shows it."""
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
        "| top-10 % IoU | MSE skill |",
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
        f"({sanity['n']} stamps). Speed, same {speed['n']:,} test stamps, one process: "
        f"{_exact_speed(speed)}, estimator (classifier pass included) "
        f"{speed['estimator_maps_per_s']:,.0f} maps/s: **{speed['speedup']:,.0f}x**"
        f"{_over_batched(speed)}.",
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
        lines += ["", f"Promotion: **{promote['decision']}**"
                  f"{' (forced)' if promote.get('forced') else ''}, {_pair(promote)}: "
                  f"{promote['reason']}."]
    lines += ["", f"![exact vs estimated maps]({gallery})"]
    return "\n".join(lines)


def _exact_speed(speed: dict) -> str:
    """'exact 1,234 maps/s (incremental engine)'; evaluations from before the engines
    were named give no engine."""
    engine = speed.get("exact_engine")
    return (f"exact {speed['exact_maps_per_s']:,.0f} maps/s"
            + (f" ({engine} engine)" if engine else ""))


def _over_batched(speed: dict) -> str:
    if speed.get("exact_engine", "batched") == "batched" or "speedup_over_batched" not in speed:
        return ""
    return (f" ({speed['speedup_over_batched']:,.0f}x over the batched engine's "
            f"{speed['batched_maps_per_s']:,.0f} maps/s)")


def results_page(metrics: dict[str, dict], source: str = "metrics") -> str:
    """docs/results.md: a title, what the page covers and where it comes from, then
    ``results_markdown``; ``source`` names the metrics folder in that note."""
    return "\n".join([
        "# Results",
        "",
        "The figures of this workspace's last pipeline run: the classifier, the fidelity of "
        "the estimated maps to the exact ones (overall, per class, per amplitude), "
        "faithfulness, localisation, sanity, speed, stage timings and the promotion decision. "
        "How each figure is measured: [evaluation.md](evaluation.md); how the estimator "
        "variants compare: [estimators.md](estimators.md).",
        "",
        f"*Written by `make report` (`python -m pipeline.report`) from `{source}/*.json`; "
        f"do not edit by hand.*",
        "",
        results_markdown(metrics),
        "",
    ])


def headline_markdown(metrics: dict[str, dict]) -> str:
    """The README's headline (markdown): accuracy, the estimator's median r per class on
    the non-trivial maps, the speedup and the promotion decision."""
    train_c, train_e, ev = (metrics["train_classifier"], metrics["train_estimator"],
                            metrics["evaluate"])
    clf, head, speed = ev["classifier"], ev["fidelity"]["headline"], ev["speed"]
    lines = [
        f"- Classifier `{train_c['training']['arch']}`: test accuracy "
        f"**{_pct(clf['accuracy'])}** (ceiling of the data {_pct(clf.get('accuracy_ceiling'))}).",
        f"- Estimator `{train_e['training']['arch']}` against the exact maps, median Pearson r "
        f"on the non-trivial maps: **{_num(head['real_median_r'])}** real, "
        f"**{_num(head['bogus_median_r'])}** bogus (goals "
        f"{'met' if head['meets_goals'] else 'NOT met'}).",
        f"- Speed: {speed['estimator_maps_per_s']:,.0f} maps/s against "
        f"{_exact_speed(speed)}, **{speed['speedup']:,.0f}x**{_over_batched(speed)}.",
    ]
    promote = metrics.get("promote")
    if promote:
        lines.append(f"- Promotion: **{promote['decision']}**"
                     f"{' (forced)' if promote.get('forced') else ''}, {_pair(promote)}.")
    lines += ["", f"All figures: [{RESULTS_PAGE.as_posix()}]({RESULTS_PAGE.as_posix()})."]
    return "\n".join(lines)


def replace_block(text: str, body: str, source: str | Path = README,
                  start: str = START, end: str = END) -> str:
    """``text`` with what lies between ``start`` and ``end`` replaced by ``body``; the
    rest is kept byte for byte. ``ValueError`` naming ``source`` unless each marker occurs
    exactly once, ``start`` first."""
    if text.count(start) != 1 or text.count(end) != 1 or text.index(start) > text.index(end):
        raise ValueError(f"{source}: needs exactly one {start} followed by one {end} marker "
                         f"(the block make report rewrites)")
    head, rest = text.split(start)
    _, tail = rest.split(end)
    return f"{head}{start}\n{body}\n{end}{tail}"


def load_metrics(metrics_dir: str | Path) -> dict[str, dict]:
    """The stages' metrics dicts, keyed by stage; promote's only when it exists."""
    metrics = {}
    for stage in ("train_classifier", "occlusion_maps", "train_estimator", "evaluate"):
        file = Path(metrics_dir) / f"{stage}.json"
        if not file.is_file():
            raise FileNotFoundError(f"{file}: not found (run make repro first)")
        metrics[stage] = json.loads(file.read_text())
    promote_file = Path(metrics_dir) / "promote.json"
    if promote_file.is_file():  # the promote stage runs last; older runs may lack it
        metrics["promote"] = json.loads(promote_file.read_text())
    return metrics


def main() -> None:
    paths = PathsParams.from_dict(load_params().get("paths", {}))
    metrics = load_metrics(paths.metrics_dir)
    if not README.is_file():
        raise FileNotFoundError(f"{README}: not found (run from the project root)")
    # Everything that can fail is checked before anything is written.
    readme = replace_block(README.read_text(), headline_markdown(metrics))
    gallery = Path(paths.plots_dir) / "evaluate" / "gallery.png"
    if not gallery.is_file():
        raise FileNotFoundError(f"{gallery}: not found (the evaluate stage makes it)")
    page = results_page(metrics, Path(paths.metrics_dir).as_posix())
    with atomic_paths(README, RESULTS_PAGE, GALLERY_COPY) as (readme_temp, page_temp,
                                                               gallery_temp):
        readme_temp.write_text(readme)
        page_temp.write_text(page)
        shutil.copyfile(gallery, gallery_temp)
    print(f"report: wrote {RESULTS_PAGE}, the headline of {README} and {GALLERY_COPY}")


if __name__ == "__main__":
    run_stage(main)
