"""Revisited Oxford/Paris ("revisitop") datasets on disk: ground-truth pickle + image folder.

Layout (the one the revisitop and CVNet tools use)::

    DATA_ROOT/datasets/NAME/gnd_NAME.pkl     # {"imlist", "qimlist", "gnd"}
    DATA_ROOT/datasets/NAME/jpg/IMG.jpg      # every imlist and qimlist image
    DATA_ROOT/datasets/revisitop1m/revisitop1m.txt
    DATA_ROOT/datasets/revisitop1m/jpg/...   # the 1M distractors, paths as listed in the txt

``gnd_NAME.pkl`` holds ``imlist`` (N database image names, no extension), ``qimlist`` (nq query
image names) and ``gnd``: one dict per query with ``easy``, ``hard``, ``junk`` (0-based indices
into ``imlist``) and ``bbx`` (query box ``[x1, y1, x2, y2]`` in pixels, or None).
Any dataset written in this format loads: roxford5k, rparis6k, and the benchmarks we generate
(written with :func:`write_revisitop_gnd`).

Example:
    >>> ds = load_revisitop("data", "roxford5k")           # doctest: +SKIP
    >>> ds.db_path(0), ds.query_path(0), ds.query_bbx(0)    # doctest: +SKIP
    (PosixPath('data/datasets/roxford5k/jpg/ashmolean_000283.jpg'), ..., (136.5, 34.1, 648.5, 955.7))
"""
from __future__ import annotations

import io
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path

from .._checks import check_box

IMAGE_DIR = "jpg"
IMAGE_EXT = ".jpg"
_KNOWN_EXTS = (".jpg", ".jpeg", ".png")
REVISITOP1M = "revisitop1m"
REVISITOP1M_SIZE = 1_001_001  # lines of the real revisitop1m.txt
_MISSING_SHOWN = 5


class DatasetError(ValueError):
    """A dataset folder, ground-truth file or image list is missing or malformed."""


class MissingImagesError(DatasetError):
    """Some image files a dataset lists are not on disk; ``missing`` holds all of their paths."""

    def __init__(self, message: str, missing: list):
        super().__init__(message)
        self.missing = missing


def missing_files_message(what: str, missing: list, total: int) -> str:
    """``"3 of 10 <what> missing: a, b, c"``; names the first few only, so 1M missing stays readable."""
    shown = ", ".join(str(p) for p in missing[:_MISSING_SHOWN])
    more = f", ... and {len(missing) - _MISSING_SHOWN} more" if len(missing) > _MISSING_SHOWN else ""
    return f"{len(missing)} of {total} {what} missing: {shown}{more}"


# ---------------------------------------------------------------------------------------------
# ground-truth pickle


class _DataOnlyUnpickler(pickle.Unpickler):
    """Refuses every global except numpy array reconstruction: a gnd file is plain data, and one
    downloaded from the internet must not be able to run code when loaded."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"), ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a gnd file holds only plain data")


def _as_name_list(value, key: str, source: str) -> list:
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise DatasetError(f"{source}: '{key}' must be a list of image names, got {type(value).__name__}")
    names = [str(v) for v in value]
    for i, n in enumerate(names):
        if not n or n.startswith(("/", "\\")) or ".." in Path(n).parts:
            raise DatasetError(f"{source}: '{key}'[{i}] = {n!r} is not a relative image name")
    return names


def _as_index_list(value, key: str, q: int, n_db: int, source: str) -> list:
    try:
        flat = list(value.ravel()) if hasattr(value, "ravel") else list(value)
        idx = [int(v) for v in flat]
        if any(int(v) != v for v in flat):
            raise TypeError
    except (TypeError, ValueError):
        raise DatasetError(f"{source}: gnd[{q}]['{key}'] must be a list of integer indices") from None
    bad = [i for i in idx if not 0 <= i < n_db]
    if bad:
        raise DatasetError(f"{source}: gnd[{q}]['{key}'] has {len(bad)} index(es) outside [0, {n_db}), "
                           f"e.g. {bad[0]}")
    if len(set(idx)) != len(idx):
        raise DatasetError(f"{source}: gnd[{q}]['{key}'] lists an image more than once")
    return idx


def _as_bbx(value, q: int, source: str):
    if value is None:
        return None
    try:
        return check_box(value, f"{source}: gnd[{q}]['bbx']")
    except ValueError as exc:
        raise DatasetError(str(exc)) from None


def validate_gnd(data, source: str = "gnd") -> dict:
    """Check a revisitop ground-truth dict and return it normalised.

    Returns ``{"imlist": [str], "qimlist": [str], "gnd": [{"easy": [int], "hard": [int],
    "junk": [int], "bbx": (x1, y1, x2, y2) | None, ...other keys kept}]}``; numpy arrays become
    lists. Raises :class:`DatasetError` naming the first problem (missing key, wrong type, index
    outside ``[0, len(imlist))``, an image in two of easy/hard/junk, empty box).
    """
    if not isinstance(data, dict):
        raise DatasetError(f"{source}: expected a dict with keys imlist, qimlist, gnd; got {type(data).__name__}")
    missing = [k for k in ("imlist", "qimlist", "gnd") if k not in data]
    if missing:
        raise DatasetError(f"{source}: missing key(s) {missing}; a revisitop gnd file has imlist, qimlist, gnd")
    imlist = _as_name_list(data["imlist"], "imlist", source)
    qimlist = _as_name_list(data["qimlist"], "qimlist", source)
    if not imlist:
        raise DatasetError(f"{source}: 'imlist' is empty")
    if len(set(imlist)) != len(imlist):
        raise DatasetError(f"{source}: 'imlist' names an image more than once")
    raw = data["gnd"]
    if not isinstance(raw, (list, tuple)) or len(raw) != len(qimlist):
        raise DatasetError(f"{source}: 'gnd' must be a list with one dict per query ({len(qimlist)}), "
                           f"got {type(raw).__name__} of length {len(raw) if hasattr(raw, '__len__') else '?'}")
    gnd = []
    for q, entry in enumerate(raw):
        if not isinstance(entry, dict):
            raise DatasetError(f"{source}: gnd[{q}] must be a dict, got {type(entry).__name__}")
        lacking = [k for k in ("easy", "hard", "junk") if k not in entry]
        if lacking:
            raise DatasetError(f"{source}: gnd[{q}] is missing key(s) {lacking}")
        out = dict(entry)
        for key in ("easy", "hard", "junk"):
            out[key] = _as_index_list(entry[key], key, q, len(imlist), source)
        if (set(out["easy"]) & set(out["hard"])) or (set(out["junk"]) & (set(out["easy"]) | set(out["hard"]))):
            raise DatasetError(f"{source}: gnd[{q}] puts an image in more than one of easy/hard/junk")
        out["bbx"] = _as_bbx(entry.get("bbx"), q, source)
        gnd.append(out)
    return {"imlist": imlist, "qimlist": qimlist, "gnd": gnd}


def read_revisitop_gnd(path) -> dict:
    """Read and validate a ``gnd_NAME.pkl`` file; returns the normalised dict of :func:`validate_gnd`.

    Raises :class:`DatasetError` if the file is missing, not a pickle, or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"ground-truth file not found: {path}")
    try:
        raw = path.read_bytes()
        data = _DataOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    except OSError as exc:
        raise DatasetError(f"could not read ground-truth file {path}: {exc}") from exc
    except Exception as exc:  # truncated or foreign bytes raise many types from inside pickle
        raise DatasetError(f"{path} is not a readable gnd pickle ({type(exc).__name__}: {exc})") from exc
    return validate_gnd(data, source=str(path))


def write_revisitop_gnd(path, imlist, qimlist, gnd) -> Path:
    """Validate and write a revisitop ground-truth pickle (atomically: temp file, then rename).

    Args:
        path: destination, conventionally ``DATA_ROOT/datasets/NAME/gnd_NAME.pkl``.
        imlist: N database image names without extension (files are ``jpg/NAME.jpg``).
        qimlist: nq query image names.
        gnd: nq dicts with ``easy``, ``hard``, ``junk`` (indices into imlist) and ``bbx``
            (``[x1, y1, x2, y2]`` or None).

    Example:
        >>> import tempfile
        >>> p = write_revisitop_gnd(Path(tempfile.mkdtemp()) / "gnd_toy.pkl", ["a", "b"], ["q"],
        ...                         [{"easy": [0], "hard": [], "junk": [1], "bbx": [0, 0, 5, 5]}])
        >>> read_revisitop_gnd(p)["gnd"][0]["bbx"]
        (0.0, 0.0, 5.0, 5.0)
    """
    path = Path(path)
    data = validate_gnd({"imlist": imlist, "qimlist": qimlist, "gnd": gnd}, source=str(path))
    # plain lists (bbx as list) so any revisitop tool, and older Pythons, read it back
    data["gnd"] = [{**g, "bbx": None if g["bbx"] is None else list(g["bbx"])} for g in data["gnd"]]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        pickle.dump(data, f, protocol=3)
    os.replace(tmp, path)
    return path


# ---------------------------------------------------------------------------------------------
# datasets


def image_file(images_dir, name: str) -> Path:
    """``images_dir / (name + ".jpg")``; a name that already ends in an image extension is kept."""
    return Path(images_dir) / (name if name.lower().endswith(_KNOWN_EXTS) else name + IMAGE_EXT)


@dataclass(repr=False)
class RevisitopDataset:
    """One revisitop-format dataset: names, ground truth, and where its images are.

    Attributes:
        name: dataset name, e.g. ``"roxford5k"``.
        root: the dataset folder (``DATA_ROOT/datasets/NAME``).
        imlist: N database image names; ``qimlist``: nq query image names.
        gnd: nq dicts ``{"easy", "hard", "junk": [int], "bbx": (x1, y1, x2, y2) | None}``.
    """

    name: str
    root: Path
    imlist: list
    qimlist: list
    gnd: list = field(default_factory=list)

    @property
    def images_dir(self) -> Path:
        return self.root / IMAGE_DIR

    @property
    def n_db(self) -> int:
        return len(self.imlist)

    @property
    def n_queries(self) -> int:
        return len(self.qimlist)

    def _check_index(self, i, n: int, what: str) -> int:
        if isinstance(i, bool) or not isinstance(i, int) and not hasattr(i, "__index__"):
            raise DatasetError(f"{what} index must be an integer, got {type(i).__name__}")
        i = int(i)
        if not 0 <= i < n:
            raise DatasetError(f"{what} index {i} out of range [0, {n}) for {self.name}")
        return i

    def db_path(self, i: int) -> Path:
        """Path of database image ``i`` (0-based index into imlist)."""
        return image_file(self.images_dir, self.imlist[self._check_index(i, self.n_db, "database")])

    def query_path(self, i: int) -> Path:
        """Path of query image ``i`` (the full image; crop with :meth:`query_bbx`)."""
        return image_file(self.images_dir, self.qimlist[self._check_index(i, self.n_queries, "query")])

    def query_bbx(self, i: int):
        """Query ``i``'s box ``(x1, y1, x2, y2)`` as floats, or None (use the whole image)."""
        return self.gnd[self._check_index(i, self.n_queries, "query")]["bbx"]

    def db_paths(self) -> list:
        return [image_file(self.images_dir, n) for n in self.imlist]

    def query_paths(self) -> list:
        return [image_file(self.images_dir, n) for n in self.qimlist]

    def missing_images(self) -> list:
        """Every database or query image path that is not a file (queries after the database)."""
        seen, missing = set(), []
        for p in self.db_paths() + self.query_paths():
            if p not in seen and not p.is_file():
                missing.append(p)
            seen.add(p)
        return missing

    def check_images(self) -> None:
        """Raise :class:`MissingImagesError` listing every missing image (first few named, plus the count)."""
        missing = self.missing_images()
        if missing:
            total = len(set(self.imlist) | set(self.qimlist))
            raise MissingImagesError(
                f"{self.name}: " + missing_files_message(f"images under {self.images_dir}", missing, total), missing)

    def __repr__(self) -> str:
        return (f"RevisitopDataset(name={self.name!r}, root='{self.root}', db_images={self.n_db}, "
                f"queries={self.n_queries})")


def dataset_dir(root, name: str) -> Path:
    """Resolve the dataset folder: ``root/datasets/NAME`` if it exists, else ``root`` itself when it
    holds ``gnd_NAME.pkl`` (so both the data root and the dataset folder are accepted)."""
    root = Path(root)
    nested = root / "datasets" / name
    if nested.is_dir():
        return nested
    if (root / f"gnd_{name}.pkl").is_file():
        return root
    raise DatasetError(f"dataset {name!r} not found: neither {nested} nor {root / f'gnd_{name}.pkl'} exists "
                       f"(expected layout DATA_ROOT/datasets/{name}/gnd_{name}.pkl + jpg/)")


def load_revisitop(root, name: str, require_images: bool = False) -> RevisitopDataset:
    """Load a revisitop-format dataset.

    Args:
        root: the data root (holding ``datasets/NAME/``) or the dataset folder itself.
        name: dataset name; the ground truth is ``gnd_NAME.pkl``.
        require_images: also check that every image file exists (:meth:`RevisitopDataset.check_images`).

    Raises:
        DatasetError: folder or gnd file missing/corrupt/malformed; MissingImagesError when
        ``require_images`` and images are missing.
    """
    if not isinstance(name, str) or not name or "/" in name or "\\" in name:
        raise DatasetError(f"dataset name must be a plain folder name, got {name!r}")
    folder = dataset_dir(root, name)
    data = read_revisitop_gnd(folder / f"gnd_{name}.pkl")
    ds = RevisitopDataset(name=name, root=folder, imlist=data["imlist"], qimlist=data["qimlist"], gnd=data["gnd"])
    if require_images:
        ds.check_images()
    return ds


# ---------------------------------------------------------------------------------------------
# revisitop1m distractors


def revisitop1m_dir(root) -> Path:
    """``root/datasets/revisitop1m`` if it exists, else ``root`` when it holds ``revisitop1m.txt``."""
    root = Path(root)
    nested = root / "datasets" / REVISITOP1M
    if (nested / f"{REVISITOP1M}.txt").is_file() or not (root / f"{REVISITOP1M}.txt").is_file():
        return nested
    return root


def _list_entry_path(jpg_dir: Path, entry: str) -> Path:
    # entries are relative to jpg/ (as the revisitop tools resolve them); tolerate a "jpg/" prefix
    if entry.startswith(IMAGE_DIR + "/"):
        entry = entry[len(IMAGE_DIR) + 1:]
    return image_file(jpg_dir, entry)


def load_revisitop1m_list(root, expected: int | None = None) -> list:
    """Read ``revisitop1m.txt``: one image path per line, relative to ``revisitop1m/jpg/``.

    Args:
        root: data root (holding ``datasets/revisitop1m/``) or the revisitop1m folder itself.
        expected: if set, the number of entries required (the real list has
            :data:`REVISITOP1M_SIZE` = 1,001,001).

    Returns the entries in file order. Raises :class:`DatasetError` if the file is missing, has
    blank lines between entries, absolute or ``..`` paths, duplicates, or the wrong count.
    """
    path = revisitop1m_dir(root) / f"{REVISITOP1M}.txt"
    if not path.is_file():
        raise DatasetError(f"revisitop1m image list not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(f"could not read {path}: {exc}") from exc
    entries = [line.strip() for line in lines]
    while entries and not entries[-1]:
        entries.pop()
    for i, e in enumerate(entries):
        if not e:
            raise DatasetError(f"{path}: line {i + 1} is blank")
        if e.startswith(("/", "\\")) or ".." in Path(e).parts:
            raise DatasetError(f"{path}: line {i + 1} ({e!r}) is not a relative image path")
    if len(set(entries)) != len(entries):
        raise DatasetError(f"{path}: lists {len(entries) - len(set(entries))} duplicate image path(s)")
    if expected is not None and len(entries) != expected:
        raise DatasetError(f"{path}: {len(entries)} entries, expected {expected}")
    return entries


def revisitop1m_image_paths(root, expected: int | None = None, require_images: bool = False) -> list:
    """Image paths of the revisitop1m distractors (under ``root``, relative when ``root`` is), in list order.

    ``require_images`` checks every file exists and raises :class:`MissingImagesError` listing
    the missing ones (first few named + count).
    """
    jpg_dir = revisitop1m_dir(root) / IMAGE_DIR
    paths = [_list_entry_path(jpg_dir, e) for e in load_revisitop1m_list(root, expected)]
    if require_images:
        missing = [p for p in paths if not p.is_file()]
        if missing:
            raise MissingImagesError("revisitop1m: " + missing_files_message(f"images under {jpg_dir}",
                                                                           missing, len(paths)), missing)
    return paths
