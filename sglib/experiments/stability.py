"""Do the bundled benchmark's conclusions hold? Rebuild it with several seeds on two disjoint photo pools.

One *build* is a ``synthetic_views`` benchmark rendered from one photo pool (``'a'`` or ``'b'``, see
:func:`sglib.bundled.synthetic_views.split_pools`: no scene is in both) with one seed, and its own training
split. On each build, :func:`run_stability` measures

* the paper's module rows (:data:`~sglib.experiments.tables.MODULE_SETTINGS`, one change per row, + rerank; the
  whitening is fitted on that build's training split), so each module's *effect* (row minus the row before) can be compared across builds
  (:func:`module_effects`, :func:`effect_summary`);
* reranking's gain on several base rankings (whitened Scale-GeM, whitened and raw single-scale GeM, for each
  backbone of the plan, at several K), with each base ranking's precision (mP@10, Hard mAP), for the
  "when does reranking help" plot (:func:`sglib.experiments.plots.plot_rerank_gain`).

Example::

    result = run_stability("data", CI_PLAN, progress=False)
    effect_summary(module_effects(result.maps))      # mean / std / min / max per module and protocol
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd

from ..evaluate.protocol import PROTOCOLS
from ..evaluate.retrieval import RerankSettings, evaluate_retrieval
from .ablations import grid_features
from .tables import BASE_ROW, MODULE_SETTINGS, RERANK_ROW
from ..bundled.whitening import WHITENING_SETTINGS, fit_training_whitening

BASE_GEM = BASE_ROW


@dataclasses.dataclass(frozen=True)
class StabilityPlan:
    """What :func:`run_stability` rebuilds and measures.

    Attributes:
        name: names the builds' folders (:func:`build_name`), so plans of other sizes do not overwrite each other.
        seeds, pools: every (pool, seed) pair is one build.
        build: keyword arguments of :func:`sglib.bundled.synthetic_views.build_synthetic_views` (sizes), as
            ``(key, value)`` pairs (a dict is converted).
        backbones: ImageNet backbones of the rerank study; the module rows use the first.
        rerank: the reranking of the module table.
        rerank_ks: K values of the rerank study (M and beta from ``rerank``).
    """

    name: str = "custom"
    seeds: tuple = (0, 1, 2)
    pools: tuple = ("a", "b")
    build: tuple = ()
    backbones: tuple = ("efficientnet_lite0",)
    rerank: RerankSettings = RerankSettings()
    rerank_ks: tuple = (3, 9)

    def __post_init__(self):
        import inspect
        from ..bundled.synthetic_views import build_synthetic_views
        from ..models.imagenet import BACKBONES
        if isinstance(self.build, dict):
            object.__setattr__(self, "build", tuple(sorted(self.build.items())))
        if not isinstance(self.name, str) or not re.fullmatch(r"[a-z0-9_]+", self.name):
            raise ValueError(f"StabilityPlan.name: expected lower-case letters, digits or _, got {self.name!r}")
        seeds_ok = all(isinstance(s, (int, np.integer)) and not isinstance(s, bool) and s >= 0 for s in self.seeds)
        if not self.seeds or not seeds_ok or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"StabilityPlan.seeds: expected distinct integers >= 0, got {self.seeds!r}")
        if (isinstance(self.pools, str) or not self.pools or set(self.pools) - {"a", "b"}
                or len(set(self.pools)) != len(self.pools)):
            raise ValueError(f"StabilityPlan.pools: expected distinct pools from ('a', 'b'), got {self.pools!r}")
        if not self.backbones or set(self.backbones) - set(BACKBONES):
            raise ValueError(f"StabilityPlan.backbones: expected names from {sorted(BACKBONES)}, got {self.backbones!r}")
        if not self.rerank_ks or len(set(self.rerank_ks)) != len(self.rerank_ks):
            raise ValueError(f"StabilityPlan.rerank_ks: expected distinct K values, got {self.rerank_ks!r}")
        for k in self.rerank_ks:
            RerankSettings(M=self.rerank.M, K=k, beta=self.rerank.beta)  # validates K
        allowed = set(inspect.signature(build_synthetic_views).parameters) - {"out_dir", "photos", "seed", "pool",
                                                                               "name", "manifest_sha256", "progress"}
        unknown = sorted({k for k, _ in self.build} - allowed)
        if unknown:
            raise ValueError(f"StabilityPlan.build: unknown argument(s) {unknown}; allowed: {sorted(allowed)}")

    def build_kwargs(self) -> dict:
        return dict(self.build)

    def to_json(self) -> dict:
        return json.loads(json.dumps(dataclasses.asdict(self)))


# The README's table: 3 seeds x 2 pools, each build about half the default size (one pool holds half the scenes).
FULL_PLAN = StabilityPlan(
    name="full",
    build=(("n_landmark_scenes", 20), ("views_per_landmark", 14), ("n_distractor_views", 100),
           ("n_distractor_scenes", 8), ("n_background_scenes", 10), ("n_train_background_scenes", 6)),
    backbones=("efficientnet_lite0", "mobilenet_v2"))
# The notebook's CI run: the same builds, smaller and at a lower resolution (a few minutes on 2 cores).
CI_PLAN = StabilityPlan(
    name="ci",
    build=(("n_landmark_scenes", 8), ("views_per_landmark", 10), ("n_distractor_views", 40),
           ("n_distractor_scenes", 4), ("n_background_scenes", 6), ("n_train_background_scenes", 3),
           ("train_views_per_class", 4),
           ("n_train_scenes", 14), ("max_side", 256)))


@dataclasses.dataclass
class StabilityResult:
    """``maps``: one row per (pool, seed, row) with Easy/Medium/Hard mAP (%); ``rerank``: one row per (pool,
    seed, backbone, base ranking, whitened, K) with the base ranking's mP@10 (Medium) and Hard mAP and the
    reranking gain (mAP points) per protocol; ``plan``: the plan's JSON."""

    maps: pd.DataFrame
    rerank: pd.DataFrame
    plan: dict

    def save(self, path) -> None:
        path = Path(path)
        path.write_text(json.dumps({"plan": self.plan, "maps": self.maps.to_dict(orient="records"),
                                    "rerank": self.rerank.to_dict(orient="records")}, indent=1))

    @classmethod
    def load(cls, path) -> "StabilityResult":
        try:
            record = json.loads(Path(path).read_text())
            return cls(pd.DataFrame(record["maps"]), pd.DataFrame(record["rerank"]), record["plan"])
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise ValueError(f"{path}: not a stability result written by StabilityResult.save ({exc!r})") from exc


def build_name(plan: StabilityPlan, pool: str, seed: int) -> str:
    """Folder name of one build under ``DATA_ROOT/datasets``."""
    return f"stability_{plan.name}_{pool}_s{seed}"


def _rerank_rows(q, x, gnd, plan: StabilityPlan, tag: dict) -> list[dict]:
    base = evaluate_retrieval(q, x, gnd)
    before = base.summary()
    rows = []
    for k in plan.rerank_ks:
        after = evaluate_retrieval(q, x, gnd, RerankSettings(M=plan.rerank.M, K=k, beta=plan.rerank.beta)).summary()
        rows.append({**tag, "K": k, "base_mP@10": round(100 * float(base["medium"]["mp"][-1]), 2),
                     "base_hard": before["hard"], "base_medium": before["medium"],
                     **{f"gain_{p}": round(after[p] - before[p], 2) for p in PROTOCOLS}})
    return rows


def measure_build(data_root, dataset, train_split: str, plan: StabilityPlan, progress: bool = True):
    """The module rows (first backbone) and the rerank study (every backbone) of one built dataset.

    Returns:
        ``(maps, rerank_rows)``: ``{row: {"easy", "medium", "hard"}}`` and a list of dicts (see
        :class:`StabilityResult`).
    """
    from ..models import load_backbone
    cache = Path(data_root) / "cache"
    maps, rerank_rows = {}, []
    for b, backbone in enumerate(plan.backbones):
        model = load_backbone(backbone)
        raw = model.with_head(None)
        model.head = fit_training_whitening(model, data_root, cache, progress, split=train_split)
        rows = dict(MODULE_SETTINGS) if b == 0 else {BASE_GEM: MODULE_SETTINGS[BASE_GEM]}
        feats = grid_features(model, dataset, cache, {n: ({}, s) for n, s in rows.items()}, progress=progress)
        raw_q, raw_x = grid_features(raw, dataset, cache, {BASE_GEM: ({}, WHITENING_SETTINGS)},
                                     progress=progress)[BASE_GEM]
        if b == 0:
            maps = {name: evaluate_retrieval(*feats[name], dataset.gnd).summary() for name in rows}
            last = list(rows)[-1]
            maps[RERANK_ROW] = evaluate_retrieval(*feats[last], dataset.gnd, plan.rerank).summary()
            rerank_rows += _rerank_rows(*feats[last], dataset.gnd, plan,
                                        {"backbone": backbone, "base": "Scale-GeM", "whitened": True})
        rerank_rows += _rerank_rows(*feats[BASE_GEM], dataset.gnd, plan,
                                    {"backbone": backbone, "base": BASE_GEM, "whitened": True})
        rerank_rows += _rerank_rows(raw_q, raw_x, dataset.gnd, plan,
                                    {"backbone": backbone, "base": BASE_GEM, "whitened": False})
    return maps, rerank_rows


def run_stability(data_root, plan: StabilityPlan = FULL_PLAN, photos=None, progress: bool = True) -> StabilityResult:
    """Build every (pool, seed) of ``plan`` under ``data_root/datasets`` and measure it (features cached).

    Args:
        data_root: data root; photos are fetched into ``data_root/photo_cache`` when ``photos`` is None.
        photos: the :class:`sglib.bundled.photos.Photo` list (default: the committed manifest's).
    """
    from ..data.revisitop import load_revisitop
    from ..bundled.photos import fetch_all, manifest_digest
    from ..bundled.synthetic_views import build_synthetic_views
    data_root = Path(data_root)
    photos = fetch_all(data_root / "photo_cache") if photos is None else photos
    map_rows, rerank_rows = [], []
    for pool in plan.pools:
        for seed in plan.seeds:
            name = build_name(plan, pool, seed)
            build_synthetic_views(data_root / "datasets", photos, seed=seed, pool=pool, name=name,
                                  manifest_sha256=manifest_digest(), progress=progress, **plan.build_kwargs())
            dataset = load_revisitop(data_root, name, require_images=True)
            maps, rr = measure_build(data_root, dataset, f"{name}_train", plan, progress)
            tag = {"pool": pool, "seed": seed, "queries": dataset.n_queries, "database": dataset.n_db}
            map_rows += [{**tag, "row": row, **m} for row, m in maps.items()]
            rerank_rows += [{**tag, **r} for r in rr]
            if progress:
                print(f"[stability] {name}: {dataset.n_queries} queries, {dataset.n_db} images; "
                      f"GeM M/H {maps[BASE_GEM]['medium']:.1f}/{maps[BASE_GEM]['hard']:.1f}", flush=True)
    return StabilityResult(pd.DataFrame(map_rows), pd.DataFrame(rerank_rows), plan.to_json())


def module_effects(maps: pd.DataFrame) -> pd.DataFrame:
    """Each module's effect per build: its row's mAP minus the previous row's (the paper's ablation order).

    Args:
        maps: :attr:`StabilityResult.maps`.

    Returns:
        one row per (pool, seed, module), columns easy / medium / hard (mAP points); the first row (plain
        GeM) is the baseline, so it has no effect row.
    """
    out = []
    if maps.empty:
        raise ValueError("module_effects: no measured rows (run_stability measured no build)")
    for (pool, seed), build in maps.groupby(["pool", "seed"], sort=True):
        build = build.set_index("row")
        ladder = list(MODULE_SETTINGS) + [RERANK_ROW]
        order = [r for r in ladder if r in build.index]
        if order != ladder[:len(order)] or len(order) != len(build.index):
            # a row's effect is only its own change when the row before it in the ladder was measured too
            raise ValueError(f"module_effects: build ({pool}, {seed}) has rows {list(build.index)}, not a start of the "
                             f"ladder {ladder}: measured with another ladder? run `python -m sglib stability` again")
        for prev, row in zip(order, order[1:]):
            out.append({"pool": pool, "seed": seed, "module": row,
                        **{p: round(build.loc[row, p] - build.loc[prev, p], 2) for p in PROTOCOLS}})
    return pd.DataFrame(out)


def effect_summary(effects: pd.DataFrame) -> pd.DataFrame:
    """Mean, std, min and max of each module's effect over builds, and whether its sign holds in all.

    Returns:
        index = module (ablation order), columns ``(protocol, statistic)`` with statistics mean, std, min,
        max (mAP points) and ``sign holds`` (True when every build's effect has the sign of the mean and
        none is zero or missing).
    """
    if effects.empty:
        raise ValueError("effect_summary: no effects (each build needs at least two module rows)")
    order = list(dict.fromkeys(effects["module"]))
    frames = {}
    for p in PROTOCOLS:
        g = effects.groupby("module", sort=False)[p]
        stats = pd.DataFrame({"mean": g.mean(), "std": g.std(ddof=0), "min": g.min(), "max": g.max()}).round(2)
        stats["sign holds"] = ((stats["min"] > 0) | (stats["max"] < 0)) & (g.count() == g.size())
        frames[p.capitalize()] = stats.loc[order]
    return pd.concat(frames, axis=1)


def build_maps_table(maps: pd.DataFrame) -> pd.DataFrame:
    """Medium/Hard mAP of every row in every build: index (pool, seed), columns (row, protocol)."""
    wide = maps.pivot_table(index=["pool", "seed"], columns="row", values=list(PROTOCOLS))
    order = [r for r in list(MODULE_SETTINGS) + [RERANK_ROW] if r in set(maps["row"])]
    wide = wide.swaplevel(0, 1, axis=1)
    return wide.reindex(columns=pd.MultiIndex.from_product([order, list(PROTOCOLS)])).round(1)


def rerank_gain_correlation(rerank: pd.DataFrame, x: str = "base_mP@10", y: str = "gain_medium") -> float:
    """Spearman rank correlation between a base ranking's precision and reranking's gain (NaN if constant)."""
    a, b = rerank[x].rank().to_numpy(), rerank[y].rank().to_numpy()
    if a.std() == 0 or b.std() == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def markdown_effects(summary: pd.DataFrame) -> str:
    """The effect summary as a Markdown table: 'mean ± std [min, max]' per protocol, sign flips in bold."""
    lines = ["| module | Easy | Medium | Hard |", "|---|---|---|---|"]
    for module, row in summary.iterrows():
        cells = []
        for p in ("Easy", "Medium", "Hard"):
            text = f"{row[(p, 'mean')]:+.1f} ± {row[(p, 'std')]:.1f} [{row[(p, 'min')]:+.1f}, {row[(p, 'max')]:+.1f}]"
            cells.append(text if row[(p, "sign holds")] else f"**{text} (sign flips)**")
        lines.append(f"| {module} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


__all__ = ["StabilityPlan", "StabilityResult", "FULL_PLAN", "CI_PLAN", "BASE_GEM", "build_name", "measure_build",
           "run_stability", "module_effects", "effect_summary", "build_maps_table", "rerank_gain_correlation",
           "markdown_effects"]
