"""Notebook widgets whose callbacks live here (unit-tested), so a notebook only wires and displays them.

Every callback computes from data already in memory (logs, cached descriptors): moving a control never
retrains or re-extracts.
"""
from __future__ import annotations

import matplotlib.pyplot as plt
import pandas as pd

from .plots import plot_training_curves


def run_summary(log: pd.DataFrame) -> pd.Series:
    """One run's log in a few numbers: steps, first and last GeM p, first and last validation mAP (%), last loss."""
    val = log.dropna(subset=["val_map"])
    steps = log[log.step > 0]
    return pd.Series({"steps": int(log.step.max()), "p at start": round(float(log.gem_p.iloc[0]), 3),
                      "p at end": round(float(log.gem_p.iloc[-1]), 3),
                      "val mAP at start": round(100 * float(val.val_map.iloc[0]), 1) if len(val) else float("nan"),
                      "val mAP at end": round(100 * float(val.val_map.iloc[-1]), 1) if len(val) else float("nan"),
                      "loss, last 10 steps": round(float(steps.loss.tail(10).mean()), 3)})


class LossCurves:
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
        from IPython.display import display
        if self.figure is not None:
            plt.close(self.figure)
        self.figure, self.summary = self.render(loss)
        with self.output:
            self.output.clear_output(wait=True)
            display(self.figure, self.summary)

    def widget(self):
        import ipywidgets as widgets
        self.show(self.picker.value)
        return widgets.VBox([self.picker, self.output])


__all__ = ["LossCurves", "run_summary"]
