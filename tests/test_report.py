"""make report: the results page and the README headline are built from the metrics files,
and only the headline block of the README is rewritten."""

from __future__ import annotations

import json
import shutil
import zlib
from pathlib import Path

import pytest
import yaml

from pipeline import report

STAGES = ("train_classifier", "occlusion_maps", "train_estimator", "evaluate", "promote")


@pytest.fixture(scope="module")
def metrics(repo_root) -> dict[str, dict]:
    """The committed metrics of the last run (git-tracked, small)."""
    return {stage: json.loads((repo_root / "metrics" / f"{stage}.json").read_text())
            for stage in STAGES}


def _png(path: Path) -> bytes:
    """A valid 1x1 grey PNG, written to ``path``."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        body = kind + data
        return len(data).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    ihdr = (1).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0])
    data = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
            + chunk(b"IDAT", zlib.compress(b"\x00\x80")) + chunk(b"IEND", b""))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return data


def test_results_markdown_carries_the_figures(metrics):
    ev = metrics["evaluate"]
    text = report.results_markdown(metrics)
    assert f"test accuracy {100 * ev['classifier']['accuracy']:.2f} %" in text
    for name in ("real", "bogus"):
        group = ev["fidelity"]["non_trivial"][name]
        assert (f"| non-trivial, true {name} | {group['n']:,} | "
                f"{group['estimate']['r_median']:.3f} / {group['class_mean']['r_median']:.3f} |"
                in text)
    assert f"**{ev['speed']['speedup']:,.0f}x**" in text
    assert f"{metrics['train_estimator']['training']['train_maps']:,} exact maps" in text
    assert f"Promotion: **{metrics['promote']['decision']}**" in text
    # the page lives beside the gallery copy in docs/
    assert text.endswith("![exact vs estimated maps](gallery.png)")


def test_results_page_has_a_title_and_says_where_it_comes_from(metrics):
    page = report.results_page(metrics)
    assert page.startswith("# Results\n")
    assert "make report" in page and "metrics/*.json" in page
    assert report.results_markdown(metrics) in page


def test_headline_carries_accuracy_fidelity_speedup_and_decision(metrics):
    ev, promote = metrics["evaluate"], metrics["promote"]
    head = ev["fidelity"]["headline"]
    text = report.headline_markdown(metrics)
    assert f"**{100 * ev['classifier']['accuracy']:.2f} %**" in text
    assert f"**{head['real_median_r']:.3f}** real" in text
    assert f"**{head['bogus_median_r']:.3f}** bogus" in text
    assert f"**{ev['speed']['speedup']:,.0f}x**" in text
    assert f"Promotion: **{promote['decision']}**" in text
    for version in promote["candidate"]["versions"].values():
        assert f"{version['name']} v{version['version']}" in text
    assert "docs/results.md" in text
    assert len(text.splitlines()) <= 8  # a headline, not the results


def test_headline_without_promote_and_with_a_forced_promotion(metrics):
    without = {k: v for k, v in metrics.items() if k != "promote"}
    assert "Promotion" not in report.headline_markdown(without)
    forced = dict(metrics, promote=dict(metrics["promote"], forced=True))
    assert "(forced)" in report.headline_markdown(forced)


@pytest.mark.parametrize("text", [
    "no markers at all\n",
    f"{report.START}\nonly the start\n",
    f"{report.END}\nend before start\n{report.START}\n",
    f"{report.START}\n{report.START}\ntwice\n{report.END}\n",
])
def test_replace_block_refuses_missing_or_misplaced_markers(text):
    with pytest.raises(ValueError, match="README.md: needs exactly one"):
        report.replace_block(text, "new")


def _project(tmp_path: Path, repo_root: Path, readme: str) -> Path:
    """A project directory with params.yaml (paths), the committed metrics, a README and
    an evaluate gallery; the working directory is moved there."""
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(
        {"paths": {"metrics_dir": "metrics", "plots_dir": "plots"}}))
    shutil.copytree(repo_root / "metrics", tmp_path / "metrics")
    (tmp_path / "README.md").write_text(readme)
    return tmp_path


def test_main_rewrites_only_the_headline_and_writes_the_results_page(
        tmp_path, repo_root, metrics, monkeypatch):
    before = "# Project\n\nIntro text.\n\n## Results\n\n"
    after = "\n\nMore text that must survive.\n<!-- results:start -->\nnot ours\n"
    readme = f"{before}{report.START}\nstale headline\n{report.END}{after}"
    project = _project(tmp_path, repo_root, readme)
    gallery = _png(project / "plots" / "evaluate" / "gallery.png")
    monkeypatch.chdir(project)

    report.main()

    text = (project / "README.md").read_text()
    assert text == (f"{before}{report.START}\n{report.headline_markdown(metrics)}\n"
                    f"{report.END}{after}")
    page = (project / "docs" / "results.md").read_text()
    assert page == report.results_page(metrics)
    assert f"{100 * metrics['evaluate']['classifier']['accuracy']:.2f} %" in page
    assert (project / "docs" / "gallery.png").read_bytes() == gallery
    assert not [p for p in (project / "docs").iterdir() if p.name.startswith(".")]

    report.main()  # idempotent
    assert (project / "README.md").read_text() == text


def test_main_without_markers_fails_and_writes_nothing(tmp_path, repo_root, monkeypatch):
    project = _project(tmp_path, repo_root, "# Project\n\nno markers here\n")
    _png(project / "plots" / "evaluate" / "gallery.png")
    monkeypatch.chdir(project)
    with pytest.raises(ValueError, match="headline:start"):
        report.main()
    assert (project / "README.md").read_text() == "# Project\n\nno markers here\n"
    assert not (project / "docs").exists()


def test_main_without_gallery_fails_and_writes_nothing(tmp_path, repo_root, monkeypatch):
    readme = f"# Project\n{report.START}\nold\n{report.END}\n"
    project = _project(tmp_path, repo_root, readme)
    monkeypatch.chdir(project)
    with pytest.raises(FileNotFoundError, match="gallery.png"):
        report.main()
    assert (project / "README.md").read_text() == readme
    assert not (project / "docs").exists()


def test_main_names_a_missing_metrics_file(tmp_path, repo_root, monkeypatch):
    project = _project(tmp_path, repo_root, f"{report.START}\n{report.END}\n")
    (project / "metrics" / "evaluate.json").unlink()
    monkeypatch.chdir(project)
    with pytest.raises(FileNotFoundError, match="evaluate.json"):
        report.main()
