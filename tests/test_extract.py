"""Sharded, resumable extraction and the feature cache (sglib.extract).

All images here are synthetic (seeded random noise written to tmp_path as PNG files).
"""
import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

from sglib.method.descriptors import DescriptorSettings
from sglib.scale.extract import Extractor, build_extractor, cache_key, cached_features, extract_features, run_shards
from sglib.scale.shards import (failed_images, finalize_job, job_status, load_features, prepare_job, read_image_list,
                                read_manifest, shard_path, write_image_list)
from sglib.models import SuperGlobalNet
from sglib.data.preprocess import load_network_input

ROOT = pathlib.Path(__file__).resolve().parents[1]
HELPER = ROOT / "tests" / "_extract_job.py"


def write_synthetic_images(folder, n, seed=0, sizes=((24, 32), (32, 24), (28, 28))):
    """n seeded random-noise PNGs (synthetic), sizes cycling through ``sizes`` (H, W)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        p = folder / f"synthetic_{i:03d}.png"
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    return paths


class CountingDescriber:
    """Mean colour and a cheap 'texture' value per channel (D = 6), counting the images it sees."""

    def __init__(self):
        self.calls = 0

    def __call__(self, x):
        self.calls += x.shape[0]
        return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], dim=1)


def make_extractor(describer=None, batch_size=1, **identity):
    return Extractor(describer or CountingDescriber(), load_network_input,
                     {"name": "mean-std", **identity}, batch_size=batch_size)


def naive_features(paths, extractor, bboxes=None):
    bboxes = bboxes or [None] * len(paths)
    return np.stack([extractor.describe_fn(load_network_input(p, b))[0].numpy() for p, b in zip(paths, bboxes)])


def test_rows_equal_per_image_computation_with_boxes_and_batches(tmp_path):
    paths = write_synthetic_images(tmp_path / "img", 11)
    boxes = [None] * 11
    boxes[4] = (2.7, 3.2, 20.9, 17.5)  # a query box, cropped with int() truncation
    expected = naive_features(paths, make_extractor(), boxes)
    for batch_size in (1, 3):
        out = tmp_path / f"out_b{batch_size}"
        manifest = extract_features(out, paths, make_extractor(batch_size=batch_size), boxes, shard_size=4,
                                    progress=False)
        feats = load_features(out)
        assert manifest["status"] == "complete" and manifest["dim"] == 6 and manifest["n_shards"] == 3
        assert feats.shape == (11, 6) and feats.dtype == np.float32
        np.testing.assert_allclose(feats, expected, rtol=1e-6, atol=1e-6)
        assert sorted(p.name for p in out.glob("shard_*.npy")) == [f"shard_0000{k}.npy" for k in range(3)]
    # the box changed row 4 only
    plain = naive_features(paths[4:5], make_extractor())
    assert not np.allclose(plain[0], expected[4])


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    paths = write_synthetic_images(tmp_path / "img", 40)
    write_image_list(tmp_path / "list.txt", paths)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}

    def job(out, sleep):
        cmd = [sys.executable, str(HELPER), str(tmp_path / "list.txt"), str(out), "4"]
        return cmd, {**env, "SGLIB_TEST_SLEEP": sleep}

    cmd, e = job(tmp_path / "ref", "0")
    subprocess.run(cmd, env=e, check=True, timeout=120)

    cmd, e = job(tmp_path / "killed", "0.1")  # ~0.4 s a shard of 4
    proc = subprocess.Popen(cmd, env=e)
    deadline = time.time() + 60
    while len(list((tmp_path / "killed").glob("shard_*.npy"))) < 3:
        assert proc.poll() is None and time.time() < deadline, "the job ended before it could be killed"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "killed").glob("shard_*.npy")}
    status = job_status(tmp_path / "killed")
    assert 3 <= len(status["done"]) < 10 and status["missing"]
    assert read_manifest(tmp_path / "killed")["status"] == "running"
    with pytest.raises(ValueError, match="incomplete.*missing shard"):
        load_features(tmp_path / "killed")

    cmd, e = job(tmp_path / "killed", "0")
    subprocess.run(cmd, env=e, check=True, timeout=120)
    after = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "killed").glob("shard_*.npy")}
    assert len(after) == 10
    assert all(after[name] == mtime for name, mtime in before.items()), "a finished shard was recomputed"
    resumed, reference = load_features(tmp_path / "killed"), load_features(tmp_path / "ref")
    assert resumed.shape == (40, 16) and np.isfinite(resumed).all()
    assert np.array_equal(resumed, reference)
    assert not list((tmp_path / "killed").glob(".*.tmp"))


def test_failed_images_are_nan_rows_listed_and_refused_by_default(tmp_path):
    paths = write_synthetic_images(tmp_path / "img", 7)
    corrupt = tmp_path / "img" / "corrupt.jpg"
    corrupt.write_bytes(b"this is not a JPEG")
    truncated = tmp_path / "img" / "truncated.png"
    truncated.write_bytes(pathlib.Path(paths[0]).read_bytes()[:60])
    missing = str(tmp_path / "img" / "missing.png")
    images = paths[:2] + [missing, str(corrupt)] + paths[2:5] + [str(truncated)] + paths[5:]
    out = tmp_path / "out"
    manifest = extract_features(out, images, make_extractor(), shard_size=3, progress=False)
    assert manifest["n_failed"] == 3
    failed = failed_images(out)
    assert [f["index"] for f in failed] == [2, 3, 7]
    assert "not found" in failed[0]["reason"] and failed[1]["path"] == str(corrupt)
    assert json.loads((out / "failed.json").read_text()) == failed
    with pytest.raises(ValueError, match=r"3 of 10 images failed.*missing\.png"):
        load_features(out)
    with pytest.warns(UserWarning, match="3 of 10 images failed"):
        feats = load_features(out, on_failed="warn")
    assert feats.shape == (10, 6)
    assert np.isnan(feats[[2, 3, 7]]).all()
    good = [i for i in range(10) if i not in (2, 3, 7)]
    np.testing.assert_allclose(feats[good], naive_features([images[i] for i in good], make_extractor()), atol=1e-6)

    # fixing the files and retrying recomputes only the shards that had failures
    Image.open(paths[0]).save(corrupt.with_suffix(".png"))
    corrupt.write_bytes(corrupt.with_suffix(".png").read_bytes())
    truncated.write_bytes(pathlib.Path(paths[1]).read_bytes())
    (tmp_path / "img" / "missing.png").write_bytes(pathlib.Path(paths[2]).read_bytes())
    untouched = shard_path(out, 3).stat().st_mtime_ns
    extract_features(out, images, make_extractor(), shard_size=3, retry_failed=True, progress=False)
    assert failed_images(out) == [] and np.isfinite(load_features(out)).all()
    assert shard_path(out, 3).stat().st_mtime_ns == untouched


def test_describer_errors_and_non_finite_outputs_become_failures(tmp_path):
    paths = write_synthetic_images(tmp_path / "img", 6, sizes=((20, 20),))
    Image.new("RGB", (20, 20), (0, 0, 0)).save(paths[1])  # the describer refuses black images
    Image.new("RGB", (20, 20), (255, 255, 255)).save(paths[4])  # and returns NaN for white ones

    def describe(x):
        flat = x.flatten(1)
        if (flat.max(dim=1).values < -1.5).any():
            raise ValueError("a black image cannot be described")
        out = flat.mean(dim=1, keepdim=True).repeat(1, 4)
        out[flat.min(dim=1).values > 1.5] = float("nan")
        return out

    # batches of 3 same-size images: the batch holding the black one fails, then is retried one by one
    ex = Extractor(describe, load_network_input, {"name": "refuses-black"}, batch_size=3)
    extract_features(tmp_path / "out", paths, ex, shard_size=6, progress=False)
    failed = failed_images(tmp_path / "out")
    assert [f["index"] for f in failed] == [1, 4]
    assert "black image" in failed[0]["reason"] and "NaN" in failed[1]["reason"]
    with pytest.warns(UserWarning):
        feats = load_features(tmp_path / "out", on_failed="warn")
    good = [0, 2, 3, 5]
    assert np.isnan(feats[[1, 4]]).all()
    np.testing.assert_allclose(feats[good], np.stack([describe(load_network_input(paths[i]))[0].numpy()
                                                      for i in good]), atol=1e-6)


def test_cache_reuses_same_settings_and_recomputes_on_any_change(tmp_path):
    paths = write_synthetic_images(tmp_path / "img", 9)
    describer = CountingDescriber()
    first = cached_features(tmp_path / "cache", paths, make_extractor(describer, scales=[1.0]), shard_size=4,
                            progress=False)
    assert describer.calls == 9
    again = cached_features(tmp_path / "cache", paths, make_extractor(describer, scales=[1.0]), progress=False)
    assert describer.calls == 9, "same settings and images must not recompute"
    assert np.array_equal(first, again)

    changed = make_extractor(describer, scales=[0.7, 1.0])
    assert cache_key(paths, changed) != cache_key(paths, make_extractor(scales=[1.0]))
    cached_features(tmp_path / "cache", paths, changed, progress=False)
    assert describer.calls == 18, "a changed setting must recompute"
    cached_features(tmp_path / "cache", paths, make_extractor(describer, batch_size=2, scales=[1.0]), progress=False)
    assert describer.calls == 27, "the batch size is part of the key"
    cached_features(tmp_path / "cache", paths[::-1], make_extractor(describer, scales=[1.0]), progress=False)
    assert describer.calls == 36, "another image order is another job"
    boxes = [None] * 8 + [(1, 1, 10, 10)]
    cached_features(tmp_path / "cache", paths, make_extractor(describer, scales=[1.0]), boxes, progress=False)
    assert describer.calls == 45, "a query box is part of the key"
    assert len(list((tmp_path / "cache").iterdir())) == 5


def test_cache_resumes_a_partial_job(tmp_path):
    paths = write_synthetic_images(tmp_path / "img", 8)
    describer = CountingDescriber()
    ex = make_extractor(describer)
    out = tmp_path / "cache" / cache_key(paths, ex)
    prepare_job(out, paths, ex, shard_size=2)
    run_shards(out, paths, ex, rank=0, world_size=2, progress=False)  # shards 0 and 2 of 4
    assert describer.calls == 4
    feats = cached_features(tmp_path / "cache", paths, ex, shard_size=3, progress=False)  # started layout kept
    assert describer.calls == 8 and read_manifest(out)["shard_size"] == 2
    np.testing.assert_allclose(feats, naive_features(paths, ex), atol=1e-6)


def test_other_job_in_folder_is_refused_and_overwrite_keeps_other_files(tmp_path):
    paths = write_synthetic_images(tmp_path / "img", 5)
    out = tmp_path / "out"
    extract_features(out, paths, make_extractor(p=3.0), shard_size=2, progress=False)
    (out / "notes.txt").write_text("user file")
    with pytest.raises(ValueError, match=r"different extraction job \(identity.*new folder.*overwrite=True"):
        extract_features(out, paths, make_extractor(p=4.6), shard_size=2, progress=False)
    with pytest.raises(ValueError, match="image_list_sha256"):
        extract_features(out, paths[:4], make_extractor(p=3.0), shard_size=2, progress=False)
    with pytest.raises(ValueError, match="shard_size"):
        extract_features(out, paths, make_extractor(p=3.0), shard_size=3, progress=False)
    extract_features(out, paths[:4], make_extractor(p=4.6), shard_size=3, overwrite=True, progress=False)
    assert load_features(out).shape == (4, 6) and (out / "notes.txt").read_text() == "user file"
    assert sorted(p.name for p in out.glob("shard_*.npy")) == ["shard_00000.npy", "shard_00001.npy"]


def test_incomplete_set_is_refused_with_missing_shards_listed(tmp_path):
    paths = write_synthetic_images(tmp_path / "img", 7)
    ex = make_extractor()
    out = tmp_path / "out"
    prepare_job(out, paths, ex, shard_size=2)
    assert run_shards(out, paths, ex, rank=1, world_size=2, progress=False) == [1, 3]
    with pytest.raises(ValueError, match="2 missing shard.*shard_00000.npy, shard_00002.npy.*Rerun"):
        load_features(out)
    with pytest.raises(ValueError, match="missing shard"):
        finalize_job(out)
    assert run_shards(out, paths, ex, rank=0, world_size=2, progress=False) == [0, 2]
    np.testing.assert_allclose(load_features(out), naive_features(paths, ex), atol=1e-6)  # finalises itself
    assert read_manifest(out)["status"] == "complete"


def test_damaged_shard_is_detected_and_recomputed(tmp_path):
    paths = write_synthetic_images(tmp_path / "img", 6)
    out = tmp_path / "out"
    extract_features(out, paths, make_extractor(), shard_size=2, progress=False)
    expected = load_features(out)
    shard_path(out, 1).write_bytes(shard_path(out, 1).read_bytes()[:100])  # truncated
    np.save(shard_path(out, 2), np.full((2, 6), np.inf, np.float32))  # non-finite
    status = job_status(out)
    assert status["done"] == [0] and set(status["invalid"]) == {1, 2}
    with pytest.warns(UserWarning, match="unusable"):
        extract_features(out, paths, make_extractor(), shard_size=2, progress=False)
    assert np.array_equal(load_features(out), expected)
    # after completion: values changed inside a still-valid .npy, then a shard deleted
    rows = np.load(shard_path(out, 1))
    np.save(shard_path(out, 1), rows + 1.0)
    with pytest.raises(ValueError, match=r"shard_00001.npy \(its bytes changed.*Rerun the same extraction"):
        load_features(out)
    shard_path(out, 0).unlink()
    with pytest.raises(ValueError, match="1 missing shard.*shard_00000.npy.*Rerun the same extraction"):
        load_features(out)
    # the advice works: the same extraction again recomputes exactly those shards
    with pytest.warns(UserWarning, match="shard_00001.npy is unusable"):
        extract_features(out, paths, make_extractor(), shard_size=2, progress=False)
    assert np.array_equal(load_features(out), expected)


def test_bad_arguments_raise_value_errors(tmp_path):
    paths = write_synthetic_images(tmp_path / "img", 2)
    with pytest.raises(ValueError, match="empty"):
        extract_features(tmp_path / "o", [], make_extractor())
    with pytest.raises(ValueError, match="2 boxes for 1"):
        extract_features(tmp_path / "o", paths[:1], make_extractor(), [None, None])
    with pytest.raises(ValueError, match="JSON"):
        Extractor(lambda x: x, load_network_input, {"f": object()})
    with pytest.raises(ValueError, match="holds no extraction job"):
        load_features(tmp_path / "img")
    with pytest.raises(ValueError, match=r"must return \(1, D\)"):
        extract_features(tmp_path / "o2", paths, Extractor(lambda x: x[0], load_network_input, {"n": 1}),
                         progress=False)


def test_image_list_file_round_trip(tmp_path):
    paths = [str(tmp_path / "a b.jpg"), str(tmp_path / "c.jpg")]
    write_image_list(tmp_path / "list.txt", paths, [None, (1.5, 2, 30, 40.25)])
    assert read_image_list(tmp_path / "list.txt") == (paths, [None, [1.5, 2.0, 30.0, 40.25]])
    (tmp_path / "bad.txt").write_text("x.jpg\t1 2 3\n")
    with pytest.raises(ValueError, match="bad.txt:1: the box must be 4 numbers"):
        read_image_list(tmp_path / "bad.txt")


def test_build_extractor_matches_network_and_keys_on_weights_and_settings(tmp_path):
    torch.manual_seed(0)
    net = SuperGlobalNet(depth=50).eval()
    settings = DescriptorSettings(scales=(0.7071, 1.0))
    paths = write_synthetic_images(tmp_path / "img", 2, sizes=((40, 48),))
    ex = build_extractor(net, settings)
    feats = cached_features(tmp_path / "cache", paths, ex, progress=False)
    expected = torch.cat([net.describe_with(load_network_input(p), settings) for p in paths]).numpy()
    np.testing.assert_allclose(feats, expected, rtol=1e-5, atol=1e-6)
    assert feats.shape == (2, 2048)

    assert cache_key(paths, build_extractor(net, DescriptorSettings(scales=(1.0,)))) != cache_key(paths, ex)
    assert cache_key(paths, build_extractor(net, settings, max_side=32)) != cache_key(paths, ex)
    with torch.no_grad():
        net.head.fc.bias[0] += 1.0  # other weights
    assert cache_key(paths, build_extractor(net, settings)) != cache_key(paths, ex)


@pytest.mark.parametrize("restore_times", [True, False])
def test_an_image_edited_in_place_is_extracted_again_even_with_its_size_and_times_restored(tmp_path, restore_times):
    """Issue 21: same size, new content, modification time put back with os.utime (or left changed)."""
    import os
    import warnings
    from sglib.data.preprocess import load_image
    paths = []
    for i in range(3):
        p = tmp_path / f"synthetic_{i}.bmp"   # uncompressed: an edit keeps the size
        Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(p)
        paths.append(str(p))
    ex = Extractor(describe_fn=lambda x: x.mean(dim=(2, 3)),
                   load_fn=lambda p, b: torch.tensor(load_image(p)).permute(2, 0, 1)[None].float(),
                   identity={"name": "synthetic-channel-mean"})
    first = cached_features(tmp_path / "cache", paths, ex, shard_size=2, progress=False)
    st = os.stat(paths[1])
    Image.fromarray(np.full((8, 8, 3), 200, np.uint8)).save(paths[1])   # same size on disk (BMP)
    assert os.stat(paths[1]).st_size == st.st_size
    if restore_times:
        os.utime(paths[1], ns=(st.st_atime_ns, st.st_mtime_ns))
    with warnings.catch_warnings(record=True):
        warnings.simplefilter("always")
        second = cached_features(tmp_path / "cache", paths, ex, shard_size=2, progress=False)
    assert first[1].tolist() == [40.0] * 3 and second[1].tolist() == [200.0] * 3
    assert np.array_equal(first[[0, 2]], second[[0, 2]])
