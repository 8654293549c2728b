import json

import numpy as np
import pytest
from PIL import Image

from sglib.bundled.crops import crop_boxes, distractor_photo_pool, write_distractor_crops
from sglib.bundled.photos import Photo
from sglib.evaluate.retrieval import RerankSettings, evaluate_retrieval
from sglib.evaluate.streaming import evaluate_with_distractors
from sglib.scale.distractors import SIM_BLOCK, fit_gaussian, simulated_distractors
from sglib.search import Database, knn


def unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def anisotropic(n, d, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d)) * np.linspace(2.0, 0.1, d)
    return rng.standard_normal((n, d)) @ a.T + rng.standard_normal(d)


# ------------------------------------------------------------------------------------------ simulation

def test_fit_gaussian_matches_naive_mean_and_covariance():
    x = anisotropic(300, 7)
    model = fit_gaussian(x)
    assert np.allclose(model.mean, x.mean(0))
    assert np.allclose(model.covariance(), np.cov(x.T), atol=1e-10)
    assert np.all(np.diff(model.std) <= 0)
    a = 0.3
    shrunk = fit_gaussian(x, shrinkage=a).covariance()
    c = np.cov(x.T)
    assert np.allclose(shrunk, (1 - a) * c + a * np.trace(c) / 7 * np.eye(7), atol=1e-10)


def test_fit_gaussian_drops_null_directions_when_n_below_dim():
    x = np.random.default_rng(0).standard_normal((5, 20))
    model = fit_gaussian(x)
    assert model.basis.shape == (20, 4)  # 5 centred rows span 4 directions
    assert np.allclose(model.covariance(), np.cov(x.T), atol=1e-10) and np.allclose(model.mean, x.mean(0))
    assert fit_gaussian(np.random.default_rng(0).standard_normal((5, 20)), shrinkage=0.1).basis.shape == (20, 20)


def test_simulated_samples_match_model_mean_and_covariance():
    x = anisotropic(1000, 6, seed=1)
    model = fit_gaussian(x)
    sim = simulated_distractors(model, 200_000, seed=5, normalize=False).astype(np.float64)
    # naive recomputation of the sample moments
    mean = sim.sum(0) / len(sim)
    cov = (sim - mean).T @ (sim - mean) / (len(sim) - 1)
    scale = np.sqrt(np.diag(model.covariance()))
    assert np.abs(mean - model.mean).max() < 0.02 * scale.max()
    assert np.abs(cov - model.covariance()).max() < 0.03 * np.abs(model.covariance()).max()


def test_simulated_unit_norm_rows_keep_the_real_statistics():
    real = unit(anisotropic(2000, 32, seed=2) + 3.0)
    model = fit_gaussian(real)
    sim = simulated_distractors(model, 50_000, seed=0)
    assert sim.dtype == np.float32
    assert np.allclose(np.linalg.norm(sim, axis=1), 1, atol=1e-5)
    # unit-norm data: E|x|^2 = 1, so normalising the Gaussian samples changes the moments only a little
    assert np.abs(sim.mean(0) - real.mean(0)).max() < 0.02
    assert np.abs(np.cov(sim.T) - np.cov(real.T)).max() < 0.01


def test_simulated_is_deterministic_and_nested():
    model = fit_gaussian(unit(anisotropic(100, 8)))
    a = simulated_distractors(model, SIM_BLOCK + 100, seed=3)
    b = simulated_distractors(model, SIM_BLOCK + 100, seed=3)
    assert np.array_equal(a, b)
    assert np.array_equal(simulated_distractors(model, 50, seed=3), a[:50])
    assert np.array_equal(simulated_distractors(model, SIM_BLOCK + 7, seed=3), a[:SIM_BLOCK + 7])
    assert not np.array_equal(simulated_distractors(model, 50, seed=4), a[:50])
    assert simulated_distractors(model, 0).shape == (0, 8)


def test_simulated_memmap_and_float16(tmp_path):
    model = fit_gaussian(unit(anisotropic(100, 8)))
    path = tmp_path / "sim" / "d.npy"
    m = simulated_distractors(model, 1000, seed=1, dtype=np.float16, path=path)
    assert isinstance(m, np.memmap) and m.dtype == np.float16 and m.shape == (1000, 8)
    assert np.array_equal(m, simulated_distractors(model, 1000, seed=1, dtype=np.float16))
    assert np.abs(m - simulated_distractors(model, 1000, seed=1)).max() < 1e-3
    stamp = path.stat().st_mtime_ns
    again = simulated_distractors(model, 1000, seed=1, dtype=np.float16, path=path)
    assert path.stat().st_mtime_ns == stamp and np.array_equal(again, m)   # reused, not rewritten
    other = simulated_distractors(model, 1000, seed=2, dtype=np.float16, path=path)
    assert not np.array_equal(other, m)                                   # other seed: rewritten
    assert not list(path.parent.glob(".*.tmp"))


def test_simulation_bad_input():
    model = fit_gaussian(unit(anisotropic(50, 4)))
    with pytest.raises(ValueError, match="non-negative"):
        simulated_distractors(model, -1)
    with pytest.raises(ValueError, match="dtype"):
        simulated_distractors(model, 10, dtype=np.int32)
    with pytest.raises(ValueError, match="GaussianModel"):
        simulated_distractors(np.zeros(4), 10)
    with pytest.raises(ValueError, match="NaN"):
        fit_gaussian(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="n >= 2"):
        fit_gaussian(np.ones((1, 4)))
    with pytest.raises(ValueError, match="identical"):
        fit_gaussian(np.ones((3, 4)))
    with pytest.raises(ValueError, match="shrinkage"):
        fit_gaussian(np.eye(4), shrinkage=1.5)


# ------------------------------------------------------------------------------------------ real crops

def test_crop_boxes_cover_distinct_regions():
    w, h = 200, 120
    boxes = crop_boxes(w, h)
    assert len(boxes) == 2 * (1 + 4 + 9 + 25)
    assert len(set(boxes)) == len(boxes)
    plain = [b for b in boxes if not b[4]]
    assert sorted(plain) == sorted((x1, y1, x2, y2, False) for x1, y1, x2, y2, f in boxes if f)
    covered = np.zeros((h, w), int)
    for x1, y1, x2, y2, _ in plain:
        assert 0 <= x1 < x2 <= w and 0 <= y1 < y2 <= h
        covered[y1:y2, x1:x2] += 1
    assert covered.min() >= 4                          # every pixel in a crop of each scale
    small = [b for b in plain if b[2] - b[0] == 70]    # scale 0.35
    assert len({(b[0], b[1]) for b in small}) == 25
    with pytest.raises(ValueError, match="scales"):
        crop_boxes(10, 10, scales=(1.5,))
    with pytest.raises(ValueError, match="positive"):
        crop_boxes(0, 10)


def _fake_photos(tmp_path):
    photos = []
    for i, (key, group) in enumerate([("pkg/landmark_a.png", "scene_a"), ("pkg/landmark_b.png", None),
                                      ("pkg/mate_of_a.png", "scene_a"), ("pkg/background.png", None),
                                      ("pkg/distractor.png", "scene_d"), ("pkg/mate_of_d.png", "scene_d"),
                                      ("pkg/train.png", None)]):
        path = tmp_path / key.replace("/", "_")
        # synthetic test images: a horizontal ramp, so flips and positions are visible in the pixels
        ramp = np.tile(np.linspace(0, 255, 96, dtype=np.float32), (64, 1))
        img = np.stack([ramp, np.full_like(ramp, 20 * i), 255 - ramp], -1).astype(np.uint8)
        Image.fromarray(img).save(path)
        photos.append(Photo(key=key, path=str(path), source="synthetic-test", sha256=f"{i:064d}", group=group))
    bench = tmp_path / "bench"
    bench.mkdir()
    roles = {"landmarks": ["pkg/landmark_a.png", "pkg/landmark_b.png"], "backgrounds": ["pkg/background.png"],
             "distractors": ["pkg/distractor.png"], "train": ["pkg/train.png"]}
    (bench / "meta_synthetic_views.json").write_text(json.dumps({"roles": roles}))
    return photos, bench


def test_photo_pool_excludes_landmarks_backgrounds_and_their_scenes(tmp_path):
    photos, bench = _fake_photos(tmp_path)
    pool, excluded = distractor_photo_pool(photos, bench)
    assert [p.key for p in pool] == ["pkg/distractor.png", "pkg/mate_of_d.png", "pkg/train.png"]
    assert set(excluded) == {"pkg/landmark_a.png", "pkg/landmark_b.png", "pkg/mate_of_a.png", "pkg/background.png"}
    assert "scene_a" in excluded["pkg/mate_of_a.png"]
    pool, _ = distractor_photo_pool(photos, bench, exclude_roles=("landmarks",))
    assert "pkg/background.png" in [p.key for p in pool]
    with pytest.raises(ValueError, match="not roles"):
        distractor_photo_pool(photos, bench, exclude_roles=("queries",))
    with pytest.raises(ValueError, match="not found"):
        distractor_photo_pool(photos, tmp_path / "nowhere")
    with pytest.raises(ValueError, match="differ"):
        distractor_photo_pool(photos[1:], bench)


def test_real_benchmark_pool_has_no_landmark(photos, tmp_path):
    """On a benchmark built here from the real photos, tiny (1 s): the notebooks build the full one later."""
    from sglib.bundled import build_synthetic_views
    bench = build_synthetic_views(tmp_path, photos, seed=3, n_landmark_scenes=3, views_per_landmark=1,
                                  n_distractor_views=1, n_distractor_scenes=1, n_background_scenes=2,
                                  n_train_background_scenes=1, train_views_per_class=1, n_train_scenes=2, max_side=64,
                                  progress=False)
    meta = bench / "meta_synthetic_views.json"
    pool, excluded = distractor_photo_pool(photos, meta.parent)
    roles = json.loads(meta.read_text())["roles"]
    keys = {p.key for p in pool}
    assert keys and not keys & set(roles["landmarks"]) and not keys & set(roles["backgrounds"])
    landmark_groups = {p.group for p in photos if p.key in roles["landmarks"] and p.group}
    assert not {p.group for p in pool} & landmark_groups


def test_write_crops(tmp_path):
    photos, bench = _fake_photos(tmp_path)
    pool, _ = distractor_photo_pool(photos, bench)
    crops = write_distractor_crops(pool, tmp_path / "crops", scales=(1.0, 0.5), max_side=64, progress=False)
    assert len(crops) == 3 * 2 * (1 + 9)
    assert {r["photo"] for r in crops.records} == {p.key for p in pool}
    sizes = set()
    for path, rec in zip(crops.paths, crops.records):
        with Image.open(path) as im:
            assert max(im.size) <= 64
            sizes.add(im.size)
    assert len(sizes) == 2                                   # full photo and half crops
    # a flipped crop is the mirror of its unflipped twin (up to JPEG)
    a = np.asarray(Image.open(crops.paths[0]), np.float32)
    b = np.asarray(Image.open(crops.paths[1]), np.float32)
    assert crops.records[1]["flipped"] and np.abs(a[:, ::-1] - b).mean() < 4 and np.abs(a - b).mean() > 40
    # two positions of the ramp differ
    left = np.asarray(Image.open(crops.paths[2]), np.float32)[..., 0].mean()
    right = np.asarray(Image.open(crops.paths[6]), np.float32)[..., 0].mean()
    assert crops.records[2]["box"][0] == 0 and crops.records[6]["box"][0] > 0 and abs(left - right) > 10
    stamp = crops.paths[0].stat().st_mtime_ns
    again = write_distractor_crops(pool, tmp_path / "crops", scales=(1.0, 0.5), max_side=64, progress=False)
    assert again.paths == crops.paths and crops.paths[0].stat().st_mtime_ns == stamp
    sub = write_distractor_crops(pool, tmp_path / "crops", scales=(1.0, 0.5), max_side=64, max_crops=7,
                                 progress=False)
    assert len(sub) == 7 and sub.folder != crops.folder
    assert [r["box"] for r in sub.records] == [r["box"] for r in write_distractor_crops(
        pool, tmp_path / "crops2", scales=(1.0, 0.5), max_side=64, max_crops=7, progress=False).records]
    with pytest.raises(ValueError, match="no photos"):
        write_distractor_crops([], tmp_path / "crops")
    with pytest.raises(ValueError, match="max_crops"):
        write_distractor_crops(pool, tmp_path / "crops", max_crops=0)


# ------------------------------------------------------------------------------------------ evaluation

def _bench(seed=0, nq=6, n=80, d=16):
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((nq, d)))
    labels = rng.integers(0, nq, n)
    x = unit(centres[labels] + 0.8 * rng.standard_normal((n, d)))
    q = unit(centres + 0.3 * rng.standard_normal((nq, d)))
    gnd = []
    for i in range(nq):
        pos = np.flatnonzero(labels == i)
        gnd.append({"easy": pos[::2].tolist(), "hard": pos[1::2].tolist(), "junk": pos[:1].tolist()})
    return q, x, gnd, rng


def test_knn_over_parts_equals_knn_on_concatenation():
    rng = np.random.default_rng(0)
    a = rng.integers(-2, 3, (30, 4)).astype(np.float32)   # many ties
    b = rng.integers(-2, 3, (50, 4)).astype(np.float32)
    q = rng.integers(-2, 3, (5, 4)).astype(np.float32)
    s2, i2 = knn(q, np.concatenate([a, b]), 20)
    for block_size in (None, 7, 30):                       # blocks inside one part and across both
        s, i = knn(q, [a, b], 20, block_size=block_size)
        assert np.array_equal(i, i2) and np.array_equal(s, s2)
    np.testing.assert_array_equal(Database([a, b]).take(np.array([79, 0, 30])), np.stack([b[49], a[0], b[0]]))
    with pytest.raises(ValueError, match="k must be"):
        knn(q, [a, b], 81)


@pytest.mark.parametrize("rerank", [None, RerankSettings(M=40, K=4, beta=0.15)])
def test_evaluate_with_distractors_equals_full_evaluation(rerank):
    q, x, gnd, rng = _bench()
    base = evaluate_with_distractors(q, x, None, gnd, rerank=rerank)
    ref = evaluate_retrieval(q, x, gnd, rerank)
    for p in ("easy", "medium", "hard"):
        assert base[p]["map"] == pytest.approx(ref[p]["map"], abs=1e-12)
    dis = unit(rng.standard_normal((300, 16)) + 0.5 * q.mean(0))
    got = evaluate_with_distractors(q, x, [dis[:100], dis[100:]], gnd, rerank=rerank)
    ref = evaluate_retrieval(q, np.concatenate([x, dis]), gnd, rerank)
    assert got.N == 380
    for p in ("easy", "medium", "hard"):
        assert got[p]["map"] == pytest.approx(ref[p]["map"], abs=1e-12)
        assert np.allclose(got[p]["aps"], ref[p]["aps"])
    if rerank is None:  # adding items can only push positives down
        assert all(got[p]["map"] <= base[p]["map"] + 1e-12 for p in ("easy", "medium", "hard"))


def test_evaluate_with_float16_memmap(tmp_path):
    q, x, gnd, _ = _bench(1)
    model = fit_gaussian(x)
    dis = simulated_distractors(model, 500, seed=0, dtype=np.float16, path=tmp_path / "d.npy")
    rerank = RerankSettings(M=30, K=3, beta=0.15)
    got = evaluate_with_distractors(q, x, dis, gnd, rerank=rerank)
    ref = evaluate_retrieval(q, np.concatenate([x, np.asarray(dis, np.float32)]), gnd, rerank)
    assert got["medium"]["map"] == pytest.approx(ref["medium"]["map"], abs=1e-12)
    with pytest.raises(ValueError, match="dimension"):
        evaluate_with_distractors(q, x, np.zeros((3, 5), np.float32), gnd)
    with pytest.raises(ValueError, match="queries"):
        evaluate_with_distractors(q[:2], x, dis, gnd)
    with pytest.raises(ValueError, match="NaN"):
        bad = np.array(dis, np.float32)
        bad[:] = np.nan
        evaluate_with_distractors(q, x, bad, gnd)
