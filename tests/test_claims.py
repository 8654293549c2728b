"""Every number the README states in a table comes from a results file: the claims registry and ``sglib report``.

(a) the committed README is what the committed results give; (b) a digit (or letter) changed in a generated block fails
``report --check``, naming the block (the claim) and its source file; (c) each claim's verdict follows from a small
results file written here; (d) every README table with a decimal number is generated or allowlisted with a reason;
(e) notebook prose quotes no decimal number but the paper's own figures and parameters.
"""
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from sglib import cli
from sglib.experiments import claims as cl
from sglib.experiments import report
from sglib.experiments.stability import StabilityResult
from sglib.experiments.tables import BASE_ROW, GEM_PLUS_ROW, REGIONAL_ROW, RERANK_ROW, SCALE_GEM_ROW
from sglib.bundled.synthetic_views import FORMAT_VERSION
from sglib.experiments.training_study import BASELINE, TRAINED_P_ROW, StudyResult

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
STABILITY_CLAIMS = {"scale-gem": SCALE_GEM_ROW, "rerank": RERANK_ROW, "gem-plus": GEM_PLUS_ROW,
                    "regional-gem": REGIONAL_ROW}


def claim(claim_id: str) -> cl.Claim:
    return next(c for c in cl.CLAIMS if c.id == claim_id)


# ------------------------------------------------------------------------------------- synthetic results files

def write_stability(folder: Path, effects: dict = None, drop=()) -> Path:
    """Two builds of the current ladder; each row adds ``effects[row][build]`` (default +1) to every protocol."""
    effects = effects or {}
    ladder = cl.ladder()
    maps, rerank = [], []
    for b, seed in enumerate((0, 1)):
        value = {"easy": 50.0, "medium": 40.0, "hard": 20.0}
        for row in ladder:
            if row != ladder[0]:
                value = {p: round(v + effects.get(row, (1.0, 1.0))[b], 2) for p, v in value.items()}
            if row not in drop:
                maps.append({"pool": "a", "seed": seed, "row": row, **value})
        rerank.append({"pool": "a", "seed": seed, "backbone": "efficientnet_lite0", "base": BASE_ROW,
                       "whitened": False, "K": 9, "base_mP@10": 60.0, "base_hard": 20.0, "base_medium": 40.0,
                       "gain_easy": -1.0, "gain_medium": -5.0 - b, "gain_hard": -3.0})
    folder.mkdir(parents=True, exist_ok=True)
    plan = {"seeds": [0, 1], "pools": ["a"], "rerank": {"M": 400, "K": 9, "beta": 0.15}}
    StabilityResult(pd.DataFrame(maps), pd.DataFrame(rerank), plan).save(folder / "stability.json")
    return folder


GEM_PS = (1.0, 2.0, 3.0, 4.0, 4.6, 6.0)


def write_training(folder: Path, gains=(10.0, 12.0), gem_plus=(0.1, 0.2)) -> Path:
    """Two fine-tuned networks: ``gains`` over the baseline (learned p), GeM+ ``gem_plus`` above the learned p."""
    losses = ("arcface", "softmax")
    rows = [{"network": BASELINE, "setting": BASE_ROW, "easy": 80.0, "medium": 60.0, "hard": 30.0}]
    rows += [{"network": BASELINE, "setting": f"gem p={p:g}", "easy": 80.0, "medium": 60.0, "hard": 30.0}
             for p in GEM_PS]
    for loss, gain, plus in zip(losses, gains, gem_plus):
        learned = {"easy": 80.0 + gain, "medium": 60.0 + gain, "hard": 30.0 + gain}
        rows.append({"network": f"{loss}: before training", "setting": TRAINED_P_ROW, "easy": 79.0,
                     "medium": 59.0, "hard": 29.0})
        rows.append({"network": f"{loss}: fine-tuned", "setting": TRAINED_P_ROW, **learned})
        for p in GEM_PS:
            shift = plus if p == 4.6 else 0.0
            rows.append({"network": f"{loss}: fine-tuned", "setting": f"gem p={p:g}",
                         **{k: round(v + shift, 2) for k, v in learned.items()}})
    folder.mkdir(parents=True, exist_ok=True)
    StudyResult(pd.DataFrame(rows).set_index(["network", "setting"]), {loss: 2.2 for loss in losses},
                {"gem_ps": list(GEM_PS), "benchmark_format": FORMAT_VERSION}).save(folder / "training_full.json")
    return folder


def write_demo(folder: Path) -> Path:
    rows = {row: {"easy": 90.0 + i, "medium": 60.0 + i, "hard": 30.0 + i} for i, row in enumerate(cl.ladder())}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "demo.json").write_text(json.dumps({"bench_a": rows, "bench_b": rows}))
    return folder


def all_results(folder: Path) -> Path:
    return write_demo(write_training(write_stability(folder)))


# ------------------------------------------------------------------------------------- (a) in sync

def test_committed_readme_is_what_the_committed_results_give():
    r = subprocess.run([sys.executable, "-m", "sglib", "report", "--check"], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, f"README.md is out of date with results/ (run python -m sglib report):\n{r.stderr}"
    text = README.read_text(encoding="utf-8")
    assert report.render(text, ROOT / "results")[0] == text   # same files, same bytes
    assert set(m.group("name") for m in report.GENERATED_BLOCK.finditer(text)) == set(report.BLOCKS), (
        "every block report can write is in the README")


# ------------------------------------------------------------------------------------- (b) one digit changed

def _change_a_digit(text: str, name: str) -> str:
    """``text`` with the first digit of block ``name``'s body changed (its first letter where it has no digit)."""
    m = next(m for m in report.GENERATED_BLOCK.finditer(text) if m.group("name") == name)
    d = re.search(r"\d", m.group("body")) or re.search(r"[a-z]", m.group("body"))
    i = m.start("body") + d.start()
    new = str((int(text[i]) + 1) % 10) if text[i].isdigit() else text[i].upper()
    return text[:i] + new + text[i + 1:]


@pytest.mark.parametrize("name", list(report.BLOCKS))
def test_a_changed_digit_fails_the_check_naming_block_and_source(tmp_path, name):
    original = README.read_text(encoding="utf-8")
    readme = tmp_path / "README.md"
    readme.write_text(_change_a_digit(original, name), encoding="utf-8")
    messages = report.check(readme, ROOT / "results")
    assert len(messages) == 1, messages
    assert f"README block '{name}'" in messages[0] and "run python -m sglib report" in messages[0]
    assert any(source in messages[0] for source in report.BLOCKS[name].sources), messages[0]
    if name == "claims":
        assert "claim '" in messages[0], messages[0]
    assert report.update(readme, ROOT / "results") == [name]
    assert readme.read_text(encoding="utf-8") == original       # rewriting restores the committed bytes


def test_check_on_the_command_line_exits_1_and_names_the_claim(tmp_path, capsys):
    text = README.read_text(encoding="utf-8")
    m = next(m for m in report.GENERATED_BLOCK.finditer(text) if m.group("name") == "claims")
    row = next(line for line in m.group("body").split("\n") if re.search(r"\| .*\d.* \| `results/", line))
    changed = re.sub(r"\d", lambda d: str((int(d.group()) + 1) % 10), row, count=1)
    readme = tmp_path / "README.md"
    readme.write_text(text.replace(row, changed), encoding="utf-8")
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["report", "--check", "--readme", str(readme), "--results", str(ROOT / "results")])
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    source = re.search(r"`(results/[^`]+)` \|$", row).group(1)
    claim_id = next(c.id for c in cl.CLAIMS if row.startswith(f"| {c.paper} |") and c.source == source)
    assert f"README block 'claims', claim '{claim_id}', differs from {source}" in err, err


def test_unknown_and_unclosed_blocks_are_refused(tmp_path):
    with pytest.raises(ValueError, match="'nonsense' is not one that"):
        report.render("<!-- generated: nonsense (x) -->\n<!-- /generated: nonsense -->\n", tmp_path)
    with pytest.raises(ValueError, match="'claims' is not closed"):
        report.render("<!-- generated: claims (x) -->\n| a |\n", tmp_path)


def test_a_missing_results_file_names_the_command_that_writes_it(tmp_path):
    with pytest.raises(ValueError, match=r"results/demo.json not found .*make demo"):
        report.render("<!-- generated: demo-table (x) -->\n<!-- /generated: demo-table -->\n", tmp_path)


# ------------------------------------------------------------------------------------- (c) verdicts

@pytest.mark.parametrize("claim_id", list(STABILITY_CLAIMS))
@pytest.mark.parametrize("per_build, verdict", [((2.0, 3.0), cl.REPRODUCED), ((2.0, -1.0), cl.NOT_REPRODUCED),
                                                ((-2.0, -3.0), cl.REVERSED), ((0.2, 0.4), cl.NOT_REPRODUCED)])
def test_stability_claim_verdicts_follow_the_builds(tmp_path, claim_id, per_build, verdict):
    results = write_stability(tmp_path / "results", {STABILITY_CLAIMS[claim_id]: per_build})
    a = cl.assess(claim(claim_id), results)
    assert a.verdict == verdict
    mean, std = sum(per_build) / 2, abs(per_build[0] - per_build[1]) / 2
    lo, hi = min(per_build), max(per_build)
    assert f"Medium {mean:+.1f} ± {std:.1f} [{lo:+.1f}, {hi:+.1f}]" in a.evidence, a.evidence
    assert "n = 2 builds" in a.evidence and f"`{STABILITY_CLAIMS[claim_id]}` minus `" in a.evidence


def test_rerank_claim_reports_the_raw_descriptors(tmp_path):
    a = cl.assess(claim("rerank"), write_stability(tmp_path / "results"))
    assert "K = 9, over n = 2 builds x backbones: Medium -5.5 ± 0.5 [-6.0, -5.0]" in a.evidence, a.evidence


def test_a_missing_ladder_row_is_not_measured_from_it_on(tmp_path):
    results = write_stability(tmp_path / "results", drop=(RERANK_ROW,))
    assert (cl.assess(claim("rerank"), results).verdict ==
        f"not measured (row '{RERANK_ROW}' absent from results/stability.json)")
    assert cl.assess(claim("scale-gem"), results).verdict == cl.REPRODUCED
    results = write_stability(tmp_path / "other" / "results", drop=(GEM_PLUS_ROW,))
    for claim_id in ("gem-plus", "regional-gem", "scale-gem", "rerank"):   # every row after it changes meaning
        assert (cl.assess(claim(claim_id), results).verdict ==
            f"not measured (row '{GEM_PLUS_ROW}' absent from results/stability.json)")


def test_a_missing_file_is_not_measured(tmp_path):
    a = cl.assess(claim("scale-gem"), tmp_path)
    assert a.verdict == "not measured (results/stability.json absent)"
    assert "python -m sglib stability" in a.evidence


@pytest.mark.parametrize("gains, gem_plus, fine_tuning, gem_plus_verdict", [
    ((10.0, 12.0), (0.1, 0.3), cl.REPRODUCED, cl.NOT_REPRODUCED),     # GeM+ ahead, but by less than MIN_EFFECT
    ((-1.0, -2.0), (1.0, 2.0), cl.REVERSED, cl.REPRODUCED),
    ((3.0, -2.0), (-1.0, -2.0), cl.NOT_REPRODUCED, cl.REVERSED),
])
def test_training_claim_verdicts_follow_the_networks(tmp_path, gains, gem_plus, fine_tuning, gem_plus_verdict):
    results = write_training(tmp_path / "results", gains, gem_plus)
    a = cl.assess(claim("fine-tuning"), results)
    assert a.verdict == fine_tuning and "n = 2 networks" in a.evidence and "ArcFace, NormSoftmax" in a.evidence
    b = cl.assess(claim("gem-plus-fine-tuned"), results)
    assert b.verdict == gem_plus_verdict
    mean = sum(gem_plus) / 2
    assert f"Medium {mean:+.1f} ±" in b.evidence and f"GeM+ minus p = 3: Medium {mean:+.1f}" in b.evidence, b.evidence


def test_claims_without_a_source_are_not_measurable(tmp_path):
    for c in cl.CLAIMS:
        if c.source is None:
            assert cl.assess(c, tmp_path).verdict == cl.NOT_MEASURABLE


def test_every_block_from_synthetic_results(tmp_path):
    results = all_results(tmp_path / "results")
    for name in ("benchmark_design.json", "rerankers.json", "rerank_gain_check.json"):   # commands too slow for a test
        shutil.copyfile(ROOT / "results" / name, results / name)
    (results / "bench.json").write_text(json.dumps({"device": "cpu", "rows": [   # SYNTHETIC timings
        {"stage": "rerank", "threads": 1, "time_s": 1.5, "bound": "M x M product", "bound_s": 1.0, "ratio": 1.5,
         "target": "<= 1.3", "status": "MISS"},
        {"stage": "on CUDA", "device": "cuda", "status": "not measured: no GPU"}]}))
    empty = "".join(f"{report.marker(n, b)}\n<!-- /generated: {n} -->\n\ntext\n" for n, b in report.BLOCKS.items())
    readme = tmp_path / "README.md"
    readme.write_text(empty, encoding="utf-8")
    assert report.update(readme, results) == list(report.BLOCKS)
    text = readme.read_text(encoding="utf-8")
    assert report.check(readme, results) == [] and report.update(readme, results) == []
    assert f"| {BASE_ROW} | 90.0 | 60.0 | 30.0 | 90.0 |" in text           # one decimal, both benchmarks
    assert f"| {SCALE_GEM_ROW} | +1.0 ± 0.0 [+1.0, +1.0] |" in text        # the effect table, full ladder
    assert "over the n = 2 builds (2 seeds x 1 photo pools); ± is the standard deviation over builds" in text
    assert "was written with another ladder" not in text
    assert "| ArcFace | 90.0 | 70.0 | 40.0 | 2.20 | 4.6 | +0.10 |" in text
    assert text.count(f"| {cl.REPRODUCED} |") >= 4
    assert "| rerank | - | 1 | 1.5000 | M x M product | 1.0000 | 1.50 | <= 1.3 | MISS | - | - |" in text
    assert "| on CUDA | cuda | - | - | - | - | - | - | not measured: no GPU | - | - |" in text


def test_a_stale_ladder_is_said_not_measured(tmp_path):
    results = write_stability(tmp_path / "results", drop=(cl.ladder()[1],))
    text = report.stability_effects(results)
    assert "|" not in text and f"lacks `{cl.ladder()[1]}`" in text and "python -m sglib stability" in text


# ------------------------------------------------------------------------------------- (d) README tables

# Tables with decimal numbers that no results file writes yet, and why they may stay typed by hand.
README_TABLE_ALLOWLIST = {
    "| input | what happens | test |": "bad-input examples (a 1.5-px query box), not measurements",
}


def readme_tables(text: str) -> list:
    """``(first line number, header line, generated block name or None, decimal numbers)`` of every Markdown
    table outside code blocks."""
    tables, current, fenced, block = [], None, False, None
    for number, line in enumerate(text.split("\n"), 1):
        if line.startswith("```"):
            fenced = not fenced
        marker = re.match(r"<!-- (/?)generated: ([a-z0-9-]+)", line)
        if marker:
            block = None if marker.group(1) else marker.group(2)
        if not fenced and line.startswith("|"):
            if current is None:
                current = [number, line, block, []]
                tables.append(current)
            current[3] += re.findall(r"\d+\.\d+", line)
        else:
            current = None
    return tables


def test_every_readme_table_with_decimals_is_generated_or_allowlisted():
    tables = readme_tables(README.read_text(encoding="utf-8"))
    typed = [(line, header) for line, header, block, numbers in tables if numbers and block is None
             and not any(header.startswith(k) for k in README_TABLE_ALLOWLIST)]
    assert not typed, ("README tables with decimal numbers outside a generated block: "
                       + "; ".join(f"line {n}: {h[:60]}" for n, h in typed)
                       + ". Generate them (sglib.experiments.report.BLOCKS) or allowlist them here with a reason")
    headers = [header for _, header, _, _ in tables]
    for key in README_TABLE_ALLOWLIST:
        assert any(h.startswith(key) for h in headers), f"allowlisted table {key!r} is gone: drop it from the list"


# ------------------------------------------------------------------------------------- (e) notebook prose

# The paper's own figures and parameters, per notebook: the only decimal numbers their markdown may quote.
NOTEBOOK_PAPER_NUMBERS = {
    "00_quickstart.ipynb": {"4.6": "GeM+'s p", "2.5": "Regional-GeM's p"},
    "01_pooling_ablations.ipynb": {"4.6": "GeM+'s p", "1.41": "the paper's scale sqrt 2",
                                   "0.71": "the paper's scale 1/sqrt 2", "0.15": "reranking's beta"},
    "02_arcface_training.ipynb": {"4.6": "GeM+'s p"},
    "03_reranking.ipynb": {"0.99": "diffusion's alpha in its paper"},
    "04_million_distractors.ipynb": {},
    "05_timing.ipynb": {"0.5": "the asserted bound on the slope in K", "0.6": "the asserted bound on search's slope in N",
                        "0.3": "the asserted bound on reranking's slope in N"},
    "07_your_own_embeddings.ipynb": {"0.15": "reranking's beta"},
    "06_reproduce_paper.ipynb": {"0.15": "reranking's beta", "80.2": "the paper's ROxford Hard (R101 + rerank)",
                                 "86.7": "the paper's RParis Hard (R101 + rerank)"},
}


def notebook_prose_numbers() -> list:
    """``(notebook, markdown cell index, number)`` for every decimal number in notebook markdown that is not in
    :data:`NOTEBOOK_PAPER_NUMBERS`."""
    found = []
    for path in sorted((ROOT / "notebooks").glob("*.ipynb")):
        allowed = NOTEBOOK_PAPER_NUMBERS.get(path.name, {})
        for index, cell in enumerate(json.loads(path.read_text(encoding="utf-8"))["cells"]):
            if cell["cell_type"] == "markdown":
                found += [(path.name, index, n) for n in re.findall(r"\d+\.\d+", "".join(cell["source"]))
                          if n not in allowed]
    return found


def test_notebook_prose_quotes_only_the_papers_numbers():
    offenders = notebook_prose_numbers()
    assert not offenders, ("decimal numbers typed into notebook markdown (print them from the results instead, or "
                           "add a paper figure to NOTEBOOK_PAPER_NUMBERS): "
                           + "; ".join(f"{nb} cell {i}: {n}" for nb, i, n in offenders))
