"""Helpers for tests/test_browser.py: a throw-away JupyterLab server, a system Chromium driven by Playwright,
and what the test expects to see in a notebook (figures, widgets), read from the notebook file itself.

Nothing here downloads a browser: Playwright is pointed at the system binary (Debian's ``chromium``).
"""
from __future__ import annotations

import ast
import json
import os
import pathlib
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request

CHROMIUM_CANDIDATES = ("chromium", "chromium-browser", "/usr/bin/chromium", "/usr/lib/chromium/chromium")
INSTALL_HINT = "install it with `apt-get install chromium` (or `make setup`), or point SGLIB_CHROMIUM at a binary"

# ---------------------------------------------------------------------------------------------------------------
# what a notebook should show, from its source


def _code(source) -> str:
    src = "".join(source) if isinstance(source, list) else source
    # IPython magics and shell escapes are not Python: blank them so the cell still parses
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in src.splitlines())


_PLT_DRAWING = {"subplots", "subplot", "figure", "plot", "imshow", "matshow", "bar", "barh", "hist", "scatter",
                "pie", "errorbar", "fill_between", "semilogx", "semilogy", "loglog", "boxplot", "violinplot"}
_AXES_DRAWING = {"plot", "imshow", "matshow", "bar", "barh", "hist", "scatter", "errorbar", "fill_between",
                 "semilogx", "semilogy", "loglog", "boxplot", "violinplot", "pcolormesh", "contourf"}


def _call_name(func) -> str | None:
    if isinstance(func, ast.Name):
        return func.id
    if isinstance(func, ast.Attribute):
        return func.attr
    return None


def draws_figure(source) -> bool:
    """Whether a code cell draws a matplotlib figure at top level, judged from its code (AST, not text):
    a call to a ``plot_*`` function, a ``plt.<drawing>`` call, an axes drawing call (``ax.plot``, ``ax.imshow``)
    or pandas plotting (``df.plot(...)``, ``df.plot.barh(...)``). Cells whose figures go into a widget
    (``.widget()``) are not counted: the widget check covers them."""
    try:
        tree = ast.parse(_code(source))
    except SyntaxError:
        return False
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func, name = node.func, _call_name(node.func)
        if name is None:
            continue
        if name.startswith("plot_"):
            return True
        if isinstance(func, ast.Attribute):
            base = func.value
            if isinstance(base, ast.Name) and base.id == "plt" and name in _PLT_DRAWING:
                return True
            if name in _AXES_DRAWING and not (isinstance(base, ast.Name) and base.id in {"np", "numpy"}):
                return True
            if isinstance(base, ast.Attribute) and base.attr == "plot":   # df.plot.barh(...)
                return True
    return False


def displays_widget(source) -> bool:
    """Whether a code cell displays an ipywidget: ``display(...)`` (or the cell's last expression) of
    ``something.widget()``, of an ``ipywidgets``/``widgets.`` constructor, or a call of ``interact``."""
    try:
        tree = ast.parse(_code(source))
    except SyntaxError:
        return False

    def is_widget_expr(node) -> bool:
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Attribute) and f.attr == "widget":
                return True
            if isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in {"widgets", "ipywidgets"}:
                return True
            if _call_name(f) in {"interact", "interactive"}:
                return True
        return False

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and _call_name(node.func) in {"interact", "interact_manual"}:
            return True
        if isinstance(node, ast.Call) and _call_name(node.func) == "display":
            if any(is_widget_expr(a) for a in node.args):
                return True
    body = tree.body
    return bool(body) and isinstance(body[-1], ast.Expr) and is_widget_expr(body[-1].value)


def expectations(path) -> dict:
    """Per cell index (in the notebook's cell list, markdown included): what a person should see."""
    nb = json.loads(pathlib.Path(path).read_text())
    cells = nb["cells"]
    out = {"n_cells": len(cells), "code": [], "figures": [], "widgets": []}
    for i, cell in enumerate(cells):
        if cell["cell_type"] != "code" or not "".join(cell["source"]).strip():
            continue
        out["code"].append(i)
        if displays_widget(cell["source"]):
            out["widgets"].append(i)
        elif draws_figure(cell["source"]):
            out["figures"].append(i)
    return out


# text that means a widget or a figure did not render as what a person expects
WIDGET_REPR = re.compile(r"\b(VBox|HBox|Box|GridBox|Tab|Accordion|IntSlider|FloatSlider|IntRangeSlider|"
                         r"FloatRangeSlider|SelectionSlider|SelectionRangeSlider|Dropdown|Select|SelectMultiple|"
                         r"RadioButtons|ToggleButtons|Output|Button|Checkbox|Text|Textarea|Label|HTML|IntText|"
                         r"FloatText|Play|interactive)\((children|value|options|description|layout|outputs|index)=")
WIDGET_FAILURE_TEXT = ("Loading widget...", "Error displaying widget", "Error rendering widget",
                       "A Jupyter widget could not be displayed", "Failed to load model class")
FIGURE_REPR = re.compile(r"<Figure size \d+(\.\d+)?x\d+(\.\d+)? with \d+ Axes>")

# ---------------------------------------------------------------------------------------------------------------
# the JupyterLab server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _write_settings(folder: pathlib.Path) -> None:
    """JupyterLab user settings for the test: no autosave (the run must never write outputs into the
    notebooks), every cell in the DOM (no windowing, so off-screen outputs can be inspected), no news pop-up."""
    settings = {
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                            "checkForUpdates": False},
    }
    for rel, value in settings.items():
        f = folder / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(json.dumps(value))


def _die_with_parent() -> None:
    """In the child: SIGTERM when the test process dies (even killed), so no server or kernel outlives it
    (jupyter_server shuts its kernels down on SIGTERM)."""
    try:
        import ctypes
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
    except Exception:
        pass


class JupyterLab:
    """``python -m jupyterlab`` from this environment on a free localhost port with a random token,
    rooted at ``root``; :meth:`stop` shuts its kernels down, then the server (killed if it lingers)."""

    def __init__(self, root, workdir, python: str = sys.executable, timeout: float = 90):
        self.root = pathlib.Path(root).resolve()
        self.workdir = pathlib.Path(workdir)
        self.port, self.token = free_port(), secrets.token_hex(24)
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.workdir / "jupyterlab.log"
        for d in ("config", "runtime", "settings", "workspaces"):
            (self.workdir / d).mkdir(parents=True, exist_ok=True)
        _write_settings(self.workdir / "settings")
        env = dict(os.environ)   # SGLIB_THREADS, SGLIB_FULL, OMP_* ... pass through
        if env.get("MPLBACKEND", "").lower() != "module://matplotlib_inline.backend_inline":
            env.pop("MPLBACKEND", None)   # the kernel must use the inline backend: figures shown in the page
        env.update(JUPYTER_CONFIG_DIR=str(self.workdir / "config"), JUPYTER_RUNTIME_DIR=str(self.workdir / "runtime"),
                   JUPYTERLAB_SETTINGS_DIR=str(self.workdir / "settings"),
                   JUPYTERLAB_WORKSPACES_DIR=str(self.workdir / "workspaces"), PYTHONUNBUFFERED="1")
        cmd = [python, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1",
               f"--ServerApp.port={self.port}", "--ServerApp.port_retries=0",
               f"--IdentityProvider.token={self.token}", f"--ServerApp.root_dir={self.root}",
               "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            cmd.append("--allow-root")
        self._log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdout=self._log, stderr=subprocess.STDOUT, env=env, cwd=self.root,
                                     start_new_session=True, preexec_fn=_die_with_parent)
        self._wait(timeout)

    def api(self, path: str, method: str = "GET", timeout: float = 10):
        req = urllib.request.Request(self.url + path, method=method,
                                     headers={"Authorization": f"token {self.token}"})
        with urllib.request.urlopen(req, timeout=timeout) as r:
            body = r.read()
        return json.loads(body) if body else None

    def _wait(self, timeout: float) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {self.proc.returncode}:\n{self.log_tail()}")
            try:
                self.api("/api/status", timeout=2)
                return
            except (urllib.error.URLError, ConnectionError, OSError):
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"JupyterLab did not answer on {self.url} within {timeout:.0f} s:\n{self.log_tail()}")

    def log_tail(self, n: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def lab_url(self, path: str) -> str:
        return f"{self.url}/lab/tree/{urllib.request.quote(path)}?token={self.token}&reset"

    def shutdown_kernels(self) -> None:
        try:
            for s in self.api("/api/sessions"):
                self.api(f"/api/sessions/{s['id']}", method="DELETE", timeout=30)
            for k in self.api("/api/kernels"):
                self.api(f"/api/kernels/{k['id']}", method="DELETE", timeout=30)
        except (urllib.error.URLError, OSError):
            pass

    def _descendants(self) -> list[int]:
        try:
            import psutil
            return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        except Exception:
            return []

    def stop(self) -> None:
        if self.proc.poll() is None:
            kids = self._descendants()           # kernels run in their own sessions: remember them
            self.shutdown_kernels()
            try:
                self.api("/api/shutdown", method="POST", timeout=10)
            except (urllib.error.URLError, OSError):
                pass
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(10)
                except subprocess.TimeoutExpired:
                    os.killpg(self.proc.pid, signal.SIGKILL)
                    self.proc.wait(10)
            for pid in kids:                     # any kernel the server left behind
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
        self._log.close()


# ---------------------------------------------------------------------------------------------------------------
# the browser


def find_chromium() -> str | None:
    env = os.environ.get("SGLIB_CHROMIUM")
    if env:
        return shutil.which(env) or (env if os.access(env, os.X_OK) else None)
    for c in CHROMIUM_CANDIDATES:
        path = shutil.which(c) or (c if os.path.isabs(c) and os.access(c, os.X_OK) else None)
        if path:
            return path
    return None


def launch_args() -> list[str]:
    args = ["--disable-dev-shm-usage", "--disable-gpu"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        args.append("--no-sandbox")      # Chromium refuses to start its sandbox as root
    return args


# JavaScript run in the page -------------------------------------------------------------------------------------

CELLS_JS = r"""
() => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  if (!panel) return null;
  const cells = Array.from(panel.querySelectorAll('.jp-Notebook .jp-Cell'));
  return cells.map((c, i) => {
    const out = c.querySelector('.jp-Cell-outputWrapper');
    const imgs = out ? Array.from(out.querySelectorAll('img')) : [];
    // JupyterLab renders an error output as stderr text: an error is an error mime type, or stderr/text
    // holding a Python traceback (also what a widget callback's exception shows inside an Output widget)
    const errs = out ? Array.from(out.querySelectorAll('.jp-OutputArea-output')).filter(o =>
        !o.querySelector('.jp-OutputArea-output') &&
        (o.getAttribute('data-mime-type') === 'application/vnd.jupyter.error' ||
         /Traceback \(most recent call last\)/.test(o.textContent))) : [];
    const promptEl = c.querySelector('.jp-InputArea-prompt');
    return {
      index: i,
      code: c.classList.contains('jp-CodeCell'),
      prompt: promptEl ? promptEl.textContent.trim() : '',
      images: imgs.filter(im => im.complete && im.naturalWidth > 0).length,
      broken_images: imgs.filter(im => im.complete && im.naturalWidth === 0).length,
      widgets: out ? out.querySelectorAll('.jupyter-widgets').length : 0,
      // images a widget's control cannot update: not inside any widget
      loose_images: imgs.filter(im => !im.closest('.jupyter-widgets')).map(im => im.src.slice(-64)),
      widget_views: out ? out.querySelectorAll('[data-mime-type="application/vnd.jupyter.widget-view+json"]').length : 0,
      errors: errs.map(e => e.innerText.slice(-3000)),
      text: out ? out.innerText : '',
    };
  });
}
"""

# per cell with images: the share of "ink" (opaque, not near-white pixels) of each rendered image. A matplotlib
# figure with axes has a few % at least (the axes frame alone is ~0.7 % of a 6x4 in figure); a figure whose
# content is missing, blank or drawn off the canvas has a few thousandths (e.g. only a clipped title).
IMAGE_INK_JS = r"""
(maxSide) => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  const cells = Array.from(panel.querySelectorAll('.jp-Notebook .jp-Cell'));
  const result = {};
  cells.forEach((c, i) => {
    const imgs = Array.from(c.querySelectorAll('.jp-Cell-outputWrapper img'))
        .filter(im => im.complete && im.naturalWidth > 0);
    if (!imgs.length) return;
    result[i] = imgs.map(im => {
      const scale = Math.min(1, maxSide / Math.max(im.naturalWidth, im.naturalHeight));
      const w = Math.max(1, Math.round(im.naturalWidth * scale)), h = Math.max(1, Math.round(im.naturalHeight * scale));
      const canvas = document.createElement('canvas');
      canvas.width = w; canvas.height = h;
      const ctx = canvas.getContext('2d', {willReadFrequently: true});
      try { ctx.drawImage(im, 0, 0, w, h); } catch (e) { return -1; }
      let d; try { d = ctx.getImageData(0, 0, w, h).data; } catch (e) { return -1; }   // cross-origin: unknown
      let ink = 0;
      for (let k = 0; k < d.length; k += 4)
        if (d[k + 3] > 32 && Math.min(d[k], d[k + 1], d[k + 2]) < 200) ink++;
      return ink / (w * h);
    });
  });
  return result;
}
"""
MIN_INK = 0.005    # below: the image is reported as an empty figure

# wait until every image of the page is decoded and two frames are painted (before a screenshot)
IMAGES_PAINTED_JS = r"""
async () => {
  await Promise.all(Array.from(document.images).map(im => im.decode().catch(() => null)));
  await new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)));
}
"""

# what the cell's output shows, its controls (and their readouts) cut out: the visible text and the images'
# sources, i.e. what a callback changes; a re-render of identical content does not count as a change
OUTPUT_SIGNATURE_JS = r"""
(index) => {
  const panel = document.querySelector('.jp-NotebookPanel:not(.lm-mod-hidden)');
  const c = panel.querySelectorAll('.jp-Notebook .jp-Cell')[index];
  const out = c.querySelector('.jp-Cell-outputWrapper');
  const controls = 'select, input, textarea, .widget-readout, .noUi-target, .slider-container';
  const clone = out.cloneNode(true);
  clone.querySelectorAll(controls).forEach(e => e.remove());
  const visible = [clone.textContent];
  const imgs = Array.from(out.querySelectorAll('img'));
  return {shown: visible.join('\u241e') + '\u241e' + imgs.map(im => im.src).join('\u241e'),
          pending: imgs.filter(im => !im.complete).length};
}
"""

# docs/*.html (nbconvert's pages, tools/docs_index.py): each widget's area and the controls drawn in it
DOCS_WIDGETS_JS = r"""
() => Array.from(document.querySelectorAll('div.jupyter-widgets.jp-OutputArea-output')).map(d => ({
  id: d.id,
  controls: d.querySelectorAll('.widget-subarea select, .widget-subarea input, .widget-subarea .noUi-handle').length,
  text: d.innerText,
}))
"""
