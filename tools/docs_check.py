"""Checks of the rendered notebooks (``make html`` runs it last): ``.venv/bin/python tools/docs_check.py docs``.

For every ``docs/*.html``: no absolute path of this machine (the repository, the home folder) leaks into an
output, no error output, no figure shown as an object repr (``<Figure size ...>``, ``Text(0.5, 1.0, ...)``), no
widget shown as its text repr, at least one rendered image in each notebook that draws figures, and every
stylesheet it links (``notebook.css``, see tools/shrink_docs.py) present beside it. Prints one line per page and
exits non-zero naming the problems.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

REPR_PATTERNS = (r"&lt;Figure size \d", r"Text\(0\.5, 1\.0,", r"VBox\(children=", r"IntSlider\(value=",
                 r"Dropdown\(description=")
# tools/shrink_docs.py turns photo-like figures into JPEGs; a data: URL inside the CSS is no figure
FIGURE = re.compile(r'<img\b[^>]*\bsrc="data:image/(?:png|jpeg);base64,')
LOCAL_STYLESHEET = re.compile(r'<link href="([^":]+)" rel="stylesheet"')


def check_page(path: Path, notebooks: Path, forbidden: list[str]) -> list[str]:
    """Problems of one rendered page (empty when it is fine)."""
    text = path.read_text(encoding="utf-8", errors="replace")
    problems = [f"absolute path {p!r} in an output" for p in forbidden if p and p in text]
    if "jp-RenderedText" in text and 'data-mime-type="application/vnd.jupyter.stderr"' in text and "Traceback" in text:
        problems.append("an error traceback in an output")
    problems += [f"object repr matching {pat!r} shown instead of the object" for pat in REPR_PATTERNS
                 if re.search(pat, text)]
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
