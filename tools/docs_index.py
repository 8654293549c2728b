"""The index of the rendered notebooks and the links between them; ``make html`` runs it after the shrinker.

    .venv/bin/python tools/docs_index.py docs

Writes ``docs/index.html``: one entry per notebook in ``notebooks/`` (in file-name order, so a new notebook is
listed once it exists), titled by the notebook's first heading and described by the start of its first paragraph,
linked to its page when ``docs/<notebook>.html`` exists. Adds to each page a bar, at its top and bottom, linking the
index and the previous and next pages, and above each widget a line saying that it shows its saved view (the
controls move, but only a running kernel redraws what they show). Idempotent: bars and lines are replaced, not
added again.
"""
from __future__ import annotations

import html
import json
import re
import sys
from pathlib import Path

NAV = re.compile(r'<nav class="sglib-nav"[^>]*>.*?</nav>', re.S)
NAV_STYLE = ("font: 14px sans-serif; margin: 8px auto; padding: 6px 12px; max-width: 1200px; "
             "display: flex; gap: 24px; border-bottom: 1px solid #ddd")
INDEX_NAME = "index.html"
# the opening tag of a widget's output area: the note goes inside it, above the widget (beside it, the note would
# take a column of the output's flex row)
WIDGET_AREA = re.compile(r'<div class="jupyter-widgets jp-OutputArea-output"[^>]*>')
WIDGET_NOTE = ('<p class="sglib-widget-note" style="font: italic 13px sans-serif; color: #555; margin: 4px 0">'
               "Saved view, as the notebook drew it: the controls move here, but only the running notebook "
               "(<code>make lab</code>) redraws what they show.</p>")


def _plain(markdown: str) -> str:
    """Markdown inline text as plain text: links as their text, ``*`` emphasis and code marks dropped (underscores
    stay: they are in names such as synthetic_views)."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", markdown)
    return re.sub(r"\*{1,2}|`", "", text)


def _blurb(paragraph: str, sentences: int = 2) -> str:
    """The first ``sentences`` sentences of a paragraph, one line; a closing colon (it announces a list the index
    leaves out) becomes a full stop."""
    text = " ".join(_plain(paragraph).split())
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z])", text)
    short = " ".join(parts[:sentences])
    return short[:-1] + "." if short.endswith(":") else short


def notebook_summary(path: Path) -> tuple[str, str]:
    """(title, blurb) of a notebook: its first markdown heading and the start of the paragraph after it (_blurb),
    as plain text; the file's stem and "" when it has no heading."""
    cells = json.loads(path.read_text(encoding="utf-8"))["cells"]
    for cell in cells:
        if cell["cell_type"] != "markdown":
            continue
        source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
        heading = re.search(r"^#+\s+(.+)$", source, re.M)
        if heading:
            return _plain(heading.group(1).strip()), _blurb(source[heading.end():].strip().split("\n\n")[0])
    return path.stem, ""


def nav_bar(previous: str | None, following: str | None, titles: dict[str, str]) -> str:
    """The navigation bar of a page: links to the index and to the previous and next pages (names in docs/)."""
    links = [f'<a href="{INDEX_NAME}">Index of the notebooks</a>']
    if previous:
        links.append(f'<a href="{previous}">&larr; {html.escape(titles[previous])}</a>')
    if following:
        links.append(f'<a href="{following}">{html.escape(titles[following])} &rarr;</a>')
    return f'<nav class="sglib-nav" style="{NAV_STYLE}">{" ".join(links)}</nav>'


def index_page(entries: list[tuple[str, str, str, bool]]) -> str:
    """The HTML of docs/index.html from (notebook file name, title, first paragraph, has a page) in order."""
    items = []
    for notebook, title, blurb, rendered in entries:
        page = Path(notebook).with_suffix(".html").name
        head = (f'<a href="{page}">{html.escape(title)}</a>' if rendered else
                f"{html.escape(title)} <em>(not rendered yet: run <code>make html</code>)</em>")
        items.append(f"<li><p>{head}<br><small>notebooks/{html.escape(notebook)}</small></p>"
                     f"<p>{html.escape(blurb)}</p></li>")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"/>\n"
            "<meta content=\"width=device-width, initial-scale=1.0\" name=\"viewport\"/>\n"
            "<title>sglib notebooks</title>\n"
            "<style>body { font: 16px/1.5 sans-serif; max-width: 900px; margin: 2em auto; padding: 0 1em; }"
            " li { margin-bottom: 1em; }</style>\n</head>\n<body>\n<h1>sglib: the notebooks, executed</h1>\n"
            "<p>Each page is a notebook of <code>notebooks/</code> run once with the CI parameters "
            "(<code>make html</code>). Widgets show the state they were saved in: moving a control needs a running "
            "kernel (open the notebook with <code>make lab</code>).</p>\n"
            f"<ol>\n{chr(10).join(items)}\n</ol>\n</body>\n</html>\n")


def link_pages(docs: Path, notebooks: Path) -> list[str]:
    """Writes docs/index.html and the navigation bars of every page; returns the page names in order."""
    entries, titles = [], {}
    for notebook in sorted(notebooks.glob("*.ipynb")):
        title, blurb = notebook_summary(notebook)
        page = docs / f"{notebook.stem}.html"
        entries.append((notebook.name, title, blurb, page.is_file()))
        if page.is_file():
            titles[page.name] = title
    (docs / INDEX_NAME).write_text(index_page(entries), encoding="utf-8")
    pages = list(titles)
    for k, name in enumerate(pages):
        path = docs / name
        text = NAV.sub("", path.read_text(encoding="utf-8")).replace(WIDGET_NOTE, "")
        text = WIDGET_AREA.sub(lambda tag: tag.group(0) + WIDGET_NOTE, text)
        bar = nav_bar(pages[k - 1] if k else None, pages[k + 1] if k + 1 < len(pages) else None, titles)
        text = text.replace("<main>", "<main>" + bar, 1).replace("</main>", bar + "</main>", 1)
        path.write_text(text, encoding="utf-8")
    return pages


def main(argv=None) -> int:
    docs = Path((argv or sys.argv[1:] or ["docs"])[0])
    pages = link_pages(docs, Path(__file__).resolve().parents[1] / "notebooks")
    print(f"{docs / INDEX_NAME}: {len(pages)} pages linked in order")
    return 0


if __name__ == "__main__":
    sys.exit(main())
