"""docs/ stays light: the rendered notebooks under 3 MB in all, already shrunk, no figure wider than the shrinker's
limit; and the shrinker (tools/shrink_docs.py) itself, on synthetic pages."""
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
SHRINK_HINT = "run `.venv/bin/python tools/shrink_docs.py docs` (`make html` runs it after rendering)"

# the shrinker is a repository tool, not part of the library
sys.path.insert(0, str(ROOT / "tools"))
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
    files = sorted((p for p in DOCS.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size, reverse=True)
    total = sum(p.stat().st_size for p in files)
    biggest = ", ".join(f"{p.relative_to(ROOT)} ({p.stat().st_size / 1e6:.2f} MB)" for p in files[:3])
    assert total < BUDGET_BYTES, (
        f"docs/ holds {total / 1e6:.2f} MB, over its {BUDGET_BYTES / 1e6:.0f} MB budget (biggest: {biggest}): "
        + SHRINK_HINT)


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
