"""Which of the paper's claims the committed results reproduce: a registry of claims, each measured in a results file.

A :class:`Claim` names the paper's claim, the results file its evidence is read from (written by the command in
:data:`SOURCE_COMMANDS`), a reader that measures it there, and the evidence sentence those measurements fill in;
:func:`assess` turns it into an :class:`Assessment` with a verdict (:func:`verdict_of`). The README's claims table
is :func:`assess_all`'s output (``python -m sglib report``, :mod:`sglib.experiments.report`), so a number in it
changes only when the command that writes its file runs again.

An effect is a ladder row minus the row before it (:func:`sglib.experiments.stability.module_effects`), in the order
of :data:`~sglib.experiments.tables.MODULE_SETTINGS` then :data:`~sglib.experiments.tables.RERANK_ROW` as they are
when the report runs. Each row adds one change to the row before it, so a row of a results file means what the
ladder says only when the file holds every ladder row before it too; otherwise the claim's verdict is
"not measured (row X absent from FILE)", never a number computed from another ladder.

Adding a claim: write a reader (results file path -> ``{placeholder: Spread or text}``, raising :class:`Absent` for
what the file lacks) and append a :class:`Claim` to :data:`CLAIMS`.

Example::

    for a in assess_all("results"):
        print(a.claim.id, a.verdict, a.evidence)
"""
from __future__ import annotations

import dataclasses
from functools import partial
from pathlib import Path
from typing import Callable

import pandas as pd

from ..evaluate.protocol import PROTOCOLS
from ..method.descriptors import GEM_PLUS_P
from ..method.losses import LOSSES
from . import tables
from .stability import StabilityResult, effect_summary, module_effects
from .tables import GEM_PLUS_ROW, PAPER_R101_RERANK_HARD, REGIONAL_ROW, RERANK_ROW, SCALE_GEM_ROW
from .training_study import StudyResult, before_after, p_sweep

REPRODUCED, NOT_REPRODUCED, REVERSED, NOT_MEASURABLE = "reproduced", "not reproduced", "reversed", "not measurable here"
# The paper's module gains are a point of mAP or more; a mean below half a point is no reproduction of them even
# when its sign holds in every build.
MIN_EFFECT = 0.5
VERDICT_RULE = (f"Verdicts: *{REPRODUCED}* when, in Medium and in Hard, the effect has the paper's sign in every "
                f"build (or every network) and a mean of at least {MIN_EFFECT} mAP points; *{REVERSED}* when it has "
                f"the opposite sign in the same way; *{NOT_REPRODUCED}* otherwise. Each spread is mean ± std "
                "[min, max] in mAP points over the n builds or networks of its row: ± is the standard deviation "
                "over them.")
# Which command writes each results file: named in every message that asks for a file to be made again.
SOURCE_COMMANDS = {
    "results/demo.json": "make demo",
    "results/stability.json": "python -m sglib stability",
    "results/training_full.json": "python -m sglib train-study",
    "results/benchmark_design.json": "python -m sglib design-check",
    "results/rerankers.json": "python -m sglib rerankers",
    "results/bench.json": "make bench",
    "results/rerank_gain_check.json": "python -m sglib.experiments.gain_check_validation",
}


class Absent(LookupError):
    """What a claim needs is not in its results file; ``str()`` names it (e.g. ``row '+ GeM+'``)."""


@dataclasses.dataclass(frozen=True)
class Spread:
    """One effect over builds (or networks), in mAP points.

    ``std`` is the population standard deviation over the ``n`` values (as
    :func:`~sglib.experiments.stability.effect_summary` computes it); ``sign_holds``: every value has the mean's
    sign and none is zero or missing.
    """

    mean: float
    std: float
    min: float
    max: float
    n: int
    sign_holds: bool

    def __str__(self) -> str:
        return f"{self.mean:+.1f} ± {self.std:.1f} [{self.min:+.1f}, {self.max:+.1f}]"

    @property
    def direction(self) -> int:
        """+1 or -1 when the sign holds in every build and the mean is :data:`MIN_EFFECT` or more from 0, else 0."""
        if not self.sign_holds or abs(self.mean) < MIN_EFFECT:
            return 0
        return 1 if self.mean > 0 else -1


def spreads(effects: pd.DataFrame, module: str) -> dict:
    """``{protocol: Spread}`` of one module's effects (columns module, easy, medium, hard; one row per build)."""
    mine = effects[effects["module"] == module]
    row = effect_summary(mine).loc[module]

    def spread(stats: pd.Series) -> Spread:
        return Spread(float(stats["mean"]), float(stats["std"]), float(stats["min"]), float(stats["max"]), len(mine),
                      bool(stats["sign holds"]))
    return {p: spread(row[p.capitalize()]) for p in PROTOCOLS}


def verdict_of(judged) -> str:
    """:data:`REPRODUCED` when every :class:`Spread` in ``judged`` points up, :data:`REVERSED` when every one points
    down (:attr:`Spread.direction`), :data:`NOT_REPRODUCED` otherwise."""
    directions = {s.direction for s in judged}
    if directions == {1}:
        return REPRODUCED
    if directions == {-1}:
        return REVERSED
    return NOT_REPRODUCED


# ------------------------------------------------------------------------------------- the ladder in a results file

def ladder() -> list:
    """The module rows in ablation order, then the rerank row, as :mod:`~sglib.experiments.tables` defines them now."""
    return [*tables.MODULE_SETTINGS, tables.RERANK_ROW]


def builds(maps: pd.DataFrame) -> int:
    """How many builds (pool, seed) a stability ``maps`` table holds."""
    return len(maps[["pool", "seed"]].drop_duplicates()) if not maps.empty else 0


def measured_prefix(maps: pd.DataFrame) -> list:
    """The longest start of :func:`ladder` whose every row is in every build of ``maps``: the rows whose effects mean
    what the current ladder says."""
    n = builds(maps)
    present = {row for row, g in maps.groupby("row") if len(g[["pool", "seed"]].drop_duplicates()) == n} if n else set()
    prefix = []
    for row in ladder():
        if row not in present:
            break
        prefix.append(row)
    return prefix


def row_effects(maps: pd.DataFrame, row: str) -> tuple:
    """``(the row before row in the ladder, row's effect in each build)`` from a stability ``maps`` table.

    Raises:
        Absent: naming the first ladder row up to ``row`` that some build lacks.
    """
    order = ladder()
    if row not in order:
        raise Absent(f"row {row!r} (not in the current ladder)")
    wanted = order[:order.index(row) + 1]
    if len(wanted) < 2:
        raise ValueError(f"row_effects: {row!r} is the ladder's baseline, it has no effect")
    prefix = measured_prefix(maps)
    if len(prefix) < len(wanted):
        raise Absent(f"row {wanted[len(prefix)]!r}")
    effects = module_effects(maps[maps["row"].isin(wanted)])
    return wanted[-2], effects[effects["module"] == row]


# ------------------------------------------------------------------------------------- readers

def _module_fields(maps: pd.DataFrame, row: str) -> dict:
    prev, effects = row_effects(maps, row)
    return {"row": row, "prev": prev, "n": len(effects), **spreads(effects, row)}


def read_module_effect(path: Path, row: str) -> dict:
    """``row``'s effect over the builds of a stability result: placeholders row, prev, n, easy, medium, hard."""
    return _module_fields(StabilityResult.load(path).maps, row)


def read_rerank(path: Path) -> dict:
    """:func:`read_module_effect` of the rerank row, plus reranking's gain on raw (unwhitened) single-scale GeM at
    the plan's K over builds x backbones: placeholders k, n_raw, raw_medium."""
    result = StabilityResult.load(path)
    fields = _module_fields(result.maps, RERANK_ROW)
    k = result.plan["rerank"]["K"]
    rerank = result.rerank
    if rerank.empty or "whitened" not in rerank:
        raise Absent("the rerank study's rows")
    raw = rerank[~rerank["whitened"].astype(bool) & (rerank["K"] == k)]
    if raw.empty:
        raise Absent(f"rerank rows without whitening at K = {k}")
    gains = pd.DataFrame({"module": "raw", **{p: raw[f"gain_{p}"] for p in PROTOCOLS}})
    return {**fields, "k": k, "n_raw": len(raw), "raw_medium": spreads(gains, "raw")["medium"]}


def _network(loss: str) -> str:
    return f"{loss}: fine-tuned"     # the study's name for a fine-tuned network (sglib.experiments.training_study)


def loss_name(loss: str) -> str:
    """A loss by its class name (arcface -> ArcFace, softmax -> NormSoftmax; an unknown key as it is)."""
    return LOSSES[loss].__name__ if loss in LOSSES else loss


def loss_names(result: StudyResult) -> str:
    """The study's losses by :func:`loss_name`, comma-separated."""
    return ", ".join(loss_name(loss) for loss in result.learned_p)


def _study(path: Path) -> tuple:
    """``(result, before_after(result))`` of a training study, or Absent naming the row it lacks."""
    from ..bundled.synthetic_views import FORMAT_VERSION
    result = StudyResult.load(path)
    if result.plan.get("benchmark_format") != FORMAT_VERSION:
        # a study of an older benchmark format (format 2 trained on the test images' context photos)
        raise Absent(f"a study of benchmark format {FORMAT_VERSION} (the file is of format "
                     f"{result.plan.get('benchmark_format', 2)})")
    try:
        return result, before_after(result)
    except KeyError as exc:
        raise Absent(f"row {exc.args[0]!r}") from None


def read_fine_tuning(path: Path) -> dict:
    """Each fine-tuned network (learned p) minus the off-the-shelf baseline (GeM p = 3), both single scale:
    placeholders losses, n, easy, medium, hard."""
    result, table = _study(path)
    base = table.iloc[0]
    effects = pd.DataFrame([{"module": "fine-tuning", **(table.loc[f"{loss}: after"] - base).round(2)}
                            for loss in result.learned_p])
    return {"losses": loss_names(result), "n": len(effects), **spreads(effects, "fine-tuning")}


def read_gem_plus_fine_tuned(path: Path) -> dict:
    """On each fine-tuned network, single scale: GeM+ minus its learned p (placeholders easy, medium, hard), and
    GeM+ minus p = 3 (vs_p3, Medium); plus losses, n."""
    result, table = _study(path)
    try:
        sweeps = {p: p_sweep(result, p) for p in PROTOCOLS}
        rows = []
        for loss in result.learned_p:
            plus = {p: sweeps[p].loc[GEM_PLUS_P, _network(loss)] for p in PROTOCOLS}
            rows.append({"module": "learned", **{p: round(plus[p] - table.loc[f"{loss}: after", p], 2)
                                                 for p in PROTOCOLS}})
            rows.append({"module": "p3", **{p: round(plus[p] - sweeps[p].loc[3.0, _network(loss)], 2)
                                            for p in PROTOCOLS}})
    except KeyError as exc:
        raise Absent(f"row {exc.args[0]!r}") from None
    effects = pd.DataFrame(rows)
    return {"losses": loss_names(result), "n": len(result.learned_p), **spreads(effects, "learned"),
            "vs_p3": spreads(effects, "p3")["medium"]}


# ------------------------------------------------------------------------------------- the registry

@dataclasses.dataclass(frozen=True)
class Claim:
    """One of the paper's claims and where this project measures it.

    Attributes:
        id: a slug, named in failure messages.
        paper: the paper's claim, as the table states it.
        sentence: the evidence, a template whose ``{placeholders}`` the reader fills.
        source: the results file the reader measures, relative to the repository (a key of
            :data:`SOURCE_COMMANDS`); None for a claim no file here can measure.
        read: results file path -> ``{placeholder: Spread or text}``; raises :class:`Absent` for what it lacks.
        judged: the placeholders (Spreads) the verdict is computed from.
    """

    id: str
    paper: str
    sentence: str
    source: str | None = None
    read: Callable[[Path], dict] | None = None
    judged: tuple = ("medium", "hard")


@dataclasses.dataclass(frozen=True)
class Assessment:
    """A claim's verdict and its evidence sentence with the numbers filled in (or why there are none)."""

    claim: Claim
    verdict: str
    evidence: str


_LADDER_SENTENCE = "`{row}` minus `{prev}`, over n = {n} builds: Medium {medium}, Hard {hard}"

CLAIMS = (
    Claim("scale-gem", "Scale-GeM (max over the scales instead of their mean) improves retrieval",
          _LADDER_SENTENCE, "results/stability.json", partial(read_module_effect, row=SCALE_GEM_ROW)),
    Claim("rerank", "SuperGlobal reranking improves Medium and Hard",
          _LADDER_SENTENCE + ", Easy {easy}; on raw single-scale GeM (no whitening) at K = {k}, over n = {n_raw} "
          "builds x backbones: Medium {raw_medium}", "results/stability.json", read_rerank),
    Claim("gem-plus", f"GeM+ (p = {GEM_PLUS_P:g}) beats the learned p (about 3)",
          _LADDER_SENTENCE + "; this ImageNet backbone learned no p, so p = 3 stands in for it",
          "results/stability.json", partial(read_module_effect, row=GEM_PLUS_ROW)),
    Claim("gem-plus-fine-tuned", f"GeM+ (p = {GEM_PLUS_P:g}) beats the learned p (about 3)",
          "GeM+ minus the learned p on the networks fine-tuned here ({losses}; single scale), over n = {n} "
          "networks: Medium {medium}, Hard {hard}; GeM+ minus p = 3: Medium {vs_p3}",
          "results/training_full.json", read_gem_plus_fine_tuned),
    Claim("regional-gem", "Regional-GeM adds to GeM+", _LADDER_SENTENCE, "results/stability.json",
          partial(read_module_effect, row=REGIONAL_ROW)),
    Claim("fine-tuning", "Fine-tuning with a margin loss improves on the off-the-shelf network",
          "each fine-tuned network ({losses}; learned p) minus the off-the-shelf backbone with the training split's "
          "whitening (GeM p = 3), single scale, over n = {n} networks: Medium {medium}, Hard {hard}",
          "results/training_full.json", read_fine_tuning),
    Claim("relu-plus-and-absolute-numbers",
          f"ReLU+, and the paper's absolute numbers (ROxford Hard {PAPER_R101_RERANK_HARD['roxford5k']} with "
          "ResNet-101 and reranking)",
          "they need CVNet's weights and the ROxford / RParis images, which users bring "
          "(`python -m sglib evaluate --checkpoint`)"),
    Claim("million-distractors", "The gains hold with +1M distractors",
          "measured only in part: real distractor crops, then simulated descriptors (`04_million_distractors.ipynb`)"),
)


def source_path(source: str, results_dir) -> Path:
    """Where ``source`` (``results/NAME``, relative to the repository) is when the results folder is ``results_dir``."""
    return Path(results_dir) / Path(source).relative_to("results")


def assess(claim: Claim, results_dir) -> Assessment:
    """The claim's verdict and evidence, read from its source file under ``results_dir``.

    Returns:
        an :class:`Assessment`: verdict :data:`NOT_MEASURABLE` for a claim without a source; ``"not measured
        (WHAT absent from FILE)"`` when the file, or a row the claim needs, is missing; else :func:`verdict_of`
        the claim's judged spreads.
    """
    if claim.source is None:
        return Assessment(claim, NOT_MEASURABLE, claim.sentence)
    command = SOURCE_COMMANDS.get(claim.source, "the command that writes it")
    path = source_path(claim.source, results_dir)
    if not path.is_file():
        return Assessment(claim, f"not measured ({claim.source} absent)", f"`{command}` writes it")
    try:
        fields = claim.read(path)
    except Absent as exc:
        return Assessment(claim, f"not measured ({exc} absent from {claim.source})",
                          f"`{command}` measures it with the current ladder")
    return Assessment(claim, verdict_of([fields[k] for k in claim.judged]), claim.sentence.format(**fields))


def assess_all(results_dir, claims=CLAIMS) -> list:
    """:func:`assess` of every claim, in registry order."""
    return [assess(c, results_dir) for c in claims]


__all__ = ["Claim", "Assessment", "Spread", "Absent", "CLAIMS", "SOURCE_COMMANDS", "MIN_EFFECT", "VERDICT_RULE",
           "REPRODUCED", "NOT_REPRODUCED", "REVERSED", "NOT_MEASURABLE", "spreads", "verdict_of", "ladder", "builds",
           "measured_prefix", "row_effects", "read_module_effect", "read_rerank", "read_fine_tuning",
           "read_gem_plus_fine_tuned", "loss_name", "loss_names", "source_path", "assess", "assess_all"]
