"""Notebook widgets whose callbacks live here (unit-tested), so a notebook only wires and displays them.

Every callback computes from data already in memory (logs, cached descriptors): moving a control never
retrains or re-extracts.
"""
from __future__ import annotations

import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .._checks import check_int
from ..evaluate.protocol import revisited, summary
from ..evaluate.retrieval import evaluate_retrieval, rank_database
from ..method.rerank import DEFAULT_BETA, DEFAULT_K, DEFAULT_M
from .ablation_plots import FAMILIES, FAMILY_PLOTS, GEM_P3
from .plots import plot_before_after, plot_training_curves
from .reranking import method_rerank_fn


def run_summary(log: pd.DataFrame) -> pd.Series:
    """One run's log in a few numbers: steps, first and last GeM p, first and last validation mAP (%), last loss."""
    val = log.dropna(subset=["val_map"])
    steps = log[log.step > 0]
    return pd.Series({"steps": int(log.step.max()), "p at start": round(float(log.gem_p.iloc[0]), 3),
                      "p at end": round(float(log.gem_p.iloc[-1]), 3),
                      "val mAP at start": round(100 * float(val.val_map.iloc[0]), 1) if len(val) else float("nan"),
                      "val mAP at end": round(100 * float(val.val_map.iloc[-1]), 1) if len(val) else float("nan"),
                      "loss, last 10 steps": round(float(steps.loss.tail(10).mean()), 3)})


class _View:
    """An ipywidgets Output that shows what ``render`` returns.

    A figure is drawn to a PNG and closed before it is shown: left open, the notebook's inline backend would
    also draw it below the widget at the end of the cell, a copy that no longer follows the controls."""

    def _display(self, *items) -> None:
        import io

        import ipywidgets as widgets
        from IPython.display import Image, display
        if not hasattr(self, "output"):
            self.output = widgets.Output()
        shown = []
        for item in items:
            if isinstance(item, plt.Figure):
                # drawn to PNG here, whole, then closed: nothing is left to the backend of whatever
                # kernel runs the callback (the browser test saw figures come back blank otherwise)
                buffer = io.BytesIO()
                item.savefig(buffer, format="png", dpi=80, bbox_inches="tight")
                plt.close(item)
                item = Image(data=buffer.getvalue(), format="png")
            shown.append(item)
        with self.output:
            self.output.clear_output(wait=True)
            display(*shown)


class LossCurves(_View):
    """A loss picker over saved training logs: the chosen run's curves in bold beside the others, and its summary.

    Example (in a notebook)::

        view = LossCurves(training_logs(FULL_STUDY, "../runs"))
        display(view.widget())
    """

    def __init__(self, logs: dict):
        import ipywidgets as widgets
        if not logs:
            raise ValueError("LossCurves: no training logs (train first: python -m sglib train-study)")
        self.logs = dict(logs)
        self.picker = widgets.Dropdown(options=list(self.logs), value=next(iter(self.logs)), description="loss")
        self.output = widgets.Output()
        self.figure, self.summary = None, None
        self.picker.observe(lambda change: self.show(change["new"]), "value")

    def render(self, loss: str):
        """(figure, summary table) for ``loss``: what :meth:`show` displays."""
        if loss not in self.logs:
            raise ValueError(f"no log for loss {loss!r} (have {', '.join(self.logs)})")
        summary = pd.DataFrame({name: run_summary(log) for name, log in self.logs.items()}).T
        return plot_training_curves(self.logs, highlight=loss), summary.loc[[loss]]

    def show(self, loss: str) -> None:
        self.figure, self.summary = self.render(loss)
        self._display(self.figure, self.summary)

    def widget(self):
        import ipywidgets as widgets
        self.show(self.picker.value)
        return widgets.VBox([self.picker, self.output])


class RerankExplorer(_View):
    """Sliders for SuperGlobal's M, K and beta and a query picker, re-scoring from cached descriptors.

    Shows E/M/H mAP over all queries before and after reranking at the chosen setting, and the chosen query's
    top results before and after, side by side.

    Example (in a notebook)::

        view = RerankExplorer(dataset, q, x)
        display(view.widget())
    """

    def __init__(self, dataset, q: np.ndarray, x: np.ndarray, k: int = 6):
        import ipywidgets as widgets
        self.dataset, self.q, self.x = dataset, q, x
        self.ranks = rank_database(q, x)
        self.baseline = evaluate_retrieval(q, x, dataset.gnd).summary()
        n = x.shape[0]
        if n < 2:
            raise ValueError(f"RerankExplorer: need at least 2 database images, got {n}")
        self.k = min(k, n)
        self.M = widgets.IntSlider(value=min(DEFAULT_M, n), min=2, max=n, step=1 if n < 50 else 10,
                                   description="M", continuous_update=False)
        self.K = widgets.IntSlider(value=min(DEFAULT_K, self.M.value - 1), min=0, max=min(30, self.M.value - 1),
                                   description="K", continuous_update=False)
        self.beta = widgets.FloatSlider(value=DEFAULT_BETA, min=0.0, max=2.0, step=0.05, description="beta",
                                        continuous_update=False)
        self.query = widgets.Dropdown(options=[(f"{i}: {name}", i) for i, name in enumerate(dataset.qimlist)],
                                      value=0, description="query")
        # K < M always: the K slider's range follows M before anything re-renders
        self.M.observe(lambda change: setattr(self.K, "max", min(30, change["new"] - 1)), "value")
        for control in (self.M, self.K, self.beta, self.query):
            control.observe(lambda change: self.show(), "value")
        self.table = None

    def render(self, query: int, M: int, K: int, beta: float):
        """(mAP table: rows "no rerank" / "SuperGlobal", columns E/M/H; before/after figure of ``query``)."""
        query = check_int(query, "query", 0, len(self.q) - 1, what="(a query index)")
        M = check_int(M, "M", 1, what="(the shortlist size)")
        m = min(M, self.x.shape[0])
        if not 0 <= K < m:
            raise ValueError(f"RerankExplorer: need 0 <= K < M, got K={K}, M={m}")
        fn = method_rerank_fn("superglobal", {"K": K, "beta": beta})
        after = fn(self.q, self.x, self.ranks, m)
        reranked = summary(revisited(after, self.dataset.gnd))
        table = pd.DataFrame({"no rerank": self.baseline, f"SuperGlobal M={m} K={K} beta={beta:g}": reranked}).T
        table.columns = [c.capitalize() for c in table.columns]
        fig = plot_before_after(self.dataset, query, self.ranks[query], after[query], self.k,
                                title=f"query {query}: top {self.k} before and after SuperGlobal (M={m}, K={K}, "
                                      f"beta={beta:g})")
        return table, fig

    def show(self) -> None:
        self.table, fig = self.render(self.query.value, self.M.value, self.K.value, self.beta.value)
        self._display(self.table, fig)

    def widget(self):
        import ipywidgets as widgets
        self.show()
        return widgets.VBox([widgets.HBox([self.query, self.M]), widgets.HBox([self.K, self.beta]), self.output])


class TuningExplorer(_View):
    """A method picker over a tuning table (:func:`sglib.experiments.reranking.tuning_table`): the method's
    settings ranked by validation score, and validation against test for each setting (the chosen one starred)."""

    def __init__(self, table: pd.DataFrame):
        import ipywidgets as widgets
        needed = {"method", "params", "default", "val_medium", "val_hard", "test_medium", "test_hard"}
        if table.empty or not needed <= set(table.columns):
            raise ValueError(f"TuningExplorer: expected a non-empty tuning_table(...) result with columns "
                             f"{sorted(needed)}, got columns {list(table.columns)}")
        self.results = table.assign(val=(table.val_medium + table.val_hard) / 2,
                                    test=(table.test_medium + table.test_hard) / 2)
        methods = list(dict.fromkeys(self.results.method))
        self.picker = widgets.Dropdown(options=methods, value=methods[0], description="method")
        self.picker.observe(lambda change: self.show(), "value")
        self.table = None

    def render(self, method: str):
        """(that method's rows sorted by validation score; scatter of validation against test (M+H)/2)."""
        rows = self.results[self.results.method == method]
        if rows.empty:
            raise ValueError(f"TuningExplorer: no rows for method {method!r}")
        rows = rows.sort_values("val", ascending=False)
        fig, ax = plt.subplots(figsize=(4.8, 3.6))
        ax.scatter(rows.val, rows.test, s=18, color="#4575b4", alpha=0.7, label="settings")
        best = rows.iloc[0]
        ax.scatter([best.val], [best.test], marker="*", s=160, color="#d73027", label=f"chosen {best.params}")
        default = rows[rows["default"]]
        if len(default):
            ax.scatter(default.val, default.test, marker="s", s=50, facecolor="none", edgecolor="black",
                       label="defaults")
        ax.set_xlabel("validation (Medium + Hard) / 2, mAP %")
        ax.set_ylabel("test (Medium + Hard) / 2, mAP %")
        ax.set_title(method, fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        fig.tight_layout()
        # None (e.g. diffusion's query_k) means "follow another parameter": shown as a word, not a NaN cell
        params = pd.DataFrame([{k: "same as k" if v is None else v for k, v in json.loads(p).items()}
                               for p in rows.params], index=rows.index)
        shown = pd.concat([params, rows[["val", "test", "val_medium", "val_hard", "test_medium", "test_hard"]]], axis=1)
        return shown.reset_index(drop=True), fig

    def show(self) -> None:
        self.table, fig = self.render(self.picker.value)
        self._display(self.table.head(10), fig)

    def widget(self):
        import ipywidgets as widgets
        self.show()
        return widgets.VBox([self.picker, self.output])


class SettingExplorer(_View):
    """A family picker and a setting slider over the pooling grid (notebook 01): the chosen setting's E/M/H mAP
    beside GeM p = 3 with the difference, and its family's figure with the setting highlighted.

    Args:
        scores: :func:`sglib.experiments.ablations.score_grid` over :func:`~sglib.experiments.ablations.pooling_grid`
            (rows keyed by setting, a ``family`` column; includes ``"gem p=3"``).
    """

    def __init__(self, scores: pd.DataFrame):
        import ipywidgets as widgets
        if GEM_P3 not in scores.index or not {"family", "easy", "medium", "hard"} <= set(scores.columns):
            raise ValueError("SettingExplorer: expected score_grid(...) over pooling_grid(), with the 'gem p=3' row")
        self.scores = scores
        self.family = widgets.Dropdown(options=[f for f in FAMILIES if (scores.family == f).any()], value="gem",
                                       description="family")
        self.setting = widgets.SelectionSlider(options=self._settings("gem"), value=GEM_P3, description="setting",
                                               continuous_update=False, layout=widgets.Layout(width="60%"))
        self.family.observe(lambda change: self._switch(change["new"]), "value")
        self.setting.observe(lambda change: self.show(), "value")
        self.table = None

    def _settings(self, family: str) -> list:
        return list(self.scores.index[self.scores.family == family])

    def _switch(self, family: str) -> None:
        before = self.setting.value
        self.setting.options = self._settings(family)      # resets the value, whose observer re-renders
        if self.setting.value == before:
            self.show()

    def render(self, key: str):
        """(table: rows the setting and GeM p = 3 and their difference, columns E/M/H; the family's figure)."""
        if key not in self.scores.index:
            raise ValueError(f"SettingExplorer: no setting {key!r} in the grid")
        cols = ["easy", "medium", "hard"]
        row, base = self.scores.loc[key], self.scores.loc[GEM_P3]
        table = pd.DataFrame([row[cols], base[cols], row[cols] - base[cols]],
                             index=[f"chosen: {key}", f"baseline: {GEM_P3}", "difference (points)"])
        table.columns = [c.capitalize() for c in table.columns]
        return table.astype(float).round(2), FAMILY_PLOTS[row.family](self.scores, highlight=key)

    def show(self) -> None:
        self.table, fig = self.render(self.setting.value)
        self._display(self.table, fig)

    def widget(self):
        import ipywidgets as widgets
        self.show()
        return widgets.VBox([self.family, self.setting, self.output])


def positives_kept(approx_ids: np.ndarray, exact_ids: np.ndarray, gnd: list) -> float:
    """Of the positives (easy + hard) in each query's exact top-k, the share the approximate top-k also returns."""
    found = wanted = 0
    for i, g in enumerate(gnd):
        pos = (set(g["easy"]) | set(g["hard"])) & set(exact_ids[i].tolist())
        found += len(pos & set(approx_ids[i].tolist()))
        wanted += len(pos)
    return found / max(1, wanted)


class DistractorExplorer(_View):
    """Sliders for the number of distractors N and the IVF index's ``nprobe`` (notebook 04), from cached vectors.

    N: E/M/H mAP with N distractors (real crops first, then simulated) without and with reranking, re-evaluated
    with :func:`sglib.evaluate.streaming.evaluate_with_distractors`. nprobe: recall@k of the IVF index over
    the largest database against exact search, the positives it keeps and its time per query.

    Args:
        q, x: queries and benchmark database; gnd: ground truth; distractors: list of (n_i, D) arrays appended
            in order (real, then simulated); sizes: the N values offered; index: a faiss IVF index over
            ``x + distractors[:max(sizes)]`` (:func:`sglib.search.build_index`); exact_ids: (nq, k) exact
            top-k over the same vectors; nprobes: the values offered; rerank: RerankSettings for the reranked rows.
    """

    def __init__(self, q, x, gnd, distractors, sizes, index, exact_ids, nprobes, rerank):
        import ipywidgets as widgets
        self.q, self.x, self.gnd, self.rerank = q, x, gnd, rerank
        self.distractors, self.index, self.exact_ids = list(distractors), index, exact_ids
        total = sum(len(d) for d in self.distractors)
        if not sizes or max(sizes) > total:
            raise ValueError(f"DistractorExplorer: sizes must be non-empty and at most the {total} distractors given")
        self.N = widgets.SelectionSlider(options=list(sizes), value=sizes[0], description="N",
                                         continuous_update=False)
        self.nprobe = widgets.SelectionSlider(options=list(nprobes), value=nprobes[0], description="nprobe",
                                              continuous_update=False)
        for control in (self.N, self.nprobe):
            control.observe(lambda change: self.show(), "value")
        self.table = None

    def _first(self, n: int) -> list:
        parts, left = [], n
        for d in self.distractors:
            parts.append(d[:min(left, len(d))])
            left -= len(parts[-1])
        return [p for p in parts if len(p)]

    def render(self, n: int, nprobe: int) -> pd.DataFrame:
        """One table: mAP rows at N distractors (global, + rerank) and the index row at ``nprobe``."""
        from ..evaluate.streaming import evaluate_with_distractors
        from ..search import recall_at_k, search_index
        from ..timing import measure
        rows = {}
        for label, rr in (("global", None), ("+ rerank", self.rerank)):
            res = evaluate_with_distractors(self.q, self.x, self._first(n) or None, self.gnd, rerank=rr).summary()
            rows[f"N = {n:,}, {label}"] = {p.capitalize(): v for p, v in res.items()}
        k = self.exact_ids.shape[1]
        found = []
        t = measure({"s": lambda: found.append(search_index(self.index, self.q, k, nprobe=nprobe)[1])}, repeats=1)
        approx = found[-1]
        rows[f"IVF nprobe = {nprobe}"] = {"recall@k": round(recall_at_k(approx, self.exact_ids, k), 3),
                                          "positives kept": round(positives_kept(approx, self.exact_ids, self.gnd), 3),
                                          "ms / query": round(1000 * t["s"].median / len(self.q), 3)}
        return pd.DataFrame.from_dict(rows, orient="index").astype(object).where(lambda d: d.notna(), "n/a")

    def show(self) -> None:
        self.table = self.render(self.N.value, self.nprobe.value)
        self._display(self.table)

    def widget(self):
        import ipywidgets as widgets
        self.show()
        return widgets.VBox([self.N, self.nprobe, self.output])


__all__ = ["LossCurves", "run_summary", "RerankExplorer", "TuningExplorer", "SettingExplorer", "DistractorExplorer",
           "positives_kept"]
