"""sglib.data.revisitop against the real revisited Oxford/Paris ground truth (../shared/revisitop beside the repository).

The images themselves are not available here: tests build a folder of *synthetic* tiny JPEGs named
after the real image list, which is all the loader looks at (file presence, not content).
"""
import io
import os
import pickle
import shutil

import numpy as np
import pytest
from PIL import Image

from conftest import REVISITOP
from sglib.data.revisitop import (REVISITOP1M_SIZE, DatasetError, MissingImagesError, RevisitopDataset,
                            load_revisitop, load_revisitop1m_list, read_revisitop_gnd,
                            revisitop1m_image_paths, validate_gnd, write_revisitop_gnd)

GND_DIR = REVISITOP
REAL = {"roxford5k": (4993, 70), "rparis6k": (6322, 70)}
FIRST_BBX = {"roxford5k": (136.5, 34.1, 648.5, 955.7), "rparis6k": (130.0, 17.0, 843.0, 732.0)}

needs_real_gnd = pytest.mark.skipif(not (GND_DIR / "gnd_roxford5k.pkl").is_file(),
                                    reason=f"real gnd files not found in {GND_DIR}")


def synthetic_jpeg_bytes(seed=0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def make_dataset_with_synthetic_images(tmp_path, name, skip=()):
    """DATA_ROOT/datasets/NAME with the real gnd pkl and one synthetic 8x8 JPEG per listed name."""
    folder = tmp_path / "datasets" / name
    (folder / "jpg").mkdir(parents=True)
    shutil.copy(GND_DIR / f"gnd_{name}.pkl", folder / f"gnd_{name}.pkl")
    with open(GND_DIR / f"gnd_{name}.pkl", "rb") as f:
        raw = pickle.load(f)
    jpeg = synthetic_jpeg_bytes()
    for n in set(raw["imlist"]) | set(raw["qimlist"]):
        if n not in skip:
            (folder / "jpg" / f"{n}.jpg").write_bytes(jpeg)
    return raw


@needs_real_gnd
@pytest.mark.parametrize("name", sorted(REAL))
def test_real_gnd_loads_with_counts_boxes_and_paths(tmp_path, name):
    raw = make_dataset_with_synthetic_images(tmp_path, name)
    ds = load_revisitop(tmp_path, name, require_images=True)
    n_db, nq = REAL[name]
    assert (ds.n_db, ds.n_queries, len(ds.gnd)) == (n_db, nq, nq)
    assert ds.imlist == raw["imlist"] and ds.qimlist == raw["qimlist"]
    for q in range(nq):  # naive comparison with the raw pickle
        for key in ("easy", "hard", "junk"):
            assert ds.gnd[q][key] == [int(v) for v in raw["gnd"][q][key]]
        assert ds.query_bbx(q) == tuple(float(v) for v in raw["gnd"][q]["bbx"])
    assert ds.query_bbx(0) == pytest.approx(FIRST_BBX[name])
    folder = tmp_path / "datasets" / name
    assert ds.root == folder
    assert ds.db_path(0) == folder / "jpg" / f"{raw['imlist'][0]}.jpg"
    assert ds.query_path(nq - 1) == folder / "jpg" / f"{raw['qimlist'][-1]}.jpg"
    assert len(ds.db_paths()) == n_db and all(p.is_file() for p in ds.query_paths())
    assert repr(ds) == (f"RevisitopDataset(name='{name}', root='{folder}', db_images={n_db}, queries={nq})")
    # the dataset folder itself is accepted as root too
    assert load_revisitop(folder, name).imlist == ds.imlist


@needs_real_gnd
def test_real_gnd_is_disjoint_and_in_range():
    # the validator's stricter rules (disjoint easy/hard/junk, non-empty boxes) hold on the real data
    for name, (n_db, nq) in REAL.items():
        data = read_revisitop_gnd(GND_DIR / f"gnd_{name}.pkl")
        assert len(data["gnd"]) == nq
        assert max(max(g["easy"] + g["hard"] + g["junk"]) for g in data["gnd"]) < n_db


@needs_real_gnd
def test_check_images_lists_every_missing_file(tmp_path):
    with open(GND_DIR / "gnd_roxford5k.pkl", "rb") as f:
        raw = pickle.load(f)
    gone = raw["imlist"][:6] + raw["qimlist"][:1]
    make_dataset_with_synthetic_images(tmp_path, "roxford5k", skip=set(gone))
    ds = load_revisitop(tmp_path, "roxford5k")  # images not required: loads
    with pytest.raises(MissingImagesError) as err:
        ds.check_images()
    msg = str(err.value)
    assert "7 of 5063" in msg and "and 2 more" in msg and f"{gone[0]}.jpg" in msg
    assert sorted(p.stem for p in err.value.missing) == sorted(gone)
    with pytest.raises(MissingImagesError):
        load_revisitop(tmp_path, "roxford5k", require_images=True)


def toy_gnd():
    return dict(imlist=["a", "b", "c"], qimlist=["q0", "q1"],
                gnd=[{"easy": [0], "hard": [1], "junk": [2], "bbx": [1, 2, 5, 7]},
                     {"easy": np.array([2]), "hard": [], "junk": [], "bbx": None}])


def test_write_then_load_roundtrip(tmp_path):
    path = write_revisitop_gnd(tmp_path / "datasets" / "toy" / "gnd_toy.pkl", **toy_gnd())
    ds = load_revisitop(tmp_path, "toy")
    assert isinstance(ds, RevisitopDataset)
    assert ds.imlist == ["a", "b", "c"] and ds.qimlist == ["q0", "q1"]
    assert ds.gnd[1]["easy"] == [2] and ds.query_bbx(0) == (1.0, 2.0, 5.0, 7.0) and ds.query_bbx(1) is None
    with open(path, "rb") as f:  # plain pickle readable by any revisitop tool
        plain = pickle.load(f)
    assert plain["gnd"][0]["bbx"] == [1.0, 2.0, 5.0, 7.0] and plain["gnd"][1]["easy"] == [2]
    assert not list(path.parent.glob("*.tmp"))
    with pytest.raises(DatasetError, match="out of range"):
        ds.db_path(3)
    with pytest.raises(DatasetError, match="out of range"):
        ds.query_bbx(-1)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("qimlist"), "missing key"),
    (lambda d: d.__setitem__("gnd", d["gnd"][:1]), "one dict per query"),
    (lambda d: d["gnd"][0].pop("junk"), r"gnd\[0\] is missing"),
    (lambda d: d["gnd"][1].__setitem__("easy", [3]), r"outside \[0, 3\)"),
    (lambda d: d["gnd"][1].__setitem__("easy", [-1]), "outside"),
    (lambda d: d["gnd"][0].__setitem__("hard", [0]), "more than one of easy/hard/junk"),
    (lambda d: d["gnd"][0].__setitem__("bbx", [5, 2, 1, 7]), "empty"),
    (lambda d: d["gnd"][0].__setitem__("bbx", [1, 2, 3]), "4 finite"),
    (lambda d: d["gnd"][0].__setitem__("easy", [0.5]), "integer"),
    (lambda d: d.__setitem__("imlist", ["a", "a", "c"]), "more than once"),
    (lambda d: d.__setitem__("imlist", ["../x", "b", "c"]), "not a relative"),
])
def test_malformed_gnd_is_rejected(tmp_path, mutate, message):
    data = toy_gnd()
    mutate(data)
    with pytest.raises(DatasetError, match=message):
        validate_gnd(data)
    # the same file on disk gives the same error, naming the file
    path = tmp_path / "datasets" / "bad" / "gnd_bad.pkl"
    path.parent.mkdir(parents=True)
    path.write_bytes(pickle.dumps(data))
    with pytest.raises(DatasetError, match=message) as err:
        load_revisitop(tmp_path, "bad")
    assert "gnd_bad.pkl" in str(err.value)


def test_unreadable_and_missing_files(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        load_revisitop(tmp_path, "roxford5k")
    folder = tmp_path / "datasets" / "roxford5k"
    folder.mkdir(parents=True)
    with pytest.raises(DatasetError, match="ground-truth file not found"):
        load_revisitop(tmp_path, "roxford5k")
    (folder / "gnd_roxford5k.pkl").write_text("this is not a pickle")
    with pytest.raises(DatasetError, match="not a readable gnd pickle"):
        load_revisitop(tmp_path, "roxford5k")
    (folder / "gnd_roxford5k.pkl").write_bytes(pickle.dumps(toy_gnd())[:-20])  # truncated
    with pytest.raises(DatasetError, match="not a readable gnd pickle"):
        load_revisitop(tmp_path, "roxford5k")
    (folder / "gnd_roxford5k.pkl").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DatasetError, match="expected a dict"):
        load_revisitop(tmp_path, "roxford5k")
    with pytest.raises(DatasetError, match="plain folder name"):
        load_revisitop(tmp_path, "../roxford5k")


def test_pickle_with_code_is_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo should-not-run",))

    path = tmp_path / "gnd_evil.pkl"
    path.write_bytes(pickle.dumps({"imlist": Evil(), "qimlist": [], "gnd": []}))
    with pytest.raises(DatasetError, match="refusing to load"):
        read_revisitop_gnd(path)


def test_numpy_arrays_in_gnd_are_accepted(tmp_path):
    data = toy_gnd()
    data["gnd"][0]["bbx"] = np.array([1.0, 2.0, 5.0, 7.0])
    data["gnd"][0]["junk"] = np.array([2], dtype=np.int64)
    path = tmp_path / "gnd_np.pkl"
    path.write_bytes(pickle.dumps(data))
    loaded = read_revisitop_gnd(path)
    assert loaded["gnd"][0]["junk"] == [2] and loaded["gnd"][0]["bbx"] == (1.0, 2.0, 5.0, 7.0)


def test_revisitop1m_list(tmp_path):
    folder = tmp_path / "datasets" / "revisitop1m"
    (folder / "jpg" / "0a").mkdir(parents=True)
    entries = ["0a/0a1b.jpg", "0a/0a2c.jpg", "0a/0a3d"]  # an entry without extension gets .jpg
    (folder / "revisitop1m.txt").write_text("\n".join(entries) + "\n\n")
    assert load_revisitop1m_list(tmp_path) == entries
    assert load_revisitop1m_list(folder) == entries
    paths = revisitop1m_image_paths(tmp_path)
    assert paths == [folder / "jpg" / "0a/0a1b.jpg", folder / "jpg" / "0a/0a2c.jpg", folder / "jpg" / "0a/0a3d.jpg"]
    with pytest.raises(DatasetError, match=f"expected {REVISITOP1M_SIZE}"):
        load_revisitop1m_list(tmp_path, expected=REVISITOP1M_SIZE)
    paths[0].write_bytes(synthetic_jpeg_bytes())
    with pytest.raises(MissingImagesError, match="2 of 3"):
        revisitop1m_image_paths(tmp_path, require_images=True)
    (folder / "revisitop1m.txt").write_text("a.jpg\n\nb.jpg\n")
    with pytest.raises(DatasetError, match="line 2 is blank"):
        load_revisitop1m_list(tmp_path)
    (folder / "revisitop1m.txt").write_text("a.jpg\n../b.jpg\n")
    with pytest.raises(DatasetError, match="not a relative"):
        load_revisitop1m_list(tmp_path)
    (folder / "revisitop1m.txt").write_text("a.jpg\na.jpg\n")
    with pytest.raises(DatasetError, match="duplicate"):
        load_revisitop1m_list(tmp_path)
    with pytest.raises(DatasetError, match="not found"):
        load_revisitop1m_list(tmp_path / "nowhere")
