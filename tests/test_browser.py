"""`occmap report`: the static explanation browser, loaded in headless Chromium."""

from __future__ import annotations

import re

import numpy as np
import pytest
from click.testing import CliRunner

from conftest import load_page
from pipeline.cli import main
from pipeline.core import browser


def _rows(dom: str) -> list[str]:
    """The data-index of every table row the page rendered, in order."""
    return re.findall(r'<tr class="row" data-index="(\d+)"', dom)


def test_rows_carry_the_classes_probability_kind_fidelity_and_doubt():
    rows = browser.rows_for(np.array([1, 0]), np.array([0.9, 0.61]), labels=np.array([1, 1]),
                            kinds=np.array(["real", "trail"]), r=np.array([0.5, np.nan]),
                            doubt=np.array([0.01, 0.2]), images=[("a", "A"), ("b", "B")])
    assert rows[1] == {"index": 1, "true": "real", "predicted": "bogus", "p": 0.61,
                       "kind": "trail", "r": None, "amplitude": None, "trivial": False,
                       "doubt": 0.2, "thumb": "b", "panel": "B"}
    bare = browser.rows_for(np.array([1]), np.array([0.7]))[0]
    assert bare["true"] is None and bare["kind"] is None and bare["r"] is None
    # a map whose exact amplitude is below the evaluation's 0.05 is trivial: its r is noise
    judged = browser.rows_for(np.array([1, 1]), np.array([0.9, 0.9]), r=np.array([0.2, 0.2]),
                              amplitude=np.array([0.049, 0.05]))
    assert [(row["amplitude"], row["trivial"]) for row in judged] == [(0.049, True),
                                                                      (0.05, False)]


def test_the_page_filters_sorts_and_opens_a_panel_in_a_browser(tmp_path, browser_path):
    kinds = np.array(["real", "trail", "cosmic_ray", "trail", "real", "trail"])
    p = np.array([0.99, 0.6, 0.8, 0.95, 0.7, 0.55])
    labels = (kinds == "real").astype(int)
    rows = browser.rows_for(labels, p, labels=labels, kinds=kinds,
                            r=np.array([0.99, 0.5, 0.97, 0.8, 0.9, 0.3]))
    page = tmp_path / "index.html"
    page.write_text(browser.page_html(rows, "a <test> page", "note & more"))
    dom = load_page(browser_path, page)
    assert _rows(dom) == ["0", "1", "2", "3", "4", "5"]
    assert "a &lt;test&gt; page" in dom and "6 of 6 stamps" in dom
    # the view lives in the URL's fragment: a filter, a sort, a panel
    dom = load_page(browser_path, page, fragment="kind=trail")
    assert _rows(dom) == ["1", "3", "5"] and "3 of 6 stamps" in dom
    dom = load_page(browser_path, page, fragment="kind=trail&sort=p&desc=1")
    assert _rows(dom) == ["3", "1", "5"]
    dom = load_page(browser_path, page, fragment="true=bogus&rmax=0.9&sort=r")
    assert _rows(dom) == ["5", "1", "3"]
    dom = load_page(browser_path, page, fragment="pmin=0.7&pmax=0.96")
    assert _rows(dom) == ["2", "3", "4"]
    dom = load_page(browser_path, page, fragment="show=2")
    assert 'id="panel" class="open"' in dom
    assert "#2: true bogus, predicted bogus (p 0.8), cosmic_ray, r 0.97" in dom
    # with amplitudes: a trivial map's r is bracketed and "r below" skips it
    rows = browser.rows_for(labels, p, labels=labels, kinds=kinds,
                            r=np.array([0.99, 0.5, 0.97, 0.8, 0.9, 0.3]),
                            amplitude=np.array([0.3, 0.2, 0.1, 0.4, 0.2, 0.01]))
    page.write_text(browser.page_html(rows, "amplitudes", ""))
    dom = load_page(browser_path, page, fragment="rmax=0.9&sort=r")
    assert _rows(dom) == ["1", "3"]
    dom = load_page(browser_path, page, fragment="sort=r")
    assert re.search(r'<td class="muted" title="trivial map[^"]*">\(0\.3\)</td><td>0\.01</td>',
                     dom)
    assert "(0.97)" not in dom and "<td>0.97</td>" in dom


@pytest.mark.slow
def test_occmap_report_end_to_end(tiny_champion, tmp_path, browser_path):
    project, env = tiny_champion
    with np.load(project / "data" / "prepared" / "test.npz") as npz:
        images, labels, kinds = npz["images"][:9], npz["labels"][:9], npz["kind"][:9]
    stamps = tmp_path / "stamps.npz"
    np.savez(stamps, images=images, labels=labels, kind=kinds)
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", str(stamps), "--out", str(out), "--exact",
                                       "--limit", "8"],
                                env={"MLFLOW_TRACKING_URI": env["MLFLOW_TRACKING_URI"]})
    assert result.exit_code == 0, result.output
    assert "occmap report: 8 stamps ->" in result.output
    assert sorted(p.name for p in out.iterdir()) == ["img", "index.html"]
    assert len(list((out / "img").iterdir())) == 16  # a panel and a thumbnail per stamp
    html = (out / "index.html").read_text()
    assert "http://" not in html and "https://" not in html  # nothing to fetch

    dom = load_page(browser_path, out / "index.html", screenshot=tmp_path / "report.png")
    assert _rows(dom) == [str(i) for i in range(8)]
    assert dom.count('<img src="img/') == 8 and (tmp_path / "report.png").stat().st_size > 20_000
    kind = str(kinds[0])
    dom = load_page(browser_path, out / "index.html", fragment=f"kind={kind}")
    assert _rows(dom) == [str(i) for i in range(8) if kinds[i] == kind]
    # every row's r against the exact map is on the page (the --exact column)
    # and its exact amplitude; r bracketed on a trivial map, empty where a map is flat (r
    # undefined: the tiny chain's nets make such maps)
    rs, amplitudes = [], []
    for row in re.findall(r'<tr class="row".*?</tr>', dom):
        cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
        r_cell, amplitude = cells[5], float(cells[6])
        trivial = 'class="muted"' in row
        assert trivial == (amplitude < 0.05), row
        if r_cell:
            rs.append(float(r_cell.strip("()")))
            assert r_cell.startswith("(") == trivial, row
        amplitudes.append(amplitude)
    assert len(amplitudes) == len(_rows(dom)) and rs and all(-1 <= r <= 1 for r in rs)
