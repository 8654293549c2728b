"""The stability study: effects recomputed naively, sign rules, the plan's checks, the CLI's flags."""
import numpy as np
import pandas as pd
import pytest

from sglib.cli import build_parser
from sglib.evaluate.retrieval import RerankSettings
from sglib.experiments import stability as st
from sglib.experiments.tables import MODULE_SETTINGS, RERANK_ROW

ROWS = list(MODULE_SETTINGS) + [RERANK_ROW]


def _maps(values):
    """values: {(pool, seed): [mAP of each row, same for every protocol + an offset]}"""
    out = []
    for (pool, seed), maps in values.items():
        for row, m in zip(ROWS, maps):
            out.append({"pool": pool, "seed": seed, "row": row, "easy": m + 10, "medium": m, "hard": m - 20})
    return pd.DataFrame(out)


def test_module_effects_are_row_differences_in_ablation_order():
    maps = _maps({("a", 0): [40, 43, 44, 43.5, 49, 53], ("b", 0): [30, 32, 31, 33, 37, 35]})
    maps = maps.sample(frac=1.0, random_state=0)        # row order in the frame must not matter
    eff = st.module_effects(maps)
    assert list(eff.module.unique()) == ROWS[1:]
    a = eff[eff.pool == "a"].set_index("module")
    for prev, row, expect in zip(ROWS, ROWS[1:], [3, 1, -0.5, 5.5, 4]):
        assert a.loc[row, "medium"] == pytest.approx(expect) and a.loc[row, "hard"] == pytest.approx(expect), prev


def test_effect_summary_flags_sign_flips():
    maps = _maps({("a", 0): [40, 43, 44, 43.5, 49, 53], ("b", 0): [30, 32, 31, 33, 37, 35],
                  ("a", 1): [35, 37, 38, 38, 42, 43]})
    summary = st.effect_summary(st.module_effects(maps))
    scale = summary.loc["+ Scale-GeM", "Medium"]
    assert scale["mean"] == pytest.approx(np.mean([5.5, 4, 4]), abs=0.005)
    assert scale["std"] == pytest.approx(np.std([5.5, 4, 4]), abs=0.005)  # rounded to 0.01
    assert scale["sign holds"]
    assert not summary.loc["+ GeM+", "Medium"]["sign holds"]        # +1, -1, +1
    assert summary.loc["+ multi-scale", "Medium"]["sign holds"]     # +3, +2, +2
    assert not summary.loc[RERANK_ROW, "Medium"]["sign holds"]      # +4, -2, +1
    text = st.markdown_effects(summary)
    assert "+ Scale-GeM | +4.5" in text and "(sign flips)" in text.split("+ GeM+ |")[1].split("\n")[0]
    wide = st.build_maps_table(maps)
    assert wide.loc[("b", 0), ("+ GeM+", "medium")] == 31 and not wide.isna().any().any()


def test_empty_or_missing_effects():
    with pytest.raises(ValueError, match="no measured rows"):
        st.module_effects(pd.DataFrame(columns=["pool", "seed", "row", "easy", "medium", "hard"]))
    maps = _maps({("a", 0): [40, 41, 42, 43, 44, 45], ("b", 0): [30, 31, 32, 33, 34, 35]})
    maps.loc[(maps.pool == "b") & (maps.row == "+ GeM+"), "medium"] = np.nan
    summary = st.effect_summary(st.module_effects(maps))
    assert not summary.loc["+ GeM+", ("Medium", "sign holds")]


def test_zero_effect_is_not_a_held_sign():
    maps = _maps({("a", 0): [40, 40, 41, 42, 43, 44], ("b", 0): [30, 31, 32, 33, 34, 35]})
    assert not st.effect_summary(st.module_effects(maps)).loc["+ multi-scale", "Medium"]["sign holds"]


def test_rerank_gain_correlation():
    df = pd.DataFrame({"base_mP@10": [10, 20, 30, 40], "gain_medium": [-5, -1, 2, 3]})
    assert st.rerank_gain_correlation(df) == pytest.approx(1.0)
    df["gain_medium"] = [3, 2, -1, -5]
    assert st.rerank_gain_correlation(df) == pytest.approx(-1.0)
    df["gain_medium"] = 1.0
    assert np.isnan(st.rerank_gain_correlation(df))


def test_plan_validation():
    with pytest.raises(ValueError, match="pools"):
        st.StabilityPlan(pools=("c",))
    with pytest.raises(ValueError, match="seeds"):
        st.StabilityPlan(seeds=(0, 0))
    with pytest.raises(ValueError, match="K < M"):
        st.StabilityPlan(rerank=RerankSettings(M=10), rerank_ks=(10,))
    for bad in (dict(pools=("a", "a")), dict(pools="ab"), dict(seeds=(-1,)), dict(seeds=(True, 2)),
                dict(rerank_ks=()), dict(rerank_ks=(3, 3)), dict(backbones=("nope",)), dict(name="Full plan"),
                dict(build=(("n_landmarks", 3),)), dict(build=(("seed", 3),))):
        with pytest.raises(ValueError, match=list(bad)[0]):
            st.StabilityPlan(**bad)
    plan = st.StabilityPlan(build={"views_per_landmark": 5, "max_side": 128})
    assert plan.build == (("max_side", 128), ("views_per_landmark", 5)) and hash(plan)
    assert st.build_name(st.CI_PLAN, "a", 2) != st.build_name(st.FULL_PLAN, "a", 2)
    assert st.FULL_PLAN.seeds == (0, 1, 2) and st.FULL_PLAN.pools == ("a", "b")
    assert st.CI_PLAN.seeds == (0, 1, 2) and st.CI_PLAN.pools == ("a", "b")


def test_result_round_trips(tmp_path):
    maps = _maps({("a", 0): [40, 41, 40.5, 46, 50]})
    rr = pd.DataFrame([{"pool": "a", "seed": 0, "backbone": "x", "base": "GeM (p=3)", "whitened": True, "K": 3,
                        "base_mP@10": 50.0, "base_hard": 20.0, "base_medium": 40.0, "gain_easy": 1.0,
                        "gain_medium": 2.0, "gain_hard": 3.0}])
    res = st.StabilityResult(maps, rr, st.CI_PLAN.to_json())
    res.save(tmp_path / "s.json")
    back = st.StabilityResult.load(tmp_path / "s.json")
    pd.testing.assert_frame_equal(back.maps, maps)
    pd.testing.assert_frame_equal(back.rerank, rr)
    assert back.plan == st.CI_PLAN.to_json()
    (tmp_path / "other.json").write_text('{"maps": []}')
    with pytest.raises(ValueError, match="not a stability result"):
        st.StabilityResult.load(tmp_path / "other.json")


def test_cli_stability_flags():
    args = build_parser().parse_args(["stability", "--plan", "ci", "--seeds", "0", "1", "2", "--pools", "a"])
    assert args.seeds == [0, 1, 2] and args.pools == ["a"] and args.plan == "ci"
    with pytest.raises(SystemExit):
        build_parser().parse_args(["stability", "--pools", "c"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["stability", "--seeds", "-1"])


def test_rerank_grid_rows_match_single_evaluations():
    from sglib.evaluate.retrieval import evaluate_retrieval
    from sglib.experiments.ablations import rerank_grid
    rng = np.random.default_rng(0)
    x = rng.standard_normal((60, 8)).astype(np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    q = x[:4] + 0.3 * rng.standard_normal((4, 8)).astype(np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    gnd = [{"easy": [i], "hard": [i + 10, i + 20], "junk": [i + 30]} for i in range(4)]
    grid = rerank_grid(q, x, gnd, Ks=(1, 3), betas=(0.0, 0.15), M=20)
    assert len(grid) == 5 and not grid.isna().any().any()
    base = evaluate_retrieval(q, x, gnd).summary()
    assert grid.loc["no rerank", "medium"] == base["medium"] and grid.index[0] == "no rerank"
    expect = evaluate_retrieval(q, x, gnd, RerankSettings(M=20, K=3, beta=0.15)).summary()
    assert grid.loc["K=3, beta=0.15", "hard"] == expect["hard"]


def test_module_effects_refuse_a_ladder_with_a_gap():
    """Rows from another ladder (a missing step, or a name the ladder lacks) would turn two changes into one
    "effect": refused, naming the build."""
    maps = _maps({("a", 0): [40, 43, 44, 43.5, 49, 53]})
    with pytest.raises(ValueError, match=r"build \(a, 0\).*another ladder"):
        st.module_effects(maps[maps.row != "+ multi-scale"])
    renamed = maps.replace({"row": {"+ GeM+": "GeM+"}})
    with pytest.raises(ValueError, match="another ladder"):
        st.module_effects(renamed)
    assert len(st.module_effects(maps[maps.row.isin(ROWS[:3])])) == 2    # a start of the ladder is fine
