import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import torch

ROOT = pathlib.Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data"
SHARED = pathlib.Path(os.environ.get("SGLIB_SHARED", ROOT.parent / "shared"))
GOLDEN = SHARED / "golden"
REVISITOP = SHARED / "revisitop"
PHOTO_CACHE = pathlib.Path(os.environ.get("SGLIB_PHOTO_CACHE", ROOT / "data" / "photo_cache"))

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def golden_checkpoint(tmp_path_factory):
    """The golden ResNet-50 written in CVNet's release layout by the reference's own script."""
    weights, script = GOLDEN / "weights_R50.npz", GOLDEN / "make_checkpoint.py"
    if not weights.exists() or not script.exists():
        pytest.skip(f"golden weights not found at {weights} (../shared is missing on this machine)")
    out = tmp_path_factory.mktemp("ckpt") / "golden_R50.pyth"
    subprocess.run([sys.executable, str(script), str(weights), str(out)], check=True)
    return out


@pytest.fixture(scope="session")
def gnd_roxford():
    """The real revisited-Oxford ground truth from ../shared, read with the library's safe reader."""
    from sglib.data.revisitop import read_revisitop_gnd
    path = REVISITOP / "gnd_roxford5k.pkl"
    if not path.exists():
        pytest.skip(f"real ground truth not found at {path} (../shared beside the clone, or set SGLIB_SHARED)")
    return read_revisitop_gnd(path)


@pytest.fixture(scope="session")
def photos():
    """All manifest photos, fetched once into data/photo_cache (shared with `make demo` and the notebooks)."""
    from sglib.bundled.photos import fetch_all
    return fetch_all(PHOTO_CACHE)


TINY_N_DB, TINY_N_Q = 10, 3


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory):
    """A revisitop-format dataset of SYNTHETIC images: 10 database images, 3 queries with boxes."""
    from PIL import Image
    from sglib.data.revisitop import write_revisitop_gnd
    root = tmp_path_factory.mktemp("data")
    folder = root / "datasets" / "tiny_synthetic"
    (folder / "jpg").mkdir(parents=True)
    rng = np.random.default_rng(0)
    protos = rng.integers(0, 255, (TINY_N_Q, 6, 8, 3)).astype(np.uint8)
    imlist, qimlist, gnd = [], [], []
    for i in range(TINY_N_DB):
        base = protos[i % TINY_N_Q] if i < 6 else rng.integers(0, 255, (6, 8, 3)).astype(np.uint8)
        img = np.asarray(Image.fromarray(base).resize((96, 72), Image.BILINEAR)).astype(int)
        img = np.clip(img + rng.integers(-20, 20, img.shape), 0, 255).astype(np.uint8)
        Image.fromarray(img).save(folder / "jpg" / f"db_{i}.jpg")
        imlist.append(f"db_{i}")
    for k in range(TINY_N_Q):
        img = np.asarray(Image.fromarray(protos[k]).resize((112, 84), Image.BILINEAR))
        Image.fromarray(img).save(folder / "jpg" / f"q_{k}.jpg")
        qimlist.append(f"q_{k}")
        gnd.append({"bbx": (4.7, 3.2, 108.9, 80.5), "easy": [k], "hard": [k + 3], "junk": [9] if k == 0 else []})
    write_revisitop_gnd(folder / "gnd_tiny_synthetic.pkl", imlist, qimlist, gnd)
    return root


def load_npz(name):
    return np.load(DATA / name)
