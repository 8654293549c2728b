"""The paper's first observation, measured on the bundled benchmark: what GeM's p becomes when it is learned
with a margin loss, against the p that is best at test time, and what fine-tuning does to every module.

A study trains one network per loss (:mod:`sglib.training`) on the bundled training split, with the
same configuration otherwise, then evaluates on ``synthetic_views`` (never seen in training):

* each network before (``start.pt``: the off-the-shelf backbone with the projection initialised as the
  training split's whitening) and after training, with the trained p, single scale, no Regional-GeM;
* the off-the-shelf backbone with the demo's head (the whitening fitted on the whole training split at
  full resolution), the baseline that fine-tuning must beat;
* the module table (:data:`~sglib.experiments.tables.MODULE_SETTINGS`, one change per row, + rerank) of each
  trained network;
* a sweep of the test-time p (single scale, no Regional-GeM) of each trained network.

Results go to ``results/training_<plan>.json`` (:class:`StudyResult`); each run's folder keeps its
``log.csv`` (loss, p, learning rate, validation mAP per step).
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from ..evaluate.retrieval import RerankSettings, evaluate_retrieval
from ..method.descriptors import DescriptorSettings
from ..bundled.synthetic_views import FORMAT_VERSION
from ..training.data import bundled_training_set
from ..training.loop import TrainConfig, read_log, train
from .ablations import GEM_PS, grid_features, pooling_grid
from .tables import BASE_ROW, MODULE_SETTINGS, RERANK_ROW, with_rows
from ..bundled.whitening import fit_training_whitening

TRAINED_P_ROW = "GeM (trained p)"
TRAINED_P = DescriptorSettings(scales=(1.0,), gem_p=None, regional=False)
BASELINE = "off-the-shelf + Lw"
BENCHMARK = "synthetic_views"


@dataclass(frozen=True)
class StudyPlan:
    """Which losses to train, with which configuration, and how the networks are evaluated.

    name: labels the run folders (``<runs_root>/<name>_<loss>``) and the results file.
    max_side: long side of the test images at extraction (None: as stored).
    """

    name: str
    losses: tuple = ("arcface", "curricularface", "softmax")
    config: TrainConfig = TrainConfig()
    val_classes: int = 8
    max_side: int | None = None
    gem_ps: tuple = GEM_PS

    def __post_init__(self):
        if not self.losses or len(set(self.losses)) != len(self.losses):
            raise ValueError(f"losses: expected distinct loss names, got {self.losses!r}")
        for loss in self.losses:
            dataclasses.replace(self.config, loss=loss)      # validates the name

    def config_for(self, loss: str) -> TrainConfig:
        return dataclasses.replace(self.config, loss=loss)


# p learns at 100x the base rate (cirtorch: 10x) so that in a few hundred steps it can travel to where the loss
# wants it (Adam moves a parameter by about its learning rate per step): with 10x it moved 0.04 in 80 steps.
FULL_STUDY = StudyPlan("full", config=TrainConfig(dim=1280, steps=300, warmup_steps=15, batch_size=32,
                                                  image_size=256, p_lr_mult=100.0, val_every=25,
                                                  checkpoint_every=50))
CI_STUDY = StudyPlan("ci", losses=("arcface",),
                     config=TrainConfig(dim=1280, steps=60, warmup_steps=5, batch_size=16, image_size=160,
                                        p_lr_mult=100.0, val_every=20, checkpoint_every=20))


def run_dir(runs_root, plan: StudyPlan, loss: str) -> Path:
    return Path(runs_root) / f"{plan.name}_{loss}"


@dataclass
class StudyResult:
    """``maps``: one row per (network, setting) with easy/medium/hard mAP (%); ``learned_p``: {loss: p};
    ``plan``: the plan as a dict."""

    maps: pd.DataFrame
    learned_p: dict
    plan: dict = field(default_factory=dict)

    def save(self, path) -> None:
        Path(path).write_text(json.dumps({"plan": self.plan, "learned_p": self.learned_p,
                                          "maps": self.maps.reset_index().to_dict(orient="records")}, indent=1))

    @classmethod
    def load(cls, path) -> "StudyResult":
        try:
            blob = json.loads(Path(path).read_text())
            maps = pd.DataFrame(blob["maps"]).set_index(["network", "setting"])
            return cls(maps, blob["learned_p"], blob["plan"])
        except FileNotFoundError:
            raise ValueError(f"no training study at {path}: run `python -m sglib train-study` first") from None
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"{path} is not a training-study result ({type(exc).__name__}: {exc})") from None


def train_study_runs(data_root, plan: StudyPlan, runs_root, progress: bool = True) -> dict:
    """Train (or resume, or find finished) one network per loss; ``{loss: run folder}``."""
    data, val = bundled_training_set(data_root).split_classes(plan.val_classes, seed=plan.config.seed)
    out = {}
    for loss in plan.losses:
        out[loss] = run_dir(runs_root, plan, loss)
        train(data, plan.config_for(loss), out[loss], val, progress=progress)
    return out


def _rows(results: dict, network: str) -> list[dict]:
    return [{"network": network, "setting": row, **res.summary()} for row, res in results.items()]


def evaluate_study(data_root, plan: StudyPlan, runs_root, cache_root, rerank: RerankSettings = RerankSettings(),
                   progress: bool = True) -> StudyResult:
    """Evaluate the study's networks (see the module docstring) on ``synthetic_views``."""
    from ..data.revisitop import load_revisitop
    from ..models import load_backbone, load_trained
    dataset = load_revisitop(data_root, BENCHMARK, require_images=True)
    gem_grid = {k: v for k, v in pooling_grid(gem_ps=plan.gem_ps).items() if v[0]["family"] == "gem"}
    rows, learned = [], {}

    def table(model, settings: dict, grid: dict, network: str, with_rerank: bool):
        feats = grid_features(model, dataset, cache_root, with_rows(grid, settings), max_side=plan.max_side,
                              progress=progress)
        keep = [*settings, *(k for k in grid if k in gem_grid)]
        results = {name: evaluate_retrieval(*feats[name], dataset.gnd) for name in keep}
        if with_rerank:
            results[RERANK_ROW] = evaluate_retrieval(*feats[list(settings)[-1]], dataset.gnd, rerank)
        rows.extend(_rows(results, network))

    base = load_backbone(plan.config.backbone, plan.config.weights)
    base.head = fit_training_whitening(base, data_root, cache_root, progress)
    # the demo's and notebook 00's extraction (the whole ablation grid, p sweep included): read from their cache
    table(base, MODULE_SETTINGS, pooling_grid(), BASELINE, True)
    for loss in plan.losses:
        folder = run_dir(runs_root, plan, loss)
        before = load_trained(folder / "start.pt")
        table(before, {TRAINED_P_ROW: TRAINED_P}, {}, f"{loss}: before training", False)
        after = load_trained(folder / "model.pt")
        learned[loss] = float(after.learned_p)
        table(after, {TRAINED_P_ROW: TRAINED_P, **MODULE_SETTINGS}, gem_grid, f"{loss}: fine-tuned", True)
    maps = pd.DataFrame(rows).set_index(["network", "setting"])
    return StudyResult(maps, learned, {"name": plan.name, "losses": list(plan.losses),
                                       "config": plan.config.as_dict(), "val_classes": plan.val_classes,
                                       "benchmark_format": FORMAT_VERSION,
                                       "max_side": plan.max_side, "gem_ps": list(plan.gem_ps)})


def before_after(result: StudyResult) -> pd.DataFrame:
    """Medium / Hard mAP with the same pooling (trained p, single scale): the baseline, then each loss before and after."""
    m = result.maps
    rows = {BASELINE + " (GeM p=3)": m.loc[(BASELINE, BASE_ROW)]}
    for loss in result.learned_p:
        rows[f"{loss}: before"] = m.loc[(f"{loss}: before training", TRAINED_P_ROW)]
        rows[f"{loss}: after"] = m.loc[(f"{loss}: fine-tuned", TRAINED_P_ROW)]
    return pd.DataFrame(rows).T[["easy", "medium", "hard"]]


def module_rows(result: StudyResult) -> pd.DataFrame:
    """The module table (E/M/H) of the baseline and of each fine-tuned network side by side."""
    order = [*MODULE_SETTINGS, RERANK_ROW]
    nets = [BASELINE, *(f"{loss}: fine-tuned" for loss in result.learned_p)]
    return pd.concat({n: result.maps.loc[n].loc[order, ["easy", "medium", "hard"]] for n in nets}, axis=1)


def p_sweep(result: StudyResult, protocol: str = "medium") -> pd.DataFrame:
    """Test-time p (rows) x network (columns): mAP of ``protocol``, single scale, no Regional-GeM."""
    m = result.maps
    nets = [BASELINE, *(f"{loss}: fine-tuned" for loss in result.learned_p)]
    ps = sorted(result.plan["gem_ps"])
    sweep = pd.DataFrame({n: [m.loc[(n, f"gem p={p:g}"), protocol] for p in ps] for n in nets},
                         index=pd.Index(ps, name="test-time p"))
    sweep.attrs["protocol"] = protocol
    return sweep


def p_finding(result: StudyResult) -> pd.DataFrame:
    """Per loss: learned p, best test-time p (Medium) and its mAP, GeM+ (4.6) and trained-p mAP, differences."""
    sweep = p_sweep(result)
    rows = {}
    for loss, p in result.learned_p.items():
        col = sweep[f"{loss}: fine-tuned"]
        best = float(col.idxmax())
        trained = float(result.maps.loc[(f"{loss}: fine-tuned", TRAINED_P_ROW), "medium"])
        plus = float(col.loc[4.6]) if 4.6 in col.index else float("nan")
        rows[loss] = {"learned p": round(p, 3), "best test p": best, "mAP at best p": float(col.max()),
                      "mAP at learned p": trained, "mAP at GeM+ (4.6)": plus,
                      "best p - learned p": round(best - p, 3), "GeM+ - learned p (mAP)": round(plus - trained, 2)}
    return pd.DataFrame(rows).T


def findings(result: StudyResult) -> list[str]:
    """What a study measured, as sentences whose every number is read from ``result`` (signed, so each reads right
    whichever way it went): where p went, the learned p against the best test-time p, GeM+ against the learned p,
    the gain over the off-the-shelf baseline with the same pooling, and each module's effect on each network."""
    from .tables import effect_words, ladder_effects
    finding, ba = p_finding(result), before_after(result)
    base = ba.iloc[0]                              # the off-the-shelf baseline
    p0 = result.plan["config"]["p_init"]
    out = []
    for loss, row in finding.iterrows():
        gain = ba.loc[f"{loss}: after"] - base
        where = "below" if row["learned p"] < row["best test p"] else "at or above"
        out.append(f"{loss}: p went from {p0:g} to {row['learned p']:.2f}, {where} the best test-time p "
                   f"({row['best test p']:g}); GeM+ (4.6) minus the learned p: {row['GeM+ - learned p (mAP)']:+.2f} "
                   f"Medium mAP; fine-tuned minus off the shelf (same pooling): Medium {gain.medium:+.1f}, "
                   f"Hard {gain.hard:+.1f}")
    modules = module_rows(result)
    for net in modules.columns.levels[0]:
        words = effect_words(ladder_effects(modules[net].rename(columns=str.capitalize)))
        out.append(f"{net}, Medium: " + "; ".join(f"{row} {w}" for row, w in words["Medium"].items()))
    return out


def training_logs(plan: StudyPlan, runs_root) -> dict:
    """``{loss: log DataFrame}`` of the plan's runs that exist."""
    return {loss: read_log(run_dir(runs_root, plan, loss)) for loss in plan.losses
            if (run_dir(runs_root, plan, loss) / "log.csv").is_file()}


__all__ = ["StudyPlan", "FULL_STUDY", "CI_STUDY", "StudyResult", "train_study_runs", "evaluate_study", "before_after",
           "module_rows", "p_sweep", "p_finding", "findings", "training_logs", "run_dir", "TRAINED_P_ROW", "BASELINE"]
