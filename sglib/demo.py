"""``make demo``: the bundled default end to end.

Builds the bundled benchmarks from real photos (:mod:`sglib.bundled`), loads the pretrained
EfficientNet-Lite0, fits its whitening on the disjoint training split, extracts once (cached), and
prints E/M/H mAP for GeM (p = 3), GeM+, + Regional-GeM, + Scale-GeM and + SuperGlobal reranking on
both benchmarks (:mod:`sglib.experiments.tables`).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd

from .evaluate.retrieval import RerankSettings, retrieve
from .experiments.committed import write_machine
from .experiments.tables import MODULE_SETTINGS, map_table, module_table
from .bundled.whitening import fit_training_whitening

BENCHMARKS = ("synthetic_views", "multiview_real")


def run_demo(data_root="data", results_dir="results", backbone: str = "efficientnet_lite0", whiten: bool = True,
             rerank: RerankSettings = RerankSettings(), progress: bool = True, **benchmark_kwargs) -> pd.DataFrame:
    """Build data, extract, retrieve, rerank, evaluate; print and save the table and a picture.

    Writes ``results_dir/demo.json`` (``{benchmark: {row: {"easy", "medium", "hard"}}}``, mAP in percent),
    ``results_dir/demo_machine.json`` (the CPU and libraries it ran on, :mod:`sglib.experiments.committed`)
    and ``results_dir/demo_retrievals.png``. Returns the table.
    """
    from .data.revisitop import load_revisitop
    from .bundled import build_all
    from .experiments.plots import plot_retrievals
    from .models import load_backbone

    start = time.time()
    data_root, results_dir = Path(data_root), Path(results_dir)
    results_dir.mkdir(parents=True, exist_ok=True)
    cache = data_root / "cache"
    build_all(data_root, progress=progress, **benchmark_kwargs)
    print(f"[demo] benchmarks ready ({time.time() - start:.0f} s)")
    model = load_backbone(backbone)
    if whiten:
        model.head = fit_training_whitening(model, data_root, cache, progress)
        print(f"[demo] whitening fitted on the training split ({time.time() - start:.0f} s)")
    per_benchmark, figure_done = {}, False
    for name in BENCHMARKS:
        dataset = load_revisitop(data_root, name, require_images=True)
        per_benchmark[name], feats = module_table(model, dataset, cache, rerank=rerank, progress=progress)
        print(f"[demo] {name}: {dataset.n_queries} queries, {dataset.n_db} database images "
              f"({time.time() - start:.0f} s)")
        if not figure_done:
            q, x = feats[list(MODULE_SETTINGS)[-1]]
            fig = plot_retrievals(dataset, retrieve(q, x, rerank), range(min(6, dataset.n_queries)), k=6,
                                  title=f"{name}: SuperGlobal ({backbone}), top 6 after reranking",
                                  path=results_dir / "demo_retrievals.png")
            fig.clf()
            figure_done = True
    table = map_table(per_benchmark)
    record = {b: {row: res.summary() for row, res in rows.items()} for b, rows in per_benchmark.items()}
    (results_dir / "demo.json").write_text(json.dumps(record, indent=2))
    write_machine(results_dir)   # the CPU behind these numbers: another one differs in the last bits
    print(f"\nmAP (%) with {backbone}{' + learned whitening' if whiten else ''}; "
          f"rerank M={rerank.M} K={rerank.K} beta={rerank.beta}\n")
    print(table.to_string())
    print(f"\n[demo] wrote {results_dir / 'demo.json'} and {results_dir / 'demo_retrievals.png'} "
          f"in {time.time() - start:.0f} s")
    return table


__all__ = ["BENCHMARKS", "run_demo"]
