"""What a person sees: each notebook opened in JupyterLab in a real (headless) Chromium, run with
Run > Run All Cells, then checked the way a reader would check it.

nbval proves the cells execute; this proves the page works: no error output, a rendered image for every cell
that draws a figure, every widget rendered as a control (not "Loading widget..." nor a text repr), and moving a
control changes what the widget shows. Screenshots land in test-artifacts/browser/<notebook>.png.

test_docs_offline opens the rendered pages (docs/, ``make html``) from disk with every request that is not a
file:// one aborted: docs/index.html links the pages in notebook order, each page links back, and every widget
shows its controls (drawn by the widget manager vendored in docs/vendor/). Screenshots land in
test-artifacts/browser/docs-<page>.png. It needs no JupyterLab and takes a few seconds per page.

Environment:
  SGLIB_BROWSER_NOTEBOOKS  comma-separated notebooks to run (names, stems or number prefixes such as "03");
                           default: all of them. "none" skips the browser test on purpose.
  SGLIB_BROWSER_ROOT       folder holding the notebooks (default: notebooks/); used to check that the test
                           catches a broken copy of a notebook.
  SGLIB_BROWSER_TIMEOUT    seconds allowed for Run All of one notebook (default 1200).
  SGLIB_BROWSER_STRICT=0   only warn on notes (a figure outside a widget left stale after moving its control;
                           by default they fail);
  SGLIB_CHROMIUM           the Chromium binary (default: chromium on PATH, /usr/bin/chromium).
The browser is the system Chromium (apt-get install chromium); Playwright never downloads one here.
The test is skipped only when Chromium cannot be found or started.
"""
from __future__ import annotations

import hashlib
import json
import os
import pathlib
import re
import time
import warnings

import pytest

from browser import (CELLS_JS, DOCS_WIDGETS_JS, FIGURE_REPR, IMAGE_INK_JS, IMAGES_PAINTED_JS, INSTALL_HINT, MIN_INK,
                     OUTPUT_SIGNATURE_JS, WIDGET_FAILURE_TEXT, WIDGET_REPR,
                     JupyterLab, expectations, find_chromium, launch_args)

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
NB_ROOT = pathlib.Path(os.environ.get("SGLIB_BROWSER_ROOT", ROOT / "notebooks")).resolve()
ARTIFACTS = pathlib.Path(os.environ.get("SGLIB_BROWSER_ARTIFACTS", ROOT / "test-artifacts" / "browser"))
RUN_TIMEOUT = float(os.environ.get("SGLIB_BROWSER_TIMEOUT", "1200"))
STRICT = os.environ.get("SGLIB_BROWSER_STRICT", "1") == "1"   # notes (stale figures) fail the test too
WIDGET_TIMEOUT = 90.0      # seconds for a widget to render, or to show the result of a moved control


def _selected_notebooks() -> list:
    available = sorted(p.name for p in NB_ROOT.glob("*.ipynb"))
    wanted = os.environ.get("SGLIB_BROWSER_NOTEBOOKS", "").strip()
    if not wanted:
        return available
    if wanted.lower() == "none":
        return [pytest.param(None, marks=pytest.mark.skip(reason="SGLIB_BROWSER_NOTEBOOKS=none"), id="none")]
    chosen = []
    for w in (w.strip() for w in wanted.split(",") if w.strip()):
        hits = [a for a in available if a in (w, w + ".ipynb") or a.startswith(w.removesuffix(".ipynb") + "_")]
        if not hits:   # a typo must not turn into a silent pass: a collection error
            raise ValueError(f"SGLIB_BROWSER_NOTEBOOKS names {w!r}: no such notebook in {NB_ROOT} "
                             f"(have {', '.join(available)})")
        chosen += [h for h in hits if h not in chosen]
    return chosen


@pytest.fixture(scope="module")
def browser():
    exe = find_chromium()
    if exe is None:
        pytest.skip(f"Chromium not found (looked for {', '.join(('$SGLIB_CHROMIUM', 'chromium', '/usr/bin/chromium'))}); "
                    + INSTALL_HINT)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:   # a declared requirement: missing means a broken setup, not a skip
        pytest.fail(f"playwright is not installed in this environment ({exc}): run `make setup`")
    pw = sync_playwright().start()
    try:
        try:
            b = pw.chromium.launch(executable_path=exe, args=launch_args(), headless=True)
        except Exception as exc:
            pytest.skip(f"Chromium at {exe} could not be started ({str(exc).splitlines()[0]}); " + INSTALL_HINT)
        yield b
        b.close()
    finally:
        pw.stop()


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    server = JupyterLab(NB_ROOT, tmp_path_factory.mktemp("jupyterlab"))
    try:
        yield server
    finally:
        server.stop()


def _sha(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _kernel_state(lab, name: str):
    try:
        for s in lab.api("/api/sessions"):
            if s.get("path") == name and s.get("kernel"):
                return s["kernel"].get("execution_state")
    except OSError:
        return None
    return None


def _cells(page):
    return page.evaluate(CELLS_JS) or []


def _run_all(page) -> None:
    """Run > Run All Cells, as a person would (the command palette if the menu is not found)."""
    try:
        page.locator(".lm-MenuBar-itemLabel", has_text=re.compile(r"^Run$")).click(timeout=10_000)
        page.locator(".lm-Menu-itemLabel", has_text=re.compile(r"^Run All Cells$")).click(timeout=10_000)
    except Exception:
        page.keyboard.press("Escape")
        page.keyboard.press("Control+Shift+C")
        page.keyboard.type("Run All Cells")
        page.keyboard.press("Enter")


def _wait_until_run(page, lab, name: str, n_code: int, timeout: float) -> list:
    """Until no cell shows [*], the kernel is idle and every code cell has run (stable 2 s), or, after a failure
    (Run All then skips the rest), until nothing moved for 8 s."""
    deadline, stable, settled, cells = time.time() + timeout, 0, 0, []
    while time.time() < deadline:
        cells = _cells(page)
        code = [c for c in cells if c["code"]]
        busy = any("*" in c["prompt"] for c in code)
        ran = sum(bool(re.fullmatch(r"\[\d+\]:?", c["prompt"])) for c in code)
        idle = not busy and bool(code) and _kernel_state(lab, name) == "idle"
        stable = stable + 1 if idle and ran >= n_code else 0
        settled = settled + 1 if idle else 0      # a failed cell stops Run All: the rest stay "[ ]"
        if stable >= 2 or settled >= 8:
            return cells
        time.sleep(1.0)
    prompts = [c["prompt"] for c in cells if c["code"]]
    raise AssertionError(f"{name}: cells still running after {timeout:.0f} s (prompts {prompts})")


def _wait_widgets_rendered(page, timeout: float) -> list:
    deadline = time.time() + timeout
    while True:
        cells = _cells(page)
        loading = any("Loading widget" in c["text"] for c in cells)
        if not loading or time.time() > deadline:
            return cells
        time.sleep(1.0)


def _signature(page, index: int) -> dict:
    return page.evaluate(OUTPUT_SIGNATURE_JS, index)


def _empty_figures(page, only: int | None = None, after: str = "") -> list:
    """Images that are (almost) blank: a figure whose content did not draw."""
    page.evaluate(IMAGES_PAINTED_JS)
    found = []
    for i, inks in page.evaluate(IMAGE_INK_JS, 600).items():
        if only is not None and int(i) != only:
            continue
        for k, ink in enumerate(inks):
            if 0 <= ink < MIN_INK:
                found.append(f"cell {i}: image {k + 1} of {len(inks)} is nearly empty{after} ({100 * ink:.2f} % of its "
                             f"pixels drawn, a figure has {100 * MIN_INK:.1f} % or more)")
    return found


def _screenshot(page, index: int, path) -> None:
    """The page with cell ``index`` at the top, once every image is decoded and painted."""
    page.evaluate("i => document.querySelectorAll('.jp-NotebookPanel:not(.lm-mod-hidden) "
                  ".jp-Notebook .jp-Cell')[i].scrollIntoView({block: 'start'})", index)
    page.evaluate(IMAGES_PAINTED_JS)
    page.wait_for_timeout(300)
    page.screenshot(path=str(path))


def _move_a_control(page, cell) -> str:
    """Change the cell's first dropdown to another option, else press ArrowRight on its first slider.
    Returns what was done (for messages); raises AssertionError when the cell has no control to move."""
    selects = cell.locator(".jp-Cell-outputWrapper .jupyter-widgets select")
    if selects.count():
        sel = selects.first
        sel.scroll_into_view_if_needed()
        values = sel.locator("option").evaluate_all("os => os.map(o => o.value)")
        current = sel.input_value()
        others = [v for v in values if v != current]
        assert others, f"the dropdown has no other option than {current!r}"
        sel.select_option(value=others[0])
        label = sel.evaluate("s => (s.closest('.widget-dropdown')?.querySelector('label')?.innerText || 'dropdown')")
        return f"dropdown {label!r}: {current!r} -> {others[0]!r}"
    handles = cell.locator(".jp-Cell-outputWrapper .jupyter-widgets .noUi-handle")
    if handles.count():
        h = handles.first
        h.scroll_into_view_if_needed()
        h.focus()
        h.press("ArrowRight")
        return "slider: ArrowRight"
    raise AssertionError("widget without a dropdown or slider to move")


@pytest.mark.parametrize("notebook", _selected_notebooks())
def test_notebook_in_browser(notebook, browser, lab):
    path = NB_ROOT / notebook
    assert path.exists(), f"no notebook {path}"
    expect = expectations(path)
    before = _sha(path)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    stem = path.stem
    times, problems, notes, moved = {}, [], [], []
    t0 = time.time()
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    console_errors = []
    page.on("pageerror", lambda exc: console_errors.append(str(exc)))
    try:
        page.goto(lab.lab_url(notebook), wait_until="domcontentloaded", timeout=60_000)
        page.wait_for_function("n => document.querySelectorAll('.jp-NotebookPanel .jp-Notebook .jp-Cell').length >= n",
                               arg=expect["n_cells"], timeout=90_000)
        deadline = time.time() + 90
        while _kernel_state(lab, notebook) != "idle":
            assert time.time() < deadline, f"{notebook}: kernel not idle 90 s after opening\n{lab.log_tail()}"
            time.sleep(0.5)
        try:   # fold the file browser away: more of the notebook in the screenshots
            page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").first.click(timeout=3_000)
        except Exception:
            pass
        times["open"] = time.time() - t0
        t1 = time.time()
        _run_all(page)
        cells = _wait_until_run(page, lab, notebook, len(expect["code"]), RUN_TIMEOUT)
        cells = _wait_widgets_rendered(page, WIDGET_TIMEOUT)
        times["run_all"] = time.time() - t1
        assert len(cells) == expect["n_cells"], f"the page shows {len(cells)} cells, the file has {expect['n_cells']}"

        # 1. every code cell ran, nothing failed
        for c in cells:
            if c["code"] and c["index"] in expect["code"] and not re.fullmatch(r"\[\d+\]:?", c["prompt"]):
                problems.append(f"cell {c['index']} did not run (prompt {c['prompt']!r})")
            for err in c["errors"]:
                problems.append(f"cell {c['index']} shows an error:\n{err}")
        # 2. a rendered image in every cell that draws a figure; no figure shown as text
        for i in expect["figures"]:
            c = cells[i]
            if c["images"] < 1:
                problems.append(f"cell {i} draws a figure but shows no rendered image "
                                f"({c['broken_images']} broken <img>; output text: {c['text'][:200]!r})")
        problems += _empty_figures(page)
        for c in cells:
            m = FIGURE_REPR.search(c["text"])
            if m:
                problems.append(f"cell {c['index']} shows a figure as text {m.group(0)!r} instead of an image")
        # 3. widgets rendered as controls
        for i in expect["widgets"]:
            if cells[i]["widgets"] < 1:
                problems.append(f"cell {i} displays a widget but the page shows no rendered control "
                                f"(output text: {cells[i]['text'][:300]!r})")
        for c in cells:
            for bad in WIDGET_FAILURE_TEXT:
                if bad in c["text"]:
                    problems.append(f"cell {c['index']}: {bad!r} after {WIDGET_TIMEOUT:.0f} s")
            m = WIDGET_REPR.search(c["text"])
            if m:
                problems.append(f"cell {c['index']} shows a widget's text repr {m.group(0)!r}... instead of the control")

        # 4. moving a control changes what the widget shows
        widget_cells = sorted({c["index"] for c in cells if c["widgets"]} | set(expect["widgets"]))
        t2 = time.time()
        all_cells = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-Notebook .jp-Cell")
        for i in widget_cells:
            if cells[i]["widgets"] < 1:
                continue   # already reported above
            before_sig = _signature(page, i)
            try:
                action = _move_a_control(page, all_cells.nth(i))
            except AssertionError as exc:
                problems.append(f"cell {i}: {exc}")
                continue
            deadline, changed, last = time.time() + WIDGET_TIMEOUT, False, None
            while time.time() < deadline:   # changed, images loaded, kernel idle, and the same 1 s later
                time.sleep(1.0)
                sig = _signature(page, i)
                if (sig["shown"] != before_sig["shown"] and sig["pending"] == 0 and sig == last and
                        _kernel_state(lab, notebook) == "idle"):
                    changed = True
                    break
                last = sig
            after = _cells(page)[i]
            if not changed:
                problems.append(f"cell {i}: {action} did not change the widget's output within "
                                f"{WIDGET_TIMEOUT:.0f} s (a broken callback?)")
            for err in after["errors"]:
                problems.append(f"cell {i} shows an error after {action}:\n{err}")
            m = FIGURE_REPR.search(after["text"])
            if m:
                problems.append(f"cell {i} shows a figure as text {m.group(0)!r} after {action}")
            if after["broken_images"]:
                problems.append(f"cell {i} has {after['broken_images']} broken image(s) after {action}")
            problems += _empty_figures(page, only=i, after=f" after {action}")
            stale = [src for src in after["loose_images"] if src in cells[i]["loose_images"]]
            if changed and stale:
                notes.append(f"cell {i}: {len(stale)} figure(s) shown below the widget, outside it, stay as they were "
                             f"after {action}: a reader sees a stale copy (a figure the widget drew and left open, "
                             f"flushed by the inline backend at the end of the cell; plt.close it after display)")
            moved.append({"cell": i, "action": action, "changed": changed, "stale_figures_outside": len(stale)})
            _screenshot(page, i, ARTIFACTS / f"{stem}-cell{i}.png")
        times["widgets"] = time.time() - t2

        # the page a person would look at: the last moved widget, else the last figure
        shown = (moved[-1]["cell"] if moved else
                 max([c["index"] for c in cells if c["images"]], default=len(cells) - 1))
        _screenshot(page, shown, ARTIFACTS / f"{stem}.png")
    except Exception:
        try:   # what the page looked like when it went wrong
            page.screenshot(path=str(ARTIFACTS / f"{stem}-failure.png"))
        except Exception:
            pass
        raise
    finally:
        times["total"] = time.time() - t0
        context.close()
        lab.shutdown_kernels()
        report = {"notebook": notebook, "seconds": {k: round(v, 1) for k, v in times.items()},
                  "expected_figure_cells": expect["figures"], "expected_widget_cells": expect["widgets"],
                  "moved": moved, "problems": problems, "notes": notes, "page_errors": console_errors[:20]}
        (ARTIFACTS / f"{stem}.json").write_text(json.dumps(report, indent=1))
        print(f"\n[browser] {notebook}: " + ", ".join(f"{k} {v:.0f} s" for k, v in times.items()))

    assert _sha(path) == before, f"{notebook} was modified on disk by the browser run (autosave?)"
    if notes and STRICT:
        problems += notes
    assert not problems, f"{notebook}: what a person sees in JupyterLab is wrong:\n- " + "\n- ".join(problems)
    for note in notes:
        warnings.warn(f"{notebook}: {note} (SGLIB_BROWSER_STRICT=1 makes this a failure)", UserWarning)


def test_docs_offline(browser):
    """docs/index.html and every page it links, read from disk with the network blocked: the links work and every
    widget shows its controls."""
    index = DOCS / "index.html"
    if not index.is_file():
        pytest.skip("no docs/index.html: run `make html`")
    order = [nb.stem + ".html" for nb in sorted((ROOT / "notebooks").glob("*.ipynb"))]
    pages = [name for name in order if (DOCS / name).is_file()]
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    blocked, page_errors, problems = [], [], []

    def only_files(route):
        if route.request.url.startswith("file:"):
            route.continue_()
        else:
            blocked.append(route.request.url)
            route.abort()

    context.route("**/*", only_files)
    page = context.new_page()
    page.on("pageerror", lambda exc: page_errors.append(str(exc)))
    try:
        page.goto(index.as_uri())
        linked = page.eval_on_selector_all("ol a", "as => as.map(a => a.getAttribute('href'))")
        assert linked == pages, f"docs/index.html links {linked}, the notebooks' pages in order are {pages}"
        for k, name in enumerate(pages):
            page.goto((DOCS / name).as_uri())
            nav = page.eval_on_selector_all("nav.sglib-nav:first-of-type a",
                                            "as => as.map(a => a.getAttribute('href'))")
            expected = ["index.html", *pages[max(k - 1, 0):k], *pages[k + 1:k + 2]]
            if nav != expected:
                problems.append(f"{name}: its navigation links {nav}, expected {expected}")
            views = (DOCS / name).read_text(encoding="utf-8").count(
                '<script type="application/vnd.jupyter.widget-view+json">')
            try:
                page.wait_for_function(f"() => ({DOCS_WIDGETS_JS})().every(w => w.controls > 0)", timeout=30_000)
            except Exception:
                pass   # reported below, with what each widget shows
            widgets = page.evaluate(DOCS_WIDGETS_JS)
            if len(widgets) != views:
                problems.append(f"{name}: {len(widgets)} widget areas for {views} saved widget views")
            problems += [f"{name}: widget {w['id']} shows no control offline (text: {w['text'][:200]!r})"
                         for w in widgets if not w["controls"]]
            if widgets:
                page.evaluate("() => document.querySelector('div.jupyter-widgets.jp-OutputArea-output')"
                              ".scrollIntoView({block: 'start'})")
                page.evaluate(IMAGES_PAINTED_JS)
                page.screenshot(path=str(ARTIFACTS / f"docs-{pathlib.Path(name).stem}.png"))
    finally:
        context.close()
    print(f"\n[browser] docs offline: {len(pages)} pages; blocked requests: {sorted(set(blocked))}")
    assert not page_errors, f"script errors on the offline pages: {page_errors[:5]}"
    assert not problems, "the rendered pages read offline:\n- " + "\n- ".join(problems)
