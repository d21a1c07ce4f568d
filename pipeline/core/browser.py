"""The static HTML explanation browser (``occmap report``): one page, no network.

Pure: ``rows_for`` turns the explained stamps' arrays into the page's rows and
``page_html`` into the page, whose images are files beside it (named by the caller). The
page's script sorts and filters the rows in the browser; its state lives in the URL's
fragment (``#kind=trail&sort=p&desc=1&show=3``), so a view can be linked, bookmarked and
tested by loading a URL.
"""

from __future__ import annotations

import html
import json

import numpy as np

from pipeline.core.fidelity import NON_TRIVIAL
from pipeline.core.geometry import CLASS_NAMES

# The columns of the table: (key in a row, header, how the cell reads).
COLUMNS = (("index", "#", "int"), ("true", "true class", "text"),
           ("predicted", "predicted", "text"), ("p", "p", "num"), ("kind", "kind", "text"),
           ("r", "r vs exact", "num"), ("amplitude", "max |exact|", "num"),
           ("doubt", "doubt", "num"))


def rows_for(target: np.ndarray, base_prob: np.ndarray, labels: np.ndarray | None = None,
             kinds: np.ndarray | None = None, r: np.ndarray | None = None,
             doubt: np.ndarray | None = None, images: list[tuple[str, str]] | None = None,
             amplitude: np.ndarray | None = None, ) -> list[dict]:
    """One dict per stamp: ``index``, ``true`` (class name, None without ``labels``),
    ``predicted`` (name of ``target``, the explained class), ``p`` (``base_prob``, its
    probability in [0, 1]), ``kind`` (None without ``kinds``), ``r`` (Pearson r of the
    estimate against the exact map, None without ``r`` or where NaN: a flat map),
    ``amplitude`` (the exact map's max |drop|, >= 0, None without it), ``trivial`` (True
    when that amplitude is below ``fidelity.NON_TRIVIAL``: the exact map is near zero and
    its r is noise, so the evaluation judges no such map), ``doubt`` (None without it),
    ``thumb`` and ``panel`` (image file names, from ``images`` (N,) pairs). Arrays are
    (N,)."""
    n = len(target)

    def number(values, i):
        if values is None:
            return None
        value = float(values[i])
        return None if np.isnan(value) else round(value, 4)

    rows = []
    for i in range(n):
        rows.append({
            "index": i,
            "true": None if labels is None else CLASS_NAMES[int(labels[i])],
            "predicted": CLASS_NAMES[int(target[i])],
            "p": number(base_prob, i),
            "kind": None if kinds is None else str(kinds[i]),
            "r": number(r, i),
            "amplitude": number(amplitude, i),
            "trivial": amplitude is not None and float(amplitude[i]) < NON_TRIVIAL,
            "doubt": number(doubt, i),
            "thumb": None if images is None else images[i][0],
            "panel": None if images is None else images[i][1],
        })
    return rows


def page_html(rows: list[dict], title: str, note: str = "") -> str:
    """The whole page: a filter bar (true and predicted class, kind, p range, lowest r),
    the table (click a header to sort, a row for its big panel) and the panel overlay; the
    rows are embedded as JSON. ``title`` and ``note`` are plain text (escaped)."""
    data = json.dumps(rows, separators=(",", ":")).replace("</", "<\\/")
    headers = "".join(f'<th data-key="{key}" data-type="{kind}">{html.escape(name)}</th>'
                      for key, name, kind in COLUMNS)
    kinds = sorted({row["kind"] for row in rows if row["kind"] is not None})
    kind_options = "".join(f'<option value="{html.escape(k)}">{html.escape(k)}</option>'
                           for k in kinds)
    class_options = "".join(f'<option value="{name}">{name}</option>' for name in CLASS_NAMES)
    return PAGE.format(title=html.escape(title), note=html.escape(note), headers=headers,
                       kind_options=kind_options, class_options=class_options, data=data,
                       non_trivial=NON_TRIVIAL)


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{title}</title>
<style>
  body {{ font-family: sans-serif; margin: 1em; }}
  .bar label {{ margin-right: 1em; font-size: 0.9em; }}
  .bar input[type=number] {{ width: 5em; }}
  table {{ border-collapse: collapse; margin-top: 0.8em; }}
  th, td {{ border-bottom: 1px solid #ddd; padding: 2px 8px; text-align: left; }}
  th {{ cursor: pointer; background: #f3f3f3; position: sticky; top: 0; }}
  th.sorted::after {{ content: " \\25B2"; }}
  th.sorted.desc::after {{ content: " \\25BC"; }}
  tr.row {{ cursor: pointer; }}
  tr.row:hover {{ background: #eef4ff; }}
  td img {{ height: 48px; image-rendering: pixelated; }}
  #panel {{ display: none; position: fixed; inset: 0; background: rgba(0,0,0,0.6); }}
  #panel.open {{ display: flex; align-items: center; justify-content: center; }}
  #panel div {{ background: white; padding: 1em; max-width: 95vw; }}
  #panel img {{ max-width: 90vw; }}
  .muted {{ color: #777; font-size: 0.9em; }}
</style>
</head>
<body>
<h1>{title}</h1>
<p class="muted">{note} Red: hiding the patch lowers the probability of the predicted class
(evidence for it); blue: hiding it raises it. Click a header to sort, a row for its panel.
With exact maps, r in brackets marks a trivial map (max |exact| below {non_trivial}: hiding
any patch barely moves p), whose r is noise; "r below" skips those.</p>
<div class="bar">
  <label>true class <select id="true"><option value="">any</option>{class_options}
    </select></label>
  <label>predicted <select id="predicted"><option value="">any</option>{class_options}
    </select></label>
  <label>kind <select id="kind"><option value="">any</option>{kind_options}</select></label>
  <label>p from <input id="pmin" type="number" min="0" max="1" step="0.05"></label>
  <label>to <input id="pmax" type="number" min="0" max="1" step="0.05"></label>
  <label>r below <input id="rmax" type="number" min="-1" max="1" step="0.01"></label>
  <span id="count" class="muted"></span>
</div>
<table>
<thead><tr>{headers}<th>channels and map</th></tr></thead>
<tbody id="rows"></tbody>
</table>
<div id="panel"><div><p id="caption"></p><img id="big" alt="panel"></div></div>
<script id="data" type="application/json">{data}</script>
<script>
"use strict";
const ROWS = JSON.parse(document.getElementById("data").textContent);
const FILTERS = ["true", "predicted", "kind", "pmin", "pmax", "rmax"];
function state() {{
  const found = new URLSearchParams(location.hash.slice(1));
  return Object.fromEntries(found.entries());
}}
function setState(changes) {{
  const next = Object.assign(state(), changes);
  for (const key of Object.keys(next)) if (next[key] === "" || next[key] == null) delete next[key];
  location.hash = new URLSearchParams(next).toString();
}}
function keep(row, s) {{
  if (s.true && row.true !== s.true) return false;
  if (s.predicted && row.predicted !== s.predicted) return false;
  if (s.kind && row.kind !== s.kind) return false;
  if (s.pmin && !(row.p >= parseFloat(s.pmin))) return false;
  if (s.pmax && !(row.p <= parseFloat(s.pmax))) return false;
  // "r below": the maps whose estimate is off; a trivial map's r says nothing
  if (s.rmax && !(row.r !== null && !row.trivial && row.r < parseFloat(s.rmax))) return false;
  return true;
}}
function cell(value, row, key) {{
  const td = document.createElement("td");
  td.textContent = value === null || value === undefined ? "" : String(value);
  if (key === "r" && row.trivial && value !== null) {{
    td.textContent = "(" + value + ")";
    td.className = "muted";
    td.title = "trivial map (max |exact| < {non_trivial}): its r is noise";
  }}
  return td;
}}
function render() {{
  const s = state();
  for (const id of FILTERS) document.getElementById(id).value = s[id] || "";
  let shown = ROWS.filter(row => keep(row, s));
  if (s.sort) {{
    const sign = s.desc ? -1 : 1;
    shown = shown.slice().sort((a, b) => {{
      const x = a[s.sort], y = b[s.sort];
      if (x === y) return a.index - b.index;
      if (x === null) return 1;
      if (y === null) return -1;
      return (x < y ? -1 : 1) * sign;
    }});
  }}
  for (const th of document.querySelectorAll("th[data-key]")) {{
    th.classList.toggle("sorted", th.dataset.key === s.sort);
    th.classList.toggle("desc", th.dataset.key === s.sort && !!s.desc);
  }}
  const body = document.getElementById("rows");
  body.replaceChildren();
  for (const row of shown) {{
    const tr = document.createElement("tr");
    tr.className = "row";
    tr.dataset.index = row.index;
    for (const th of document.querySelectorAll("th[data-key]")) {{
      tr.appendChild(cell(row[th.dataset.key], row, th.dataset.key));
    }}
    const td = document.createElement("td");
    if (row.thumb) {{
      const img = document.createElement("img");
      img.src = row.thumb;
      img.alt = "stamp " + row.index;
      td.appendChild(img);
    }}
    tr.appendChild(td);
    tr.addEventListener("click", () => setState({{show: row.index}}));
    body.appendChild(tr);
  }}
  document.getElementById("count").textContent = shown.length + " of " + ROWS.length + " stamps";
  const panel = document.getElementById("panel");
  const picked = s.show !== undefined ? ROWS[parseInt(s.show, 10)] : undefined;
  panel.classList.toggle("open", !!picked);
  if (picked) {{
    document.getElementById("big").src = picked.panel || "";
    document.getElementById("caption").textContent =
      "#" + picked.index + ": true " + (picked.true || "?") + ", predicted " + picked.predicted +
      " (p " + picked.p + ")" + (picked.kind ? ", " + picked.kind : "") +
      (picked.r !== null ? ", r " + picked.r + (picked.trivial ? " (trivial map)" : "") : "") +
      (picked.doubt !== null ? ", doubt " + picked.doubt : "");
  }}
}}
for (const id of FILTERS) document.getElementById(id).addEventListener("change",
  event => setState({{[id]: event.target.value, show: ""}}));
for (const th of document.querySelectorAll("th[data-key]")) th.addEventListener("click", () => {{
  const s = state();
  setState({{sort: th.dataset.key, desc: s.sort === th.dataset.key && !s.desc ? "1" : ""}});
}});
document.getElementById("panel").addEventListener("click", () => setState({{show: ""}}));
window.addEventListener("hashchange", render);
render();
</script>
</body>
</html>
"""
