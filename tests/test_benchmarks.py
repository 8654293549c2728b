"""Benchmarks from real photos: geometry of the ground truth, determinism, well-formed gnd, idempotent builds."""
import hashlib
import json

import numpy as np
import pytest
from PIL import Image
from scipy.ndimage import binary_dilation

from sglib.bundled import build_multiview_real, build_synthetic_views
from sglib.bundled import synthetic_views as sv
from sglib.data.revisitop import read_revisitop_gnd

TINY = dict(n_landmark_scenes=6, views_per_landmark=8, n_distractor_views=12, n_distractor_scenes=3,
            n_background_scenes=4, n_train_background_scenes=3, train_views_per_class=2, n_train_scenes=3,
            max_side=160, progress=False)


@pytest.fixture(scope="session")
def tiny(photos, tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    return out, build_synthetic_views(out, photos, seed=3, **TINY)


def _digest_tree(folder):
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# geometry, checked by rendering probe colours


def test_homography_maps_the_given_points():
    src = np.array([[0, 0], [10, 0], [10, 5], [0, 5]], float)
    dst = np.array([[3, 4], [20, 6], [19, 17], [2, 14]], float)
    H = sv.homography_from_points(src, dst)
    np.testing.assert_allclose(sv.project(H, src), dst, atol=1e-9)
    assert sv.polygon_area(sv.rect_corners((0, 0, 10, 5))) == pytest.approx(50)


@pytest.mark.parametrize("seed", range(6))
def test_query_region_lands_where_the_metadata_says(seed):
    """A landmark whose query region R is pure red (rest blue) on a black background with green occluders: red
    pixels of the rendered view lie inside the stored projected quad of R, and their count is the stored visible
    fraction times the quad's area."""
    rng = np.random.default_rng(seed)
    land = np.zeros((240, 360, 3), np.uint8)
    land[...] = (0, 0, 255)
    rect = (60.0, 40.0, 300.0, 200.0)
    land[40:200, 60:300] = (255, 0, 0)
    settings = sv.ViewSettings(photometric=0.0, blur_prob=0.0, noise_prob=0.0, occluder_prob=(0.9, 0.5),
                               window_frac=(0.5, 1.0))
    bg = Image.new("RGB", (400, 300), (0, 0, 0))
    occ = [Image.new("RGB", (400, 300), (0, 255, 0))]
    img, meta = sv.render_view(Image.fromarray(land), bg, occ, rng, settings, (320, 240), query_rect=rect)
    quad = np.array(meta["query_quad"])
    np.testing.assert_allclose(sv.project(np.array(meta["H"]), sv.rect_corners(rect)), quad, atol=1e-6)
    red = (img[..., 0] > 200) & (img[..., 1] < 60) & (img[..., 2] < 60)
    grown = binary_dilation(sv._polygon_mask(quad, (320, 240)), iterations=2)
    assert not (red & ~grown).any(), "red pixels outside the projected query region"
    area = abs(sv.polygon_area(quad))
    perimeter = np.linalg.norm(quad - np.roll(quad, 1, axis=0), axis=1).sum()
    # antialiased borders: allow a half-pixel band along the outline
    assert red.sum() / area == pytest.approx(meta["visible"], abs=0.01 + 0.5 * perimeter / area)
    for x1, y1, x2, y2 in meta["occluders"]:
        assert 0 <= x1 < x2 <= 320 and 0 <= y1 < y2 <= 240


def test_labels_follow_the_rule():
    assert sv.label_view(0.1, 0.0) == "junk"
    assert sv.label_view(0.7, 0.1) == "easy"
    assert sv.label_view(0.7, 0.8) == "hard"
    assert sv.label_view(0.4, 0.0) == "hard"


# ---------------------------------------------------------------------------------------------
# the tiny real-photo build


def test_synthetic_gnd_is_well_formed_and_matches_metadata(tiny):
    out, path = tiny
    gnd = read_revisitop_gnd(path / "gnd_synthetic_views.pkl")  # validates indices, disjointness, boxes
    meta = json.loads((path / "meta_synthetic_views.json").read_text())
    n_q = len(meta["roles"]["landmarks"])
    assert TINY["n_landmark_scenes"] <= n_q <= 2 * TINY["n_landmark_scenes"]  # up to 2 photos per scene
    assert len(gnd["imlist"]) == n_q * TINY["views_per_landmark"] + TINY["n_distractor_views"]
    assert len(gnd["qimlist"]) == n_q
    for name in gnd["imlist"] + gnd["qimlist"]:
        with Image.open(path / "jpg" / f"{name}.jpg") as im:
            assert max(im.size) <= TINY["max_side"]
    for qi, g in enumerate(gnd["gnd"]):
        assert g["easy"] or g["hard"]
        q = meta["queries"][qi]
        # bbx is the clipped bounding box of R projected by the query's own homography
        quad = sv.project(np.array(q["H"]), sv.rect_corners(q["query_rect"]))
        W, H = Image.open(path / "jpg" / f"{q['name']}.jpg").size
        expect = [max(0, quad[:, 0].min()), max(0, quad[:, 1].min()),
                  min(W, quad[:, 0].max()), min(H, quad[:, 1].max())]
        np.testing.assert_allclose(g["bbx"], expect, atol=1e-6)
        assert q["visible"] > 0.95  # the query shows its whole region
        for label in ("easy", "hard"):
            for di in g[label]:
                m = meta["database"][di]
                assert m["query"] == qi and m["photo"] == q["photo"]
                assert sv.distortion_strength(m) == pytest.approx(m["strength"])
                assert sv.label_view(m["visible"], m["strength"]) == label
        # every view of this query's photo is labelled by the rule, every view of a scene mate is junk,
        # everything else is a negative
        own = {di for di, m in enumerate(meta["database"]) if m["query"] == qi}
        mates = {di for di, m in enumerate(meta["database"])
                 if m["query"] not in (None, qi) and m["scene"] == q["scene"]}
        assert len(own) == TINY["views_per_landmark"]
        assert {di for di in own if meta["database"][di]["label"] == "junk"} | mates == set(g["junk"])
        assert own | mates == set(g["easy"]) | set(g["hard"]) | set(g["junk"])


def test_scene_groups_take_one_role_and_mates_are_junk(photos, tmp_path):
    """No two photos of one real scene take different roles; a query's scene mates' views are junk for it."""
    group_of = {p.key: p.scene for p in photos}
    multi = {s for s, members in sv.scenes_of(photos).items() if len(members) > 1}
    mates_seen = 0
    for seed in (0, 1, 2, 3):
        path = build_synthetic_views(tmp_path / f"s{seed}", photos, seed=seed, **TINY)
        meta = json.loads((path / "meta_synthetic_views.json").read_text())
        gnd = read_revisitop_gnd(path / "gnd_synthetic_views.pkl")["gnd"]
        role_of = {}
        for role, keys in meta["roles"].items():
            for key in keys:
                assert role_of.setdefault(group_of[key], role) == role, (key, role, role_of[group_of[key]])
        kind = {p.key: p.kind for p in photos}
        assert all(kind[k] == "landmark" for k in meta["roles"]["landmarks"])
        for qi, q in enumerate(meta["queries"]):
            for di, m in enumerate(meta["database"]):
                if m["query"] is not None and m["query"] != qi and m["scene"] == q["scene"]:
                    assert di in gnd[qi]["junk"] and di not in gnd[qi]["easy"] + gnd[qi]["hard"]
                    mates_seen += 1
        assert multi, "the manifest has no multi-photo scene group"
    assert mates_seen > 0, "no seed put a multi-photo scene among the landmarks: the junk rule went untested"


def test_photo_pools_are_disjoint_by_scene(photos):
    pools = sv.split_pools(photos)
    scenes = {k: {p.scene for p in v} for k, v in pools.items()}
    assert not scenes["a"] & scenes["b"]
    assert len(pools["a"]) + len(pools["b"]) == len(photos)
    for k in "ab":
        n_landmark = sum(sv.scene_kind(m) == "landmark" for m in sv.scenes_of(pools[k]).values())
        assert n_landmark >= 12, f"pool {k} has only {n_landmark} landmark scenes"
    assert sv.split_pools(list(reversed(photos))) == pools          # order of the input does not matter


def test_build_refuses_bad_counts_and_foreign_folders(photos, tmp_path):
    bad = [dict(n_landmark_scenes=0), dict(n_landmark_scenes=-1), dict(max_photos_per_scene=0),
           dict(n_background_scenes=0), dict(n_distractor_scenes=0), dict(views_per_landmark=0),
           dict(train_views_per_class=0), dict(n_train_scenes=0), dict(n_distractor_views=-3),
           dict(n_landmark_scenes=2.5)]
    for kwargs in bad:
        with pytest.raises(ValueError, match=list(kwargs)[0] if "distractor_scenes" not in str(kwargs)
                           else "n_distractor_scenes"):
            build_synthetic_views(tmp_path, photos, **{**TINY, **kwargs})
    for name in ("", ".", "..", "a/b"):
        with pytest.raises(ValueError, match="plain folder name"):
            build_synthetic_views(tmp_path, photos, name=name, **TINY)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("not a build")
    with pytest.raises(ValueError, match="not a synthetic_views build"):
        build_synthetic_views(tmp_path, photos, name="mine", **TINY)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "not a build"


def test_synthetic_roles_are_disjoint_and_training_classes_are_scenes(tiny, photos):
    _, path = tiny
    roles = json.loads((path / "meta_synthetic_views.json").read_text())["roles"]
    sets = {k: set(v) for k, v in roles.items()}
    names = list(sets)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            assert not sets[a] & sets[b], (a, b)
    scene = {p.key: p.scene for p in photos}
    train = (path.parent / "synthetic_views_train" / "train.csv").read_text().splitlines()
    assert train[0] == "image,label,photo,context" and len(train) == 1 + 3 * TINY["train_views_per_class"]
    rows = [line.split(",") for line in train[1:]]
    assert {r[2] for r in rows} <= sets["train"]
    assert len({r[1] for r in rows}) == 3
    for label in {r[1] for r in rows}:
        assert len({scene[r[2]] for r in rows if r[1] == label}) == 1  # a class is one scene


def test_no_photo_or_scene_of_a_test_image_is_in_the_training_split(tiny, photos):
    """Every photo drawn into a test image (landmark, distractor, context, occluder) and every photo drawn into a
    training image (its class's photo, context, occluders) come from disjoint sets of photos and of scenes."""
    _, path = tiny
    meta = json.loads((path / "meta_synthetic_views.json").read_text())
    test = {k for m in meta["queries"] + meta["database"] for k in (m["photo"], m["background"], *m["occluder_photos"])}
    rows = (path.parent / "synthetic_views_train" / "train.csv").read_text().splitlines()[1:]
    train = {k for r in rows for k in [r.split(",")[2], *r.split(",")[3].split(";")]}
    assert len(test) > 10 and len(train) > 5
    assert set(meta["roles"]["backgrounds"]) <= test and set(meta["roles"]["train_backgrounds"]) & train
    scene = {p.key: p.scene for p in photos}
    assert not test & train, sorted(test & train)
    assert not {scene[k] for k in test} & {scene[k] for k in train}


def test_context_sharing_counts_negatives_on_the_query_context():
    """Recomputed by hand: query 0 on context 'A'; its negatives in rank order are db 1 (A), 2 (B), 3 (A), 4 (B)
    (db 0 is its positive): the first 2 negatives share A half the time, all negatives half the time."""
    from sglib.experiments.benchmark_design import context_sharing
    meta = {"queries": [{"background": "A"}, {"background": "B"}],
            "database": [{"background": b} for b in "AABAB"]}
    gnd = [{"easy": [0], "hard": [], "junk": []}, {"easy": [], "hard": [2], "junk": [4]}]
    ranks = np.array([[0, 1, 2, 3, 4], [2, 4, 0, 1, 3]])
    out = context_sharing(meta, ranks, gnd, top=2)
    # query 1 (context B): negatives 0 (A), 1 (A), 3 (A): top-2 share 0, all 0
    assert out == {"top": 0.25, "chance": 0.25, "lift": 1.0}
    out = context_sharing(meta, ranks, gnd, top=1)
    assert out["top"] == 0.5 and out["lift"] == 2.0
    with pytest.raises(ValueError, match="do not match"):
        context_sharing(meta, ranks[:, :4], gnd)
    with pytest.raises(ValueError, match=r"gnd\[1\] names database ids outside \[0, 5\)"):
        context_sharing(meta, ranks, [gnd[0], {"easy": [], "hard": [5], "junk": []}])


def test_easy_and_hard_dials_make_easy_views_easier(tiny):
    """The measured labels follow the dials: most easy-dial views of a landmark are labelled easy, most
    hard-dial ones hard or junk."""
    _, path = tiny
    db = [m for m in json.loads((path / "meta_synthetic_views.json").read_text())["database"] if m["query"] is not None]
    easy = [m["label"] for m in db if m["dials"] == "easy"]
    hard = [m["label"] for m in db if m["dials"] == "hard"]
    assert easy and hard
    assert np.mean([lab == "easy" for lab in easy]) > 0.6
    assert np.mean([lab != "easy" for lab in hard]) > 0.8


def test_synthetic_build_is_deterministic_and_idempotent(tiny, photos, tmp_path):
    out, path = tiny
    before = _digest_tree(out)
    again = build_synthetic_views(tmp_path, photos, seed=3, **TINY)
    assert _digest_tree(tmp_path) == before  # byte-identical: gnd, meta, every jpg
    mtime = (again / "gnd_synthetic_views.pkl").stat().st_mtime_ns
    build_synthetic_views(tmp_path, photos, seed=3, **TINY)  # same parameters: nothing rewritten
    assert (again / "gnd_synthetic_views.pkl").stat().st_mtime_ns == mtime
    other = build_synthetic_views(tmp_path / "s4", photos, seed=4, **TINY)
    assert (other / "gnd_synthetic_views.pkl").read_bytes() != (again / "gnd_synthetic_views.pkl").read_bytes()


def test_synthetic_rejects_too_few_photos(photos, tmp_path):
    with pytest.raises(ValueError, match="landmark-kind scenes"):
        build_synthetic_views(tmp_path, photos[:10], **TINY)
    with pytest.raises(ValueError, match="pool must be"):
        build_synthetic_views(tmp_path, photos, pool="c", **TINY)


# ---------------------------------------------------------------------------------------------
# the real multi-view set


def test_multiview_real_gnd(photos, tmp_path):
    path = build_multiview_real(tmp_path, photos, max_side=128)
    gnd = read_revisitop_gnd(path / "gnd_multiview_real.pkl")
    meta = json.loads((path / "meta_multiview_real.json").read_text())
    assert len(gnd["imlist"]) == len(photos)
    groups = {p.group for p in photos if p.group}
    assert {q["group"] for q in meta["queries"]} == groups
    group_of = [d["group"] for d in meta["database"]]
    for q, g in zip(meta["queries"], gnd["gnd"]):
        assert g["junk"] == [q["db_index"]]
        positives = g["easy"] + g["hard"]
        assert positives and all(group_of[i] == q["group"] for i in positives)
        assert len(positives) == group_of.count(q["group"]) - 1
        W, H = Image.open(path / "jpg" / f"{q['name']}.jpg").size
        assert list(g["bbx"]) == [0, 0, W, H]
        assert ((path / "jpg" / f"{q['name']}.jpg").read_bytes() ==
            (path / "jpg" / f"{gnd['imlist'][q['db_index']]}.jpg").read_bytes())
    # Chartres, whose facade looks like Notre-Dame's, is a distractor only; Notre-Dame matches only Notre-Dame
    index = {d["photo"]: i for i, d in enumerate(meta["database"])}
    chartres, notre_dame = index["vismatch/chartres.jpg"], index["vismatch/notre_dame.jpg"]
    assert not any(chartres in g["easy"] + g["hard"] for g in gnd["gnd"])
    for q, g in zip(meta["queries"], gnd["gnd"]):
        assert (notre_dame in g["easy"] + g["hard"]) == (q["photo"] == "gcompris-qt-data/NDP_background.webp")
