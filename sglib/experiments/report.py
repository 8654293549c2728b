"""The README's generated sections: every number in them is written by ``python -m sglib report`` from results files.

A generated block is delimited by ``<!-- generated: NAME (python -m sglib report, from FILE) -->`` and
``<!-- /generated: NAME -->``; everything between is replaced by what :data:`BLOCKS` ``[NAME]`` makes from the
results folder, so a number can only change when the command that writes its file runs again
(:data:`~sglib.experiments.claims.SOURCE_COMMANDS`). Adding a block is one function (results folder -> Markdown)
and one :class:`Block` entry; the marker's ``from FILE`` is rewritten from the entry too.

:func:`check` lists the blocks whose README text differs from what the results give (``report --check``,
``tests/test_claims.py``); :func:`update` rewrites them. The same files always give the same bytes.

Example::

    update("README.md", "results")        # -> names of the blocks that changed
    check("README.md", "results")         # -> [] when the README is in sync
"""
from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Callable

from ..evaluate.protocol import PROTOCOLS
from ..bundled.synthetic_views import FORMAT_VERSION
from ..method.descriptors import GEM_PLUS_P
from . import claims as cl
from .stability import StabilityResult, effect_summary, markdown_effects, module_effects
from .tables import BASE_ROW
from .training_study import StudyResult, before_after, p_finding

COMMAND = "python -m sglib report"
# a block: its opening marker on a line of its own, the body, its closing marker on a line of its own
GENERATED_BLOCK = re.compile(r"^<!-- generated: (?P<name>[a-z0-9-]+) \([^)\n]*\) -->\n"
                    r"(?P<body>.*?)^<!-- /generated: (?P=name) -->", re.S | re.M)
_OPENING = re.compile(r"^<!-- generated: (?P<name>[a-z0-9-]+)", re.M)


def _no_label(line: int):
    return None


@dataclasses.dataclass(frozen=True)
class Block:
    """One generated README section.

    Attributes:
        sources: the results files it reads, relative to the repository (named in its marker and messages).
        make: results folder -> the section's Markdown.
        label: line number in that Markdown (0-based) -> ``(what the line states, its source)`` or None, so a
            difference can name the claim it is in.
    """

    sources: tuple
    make: Callable[[Path], str]
    label: Callable[[int], tuple | None] = _no_label


# ------------------------------------------------------------------------------------- generators

def _path(results_dir, source: str) -> Path:
    """The source file under ``results_dir``; ValueError naming the command that writes it when it is missing."""
    path = cl.source_path(source, results_dir)
    if not path.is_file():
        raise ValueError(f"{source} not found under {results_dir}: run `{cl.SOURCE_COMMANDS.get(source)}` first")
    return path


def ladder_note(rows, source: str) -> str:
    """'' when ``rows`` hold every row of the current ladder and no other, else a sentence naming the rows missing
    and the rows the ladder no longer has, and the command that writes ``source`` again."""
    ladder = cl.ladder()
    missing = [r for r in ladder if r not in rows]
    unknown = [r for r in rows if r not in ladder]
    if not missing and not unknown:
        return ""
    parts = (([f"lacks {', '.join(f'`{r}`' for r in missing)}"] if missing else []) +
            ([f"has {', '.join(f'`{r}`' for r in unknown)}, which the current ladder does not"] if unknown else []))
    return (f"*`{source}` was written with another ladder than `sglib.experiments.tables.MODULE_SETTINGS`: it "
            f"{' and '.join(parts)}; `{cl.SOURCE_COMMANDS[source]}` writes it again.*")


def demo_table(results_dir) -> str:
    """The demo's module table (mAP %, one decimal), every benchmark side by side, rows as ``make demo`` wrote them."""
    source = "results/demo.json"
    data = json.loads(_path(results_dir, source).read_text())
    rows = list(dict.fromkeys(row for per_row in data.values() for row in per_row))
    header = ["row"] + [f"{b}: {p.capitalize()}" if i == 0 else p.capitalize()
                        for b in data for i, p in enumerate(PROTOCOLS)]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for row in rows:
        cells = [f"{data[b][row][p]:.1f}" if row in data[b] else "—" for b in data for p in PROTOCOLS]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    note = ladder_note(rows, source)
    return "\n".join(lines) + (f"\n\n{note}" if note else "")


def stability_effects(results_dir) -> str:
    """Each ladder row's effect over the stability study's builds
    (:func:`~sglib.experiments.stability.markdown_effects`) and what the spread is, for the rows of the current
    ladder the file holds (:func:`~sglib.experiments.claims.measured_prefix`); a note names the rows it lacks."""
    source = "results/stability.json"
    result = StabilityResult.load(_path(results_dir, source))
    prefix = cl.measured_prefix(result.maps)
    parts = []
    if len(prefix) >= 2:
        table = markdown_effects(effect_summary(module_effects(result.maps[result.maps["row"].isin(prefix)])))
        plan = result.plan
        parts += [table, f"Each cell is one row's effect, that row minus the row before, in mAP points: mean ± std "
                         f"[min, max] over the n = {cl.builds(result.maps)} builds ({len(plan['seeds'])} seeds x "
                         f"{len(plan['pools'])} photo pools); ± is the standard deviation over builds. Effects whose "
                         f"sign flips between builds are in bold."]
    note = ladder_note(list(dict.fromkeys(result.maps["row"])), source)
    return "\n\n".join(parts + ([note] if note else [])) or f"`{source}` holds no build."


def claims_table(results_dir) -> str:
    """The claims registry (:data:`~sglib.experiments.claims.CLAIMS`) as a table: claim, verdict, evidence, source;
    then the verdict rule."""
    lines = ["| paper's claim | verdict | evidence | source |", "|---|---|---|---|"]
    for a in cl.assess_all(results_dir):
        source = f"`{a.claim.source}`" if a.claim.source else "—"
        lines.append(f"| {a.claim.paper} | {a.verdict} | {a.evidence} | {source} |")
    return "\n".join(lines + ["", cl.VERDICT_RULE])


def _claim_label(line: int):
    """The claim on line ``line`` of :func:`claims_table` (two header lines, then one line per claim)."""
    if 2 <= line < 2 + len(cl.CLAIMS):
        claim = cl.CLAIMS[line - 2]
        return f"claim '{claim.id}'", claim.source or "its sentence in sglib/experiments/claims.py"
    return None


def training_table(results_dir) -> str:
    """The training study: the off-the-shelf baseline and each fine-tuned network (single scale, its own p), with the
    learned p, the best test-time p (Medium) and GeM+ minus the learned p (Medium)."""
    source = "results/training_full.json"
    result = StudyResult.load(_path(results_dir, source))
    try:
        table, finding = before_after(result), p_finding(result)
    except KeyError as exc:
        raise ValueError(f"{source} lacks row {exc.args[0]!r}: `{cl.SOURCE_COMMANDS[source]}` writes it "
                         "again") from None
    header = ["network (single scale, its own p)", "Easy", "Medium", "Hard", "learned p", "best test-time p",
              f"GeM+ ({GEM_PLUS_P:g}) vs learned p, Medium"]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    base = table.iloc[0]
    lines.append(f"| off the shelf + the demo's whitening, {BASE_ROW} | "
                 + " | ".join(f"{base[p]:.1f}" for p in PROTOCOLS) + " | — | — | — |")
    for loss in result.learned_p:
        row, f = table.loc[f"{loss}: after"], finding.loc[loss]
        lines.append(f"| {cl.loss_name(loss)} | " + " | ".join(f"{row[p]:.1f}" for p in PROTOCOLS)
                     + f" | {f['learned p']:.2f} | {f['best test p']:g} | {f['GeM+ - learned p (mAP)']:+.2f} |")
    fmt = result.plan.get("benchmark_format", 2)
    if fmt != FORMAT_VERSION:
        lines += ["", f"*Measured on benchmark format {fmt}, whose training split shared context photos with the test "
                      f"images: not evidence about format {FORMAT_VERSION}; `{cl.SOURCE_COMMANDS[source]}` measures it "
                      "again.*"]
    return "\n".join(lines)


DESIGN_LABELS = {"format 2": "format 2: training views on the test images' context photos",
                 "format 3": "format 3: nothing shared (this version)"}


def _medium_hard(values: dict, signed: bool = True) -> str:
    form = "{:+.1f}" if signed else "{:.1f}"
    return f"{form.format(values['medium'])} / {form.format(values['hard'])}"


def _finetune_gain(path: Path, benchmark_format: int, loss: str = "arcface") -> dict | None:
    """Medium / Hard of ``loss``'s fine-tuned network minus the off-the-shelf baseline (same pooling), or None
    when ``path`` holds no such study of that benchmark format (a study without the field is of format 2)."""
    if not path.is_file():
        return None
    result = StudyResult.load(path)
    if result.plan.get("benchmark_format", 2) != benchmark_format or loss not in result.learned_p:
        return None
    table = before_after(result)
    return (table.loc[f"{loss}: after"] - table.iloc[0]).to_dict()


def _rerank_effect(path: Path) -> str:
    """The stability study's reranking effect (Medium / Hard mean ± std over builds) from ``path``."""
    maps = StabilityResult.load(path).maps
    rows = list(dict.fromkeys(maps["row"]))
    last = rows[rows.index(cl.tables.RERANK_ROW) - 1]
    both = maps[maps["row"].isin([last, cl.tables.RERANK_ROW])].pivot_table(index=["pool", "seed"], columns="row")
    gain = {p: both[(p, cl.tables.RERANK_ROW)] - both[(p, last)] for p in ("medium", "hard")}
    return " / ".join(f"{g.mean():+.1f} ± {g.std(ddof=0):.1f}" for g in gain.values()) + f" (n = {len(both)})"


def design_comparison(results_dir) -> str:
    """The default build of each benchmark format side by side (``python -m sglib design-check``): how often a
    query's top-10 negatives share its context photo, the whitening's and reranking's effects, every ladder step;
    then the fine-tuning gain and the stability study's reranking effect from each format's own results files."""
    source = "results/benchmark_design.json"
    data = json.loads(_path(results_dir, source).read_text())
    labels = [k for k in DESIGN_LABELS if k in data]
    lines = ["| measured on the default build (Medium / Hard mAP, or share) | "
             + " | ".join(DESIGN_LABELS[k] for k in labels) + " |", "|---" * (len(labels) + 1) + "|"]

    def row(name, cell):
        lines.append(f"| {name} | " + " | ".join(cell(data[k]) for k in labels) + " |")

    for kind in ("raw GeM", "whitened GeM"):
        row(f"top-10 negatives on the query's context photo, {kind} (chance: all its negatives)",
            lambda d, kind=kind: f"{100 * d['context'][kind]['top']:.1f} % ({100 * d['context'][kind]['chance']:.1f} %)")
    row("GeM (p = 3), no whitening", lambda d: _medium_hard(d["maps"]["raw GeM"], signed=False))
    row("GeM (p = 3), whitened", lambda d: _medium_hard(d["maps"]["whitened GeM"], signed=False))
    for effect in ("whitening", "rerank on raw GeM", "rerank on whitened GeM"):
        row(effect, lambda d, e=effect: _medium_hard(d["effects"][e]))
    for step in cl.ladder()[1:-1]:
        row(f"ladder: {step}", lambda d, s=step: _medium_hard(d["effects"][s]) if s in d["effects"] else "—")
    last = f"rerank on {cl.ladder()[-2]}"
    row(f"ladder: {cl.ladder()[-1]}", lambda d: _medium_hard(d["effects"][last]) if last in d["effects"] else "—")
    extra = {"format 2": "format2/", "format 3": ""}
    gains = {k: _finetune_gain(Path(results_dir) / extra[k] / "training_full.json", int(k.split()[-1]))
             for k in labels}
    lines.append("| fine-tuning with ArcFace, minus off the shelf (same pooling) | "
                 + " | ".join(_medium_hard(g) if g else "not measured" for g in gains.values()) + " |")
    stab = {k: Path(results_dir) / extra[k] / "stability.json" for k in labels}
    lines.append("| stability study: reranking's effect, mean ± std over builds | "
                 + " | ".join(_rerank_effect(p) if p.is_file() else "not measured" for p in stab.values()) + " |")
    rr = data[labels[-1]]["rerank"]
    return "\n".join(lines) + (f"\n\nReranking at M = {rr['M']}, K = {rr['K']}, beta = {rr['beta']}. Format 2's "
                               "fine-tuning and stability rows are its own committed results (`results/format2/`), "
                               "measured with the ladder of that version.")


def rerank_gain(results_dir) -> str:
    """When reranking helps (the stability study's rerank rows): its Medium gain by kind of base ranking, with the
    base ranking's mP@10, and the Spearman correlation between the two over every point."""
    from .stability import rerank_gain_correlation
    source = "results/stability.json"
    rerank = StabilityResult.load(_path(results_dir, source)).rerank
    g = rerank.groupby(["base", "whitened", "K"])
    lines = ["| base ranking | whitened | K | base mP@10 (%) | Medium gain, mean [min, max] | Hard gain, mean | points |",
             "|---|---|---|---|---|---|---|"]
    for (base, white, k), part in g:
        m = part["gain_medium"]
        lines.append(f"| {base} | {'yes' if white else 'no'} | {k} | {part['base_mP@10'].min():.0f}-"
                     f"{part['base_mP@10'].max():.0f} | {m.mean():+.1f} [{m.min():+.1f}, {m.max():+.1f}] | "
                     f"{part['gain_hard'].mean():+.1f} | {len(part)} |")
    rho = rerank_gain_correlation(rerank)
    return "\n".join(lines) + (f"\n\nSpearman correlation of the Medium gain with the base ranking's mP@10 over "
                               f"all {len(rerank)} points: {rho:+.2f}.")


def rerankers_table(results_dir) -> str:
    """Every reranker at its defaults on both bundled benchmarks, then each one tuned on validation queries and
    scored on disjoint test queries (``python -m sglib rerankers``)."""
    source = "results/rerankers.json"
    data = json.loads(_path(results_dir, source).read_text())
    benches = list(data["defaults"])
    header = ["method (defaults)"] + [f"{b}: {p.capitalize()}" if i == 0 else p.capitalize()
                                      for b in benches for i, p in enumerate(PROTOCOLS)]
    lines = ["| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
    for method in data["defaults"][benches[0]]:
        lines.append(f"| {method} | " + " | ".join(f"{data['defaults'][b][method][p]:.1f}" for b in benches
                                                   for p in PROTOCOLS) + " |")
    t = data["tuning"]
    lines += ["", f"Tuned on {t['validation_queries']} validation queries, scored on {t['test_queries']} test queries "
                  "(landmarks disjoint), Medium / Hard mAP:", "",
              "| method | setting chosen on validation | test, chosen | test, defaults |", "|---|---|---|---|"]
    for method, r in t["methods"].items():
        lines.append(f"| {method} | `{r['chosen']}` | {r['test_medium']:.1f} / {r['test_hard']:.1f} | "
                     f"{r['default_test_medium']:.1f} / {r['default_test_hard']:.1f} |")
    return "\n".join(lines) + f"\n\nDescriptors: the `{data['descriptor']}` row; shortlist M = {data['M']}."


BENCH_COLUMNS = ("stage", "device", "threads", "time (s)", "bound", "bound (s)", "ratio", "target", "status",
                 "recall@100", "peak MiB (stage / bound)")
BENCH_SIMULATED = ("Simulated data: the `knn`, `IVF-PQ` and `evaluation` rows (vectors and scores, "
                   "`benchmarks/search.py`; the evaluation uses the real revisited-Oxford ground truth) and the `rerank M=... K=...` rows "
                   "(`benchmarks/rerank.py`); the extraction, reranker-method and training rows use the bundled "
                   "benchmark's images and descriptors.")


def _bench_ratio(r: float) -> str:
    return f"{r:.2f}" if r >= 0.1 else f"{r:.3f}"


def bench_frame(results_dir):
    """``results/bench.json`` (``make bench``) as a DataFrame of display strings, one row per stage, the columns of
    :data:`BENCH_COLUMNS`: both times, the ratio, the target, PASS/MISS, and IVF-PQ's recall@100 or the peak memory
    of a stage and of its bound where the row has them. A cell with nothing to show holds ``-`` (never NaN); a stage
    not measured here (e.g. no GPU lent) has its reason as its status."""
    import pandas as pd
    data = json.loads(_path(results_dir, "results/bench.json").read_text())

    def cells(r):
        measured = r.get("time_s") is not None
        peak = (f"{r['peak_mib']:.0f} / {r['bound_peak_mib']:.0f}" if r.get("peak_mib") is not None and
                r.get("bound_peak_mib") is not None else "-")
        return (r["stage"], r.get("device", "-"), str(r["threads"]) if r.get("threads") is not None else "-",
                f"{r['time_s']:.4f}" if measured else "-", r.get("bound") or "-",
                f"{r['bound_s']:.4f}" if measured else "-", _bench_ratio(r["ratio"]) if measured else "-",
                r.get("target") or "-", r["status"], f"{r['recall']:.4f}" if r.get("recall") is not None else "-",
                peak)
    return pd.DataFrame([cells(r) for r in data["rows"]], columns=list(BENCH_COLUMNS))


def bench_source(results_dir) -> str:
    """Where :func:`bench_frame`'s table comes from: the file, the device and when it was written (when the file
    records it)."""
    data = json.loads(_path(results_dir, "results/bench.json").read_text())
    when = f"written {data['written']}" if data.get("written") else "its writing time not recorded in the file"
    return f"`results/bench.json` (`make bench`), device: {data['device']}, {when}"


def bench_table(results_dir) -> str:
    """Every measured stage against its bound (``make bench``): :func:`bench_frame` as Markdown, then its source
    (:func:`bench_source`) and which rows are simulated."""
    frame = bench_frame(results_dir)
    lines = ["| " + " | ".join(frame.columns) + " |", "|---" * len(frame.columns) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join(lines) + (f"\n\nFrom {bench_source(results_dir)}; each ratio from one run, interleaved repeats, "
                               f"medians. {BENCH_SIMULATED}")


def gain_check_table(results_dir) -> str:
    """The label-free rerank-gain check against the measured gain (``python -m sglib.experiments.gain_check_validation``)."""
    from .gain_check_validation import markdown_table
    record = json.loads(_path(results_dir, "results/rerank_gain_check.json").read_text())
    shipped = record["shipped"]
    return markdown_table(record) + (f"\n\nPoints: {len(record['points'])} base rankings; verdict thresholds as "
                                     f"shipped: {json.dumps(shipped, sort_keys=True)}.")


BLOCKS = {
    "demo-table": Block(("results/demo.json",), demo_table),
    "stability-effects": Block(("results/stability.json",), stability_effects),
    "claims": Block(tuple(dict.fromkeys(c.source for c in cl.CLAIMS if c.source)), claims_table, _claim_label),
    "training-table": Block(("results/training_full.json",), training_table),
    "design-comparison": Block(("results/benchmark_design.json",), design_comparison),
    "rerank-gain": Block(("results/stability.json",), rerank_gain),
    "rerankers": Block(("results/rerankers.json",), rerankers_table),
    "bench": Block(("results/bench.json",), bench_table),
    "gain-check": Block(("results/rerank_gain_check.json",), gain_check_table),
}


# ------------------------------------------------------------------------------------- the README

@dataclasses.dataclass(frozen=True)
class Difference:
    """One block whose README text is not what the results give: its first differing line (1-based in the README)."""

    name: str
    sources: tuple
    line: int
    readme: str
    generated: str
    label: tuple | None

    def message(self, readme_name: str = "README.md") -> str:
        """What differs, where, from which file, and the fix."""
        what, source = (f", {self.label[0]},", self.label[1]) if self.label else ("", ", ".join(self.sources))
        return (f"README block '{self.name}'{what} differs from {source} at {readme_name} line {self.line}: the "
                f"README has {self.readme!r}, the results give {self.generated!r}; run {COMMAND}")


def marker(name: str, block: Block) -> str:
    """The opening marker of block ``name``, naming the command and its sources."""
    return f"<!-- generated: {name} ({COMMAND}, from {', '.join(block.sources)}) -->"


def _blocks_in(text: str, blocks: dict) -> list:
    """The generated blocks of ``text`` (regex matches); ValueError for an unknown or unclosed one."""
    found = list(GENERATED_BLOCK.finditer(text))
    closed = {m.start() for m in found}
    for m in _OPENING.finditer(text):
        line = text.count("\n", 0, m.start()) + 1
        if m.group("name") not in blocks:
            raise ValueError(f"README line {line}: block '{m.group('name')}' is not one that {COMMAND} makes "
                             f"(known: {', '.join(blocks)}); rename it or add it to sglib.experiments.report.BLOCKS")
        if m.start() not in closed:
            raise ValueError(f"README line {line}: block '{m.group('name')}' is not closed by "
                             f"'<!-- /generated: {m.group('name')} -->' on a line of its own")
    return found


def render(text: str, results_dir, blocks: dict = BLOCKS) -> tuple:
    """``text`` with every generated block rewritten from ``results_dir``.

    Returns:
        ``(new text, [Difference])``, one Difference per block whose text changed.
    """
    out, differences, end = [], [], 0
    for m in _blocks_in(text, blocks):
        name, block = m.group("name"), blocks[m.group("name")]
        body = block.make(results_dir).strip("\n")
        new = f"{marker(name, block)}\n\n{body}\n\n<!-- /generated: {name} -->"
        if new != m.group(0):
            differences.append(_first_difference(text, m, new, name, block))
        out += [text[end:m.start()], new]
        end = m.end()
    return "".join(out + [text[end:]]), differences


def _first_difference(text: str, m, new: str, name: str, block: Block) -> Difference:
    old_lines, new_lines = m.group(0).split("\n"), new.split("\n")
    i = next((k for k, (a, b) in enumerate(zip(old_lines, new_lines)) if a != b), min(len(old_lines), len(new_lines)))
    get = lambda lines: lines[i] if i < len(lines) else "(nothing)"   # noqa: E731
    # the body starts two lines after the marker (a blank line keeps Markdown from reading it as HTML)
    label = block.label(i - 2) if i >= 2 else None
    return Difference(name, block.sources, text.count("\n", 0, m.start()) + 1 + i, get(old_lines), get(new_lines),
                      label)


def check(readme, results_dir, blocks: dict = BLOCKS) -> list:
    """One message (:meth:`Difference.message`) per generated block of ``readme`` that differs from the results."""
    readme = Path(readme)
    return [d.message(readme.name) for d in render(readme.read_text(encoding="utf-8"), results_dir, blocks)[1]]


def update(readme, results_dir, blocks: dict = BLOCKS) -> list:
    """Rewrite ``readme``'s generated blocks from ``results_dir`` (the file is written only if one changed).

    Returns:
        the names of the blocks that changed.
    """
    readme = Path(readme)
    text, differences = render(readme.read_text(encoding="utf-8"), results_dir, blocks)
    if differences:
        readme.write_text(text, encoding="utf-8")
    return [d.name for d in differences]


__all__ = ["Block", "BLOCKS", "Difference", "COMMAND", "GENERATED_BLOCK", "demo_table", "stability_effects",
           "bench_frame", "bench_source", "bench_table", "BENCH_COLUMNS",
           "claims_table", "training_table", "ladder_note", "marker", "render", "check", "update"]
