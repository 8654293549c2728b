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
    import pickle
    path = REVISITOP / "gnd_roxford5k.pkl"
    if not path.exists():
        pytest.skip(f"real ground truth not found at {path}")
    with open(path, "rb") as f:
        return pickle.load(f)


@pytest.fixture(scope="session")
def photos():
    """All manifest photos, fetched once into data/photo_cache (shared with `make demo` and the notebooks)."""
    from sglib.photos import fetch_all
    return fetch_all(PHOTO_CACHE)


def load_npz(name):
    return np.load(DATA / name)
