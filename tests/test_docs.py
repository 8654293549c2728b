"""docs/ stays light: the rendered notebooks under 3 MB in all (besides the pinned widget manager in docs/vendor/),
already shrunk, no figure wider than the shrinker's limit; and the tools that make them (tools/shrink_docs.py,
docs_check.py, docs_index.py) on synthetic pages."""
import base64
import doctest
import io
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
PAGES = sorted(DOCS.glob("*.html"))
BUDGET_BYTES = 3_000_000
VENDOR = DOCS / "vendor"
SHRINK_HINT = "run `.venv/bin/python tools/shrink_docs.py docs` (`make html` runs it after rendering)"

# the shrinker is a repository tool, not part of the library
sys.path.insert(0, str(ROOT / "tools"))
import docs_check as checker  # noqa: E402
import docs_index as indexer  # noqa: E402
import vendor_widgets  # noqa: E402
import shrink_docs as shrinker  # noqa: E402

IMG = re.compile(r'<img\b[^>]*\bsrc="data:(image/\w+);base64,([A-Za-z0-9+/=]+)"[^>]*>')
WIDGET_STATE = re.compile(r'<script type="application/vnd.jupyter.widget-state\+json">(.*?)</script>', re.S)


def embedded_images(html: str) -> list[tuple[str, Image.Image]]:
    """(where, decoded image) of every figure of a page: its <img> tags, then the image outputs in its widget state."""
    images = [(f"<img> #{i}", Image.open(io.BytesIO(base64.b64decode(m.group(2)))))
              for i, m in enumerate(IMG.finditer(html))]
    for state in WIDGET_STATE.findall(html):
        for model_id, model in json.loads(state)["state"].items():
            for output in model["state"].get("outputs", []):
                images += [(f"widget {model_id} {mime}", Image.open(io.BytesIO(base64.b64decode(data))))
                           for mime, data in output.get("data", {}).items() if mime.startswith("image/")]
    return images


def test_docs_under_budget():
    # docs/vendor/ holds the pinned widget manager (1.9 MB, checked below): the price of widgets drawn offline,
    # paid once for all pages, so it stays outside the pages' budget
    files = sorted((p for p in DOCS.rglob("*") if p.is_file() and VENDOR not in p.parents),
                   key=lambda p: p.stat().st_size, reverse=True)
    total = sum(p.stat().st_size for p in files)
    biggest = ", ".join(f"{p.relative_to(ROOT)} ({p.stat().st_size / 1e6:.2f} MB)" for p in files[:3])
    assert total < BUDGET_BYTES, (
        f"docs/ holds {total / 1e6:.2f} MB, over its {BUDGET_BYTES / 1e6:.0f} MB budget (biggest: {biggest}): "
        + SHRINK_HINT)


def test_vendor_holds_only_the_pinned_widget_manager():
    script = vendor_widgets.script_path(DOCS)
    assert script.is_file() and vendor_widgets.sha256(script) == vendor_widgets.EMBED_SHA256, (
        f"{script} is missing or not the pinned {vendor_widgets.PACKAGE}@{vendor_widgets.VERSION}: "
        "run `.venv/bin/python tools/vendor_widgets.py docs`")
    assert sorted(p.name for p in VENDOR.rglob("*") if p.is_file()) == sorted(vendor_widgets.FILES)


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_shrunk_and_figures_at_most_max_width(page):
    html = page.read_text(encoding="utf-8")
    wide = [f"{where}: {image.width} px" for where, image in embedded_images(html) if image.width > shrinker.MAX_WIDTH]
    assert not wide, f"{page.name}: figures wider than {shrinker.MAX_WIDTH} px ({'; '.join(wide)}): {SHRINK_HINT}"
    assert shrinker.template_css(html) is None and shrinker.shrink_figures(html) == html, (
        f"{page.name} is not shrunk: {SHRINK_HINT}")


def synthetic_plot_png(width_inches: float) -> bytes:
    """A synthetic matplotlib line plot at 100 dpi, as inline figures are: a few hundred colours."""
    figure = Figure(figsize=(width_inches, 3), dpi=100)
    axes = figure.subplots()
    steps = np.arange(60)
    axes.plot(steps, np.exp(-steps / 20), label="synthetic loss")
    axes.set_title("synthetic plot")
    axes.legend()
    buffer = io.BytesIO()
    FigureCanvasAgg(figure).print_png(buffer)
    return buffer.getvalue()


def synthetic_photo_png() -> bytes:
    """A synthetic photo-like RGBA PNG (opaque, as matplotlib writes them): colour gradients plus sensor-like
    noise, tens of thousands of colours, 1500 px wide."""
    y, x = np.mgrid[0:400, 0:1500]
    gradients = np.stack([x / 1500 * 255, y / 400 * 255, (x + y) % 256], axis=-1)
    noisy = gradients + np.random.default_rng(0).normal(0, 12, gradients.shape)
    buffer = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8), "RGB").convert("RGBA").save(buffer, "PNG")
    return buffer.getvalue()


def synthetic_page() -> str:
    """A tiny nbconvert-like page: template CSS in <head>, a wide plot, a small plot, a photo shown 600 px wide,
    and the photo again as an Output widget's image in the widget state (JSON with "/" escaped, as nbconvert's)."""
    photo = base64.b64encode(synthetic_photo_png()).decode()
    figures = [("synthetic wide plot", base64.b64encode(synthetic_plot_png(16)).decode(), ""),
               ("synthetic small plot", base64.b64encode(synthetic_plot_png(4)).decode(), ""),
               ("synthetic photo", photo, ' width="600"')]
    imgs = "\n".join(f'<img alt="{alt}" class="" src="data:image/png;base64,{data}"{extra}/>'
                     for alt, data, extra in figures)
    output = {"output_type": "display_data", "data": {"image/png": photo, "text/plain": "<synthetic photo>"}}
    state = json.dumps({"state": {"synthetic": {"model_name": "OutputModel", "state": {"outputs": [output]}}}})
    state = state.replace("/", "\\/")
    return ('<html><head>\n<style type="text/css">\nbody { margin: 0; }\n</style>\n'
            '<style type="text/css">\nimg { max-width: 100%; }\n</style>\n</head>\n<body>\n'
            f'{imgs}\n<script type="application/vnd.jupyter.widget-state+json">\n{state}\n</script>\n</body></html>\n')


def figures_by_alt(html: str) -> dict[str, tuple[str, str, Image.Image]]:
    """{alt text: (MIME type, <img> tag, decoded image)} of a page's <img> figures."""
    return {re.search(r'alt="([^"]*)"', m.group(0)).group(1):
            (m.group(1), m.group(0), Image.open(io.BytesIO(base64.b64decode(m.group(2))))) for m in IMG.finditer(html)}


def test_shrink_figures_on_a_synthetic_page():
    page = synthetic_page()
    once = shrinker.shrink_figures(page)
    assert len(once) < len(page) / 2
    figures = figures_by_alt(once)
    for _, _, image in figures.values():
        image.load()  # still decodes
    assert [(mime, image.width) for mime, _, image in figures.values()] == [
        ("image/png", shrinker.MAX_WIDTH),   # the wide plot: downscaled, a palette PNG
        ("image/png", 400),                  # the small plot: never upscaled
        ("image/jpeg", shrinker.MAX_WIDTH),  # the photo
    ]
    assert 'width="600"' in figures["synthetic photo"][1], "the <img> attributes are kept"
    widget_images = [(where, image.width) for where, image in embedded_images(once) if where.startswith("widget")]
    assert widget_images == [("widget synthetic image/jpeg", shrinker.MAX_WIDTH)]
    assert shrinker.shrink_figures(once) == once, "a second run changes nothing"
    assert shrinker.shrink_figures(page) == once, "the same input gives the same bytes"


def test_shrink_docs_shares_the_template_css_and_is_idempotent(tmp_path):
    page = synthetic_page()
    for name in ("a.html", "b.html"):
        (tmp_path / name).write_text(page, encoding="utf-8")
    sizes = shrinker.shrink_docs(tmp_path)
    assert all(after < before for before, after in sizes.values())
    first = {p.name: p.read_bytes() for p in sorted(tmp_path.iterdir())}
    assert first["notebook.css"] == b"\nbody { margin: 0; }\n\n\nimg { max-width: 100%; }\n"
    for name in ("a.html", "b.html"):
        html = first[name].decode()
        assert "<style" not in html and html.count(shrinker.CSS_LINK) == 1
        assert html.index(shrinker.CSS_LINK) < html.index("</head>")
    shrinker.shrink_docs(tmp_path)
    assert {p.name: p.read_bytes() for p in sorted(tmp_path.iterdir())} == first


def test_shrinker_docstring_examples_run():
    assert doctest.testmod(shrinker).failed == 0


def text_output_page(text: str, widget_outputs: list | None = None) -> str:
    """A page as nbconvert's lab template writes it: one text output, and a widget state holding an Output
    widget's ``outputs`` when given."""
    body = (f'<div class="jp-RenderedText jp-OutputArea-output" data-mime-type="text/plain" tabindex="0">'
            f'<pre>{text}</pre></div>')
    if widget_outputs is not None:
        state = {"state": {"o": {"model_name": "OutputModel", "state": {"outputs": widget_outputs}}}}
        body += f'<script type="application/vnd.jupyter.widget-state+json">{json.dumps(state)}</script>'
    return f"<html><body><main>{body}</main></body></html>"


@pytest.mark.parametrize("text, widget_outputs, caught", [
    ("Whitening(kind=&#x27;lw&#x27;, in_dim=1280, out_dim=1280)", None, True),
    ("(RevisitopDataset(name=&#x27;x&#x27;, root=&#x27;../data&#x27;),", None, True),
    ("&lt;matplotlib.axes._axes.Axes at 0x7f3a2b1c&gt;", None, True),
    ("array([0.1, 0.2])", None, True),
    ("ok", [{"output_type": "execute_result", "data": {"text/plain": "Text(0.5, 0.98, 'N = 100')"}}], True),
    ("ok", [{"output_type": "stream", "name": "stdout", "text": "Settings(M=400)\n"}], True),
    # a figure's text/plain beside its PNG is never shown; prose with parentheses is no repr
    ("ok", [{"output_type": "display_data", "data": {"image/png": "", "text/plain": "<Figure size 640x480>"}}], False),
    ("exact search (sglib.search.knn, float32): 5.1 ms; GeM (p = 3) at one scale", None, False),
])
def test_checker_catches_any_object_repr(tmp_path, text, widget_outputs, caught):
    page = tmp_path / "page.html"
    page.write_text(text_output_page(text, widget_outputs), encoding="utf-8")
    problems = checker.check_page(page, tmp_path, [])
    assert any("object repr" in p for p in problems) == caught, problems


def test_checker_wants_the_widget_manager_beside_the_page(tmp_path):
    view = '<script type="application/vnd.jupyter.widget-view+json">{}</script>'
    for src, ok in (("https://unpkg.com/@jupyter-widgets/html-manager@*/dist/embed-amd.js", False),
                    ("vendor/embed.js", True)):
        page = tmp_path / "page.html"
        page.write_text(f"<script>var widgetRendererSrc = '{src}';</script>{view}", encoding="utf-8")
        (tmp_path / "vendor").mkdir(exist_ok=True)
        (tmp_path / "vendor" / "embed.js").write_text("", encoding="utf-8")
        assert (checker.check_page(page, tmp_path, []) == []) == ok, src


def test_index_lists_the_notebooks_in_order_and_links_the_pages(tmp_path):
    notebooks, docs = tmp_path / "notebooks", tmp_path / "docs"
    notebooks.mkdir(), docs.mkdir()
    for stem in ("01_b", "00_a", "02_c"):
        text = f"# Title {stem}\n\nFirst **sentence** of `{stem}`. Second. Third."
        cells = [{"cell_type": "markdown", "source": [text]}]
        (notebooks / f"{stem}.ipynb").write_text(json.dumps({"cells": cells}), encoding="utf-8")
    for stem in ("00_a", "01_b"):   # 02_c has no page yet
        (docs / f"{stem}.html").write_text("<html><body><main>\n<p>x</p>\n</main></body></html>", encoding="utf-8")
    assert indexer.link_pages(docs, notebooks) == ["00_a.html", "01_b.html"]
    once = {p.name: p.read_text(encoding="utf-8") for p in docs.iterdir()}
    index = once["index.html"]
    assert index.index('href="00_a.html"') < index.index('href="01_b.html"') and "02_c.html" not in index
    assert "Title 02_c <em>(not rendered yet" in index and "First sentence of 00_a. Second.</p>" in index
    first = re.findall(r'href="([^"]+)"', once["00_a.html"])
    assert first == ["index.html", "01_b.html"] * 2                      # top and bottom bars
    assert re.findall(r'href="([^"]+)"', once["01_b.html"]) == ["index.html", "00_a.html"] * 2
    indexer.link_pages(docs, notebooks)
    assert {p.name: p.read_text(encoding="utf-8") for p in docs.iterdir()} == once, "a second run changes nothing"
