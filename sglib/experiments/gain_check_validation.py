"""Does the label-free gain check (:mod:`sglib.rerankers.gain_check`) predict reranking's measured gain?

Each *point* is one base ranking: a stability build (:mod:`sglib.experiments.stability`) x backbone x whitened or
raw single-scale GeM (and whitened Scale-GeM on the first backbone), plus ``multiview_real`` with each backbone
whitened and raw. For each point :func:`collect_points` stores the descriptors, and :func:`validate` computes the
label-free signals and the measured gain (Medium and Hard mAP after SuperGlobal minus before, at the committed
stability settings M = 400 capped at N, K = 9, beta = 0.15), then the Spearman correlation of every signal and of
the check's score with the gain, per kind of descriptor, and the verdict's confusion against the gain's sign,
with the threshold chosen on one half of the points and checked on the other.

Example::

    points = collect_points("data", GAIN_CHECK_PLANS[0], progress=False)    # minutes: extracts and caches features
    record = validate(points)
    Path("results/rerank_gain_check.json").write_text(json.dumps(record, indent=1))
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

from ..bundled.whitening import WHITENING_SETTINGS
from ..evaluate.retrieval import RerankSettings, evaluate_retrieval
from ..rerankers.gain_check import HELP_AT, HURT_BELOW, SCORE_SIGNAL, SIGNALS, rerank_gain_check
from ..evaluate.retrieval import rank_database
from .ablations import grid_features
from .stability import BASE_GEM, CI_PLAN, FULL_PLAN, build_name
from .tables import MODULE_SETTINGS, SCALE_GEM_ROW

# The stability builds are not kept on disk and the full plan takes too long to rebuild here, so: the CI sizes with
# both backbones of the full plan (6 builds x 5 base rankings = 30 points, plus 4 on multiview_real; reranking
# almost always hurts on them) and the full plan's seed 0 in both pools (10 points, where it helps or hurts).
GAIN_CHECK_PLANS = (dataclasses.replace(CI_PLAN, backbones=FULL_PLAN.backbones), dataclasses.replace(FULL_PLAN, seeds=(0,)))
SETTINGS = RerankSettings(M=400, K=9, beta=0.15)


def _points_of(model, raw, dataset, cache, tag: dict, scale_gem: bool, progress: bool) -> list[dict]:
    """The base rankings of one dataset and backbone: ``[{**tag, "base", "whitened", "q", "x", "gnd"}]``."""
    rows = {BASE_GEM: MODULE_SETTINGS[BASE_GEM]}
    if scale_gem:
        rows[SCALE_GEM_ROW] = MODULE_SETTINGS[SCALE_GEM_ROW]
    feats = grid_features(model, dataset, cache, {n: ({}, s) for n, s in rows.items()}, progress=progress)
    raw_q, raw_x = grid_features(raw, dataset, cache, {BASE_GEM: ({}, WHITENING_SETTINGS)},
                                 progress=progress)[BASE_GEM]
    out = [{**tag, "base": name, "whitened": True, "q": q, "x": x} for name, (q, x) in feats.items()]
    out.append({**tag, "base": BASE_GEM, "whitened": False, "q": raw_q, "x": raw_x})
    return [{**p, "gnd": dataset.gnd} for p in out]


def collect_points(data_root, plan=GAIN_CHECK_PLANS[0], multiview: bool = True, progress: bool = True) -> list[dict]:
    """Build the plan's stability builds (as :func:`sglib.experiments.stability.run_stability`) and return every
    point's descriptors: a list of dicts with ``dataset``, ``backbone``, ``base``, ``whitened``, ``q`` (nq, D),
    ``x`` (N, D) and ``gnd``. Features are cached under ``data_root/cache``."""
    from ..bundled.photos import fetch_all, manifest_digest
    from ..bundled.synthetic_views import build_synthetic_views
    from ..bundled.whitening import fit_training_whitening
    from ..data.revisitop import load_revisitop
    from ..models import load_backbone
    data_root = Path(data_root)
    cache = data_root / "cache"
    photos = fetch_all(data_root / "photo_cache")
    datasets = []
    for pool in plan.pools:
        for seed in plan.seeds:
            name = build_name(plan, pool, seed)
            build_synthetic_views(data_root / "datasets", photos, seed=seed, pool=pool, name=name,
                                  manifest_sha256=manifest_digest(), progress=progress, **plan.build_kwargs())
            datasets.append((name, f"{name}_train"))
    if multiview:
        datasets.append(("multiview_real", None))
    points = []
    for b, backbone in enumerate(plan.backbones):
        model = load_backbone(backbone)
        raw = model.with_head(None)
        for name, train in datasets:
            dataset = load_revisitop(data_root, name, require_images=True)
            split = {} if train is None else {"split": train}
            model.head = fit_training_whitening(model, data_root, cache, progress, **split)
            points += _points_of(model, raw, dataset, cache, {"dataset": name, "backbone": backbone},
                                 scale_gem=b == 0 and train is not None, progress=progress)
            if progress:
                print(f"[gain check] {name} {backbone}: {len(points)} points", flush=True)
    return points


def kind_of(point: dict) -> str:
    """The point's kind: ``multiview_real``, ``raw`` or ``whitened`` (a stability build's raw or whitened ranking)."""
    if point["dataset"] == "multiview_real":
        return "multiview_real"
    return "whitened" if point["whitened"] else "raw"


def measure_point(point: dict, settings: RerankSettings = SETTINGS) -> dict:
    """One point's record: its tags, the mean of each label-free signal over its queries, the check's verdict and
    the measured gain (``gain_medium``, ``gain_hard``, mAP points) and base mP@10 (Medium, %)."""
    q, x, gnd = point["q"], point["x"], point["gnd"]
    m = min(settings.M, x.shape[0])
    base = evaluate_retrieval(q, x, gnd)
    after = evaluate_retrieval(q, x, gnd, dataclasses.replace(settings, M=m)).summary()
    check = rerank_gain_check(q, x, rank_database(q, x), M=m, K=settings.K)
    before = base.summary()
    return {**{k: point[k] for k in ("dataset", "backbone", "base", "whitened")}, "kind": kind_of(point),
            "queries": int(q.shape[0]), "database": int(x.shape[0]),
            "base_mP@10": round(100 * float(base["medium"]["mp"][-1]), 2),
            "gain_medium": round(after["medium"] - before["medium"], 2),
            "gain_hard": round(after["hard"] - before["hard"], 2),
            "verdict": check.verdict, **{k: round(check.signals[k], 4) for k in SIGNALS}}


def _rho(a, b) -> float | None:
    """Spearman rho of two sequences, None when either is constant or shorter than 3."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    return round(float(spearmanr(a, b).statistic), 3)


def _accuracy(rows: list[dict], signal: str, threshold: float, gain: str = "gain_medium") -> dict:
    """Confusion of "help" (``signal >= threshold``) / "hurt" against the sign of ``gain`` (a gain of 0 counts as a
    loss), and the accuracy."""
    conf = {"help_gain": 0, "help_loss": 0, "hurt_gain": 0, "hurt_loss": 0}
    for r in rows:
        said = "help" if r[signal] >= threshold else "hurt"
        conf[f"{said}_{'gain' if r[gain] > 0 else 'loss'}"] += 1
    n = len(rows)
    return {**conf, "n": n, "accuracy": round((conf["help_gain"] + conf["hurt_loss"]) / n, 3) if n else None}


def choose_threshold(rows: list[dict], signal: str, gain: str = "gain_medium") -> float:
    """The threshold on ``signal`` (a midpoint between consecutive values in ``rows``) that best separates positive
    from non-positive ``gain``; ties: the one nearest the median value."""
    s = np.sort(np.array([r[signal] for r in rows], float))
    cands = np.concatenate([[s[0] - 1e-6], (s[1:] + s[:-1]) / 2, [s[-1] + 1e-6]])
    acc = np.array([_accuracy(rows, signal, t, gain)["accuracy"] for t in cands])
    best = cands[acc == acc.max()]
    return float(best[np.argmin(np.abs(best - np.median(s)))])


def _verdicts(rows: list[dict]) -> dict:
    """Counts of the shipped verdict (``verdict`` of each row) against the sign of the Medium gain."""
    out = {}
    for r in rows:
        key = f"{r['verdict']}_{'gain' if r['gain_medium'] > 0 else 'loss'}"
        out[key] = out.get(key, 0) + 1
    return out


def validate(points: list[dict], seed: int = 0) -> dict:
    """The validation record written to ``results/rerank_gain_check.json``.

    Returns:
        ``{"settings", "shipped" (score signal and thresholds of :mod:`sglib.rerankers.gain_check`), "points" (one
        :func:`measure_point` record each), "spearman" ({group: {signal: {"n", "gain_medium", "gain_hard"}}}, groups:
        each kind, each plan's builds (``"stability_ci"`` ...) and ``"all"``), "split" (on a random half of the points, stratified by kind, seed ``seed``: each
        signal's Spearman rho, the best signal and its threshold; their confusion on the other half, overall and per
        kind), "verdicts" (the shipped verdict against the gain's sign: all points and the held-out half)}``.
    """
    rows = [measure_point(p) for p in points]
    signals = list(SIGNALS) + ["base_mP@10"]
    kinds = sorted({r["kind"] for r in rows})
    # the kinds, the builds of each plan size (e.g. "stability_ci") whatever the descriptor, and all points
    groups = {k: [r for r in rows if r["kind"] == k] for k in kinds}
    for plan in sorted({r["dataset"].rsplit("_", 2)[0] for r in rows if r["kind"] != "multiview_real"}):
        groups[plan] = [r for r in rows if r["dataset"].startswith(plan + "_")]
    groups["all"] = rows
    spearman = {}
    for kind, sub in groups.items():
        spearman[kind] = {s: {"n": len(sub), **{g: _rho([r[s] for r in sub], [r[g] for r in sub])
                                                for g in ("gain_medium", "gain_hard")}} for s in signals}
    rng = np.random.default_rng(seed)
    fit = set()
    for kind in kinds:
        idx = [i for i, r in enumerate(rows) if r["kind"] == kind]
        fit |= {int(i) for i in rng.permutation(idx)[: (len(idx) + 1) // 2]}
    fit_rows = [r for i, r in enumerate(rows) if i in fit]
    test_rows = [r for i, r in enumerate(rows) if i not in fit]
    fit_rho = {s: _rho([r[s] for r in fit_rows], [r["gain_medium"] for r in fit_rows]) for s in SIGNALS}
    best = max(SIGNALS, key=lambda s: -2 if fit_rho[s] is None else fit_rho[s])
    threshold = choose_threshold(fit_rows, best)
    split = {"fit_points": sorted(fit), "fit_spearman_medium": fit_rho, "signal": best,
             "threshold": round(threshold, 4), "fit": _accuracy(fit_rows, best, threshold),
             "test": _accuracy(test_rows, best, threshold),
             "test_spearman_medium": _rho([r[best] for r in test_rows], [r["gain_medium"] for r in test_rows]),
             "test_per_kind": {k: _accuracy([r for r in test_rows if r["kind"] == k], best, threshold) for k in kinds}}
    return {"settings": dataclasses.asdict(SETTINGS),
            "shipped": {"signal": SCORE_SIGNAL, "help_at": HELP_AT, "hurt_below": HURT_BELOW},
            "points": rows, "spearman": spearman, "split": split,
            "verdicts": {"all": _verdicts(rows), "test": _verdicts(test_rows)}}


def markdown_table(record: dict) -> str:
    """The validation table (one row per group of :func:`validate`'s ``spearman``: points, Spearman rho of each signal and of base mP@10 with
    the Medium gain, and the held-out accuracy of the threshold chosen on the other half) as markdown."""
    split = record["split"]
    cols = list(SIGNALS) + ["base_mP@10"]
    lines = ["| kind | n | " + " | ".join(f"rho {c}" for c in cols) + f" | held-out accuracy ({split['signal']}) |",
             "|---" * (len(cols) + 3) + "|"]
    for kind, table in record["spearman"].items():
        acc = split["test"] if kind == "all" else split["test_per_kind"].get(kind, {"accuracy": "-", "n": "-"})
        rhos = " | ".join("n/a" if table[c]["gain_medium"] is None else f"{table[c]['gain_medium']:+.2f}" for c in cols)
        lines.append(f"| {kind} | {table[cols[0]]['n']} | {rhos} | {acc['accuracy']} ({acc['n']} points) |")
    return "\n".join(lines)


def run_validation(data_root="data", out="results/rerank_gain_check.json", seed: int = 0, progress: bool = True) -> dict:
    """Collect the points of :data:`GAIN_CHECK_PLANS` (:func:`collect_points`; multiview_real once), validate them
    and write the record to ``out`` (about 22 minutes on 2 shared cores with cold feature caches: 10 for the CI
    builds, 11 for the two full builds, under 1 to validate); returns the record
    (see :func:`validate`)."""
    import json
    points = []
    for i, plan in enumerate(GAIN_CHECK_PLANS):
        points += collect_points(data_root, plan, multiview=i == 0, progress=progress)
    record = validate(points, seed=seed)
    Path(out).write_text(json.dumps(record, indent=1))
    return record


if __name__ == "__main__":
    print(markdown_table(run_validation()))
