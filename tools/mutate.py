"""Our own mutation check: plant realistic one-line bugs in a temporary copy of the library, one at a time,
and run the tests that cover each; a bug the tests pass is a survivor.

Usage::

    python tools/mutate.py                 # every mutation (``make mutate``)
    python tools/mutate.py --only rerank-beta,shortlist-shared
    python tools/mutate.py --check         # only report stale mutations (source line gone or not unique)

Each mutation names its file, a source snippet that must occur exactly once there (matched as text, so code
that moves keeps its mutations; a snippet that is gone or repeated is reported as stale), its replacement,
and the test files or test ids that must catch it. ``equivalent`` marks a mutation that cannot change
behaviour, with the reason: its survival is expected and reported as such.

The copy holds ``sglib/``, ``tests/``, ``tools/`` and ``pyproject.toml``, with ``data/`` linked; pytest runs
in it with the copy first on ``sys.path`` (checked once: a test run on the original library would catch
nothing) and without bytecode files (a restored file of the same size and second would reuse a stale one).
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TIMEOUT_S = 300


@dataclass(frozen=True)
class Mutation:
    name: str
    path: str
    old: str
    new: str
    tests: tuple
    equivalent: str = ""


def m(name, path, old, new, *tests, equivalent=""):
    return Mutation(name, path, old, new, tuple(tests), equivalent)


G = "tests/test_mutation_guards.py"
MUTATIONS = [
    # ---- method: pooling, rerank, losses, descriptors
    m("gem-root", "sglib/method/pooling.py", ".mean(dim=(-2, -1)).pow(1.0 / p)", ".mean(dim=(-2, -1)).pow(p)",
      "tests/test_pooling.py"),
    m("gem-clamp", "sglib/method/pooling.py", "x = x.clamp(min=eps)", "x = x.clamp(min=0)",
      G + "::test_gem_floors_at_eps_so_zero_and_negative_channels_stay_finite", "tests/test_pooling.py"),
    m("regional-pad-threshold", "sglib/method/pooling.py", 'if min(x.shape[-2:]) > pad else "replicate"',
      'if min(x.shape[-2:]) >= pad else "replicate"', G + "::test_regional_gem_pads_by_reflection_only_when_the_map_is_"
      "larger_than_the_pad", "tests/test_pooling.py"),
    m("regional-pad-mode", "sglib/method/pooling.py", 'mode = "reflect" if min', 'mode = "replicate" if min',
      "tests/test_pooling.py"),
    m("scale-gem-normalise", "sglib/method/pooling.py", "return F.normalize(descs, dim=-1).amax(dim=0)",
      "return descs.amax(dim=0)", "tests/test_pooling.py"),
    m("scale-gem-shift", "sglib/method/pooling.py", ".mean(dim=0).pow(1.0 / p) + gamma", ".mean(dim=0).pow(1.0 / p)",
      "tests/test_pooling.py"),
    m("row-top-tau", "sglib/method/_row_top.py", "count += x >= tau", "count += x > tau", "tests/test_rerank.py"),
    m("row-top-ties", "sglib/method/_row_top.py", "if cand_v[i] > best_v:", "if cand_v[i] >= best_v:",
      "tests/test_rerank.py"),
    m("rerank-beta", "sglib/method/rerank.py", "w = top_sim.mul_(beta)", "w = top_sim.mul_(1.0)", "tests/test_rerank.py"),
    m("rerank-average", "sglib/method/rerank.py", "return (s1 + s2) / 2", "return s1 + s2 / 2", "tests/test_rerank.py"),
    m("rerank-qprime-max", "sglib/method/rerank.py", "return refined_first.amax(dim=1)",
      "return refined_first.mean(dim=1)", "tests/test_rerank.py"),
    m("rerank-first-k", "sglib/method/rerank.py", "descending=True, stable=True).indices[:, : K + 1]",
      "descending=True, stable=True).indices[:, : K]", "tests/test_rerank.py"),
    m("rerank-weights-norm", "sglib/method/rerank.py", "w.div_(w.sum(-1, keepdim=True))", "w.div_(K + 1)",
      "tests/test_rerank.py"),
    m("arcface-sign", "sglib/method/losses.py", "with_margin = cos_y * math.cos(margin) - sin_y * math.sin(margin)",
      "with_margin = cos_y * math.cos(margin) + sin_y * math.sin(margin)", "tests/test_losses.py"),
    m("curricular-modulation", "sglib/method/losses.py", "torch.where(hard, cos * (t + cos), cos)",
      "torch.where(hard, cos * t, cos)", "tests/test_losses.py"),
    m("softmax-scale", "sglib/method/losses.py", "        return self.scale * cos\n", "        return cos\n",
      "tests/test_losses.py"),
    m("descriptor-resize", "sglib/method/descriptors.py", "size=(int(h * scale), int(w * scale))",
      "size=(int(w * scale), int(h * scale))", "tests/test_models.py::test_descriptors_match_reference"),
    m("descriptor-scale-mean", "sglib/method/descriptors.py", "        return pooling.scale_mean(descs)",
      "        return pooling.scale_gem(descs, math.inf)", "tests/test_models.py::test_descriptors_match_reference"),
    # ---- evaluate
    m("protocol-hard-junk", "sglib/evaluate/protocol.py", "return hard, np.concatenate([junk, easy])",
      "return hard, junk", "tests/test_evaluate.py"),
    m("ap-p1", "sglib/evaluate/protocol.py", "p1 = (j + 1) / (r + 1)", "p1 = (j + 1) / (r + 2)",
      "tests/test_evaluate.py"),
    m("ap-p0", "sglib/evaluate/protocol.py", "p0 = np.where(r == 0, 1.0,", "p0 = np.where(r == 0, 0.0,",
      "tests/test_evaluate.py"),
    m("precision-cap", "sglib/evaluate/protocol.py", "kq = np.minimum(max_pos, k)", "kq = np.full_like(max_pos, k)",
      "tests/test_evaluate.py"),
    m("junk-before", "sglib/evaluate/protocol.py", "r = ppos - junk_before", "r = ppos", "tests/test_evaluate.py"),
    m("shortlist-shared", "sglib/evaluate/shortlist.py", "return [((p,), junk_to_end(ranks, gnd, p)) for p in PROTOCOLS]",
      "return [(PROTOCOLS, ranks)]", G + "::test_per_protocol_shortlist_drops_junk_from_a_top_m_smaller_than_the_"
      "database"),
    m("junk-to-end", "sglib/evaluate/shortlist.py", "out[i] = np.concatenate([ranks[i][~is_junk], ranks[i][is_junk]])",
      "out[i] = ranks[i]", G + "::test_per_protocol_shortlist_drops_junk_from_a_top_m_smaller_than_the_database"),
    m("reranker-m", "sglib/evaluate/retrieval.py", "    m = min(M, x.shape[0])\n    protocols = {}",
      "    m = min(M, x.shape[0]) - 1\n    protocols = {}", G, "tests/test_pipeline.py"),
    m("streaming-ties", "sglib/evaluate/streaming.py", "order = np.lexsort((ids, -scores))",
      "order = np.lexsort((-ids, -scores))", "tests/test_distractors.py", "tests/test_evaluate_large.py"),
    # ---- search
    m("knn-ties", "sglib/search.py", "tied = (vals[:, k] == vals[:, k - 1]).nonzero().flatten()",
      "tied = (vals[:, k] != vals[:, k]).nonzero().flatten()", "tests/test_search.py::test_knn_ties_lower_index_first"),
    m("database-part", "sglib/search.py", 'part = np.searchsorted(self.bounds, ids, side="right") - 1',
      'part = np.searchsorted(self.bounds, ids, side="left") - 1', "tests/test_search.py",
      "tests/test_distractors.py::test_knn_over_parts_equals_knn_on_concatenation"),
    m("recall-stride", "sglib/search.py", "stride = int(max(a.max(), e.max())) + 2",
      "stride = int(max(a.max(), e.max()))", "tests/test_search.py::test_recall_at_k_counts_overlap",
      G + "::test_recall_at_k_equals_naive_set_overlap_row_by_row"),
    # ---- rerankers
    m("alpha-qe-clamp", "sglib/rerankers/expansion.py", "else sims.clamp_min(0) ** alpha", "else sims ** alpha",
      G + "::test_alpha_qe_gives_no_weight_to_candidates_of_negative_similarity",
      "tests/test_rerankers.py::test_alpha_qe_equals_naive", "tests/test_rerankers.py::test_dba_equals_naive"),
    m("k-reciprocal-half", "sglib/rerankers/k_reciprocal.py", "near_half = _nearest_mask(order, round(k1 / 2) + 1)",
      "near_half = _nearest_mask(order, round(k1 / 2))", "tests/test_rerankers.py::test_k_reciprocal_equals_naive"),
    m("k-reciprocal-grow", "sglib/rerankers/k_reciprocal.py", "(3 * shared >= 2 * recip_half", "(3 * shared > 2 * recip_half",
      "tests/test_rerankers.py::test_k_reciprocal_equals_naive"),
    m("diffusion-mutual", "sglib/rerankers/diffusion.py", "return torch.minimum(a, a.transpose(1, 2))",
      "return torch.maximum(a, a.transpose(1, 2))", "tests/test_rerankers.py::test_diffusion_equals_naive_solve"),
    m("diffusion-norm", "sglib/rerankers/diffusion.py", "inv_sqrt = a.sum(2).rsqrt()", "inv_sqrt = (a.sum(2) + 1).rsqrt()",
      "tests/test_rerankers.py::test_diffusion_equals_naive_solve"),
    m("graph-own", "sglib/rerankers/graph.py", "own = ids == np.arange(len(ids))[:, None]",
      "own = ids == -1", "tests/test_rerankers.py::test_graph_equals_naive_and_is_cached"),
    # ---- data
    m("preprocess-scale", "sglib/data/preprocess.py", "new_long = min(round(long * target / short), bound)",
      "new_long = max(round(long * target / short), bound)", "tests/test_preprocess.py"),
    m("preprocess-16bit", "sglib/data/preprocess.py", "scale = 1.0 / 257.0", "scale = 1.0 / 256.0",
      "tests/test_preprocess.py"),
    m("preprocess-float-range", "sglib/data/preprocess.py", "scale = 255.0 if top <= 1.0 else 255.0 / top",
      "scale = 255.0 / top", "tests/test_preprocess.py"),
    # ---- bundled benchmarks
    m("junk-threshold", "sglib/bundled/synthetic_views.py", "if visible < JUNK_MAX_VISIBLE:",
      "if visible <= JUNK_MAX_VISIBLE:", G + "::test_view_labels_at_each_threshold"),
    m("easy-visible-threshold", "sglib/bundled/synthetic_views.py", "if visible >= EASY_MIN_VISIBLE and",
      "if visible > EASY_MIN_VISIBLE and", G + "::test_view_labels_at_each_threshold"),
    m("easy-strength-threshold", "sglib/bundled/synthetic_views.py", "and strength < EASY_MAX_STRENGTH:",
      "and strength <= EASY_MAX_STRENGTH:", G + "::test_view_labels_at_each_threshold"),
    m("strength-rotation-sign", "sglib/bundled/synthetic_views.py", 'abs(meta["rotation_deg"]) / 30.0',
      'meta["rotation_deg"] / 30.0', G + "::test_distortion_strength_of_each_dial_at_its_full_scale"),
    m("crop-box-sides", "sglib/bundled/crops.py", "w, h = max(1, round(s * width)), max(1, round(s * height))",
      "w, h = max(1, round(s * height)), max(1, round(s * width))",
      "tests/test_distractors.py::test_crop_boxes_cover_distinct_regions"),
    m("whitening-pairs", "sglib/bundled/whitening.py", "same = labels[i] == labels[j]", "same = labels[i] != labels[j]",
      "tests/test_tables.py::test_training_whitening_is_fitted_on_every_same_scene_pair_and_no_other"),
    # ---- cli
    m("flag-minimum", "sglib/cli/flags.py", "if value is None or value < minimum:",
      "if value is None or value < minimum - 1:", G + "::test_integer_flags_accept_their_minimum_and_refuse_one_less"),
    m("flag-names", "sglib/cli/flags.py", 'or "--" + field.name.replace("_", "-")', 'or "--" + field.name',
      "tests/test_cli.py::test_bad_flag_values_are_refused_when_parsed"),
    # ---- experiments and widgets
    m("widget-rerank-beta", "sglib/experiments/widgets.py", 'fn = method_rerank_fn("superglobal", {"K": K, "beta": beta})',
      'fn = method_rerank_fn("superglobal", {"K": K})',
      G + "::test_rerank_explorer_shows_the_recomputed_table_after_each_move"),
    m("widget-rerank-cached", "sglib/experiments/widgets.py",
      "self.table, fig = self.render(self.query.value, self.M.value, self.K.value, self.beta.value)",
      "self.table, fig = (self.table, plt.figure()) if self.table is not None else self.render(self.query.value, "
      "self.M.value, self.K.value, self.beta.value)",
      G + "::test_rerank_explorer_shows_the_recomputed_table_after_each_move"),
    m("widget-distractor-rerank", "sglib/experiments/widgets.py", '("+ rerank", self.rerank)', '("+ rerank", None)',
      G + "::test_distractor_explorer_rows_equal_direct_evaluation_after_each_move"),
    m("widget-setting-cached", "sglib/experiments/widgets.py", "self.table, fig = self.render(self.setting.value)",
      "self.table, fig = (self.table, plt.figure()) if self.table is not None else self.render(self.setting.value)",
      G + "::test_setting_explorer_shows_the_chosen_rows_after_each_move"),
    m("widget-setting-difference", "sglib/experiments/widgets.py", "row[cols] - base[cols]", "base[cols] - row[cols]",
      G + "::test_setting_explorer_shows_the_chosen_rows_after_each_move"),
    m("positives-kept", "sglib/experiments/widgets.py", "return found / max(1, wanted)", "return found / max(1, len(gnd))",
      "tests/test_reranking_experiments.py::test_distractor_explorer_follows_n_and_nprobe"),
    m("regional-gain", "sglib/experiments/ablation_plots.py", 'reg["medium vs GeM+"] = reg.medium - base.medium',
      'reg["medium vs GeM+"] = reg.medium - base.easy', "tests/test_ablation_plots.py"),
    m("sign-holds", "sglib/experiments/stability.py", '((stats["min"] > 0) | (stats["max"] < 0))',
      '((stats["min"] >= 0) | (stats["max"] <= 0))', "tests/test_stability.py"),
    m("rerank-story-tail", "sglib/experiments/reranking.py",
      'after = np.concatenate([top[np.argsort(-steps["final"], kind="stable")], before[m:]])',
      'after = np.concatenate([top[np.argsort(steps["final"], kind="stable")], before[m:]])',
      "tests/test_reranking_experiments.py"),
    # ---- local verification
    m("ratio-test", "sglib/local/verify.py", "if m.distance < ratio * n.distance]", "if n.distance < ratio * m.distance]",
      "tests/test_local.py::test_inliers_of_warped_copy_equal_naive_recount_under_true_homography",
      "tests/test_local.py::test_rerank_moves_the_true_match_up_and_leaves_the_tail"),
    m("min-matches", "sglib/local/verify.py", "if len(matches) < MIN_HOMOGRAPHY_MATCHES:",
      "if len(matches) <= MIN_HOMOGRAPHY_MATCHES:", G + "::test_ransac_fits_a_homography_from_exactly_four_matches",
      "tests/test_local.py::test_ransac_gives_zero_below_four_matches"),
    m("min-inliers", "sglib/local/rerank.py", "key = np.where(inliers >= min_inliers, inliers, NOT_VERIFIED)",
      "key = np.where(inliers > min_inliers, inliers, NOT_VERIFIED)",
      "tests/test_local.py::test_combination_rule_equals_naive_rule"),
    # ---- models
    m("shrinkage-target", "sglib/models/whitening.py", "shrinkage * (np.trace(cov) / D) * np.eye(D)",
      "shrinkage * np.trace(cov) * np.eye(D)", G + "::test_shrinkage_pulls_towards_the_mean_variance_identity"),
    m("lw-mean", "sglib/models/whitening.py", "mean = members.mean(axis=0)", "mean = X.mean(axis=0)",
      G + "::test_learned_whitening_mean_is_over_pair_members_only"),
    m("pca-sqrt", "sglib/models/whitening.py", "/ np.sqrt(np.maximum(vals[:dim], eps))).T",
      "/ np.maximum(vals[:dim], eps)).T", "tests/test_whitening.py"),
    m("whitening-centre", "sglib/models/whitening.py", "return (x - self.mean.to(x.dtype)) @ self.projection",
      "return x @ self.projection", "tests/test_whitening.py"),
    m("relu-plus-floor", "sglib/models/resnet.py", "out_floor = floor if relu_plus else None", "out_floor = None",
      "tests/test_models.py::test_relu_plus_placement_follows_spec_table"),
    # ---- scale: cache, shards, distractors
    m("fingerprint-no-ctime", "sglib/scale/shards.py", "return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]",
      "return [st.st_size, st.st_mtime_ns, st.st_ino]",
      "tests/test_extract.py::test_an_image_edited_in_place_is_extracted_again_even_with_its_size_and_times_restored"),
    m("fingerprint-no-mtime", "sglib/scale/shards.py", "return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]",
      "return [st.st_size, st.st_ctime_ns, st.st_ino]",
      "tests/test_extract.py::test_an_image_edited_in_place_is_extracted_again_even_with_its_size_and_times_restored",
      equivalent="every change of mtime (a write, os.utime) also sets ctime, which the fingerprint keeps"),
    m("failed-rows-nan", "sglib/scale/extract.py", "dims.pop() if dims else 0), np.nan, np.float32)",
      "dims.pop() if dims else 0), 0.0, np.float32)",
      "tests/test_extract.py::test_failed_images_are_nan_rows_listed_and_refused_by_default"),
    m("shard-nan-check", "sglib/scale/shards.py", "if not np.isnan(rows[failed]).all():",
      "if not np.isnan(rows[failed]).any():", "tests/test_extract.py"),
    m("gaussian-cov", "sglib/scale/distractors.py", "cov = xc.T @ xc / (n - 1)", "cov = xc.T @ xc / n",
      "tests/test_distractors.py::test_fit_gaussian_matches_naive_mean_and_covariance"),
    m("gaussian-sample", "sglib/scale/distractors.py", "x = model.mean + (z * model.std) @ model.basis.T",
      "x = model.mean + z @ model.basis.T", "tests/test_distractors.py::test_simulated_samples_match_model_mean_and_"
      "covariance"),
    # ---- training
    m("sample-seed-step", "sglib/training/data.py", "np.random.SeedSequence([seed, step, position])",
      "np.random.SeedSequence([seed, position])", "tests/test_training_schedule.py"),
    m("warmup-full-rate", "sglib/training/loop.py", "return (step + 1) / (config.warmup_steps + 1)", "return 1.0",
      "tests/test_training_schedule.py"),
    m("warmup-start", "sglib/training/loop.py", "return (step + 1) / (config.warmup_steps + 1)",
      "return (step + 1) / config.warmup_steps", "tests/test_training_schedule.py"),
    m("cosine-span", "sglib/training/loop.py", "span = max(1, config.steps - config.warmup_steps)",
      "span = max(1, config.steps)", "tests/test_training_schedule.py"),
    m("loop-sample-seed", "sglib/training/loop.py", "sample_seed(config.seed, step, k)", "sample_seed(config.seed, 0, k)",
      "tests/test_training_schedule.py::test_a_run_reads_each_sample_with_the_seed_of_its_step_and_position"),
    m("epoch-order", "sglib/training/data.py", "epoch, k = divmod(step, n // batch_size)", "epoch, k = 0, step % (n // batch_size)",
      "tests/test_training_schedule.py"),
    # ---- top-level helpers
    m("check-real-open", "sglib/_checks.py", "(v > lo if open_lo else v >= lo)", "(v >= lo if open_lo else v >= lo)",
      G + "::test_checks_at_their_bounds"),
    m("check-int-hi", "sglib/_checks.py", "(hi is None or value <= hi)", "(hi is None or value <= hi + 1)",
      G + "::test_checks_at_their_bounds"),
]


def stale(mutations=MUTATIONS, root: Path = ROOT) -> list[str]:
    """Why each stale mutation cannot be applied (snippet gone, repeated, or its file or tests missing)."""
    out, seen = [], set()
    for mu in mutations:
        if mu.name in seen:
            out.append(f"{mu.name}: name used twice")
        seen.add(mu.name)
        src = root / mu.path
        count = src.read_text(encoding="utf-8").count(mu.old) if src.is_file() else -1
        if count != 1:
            out.append(f"{mu.name}: {mu.path} " + ("is missing" if count < 0 else f"holds the snippet {count} times "
                                                  f"(expected once): {mu.old!r}"))
        for t in mu.tests:
            if not (root / t.split("::")[0]).is_file():
                out.append(f"{mu.name}: test file {t.split('::')[0]} is missing")
    return out


def _copy(dest: Path) -> None:
    for name in ("sglib", "tests", "tools"):
        shutil.copytree(ROOT / name, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copy2(ROOT / "pyproject.toml", dest / "pyproject.toml")
    if (ROOT / "data").exists():
        (dest / "data").symlink_to(ROOT / "data")


def _env(dest: Path) -> dict:
    env = dict(os.environ, PYTHONPATH=str(dest), PYTHONDONTWRITEBYTECODE="1")
    env.setdefault("SGLIB_SHARED", str(ROOT.parent / "shared"))
    return env


def _pytest(dest: Path, tests, timeout: float, options=("-x",)) -> tuple[str, float, str]:
    """('passed' | 'failed' | 'timeout', seconds, output) of the given tests run in the copy."""
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *options, *tests],
                              cwd=dest, env=_env(dest), capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return "timeout", time.perf_counter() - t0, ""
    return ("passed" if proc.returncode == 0 else "failed"), time.perf_counter() - t0, proc.stdout + proc.stderr


def run(mutations, timeout: float = TIMEOUT_S, baseline: bool = True) -> int:
    """Apply each mutation in a temporary copy, run its tests, print a report; returns the exit status
    (1 when a behaviour-changing mutation survived or timed out, a mutation is stale, or an unmutated test
    fails)."""
    problems = stale(mutations)
    for p in problems:
        print(f"STALE {p}")
    bad = {p.split(":")[0] for p in problems}
    todo = [mu for mu in mutations if mu.name not in bad]
    with tempfile.TemporaryDirectory(prefix="sglib-mutate-") as tmp:
        dest = Path(tmp)
        _copy(dest)
        probe = subprocess.run([sys.executable, "-c", "import sglib; print(sglib.__file__)"], cwd=dest, env=_env(dest),
                               capture_output=True, text=True)
        if not probe.stdout.strip().startswith(str(dest)):
            print(f"the copy's tests would import {probe.stdout.strip() or probe.stderr.strip()}, not the copy")
            return 1
        deselect = []
        if baseline:
            # a test failing without any mutation (e.g. code being edited) would catch everything: left out
            targets = sorted({t for mu in todo for t in mu.tests})
            outcome, secs, output = _pytest(dest, targets, timeout * 4, ("-rf",))
            broken = [line.split()[1] for line in output.splitlines() if line.startswith("FAILED ")]
            print(f"baseline (no mutation, {len(targets)} test targets): {outcome} in {secs:.0f} s", flush=True)
            if outcome == "timeout" or (outcome == "failed" and not broken):
                print(f"the unmutated tests did not run through:\n{output[-3000:]}")
                return 1
            for test in broken:
                print(f"BASELINE FAILURE (left out of every mutation's run): {test}")
                deselect += ["--deselect", test]
        results = []
        for i, mu in enumerate(todo, 1):
            src = dest / mu.path
            original = src.read_text(encoding="utf-8")
            src.write_text(original.replace(mu.old, mu.new), encoding="utf-8")
            try:
                outcome, secs, _ = _pytest(dest, mu.tests, timeout, ("-x", *deselect))
            finally:
                src.write_text(original, encoding="utf-8")
            # a timeout decides nothing: slow tests, or a bug that loops
            verdict = {"failed": "caught", "timeout": "TIMEOUT"}.get(outcome, "SURVIVED")
            if verdict == "SURVIVED" and mu.equivalent:
                verdict = "survived (equivalent)"
            results.append((mu, verdict))
            print(f"[{i:2d}/{len(todo)}] {verdict:22s} {mu.name:28s} {mu.path} ({secs:.0f} s)", flush=True)
    caught = sum(v == "caught" for _, v in results)
    equivalent = [mu for mu, v in results if v == "survived (equivalent)"]
    survivors = [mu for mu, v in results if v == "SURVIVED"]
    timeouts = [mu for mu, v in results if v == "TIMEOUT"]
    print(f"\nmutations: {len(mutations)} listed, {len(todo)} tried, {caught} caught, "
          f"{len(equivalent)} equivalent survivors, {len(survivors)} behaviour-changing survivors, "
          f"{len(timeouts)} timed out (over {timeout:g} s), {len(problems)} stale")
    for mu in equivalent:
        print(f"  equivalent {mu.name}: {mu.equivalent}")
    for mu in survivors:
        print(f"  SURVIVOR {mu.name}: {mu.path}: {mu.old!r} -> {mu.new!r} passes {', '.join(mu.tests)}")
    for mu in timeouts:
        print(f"  TIMEOUT {mu.name}: {mu.path}: its tests ran past {timeout:g} s")
    for mu, v in results:
        if mu.equivalent and v == "caught":
            print(f"  note: {mu.name} is marked equivalent but was caught: drop the mark")
    return 1 if survivors or timeouts or problems or deselect else 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", help="comma-separated mutation names")
    parser.add_argument("--check", action="store_true", help="only report stale mutations")
    parser.add_argument("--list", action="store_true", help="list the mutations")
    parser.add_argument("--no-baseline", action="store_true", help="skip the unmutated run of every target")
    parser.add_argument("--timeout", type=float, default=TIMEOUT_S, help="seconds per mutation's tests")
    args = parser.parse_args(argv)
    chosen = MUTATIONS
    if args.only:
        names = args.only.split(",")
        unknown = sorted(set(names) - {mu.name for mu in MUTATIONS})
        if unknown:
            parser.error(f"unknown mutation(s): {', '.join(unknown)}")
        chosen = [mu for mu in MUTATIONS if mu.name in names]
    if args.list:
        for mu in chosen:
            print(f"{mu.name:28s} {mu.path}")
        return 0
    if args.check:
        problems = stale(chosen)
        print("\n".join(f"STALE {p}" for p in problems) or f"{len(chosen)} mutations, none stale")
        return 1 if problems else 0
    return run(chosen, args.timeout, not args.no_baseline)


if __name__ == "__main__":
    sys.exit(main())
