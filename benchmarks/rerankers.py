"""Per-query latency of every reranker on the bundled benchmark, and SuperGlobal's speed-up over SIFT + RANSAC.

Real descriptors: the ``+ Scale-GeM`` row of ``synthetic_views`` (EfficientNet-Lite0, cached by ``make data`` /
``make demo``). All methods are timed side by side in one run, interleaved, median of ``--repeats``
(:func:`sglib.experiments.costs.cost_table`); SIFT + RANSAC verifies the same queries' global top-k with the
database's SIFT features read from the feature cache (extracted on the first run, offline work).

With ``--json FILE`` (``make bench``) it also times every method of :data:`sglib.rerankers.RERANKERS` against the
work it cannot skip on the same shortlists, interleaved in one run, medians of ``--repeats``, torch tensors in
(no numpy round trip on either side), and appends one row per method to FILE. The bound is the batched M x M
similarity product (``torch.bmm`` of the gathered candidates, all queries in one call) for SuperGlobal, alpha-QE
and k-reciprocal; methods that read the database kNN graph have another one: the gather of each candidate's k
graph neighbours for DBA and alpha-DBA (memory-bound: k times the candidates' bytes, which on a CPU costs more
than the compute-bound product), the conjugate gradient's M x M matrix-vector products for diffusion.
:data:`TARGETS` gives each method's target and why. The graph is built once before the timing (offline work, as
in the paper; its build is an exact search of the database against itself).

usage: python benchmarks/rerankers.py [--data-root data] [--repeats 5] [--threads 2] [--top-k 100] [--M 400]
                                      [--json FILE] [--bounds-only]
"""
import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import pandas as pd  # noqa: E402  (sglib below sets the OpenMP wait policy before torch loads)

from sglib.experiments import costs, reranking  # noqa: E402
from sglib.experiments.tables import MODULE_SETTINGS  # noqa: E402
from sglib.models import load_backbone  # noqa: E402
from sglib.runtime import configure_threads  # noqa: E402

# Each method's bound (the work it cannot skip, timed on the same shortlists), its target (time / bound) and why.
PRODUCT = "batched M x M product of the same shortlists (torch.bmm)"
GATHER = ("gather of each candidate's k graph neighbours (index_select of M k rows of D floats per query); the "
          "database kNN graph itself is built offline over all N items, not timed")
CG = ("20 batched M x M matrix-vector products (the conjugate gradient's); the database kNN graph it truncates "
      "is built offline over all N items, not timed")
_SG = ("product", PRODUCT, 1.3, "it computes the product, then O(M K D) refinements (benchmarks/rerank.py's target)")
TARGETS = {
    "superglobal": _SG, "superglobal_database": _SG,
    "superglobal_query": ("product", PRODUCT, 1.0, "it computes no M x M product: top-K of the query's own "
                                                   "scores, one expanded query, M dot products"),
    "alpha_qe": ("product", PRODUCT, 1.0, "it computes no M x M product: one expanded query, M dot products"),
    "dba": ("gather", GATHER, 2.0, "after the gather, a weighted sum reading the rows again, M dot products"),
    "alpha_dba": ("gather", GATHER, 2.0, "after the gather, a weighted sum reading the rows again, M dot products"),
    "k_reciprocal": ("product", PRODUCT, 3.0, "it computes the (M+1)^2 product itself, then 3 (M+1)^3 products "
                                              "of neighbourhood indicators and a sort per row: about 1 + 3 M/D "
                                              "of the product"),
    "diffusion": ("cg", CG, 2.0, "besides the CG, the M x M affinities from the graph rows and one sort"),
}


def bound_rows(q, x, M: int, threads: int, repeats: int, device: str = "cpu") -> list:
    """One ``results/bench.json`` row per reranker: its time on the shortlists of exact search against the work it
    cannot skip on the same shortlists (:data:`TARGETS`: the batched M x M product; for DBA the gather of the
    candidates' graph neighbours, for diffusion its conjugate gradient's products), measured interleaved
    (:func:`sglib.timing.measure`)."""
    import torch
    from sglib.rerankers import RERANKERS, database_graph, graph_neighbours
    from sglib.search import knn
    from sglib.timing import measure
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _rows import bench_row

    dev = torch.device(device)
    m = min(M, len(x))
    ranks = torch.from_numpy(knn(q, x, len(x))[1]).to(dev)
    qt, xt = torch.from_numpy(q).to(dev), torch.from_numpy(x).to(dev)
    graph = database_graph(x, graph_neighbours(list(RERANKERS))).to(dev)   # offline: not timed
    top = ranks[:, :m]
    cands = xt[top]
    dba_k = RERANKERS["dba"].defaults["k"]
    nbr_ids = graph.ids[top][..., :dba_k].reshape(len(q), -1)              # (nq, M k)
    buf = torch.empty(m * dba_k, x.shape[1], device=dev)
    cg_iterations = RERANKERS["diffusion"].defaults["iterations"]
    affinity, f = torch.rand(len(q), m, m, device=dev), torch.rand(len(q), m, 1, device=dev)

    def gather():
        for row in nbr_ids:                                             # one query at a time: a reused buffer
            torch.index_select(xt, 0, row, out=buf)

    def cg():
        for _ in range(cg_iterations):
            torch.bmm(affinity, f)

    fns = {"product": lambda: torch.bmm(cands, cands.transpose(1, 2)), "gather": gather, "cg": cg}
    for name, method in RERANKERS.items():
        fns[name] = (lambda method=method: method(qt, xt, ranks, m, graph=graph if method.uses_graph else None))
    t = measure(fns, repeats=repeats, device=device)
    rows = []
    for name, method in RERANKERS.items():
        key, text, target, why = TARGETS.get(name, ("product", PRODUCT, None, "no target set for this method"))
        bound_s = t[key].median
        ratio = t[name].median / bound_s
        rows.append(bench_row(f"rerank {method.label} M={m} nq={len(q)} N={len(x)} D={x.shape[1]}", threads, dev,
                              t[name].median, f"{text}. Target: {why}", bound_s, f"<= {target}" if target else "none",
                              target is not None and ratio <= target))
        print(f"  {method.label:32s} {1000 * t[name].median:9.1f} ms  {ratio:6.2f}x its bound, the {key} "
              f"({1000 * bound_s:.1f} ms); target {rows[-1]['target']}: {rows[-1]['status']}")
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=100, help="global top-k verified by SIFT + RANSAC")
    ap.add_argument("--M", type=int, default=400)
    ap.add_argument("--lightglue-pairs", type=int, default=0,
                    help="also time ALIKED + LightGlue on this many (query, top-1) pairs (slow on CPU; 0: off)")
    ap.add_argument("--json", default=None, help="also time every method against its M x M product and append "
                                                  "the rows to this JSON list file")
    ap.add_argument("--bounds-only", action="store_true", help="only the --json rows (no cost table)")
    args = ap.parse_args()
    threads = configure_threads(args.threads)
    dataset, features = reranking.benchmark_descriptors(args.data_root, "synthetic_views")
    q, x = features[reranking.DESCRIPTOR_ROW]
    if args.json:
        from _rows import append_rows
        print(f"every reranker against the work it cannot skip on its shortlists, synthetic_views, {threads} "
              f"threads, medians of {args.repeats} interleaved repeats:")
        append_rows(args.json, bound_rows(q, x, args.M, threads, args.repeats))
    if args.bounds_only:
        return
    model = load_backbone("efficientnet_lite0")
    table = costs.cost_table(q, x, dataset, model, MODULE_SETTINGS[reranking.DESCRIPTOR_ROW], M=args.M,
                             local_top_k=args.top_k, cache_root=os.path.join(args.data_root, "cache"),
                             repeats=args.repeats)
    pd.set_option("display.width", 200)
    print(f"synthetic_views: {len(q)} queries, {len(x)} database images, D={x.shape[1]}, M={args.M}, "
          f"threads={threads}, repeats={args.repeats} (per query, ms; mAP %)")
    print(table.to_string())
    sg, lv = table.loc["SuperGlobal"], table.loc[f"SIFT + RANSAC, top {args.top_k}"]
    print(f"\nSuperGlobal rerank vs SIFT + RANSAC on the same top-{args.top_k}: {lv['rerank ms'] / sg['rerank ms']:.0f}x "
          f"faster per query ({sg['rerank ms']:.2f} vs {lv['rerank ms']:.1f} ms), whole query "
          f"{lv['total ms'] / sg['total ms']:.1f}x, {lv['bytes/image'] / sg['bytes/image']:.1f}x fewer bytes per image")
    if args.lightglue_pairs:
        from sglib.evaluate.retrieval import rank_database
        lg = costs.lightglue_costs(dataset, rank_database(q, x), args.lightglue_pairs)
        per_query = lg["match ms"] * args.top_k
        print(f"ALIKED + LightGlue ({args.lightglue_pairs} pairs measured): {lg['features ms']:.0f} ms per image, "
              f"{lg['match ms']:.0f} ms per pair, so about {per_query / 1000:.0f} s per query for a top-{args.top_k} "
              f"(projected: {per_query / sg['rerank ms']:.0f}x SuperGlobal's rerank); inliers {lg['inliers']}")


if __name__ == "__main__":
    main()
