"""Write the DVC plots page so that it renders offline: ``python -m pipeline.plots_page``
(or ``make plots``) after ``make repro``.

``dvc plots show`` draws the top-level ``plots:`` of dvc.yaml into an HTML page whose
charts load the Vega libraries from a CDN, so offline only its PNGs render. This command
runs it with a page template that loads them from ``vega-bundle.js`` beside the page
instead: Vega, Vega-Lite and Vega-Embed of the pinned ``vl-convert-python`` package, in one
file with no further fetches. Writes ``<out>/index.html``, ``<out>/vega-bundle.js`` and
DVC's ``<out>/static/`` (the PNGs); default ``<out>``: ``plots/html``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BUNDLE = "vega-bundle.js"
FAILED_TO_LOAD = "DVC failed to load some plots"
# Vega-Lite 5, the major version of the specs DVC's templates write.
VEGA_LITE = "5.21"
# The page's frame: DVC fills {plot_divs}; no {scripts}, so no CDN script tags.
TEMPLATE = """<!DOCTYPE html>
<html>
<head>
    <meta charset="utf-8">
    <title>hits-occlusion: DVC plots</title>
    <script src="{bundle}"></script>
    <style>
        body {{ font-family: sans-serif; }}
        table {{ border-spacing: 15px; }}
        img {{ max-width: 100%; }}
    </style>
</head>
<body>
    <h1>hits-occlusion: DVC plots</h1>
    {{plot_divs}}
</body>
</html>
"""


def vega_bundle() -> str:
    """Vega, Vega-Lite and Vega-Embed as one classic script that defines the globals
    ``vega``, ``vegaLite`` and ``vegaEmbed`` the DVC page calls."""
    import vl_convert

    return vl_convert.javascript_bundle(
        "window.vegaEmbed = vegaEmbed; window.vega = vega; window.vegaLite = vegaLite;",
        vl_version=VEGA_LITE)


def write_page(out: Path, dvc: str = "dvc") -> Path:
    """Run ``dvc plots show`` in the current project into ``out`` with the offline
    template and put the bundle beside the page; returns the page's path. A failing
    ``dvc plots show``, or one that could not load every plot file (no plot files yet:
    run make repro), is a ``RuntimeError`` with its message; ``out`` is then left as it
    was."""
    out = Path(out)
    with tempfile.TemporaryDirectory(prefix=".plots-page-") as work:
        template = Path(work) / "template.html"
        template.write_text(TEMPLATE.format(bundle=BUNDLE))
        staged = Path(work) / "page"
        shown = subprocess.run([dvc, "plots", "show", "--html-template", str(template),
                                "-o", str(staged)], capture_output=True, text=True,
                               timeout=600, env={**os.environ, "DVC_NO_ANALYTICS": "1"})
        page = staged / "index.html"
        # a missing plot file is only a warning to DVC, which then draws an empty chart
        if shown.returncode != 0 or not page.is_file() or FAILED_TO_LOAD in shown.stderr:
            raise RuntimeError(f"dvc plots show failed (run make repro first?): "
                               f"{(shown.stderr or shown.stdout).strip().splitlines()[0]}")
        (staged / BUNDLE).write_text(vega_bundle())
        if out.exists():
            shutil.rmtree(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staged), str(out))
    return out / "index.html"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m pipeline.plots_page",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("plots/html"),
                        help="folder of the page (replaced; default plots/html)")
    args = parser.parse_args(argv)
    dvc = str(Path(sys.executable).with_name("dvc"))
    try:
        page = write_page(args.out, dvc if Path(dvc).is_file() else "dvc")
    except RuntimeError as err:
        sys.exit(f"plots_page: {err}")
    print(f"plots_page: {page} (renders offline: open it in any browser)")


if __name__ == "__main__":
    main()
