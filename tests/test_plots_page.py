"""`make plots`: the DVC plots page renders offline (every chart, in a real browser)."""

from __future__ import annotations

import shutil
import subprocess
import sys

import pytest

from conftest import VENV_BIN, load_page

CSV_FILES = {
    "train_classifier/history.csv": "epoch,loss,val_loss,accuracy,val_accuracy\n"
                                    "1,0.5,0.6,0.8,0.7\n2,0.4,0.5,0.85,0.8\n",
    "train_classifier/confusion.csv": "actual,predicted\nreal,real\nbogus,real\nbogus,bogus\n",
    "evaluate/deletion.csv": "fraction_removed,exact,estimate,class_mean,random\n"
                             "0.0,1,1,1,1\n0.5,0.2,0.3,0.5,0.9\n",
    "evaluate/fidelity_by_amplitude.csv": "amplitude,n,estimate_r_median\n"
                                          "1: <0.01,3,0.5\n2: 0.01-0.05,4,0.9\n",
    "evaluate/selective.csv": "share,doubt_p0_1_r,oracle_p0_1_r,random_p0_1_r\n"
                              "0,0.9,0.9,0.9\n0.1,0.95,0.99,0.91\n",
}
VEGA_PLOTS = 6  # loss, accuracy, confusion, deletion, fidelity by amplitude, selective


@pytest.mark.slow
def test_the_plots_page_draws_every_chart_with_the_network_cut(tmp_path, repo_root,
                                                                browser_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    project = tmp_path / "project"
    project.mkdir()
    for name in ("dvc.yaml", "params.yaml"):
        shutil.copy(repo_root / name, project / name)
    subprocess.run(["git", "init", "-q"], cwd=project, check=True)
    subprocess.run([str(VENV_BIN / "dvc"), "init", "-q"], cwd=project, check=True)
    shutil.copytree(repo_root / ".dvc" / "plots", project / ".dvc" / "plots")
    for name, text in CSV_FILES.items():
        (project / "plots" / name).parent.mkdir(parents=True, exist_ok=True)
        (project / "plots" / name).write_text(text)
    figure = plt.figure(figsize=(2, 1))
    for png in ("train_classifier/curves.png", "train_classifier/confusion.png",
                "train_estimator/gallery.png", "evaluate/deletion.png", "evaluate/selective.png",
                "evaluate/gallery.png", "evaluate/gallery_real.png",
                "evaluate/gallery_bogus.png", "evaluate/gallery_by_kind.png",
                "evaluate/kinds/real.png", "evaluate/kinds/trail.png",
                "evaluate/confusion.png"):
        (project / "plots" / png).parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(project / "plots" / png)

    made = subprocess.run([sys.executable, "-m", "pipeline.plots_page"], cwd=project,
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 0, made.stdout + made.stderr
    page = project / "plots" / "html" / "index.html"
    html = page.read_text()
    # nothing fetched from the network: the libraries lie beside the page
    assert "http://" not in html.split("<body>")[0] and "https://cdn" not in html
    assert (page.parent / "vega-bundle.js").stat().st_size > 500_000

    dom = load_page(browser_path, page, screenshot=tmp_path / "page.png")
    # each Vega chart drew its marks; each PNG is on the page, one entry per plot
    assert dom.count('class="marks"') == VEGA_PLOTS
    assert dom.count("<img") == 12  # the per-kind galleries' folder: one image each
    assert (tmp_path / "page.png").stat().st_size > 20_000


def test_a_project_without_plot_files_gets_a_clear_error(tmp_path, repo_root):
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([str(VENV_BIN / "dvc"), "init", "-q"], cwd=tmp_path, check=True)
    shutil.copy(repo_root / "dvc.yaml", tmp_path / "dvc.yaml")
    shutil.copy(repo_root / "params.yaml", tmp_path / "params.yaml")
    made = subprocess.run([sys.executable, "-m", "pipeline.plots_page"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert made.returncode == 1
    assert ("plots_page: dvc plots show failed (run make repro first?): DVC failed to load "
            "some plots") in made.stderr
    assert not (tmp_path / "plots" / "html").exists()
