"""Per-query latency of every reranker on the bundled benchmark, and SuperGlobal's speed-up over SIFT + RANSAC.

Real descriptors: the ``+ Scale-GeM`` row of ``synthetic_views`` (EfficientNet-Lite0, cached by ``make data`` /
``make demo``). All methods are timed side by side in one run, interleaved, median of ``--repeats``
(:func:`sglib.experiments.costs.cost_table`); SIFT + RANSAC verifies the same queries' global top-k with the
database's SIFT features read from the feature cache (extracted on the first run, offline work).

usage: python benchmarks/rerankers.py [--data-root data] [--repeats 5] [--threads 2] [--top-k 100] [--M 400]
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


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data-root", default="data")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top-k", type=int, default=100, help="global top-k verified by SIFT + RANSAC")
    ap.add_argument("--M", type=int, default=400)
    ap.add_argument("--lightglue-pairs", type=int, default=0,
                    help="also time ALIKED + LightGlue on this many (query, top-1) pairs (slow on CPU; 0: off)")
    args = ap.parse_args()
    threads = configure_threads(args.threads)
    dataset, features = reranking.benchmark_descriptors(args.data_root, "synthetic_views")
    q, x = features[reranking.DESCRIPTOR_ROW]
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
