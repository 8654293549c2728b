"""Shrinks the rendered notebooks in docs/ in place; ``make html`` runs it between nbconvert and the check.

    .venv/bin/python tools/shrink_docs.py docs

In every page:

- each figure embedded as a base64 PNG (``<img src="data:image/png;base64,...">``, and the ``image/png`` outputs
  kept in the widget state) is downscaled to at most ``MAX_WIDTH`` pixels wide and stored as the smaller of an
  optimised PNG (palette-quantised for plots) and, for photo-like images, a JPEG at ``JPEG_QUALITY``; the
  ``<img>`` attributes (alt, width) stay as they are;
- nbconvert's template CSS, the same 260 KB in every page, moves into one ``notebook.css`` that the page links.

Idempotent and deterministic: the PNGs it writes carry a text marker and are left alone after that (JPEGs are
never touched), so a second run writes nothing, and the same input gives the same bytes.
"""
from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path

from PIL import Image, PngImagePlugin

# A 1400 px browser window (a laptop) gives the notebook column 1290 px and shrinks wider figures to that anyway;
# 1100 would shrink them further and blur the small titles of 03's 2156 px photo strips (compared in chromium).
MAX_WIDTH = 1280
# 85: no visible ringing around the photos' coloured frames and titles; 80 saves only ~12% more.
JPEG_QUALITY = 85
# Matplotlib plots have a few hundred colours (anti-aliasing included); photos have tens of thousands.
PLOT_MAX_COLOURS = 4096
MARKER_KEY, MARKER = "Software", "sglib tools/shrink_docs.py"
CSS_NAME = "notebook.css"
CSS_LINK = f'<link href="{CSS_NAME}" rel="stylesheet" type="text/css"/>'

IMG_PNG = re.compile(r'(<img\b[^>]*?\bsrc=")data:image/png;base64,([A-Za-z0-9+/=]+)"')
# nbconvert writes the widget state as JSON with "/" escaped as "\/", base64 included
WIDGET_PNG = re.compile(r'"image(\\?/)png": "((?:[A-Za-z0-9+=]|\\?/)+)"')
TEMPLATE_CSS = re.compile(r'<style type="text/css">.*?</style>(?:\s*<style type="text/css">.*?</style>)*', re.S)
STYLE_BODY = re.compile(r'<style type="text/css">(.*?)</style>', re.S)


def _encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, optimize=True, **options)
    return buffer.getvalue()


def shrunk_image(png: bytes) -> tuple[str, bytes]:
    """The (MIME type, bytes) to embed instead of a PNG figure: at most MAX_WIDTH wide, the smallest encoding.

    >>> blank = io.BytesIO(); Image.new("RGB", (2000, 100), "white").save(blank, "PNG")
    >>> mime, data = shrunk_image(blank.getvalue())
    >>> mime, Image.open(io.BytesIO(data)).size
    ('image/png', (1280, 64))
    """
    image = Image.open(io.BytesIO(png))
    if image.info.get(MARKER_KEY) == MARKER:
        return "image/png", png
    photo_like = image.getcolors(PLOT_MAX_COLOURS) is None
    image = image.convert("RGBA")
    opaque = image.getchannel("A").getextrema()[0] == 255
    if opaque:
        image = image.convert("RGB")
    # the source PNG competes only while it needs no downscaling
    candidates = [("image/png", png)] if image.width <= MAX_WIDTH else []
    if image.width > MAX_WIDTH:
        height = max(1, round(image.height * MAX_WIDTH / image.width))
        image = image.resize((MAX_WIDTH, height), Image.Resampling.LANCZOS)
    marker = PngImagePlugin.PngInfo()
    marker.add_text(MARKER_KEY, MARKER)
    if photo_like:
        candidates.append(("image/png", _encoded(image, "PNG", pnginfo=marker)))
        if opaque:  # JPEG has no transparency
            candidates.append(("image/jpeg", _encoded(image, "JPEG", quality=JPEG_QUALITY, progressive=True)))
    else:
        # median cut keeps the plot's colours (mean error <0.1/255 on these figures); no dithering, which would
        # speckle flat areas and lines
        method = Image.Quantize.MEDIANCUT if opaque else Image.Quantize.FASTOCTREE
        palette = image.quantize(256, method=method, dither=Image.Dither.NONE)
        candidates.append(("image/png", _encoded(palette, "PNG", pnginfo=marker)))
    return min(candidates, key=lambda candidate: len(candidate[1]))


def shrink_figures(html: str) -> str:
    """The page with every embedded PNG figure shrunk (shrunk_image), in <img> tags and in the widget state.

    >>> noise = io.BytesIO()
    >>> Image.merge("RGB", [Image.effect_noise((300, 200), 60) for _ in "RGB"]).save(noise, "PNG")
    >>> page = f'<img alt="noise" src="data:image/png;base64,{base64.b64encode(noise.getvalue()).decode()}"/>'
    >>> shrink_figures(page)[:49]
    '<img alt="noise" src="data:image/jpeg;base64,/9j/'
    """
    def img(match: re.Match) -> str:
        mime, data = shrunk_image(base64.b64decode(match.group(2)))
        return f'{match.group(1)}data:{mime};base64,{base64.b64encode(data).decode()}"'

    def widget_output(match: re.Match) -> str:
        slash = match.group(1)
        mime, data = shrunk_image(base64.b64decode(match.group(2).replace(slash, "/")))
        encoded = base64.b64encode(data).decode().replace("/", slash)
        return f'"{mime.replace("/", slash)}": "{encoded}"'

    return WIDGET_PNG.sub(widget_output, IMG_PNG.sub(img, html))


def template_css(html: str) -> str | None:
    """The CSS of nbconvert's template inlined in the page's <head> as one stylesheet; None when not inlined."""
    run = TEMPLATE_CSS.search(html, 0, html.find("</head>"))
    return None if run is None else "\n".join(STYLE_BODY.findall(run.group(0)))


def link_css(html: str) -> str:
    """The page with its inlined template CSS replaced by a link to notebook.css, at the same place in <head>
    so the cascade order stays the same."""
    return TEMPLATE_CSS.sub(lambda _: CSS_LINK, html, count=1)


def shrink_docs(docs: Path) -> dict[str, tuple[int, int]]:
    """Shrinks every ``docs/*.html`` in place (and writes ``docs/notebook.css``); returns {page name: (bytes
    before, bytes after)}. From the repository root, ``shrink_docs(Path("docs"))["06_reproduce_paper.html"]``
    gives (335909, 55356) on the page nbconvert wrote, then (55356, 55356).
    """
    pages = {path: path.read_bytes().decode("utf-8") for path in sorted(docs.glob("*.html"))}
    css_path = docs / CSS_NAME
    inline = {path: css for path, html in pages.items() if (css := template_css(html)) is not None}
    # once a page links notebook.css its content is fixed; until then the first page's CSS defines it
    linked = css_path.exists() and any(CSS_LINK in html for html in pages.values())
    shared = css_path.read_bytes().decode("utf-8") if linked else next(iter(inline.values()), None)
    if shared is not None and not linked:
        css_path.write_bytes(shared.encode("utf-8"))
    sizes = {}
    for path, html in pages.items():
        shrunk = shrink_figures(html)
        if path in inline:
            if inline[path] == shared:
                shrunk = link_css(shrunk)
            else:
                print(f"{path.name}: its template CSS differs from {css_path}, kept inline (run `make html`)")
        if shrunk != html:
            path.write_bytes(shrunk.encode("utf-8"))
        sizes[path.name] = (len(html.encode("utf-8")), len(shrunk.encode("utf-8")))
    return sizes


def main(argv=None) -> int:
    docs = Path((argv or sys.argv[1:] or ["docs"])[0])
    if not any(docs.glob("*.html")):
        print(f"no HTML pages in {docs}: run `make html` first")
        return 2
    for name, (before, after) in shrink_docs(docs).items():
        print(f"{name}: {before:,} -> {after:,} bytes")
    total = sum(path.stat().st_size for path in docs.iterdir() if path.is_file())
    print(f"{docs}: {total:,} bytes in all")
    return 0


if __name__ == "__main__":
    sys.exit(main())
