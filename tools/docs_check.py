"""Checks of the rendered notebooks (``make html`` runs it last): ``.venv/bin/python tools/docs_check.py docs``.

For every ``docs/*.html``: no absolute path of this machine (the repository, the home folder) leaks into an
output, no error output, no object repr in a text output (the page's or one kept in the widget state; see
OBJECT_REPR: ``Whitening(kind=...)``, ``Text(0.5, 0.98, ...)``, ``<Figure size ...>``, ``<... at 0x...>``), at
least one rendered image in each notebook that draws figures, every stylesheet it links (``notebook.css``, see
tools/shrink_docs.py) present beside it, and a page with widgets loading its widget manager from a file beside it
(tools/vendor_widgets.py), not from a CDN. Prints one line per page and exits non-zero naming the problems.
"""
from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path

# Python's default repr of an object: a class name called with keywords or numbers (dataclasses, namedtuples,
# matplotlib's Text, widgets), <... at 0x...>, a figure, a numpy array or torch tensor
OBJECT_REPR = re.compile(r"\b[A-Z][\w.]*\((?:[A-Za-z_]\w*=|-?\d+(?:\.\d+)?, )|<[\w.]+(?: object)? at 0x[0-9a-f]+>|"
                         r"<Figure size \d|\b(?:array|tensor)\(\[")
# a text output of the page: stdout/stderr and text/plain results, HTML-escaped inside <pre>
TEXT_OUTPUT = re.compile(r'<div class="jp-RenderedText[^"]*" data-mime-type="[^"]+"[^>]*>\s*<pre>(.*?)</pre>', re.S)
WIDGET_STATE = re.compile(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', re.S)
WIDGET_VIEW = 'type="application/vnd.jupyter.widget-view+json"'
WIDGET_RENDERER = re.compile(r"var widgetRendererSrc = '([^']*)'")
# tools/shrink_docs.py turns photo-like figures into JPEGs; a data: URL inside the CSS is no figure
FIGURE = re.compile(r'<img\b[^>]*\bsrc="data:image/(?:png|jpeg);base64,')
LOCAL_STYLESHEET = re.compile(r'<link href="([^":]+)" rel="stylesheet"')


def text_outputs(page: str) -> list[str]:
    """The text a reader sees in the page's text outputs and in the widget state's outputs (streams, and text/plain
    results that have no richer representation), tags stripped."""
    texts = [html.unescape(re.sub(r"<[^>]+>", "", body)) for body in TEXT_OUTPUT.findall(page)]
    for state in WIDGET_STATE.findall(page):
        for model in json.loads(state)["state"].values():
            for output in model["state"].get("outputs", []):
                data = output.get("data", {})
                texts.append("".join(output.get("text", "")))
                if set(data) == {"text/plain"}:
                    texts.append("".join(data["text/plain"]))
    return texts


def check_page(path: Path, notebooks: Path, forbidden: list[str]) -> list[str]:
    """Problems of one rendered page (empty when it is fine)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    problems = [f"absolute path {p!r} in an output" for p in forbidden if p and p in text]
    if "jp-RenderedText" in text and 'data-mime-type="application/vnd.jupyter.stderr"' in text and "Traceback" in text:
        problems.append("an error traceback in an output")
    problems += [f"object repr shown instead of the object: {line.strip()[:120]!r}" for output in text_outputs(text)
                 for line in output.splitlines() if OBJECT_REPR.search(line)]
    if WIDGET_VIEW in text:
        renderers = WIDGET_RENDERER.findall(text)
        problems += [f"loads its widget manager from {src}, not a file beside it (run `make html`)" for src in renderers
                     if ":" in src or not (path.parent / src).is_file()]
        if not renderers:
            problems.append("shows widgets but loads no widget manager")
    source = notebooks / f"{path.stem}.ipynb"
    draws = source.exists() and re.search(r"plot_|plt\.|\.plot\.", source.read_text(encoding="utf-8"))
    if draws and not FIGURE.search(text):
        problems.append("draws figures but no image is rendered")
    problems += [f"links the stylesheet {href}, which is missing" for href in LOCAL_STYLESHEET.findall(text)
                 if not (path.parent / href).is_file()]
    return problems


def main(argv=None) -> int:
    docs = Path((argv or sys.argv[1:] or ["docs"])[0])
    pages = sorted(docs.glob("*.html"))
    if not pages:
        print(f"no HTML pages in {docs}: run `make html` first")
        return 2
    root = Path(__file__).resolve().parents[1]
    forbidden = [str(root), str(Path.home()) + "/"]
    failed = 0
    for page in pages:
        problems = check_page(page, root / "notebooks", forbidden)
        images = len(FIGURE.findall(page.read_text(encoding="utf-8", errors="replace")))
        print(f"{page.name}: {images} images, {'ok' if not problems else '; '.join(problems)}")
        failed += bool(problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
