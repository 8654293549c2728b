"""Training data: labelled image lists (the bundled split, or Google Landmarks v2), a seeded batch order and
augmentations that depend only on (seed, step, position), so a resumed or distributed run sees the same pixels.

Layouts read:

* the bundled training split, ``DATA_ROOT/datasets/synthetic_views_train/{train.csv, jpg/}``
  (``train.csv``: ``image,label,photo,context``; class = scene; no photo or scene of a test image);
* Google Landmarks v2, ``ROOT/train.csv`` (``id,url,landmark_id``) or ``ROOT/train_clean.csv``
  (``landmark_id,images`` with space-separated ids), images at ``ROOT/train/a/b/c/abc....jpg``
  (the first three characters of the id name the folders).
"""
from __future__ import annotations

import contextlib
import csv
import functools
import hashlib
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF

from ..data.preprocess import ImageReadError, load_image

BUNDLED_SPLIT = "synthetic_views_train"


@dataclass(frozen=True)
class TrainingSet:
    """Image paths with integer class labels ``0..C-1`` and the class names in label order."""

    paths: tuple
    labels: np.ndarray
    classes: tuple
    name: str = "training set"

    def __post_init__(self):
        object.__setattr__(self, "paths", tuple(str(p) for p in self.paths))
        object.__setattr__(self, "classes", tuple(str(c) for c in self.classes))
        labels = np.asarray(self.labels)
        if labels.ndim != 1 or len(labels) != len(self.paths) or (labels.size and labels.dtype.kind not in "iu"):
            raise ValueError(f"{self.name}: expected one integer label per image ({len(self.paths)} paths), "
                             f"got labels of shape {labels.shape} and dtype {labels.dtype}")
        if not self.paths:
            raise ValueError(f"{self.name}: no images")
        if labels.min() < 0 or labels.max() >= len(self.classes):
            raise ValueError(f"{self.name}: labels must lie in [0, {len(self.classes) - 1}], got "
                             f"[{labels.min()}, {labels.max()}]")
        if len(set(self.classes)) != len(self.classes):
            dup = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise ValueError(f"{self.name}: class names must be distinct, repeated: {dup[:5]}")
        object.__setattr__(self, "labels", labels.astype(np.int64))

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def fingerprint(self) -> str:
        """sha256 of the file names and labels (a resumed run checks it has the same data)."""
        h = hashlib.sha256()
        for p, y in zip(self.paths, self.labels):
            h.update(f"{os.path.basename(p)}\t{self.classes[y]}\n".encode())
        return h.hexdigest()[:24]

    def subset(self, keep_classes, name: str) -> "TrainingSet":
        """The images of ``keep_classes`` (names), relabelled ``0..len-1`` in the given order."""
        index = {c: i for i, c in enumerate(keep_classes)}
        rows = [i for i, y in enumerate(self.labels) if self.classes[y] in index]
        return TrainingSet([self.paths[i] for i in rows], [index[self.classes[self.labels[i]]] for i in rows],
                           list(keep_classes), name)

    def split_classes(self, n_val_classes: int, seed: int) -> tuple["TrainingSet", "TrainingSet | None"]:
        """(training set, validation set) with ``n_val_classes`` whole classes held out (seeded); 0 -> (self, None).

        Only classes with at least two images are held out: each validation image queries the others.
        """
        if isinstance(n_val_classes, bool) or not isinstance(n_val_classes, int) or n_val_classes < 0:
            raise ValueError(f"n_val_classes must be an integer >= 0, got {n_val_classes!r}")
        if n_val_classes == 0:
            return self, None
        counts = np.bincount(self.labels, minlength=self.n_classes)
        eligible = [c for c, n in zip(self.classes, counts) if n >= 2]
        if n_val_classes > len(eligible) or self.n_classes - n_val_classes < 2:
            raise ValueError(f"{self.name}: cannot hold out {n_val_classes} classes for validation: "
                             f"{len(eligible)} of {self.n_classes} classes have two or more images, and training "
                             "needs at least 2 classes left")
        held = set(np.random.default_rng([seed, 7]).choice(eligible, n_val_classes, replace=False).tolist())
        return (self.subset([c for c in self.classes if c not in held], f"{self.name} (training classes)"),
                self.subset([c for c in self.classes if c in held], f"{self.name} (validation classes)"))


@contextlib.contextmanager
def _csv_errors(path: Path):
    """Turn a csv that is not UTF-8 text, or that the csv module cannot parse, into a ValueError naming it."""
    try:
        yield
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: not UTF-8 text ({exc.reason}): expected a UTF-8 csv file") from None
    except csv.Error as exc:
        raise ValueError(f"{path}: not a readable csv file ({exc})") from None


def bundled_training_set(data_root, split: str = BUNDLED_SPLIT) -> TrainingSet:
    """The bundled benchmark's training split (``python -m sglib build-data`` writes it)."""
    folder = Path(data_root) / "datasets" / split
    if not (folder / "train.csv").is_file():
        raise ValueError(f"no training split at {folder}: run `python -m sglib build-data --data-root {data_root}` "
                         "(or `make data`) first")
    with _csv_errors(folder / "train.csv"), open(folder / "train.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise ValueError(f"{folder / 'train.csv'}: expected columns image,label and at least one row")
    for line, r in enumerate(rows, 2):
        if not r.get("image") or not r.get("label"):
            raise ValueError(f"{folder / 'train.csv'}:{line}: a row without an image or a label: {r}")
    names = sorted({r["label"] for r in rows})
    return TrainingSet([str(folder / "jpg" / f"{r['image']}.jpg") for r in rows],
                       [names.index(r["label"]) for r in rows], names, split)


def gldv2_image_path(root, image_id: str) -> Path:
    """``ROOT/train/a/b/c/abc....jpg`` for a GLDv2 image id (hexadecimal, at least 3 characters)."""
    if len(image_id) < 3 or not all(ch in "0123456789abcdef" for ch in image_id):
        raise ValueError(f"GLDv2 image id must be lower-case hexadecimal of 3+ characters, got {image_id!r}")
    return Path(root) / "train" / image_id[0] / image_id[1] / image_id[2] / f"{image_id}.jpg"


def gldv2_training_set(root, csv_name: str = "train_clean.csv", min_images_per_class: int = 2,
                       max_classes: int | None = None, check_files: bool = True) -> TrainingSet:
    """A Google Landmarks v2 training set from its csv (``train.csv`` or ``train_clean.csv``) and image tree.

    Args:
        min_images_per_class: drop landmarks with fewer images (ArcFace needs several views per class).
        max_classes: keep the landmarks with the most images, ties broken by id (a quick subset).
        check_files: drop (and report on stderr) images missing from the tree; an error if none is left.

    Classes are named by landmark id and ordered numerically; labels follow that order.
    """
    path = Path(root) / csv_name
    if not path.is_file():
        raise ValueError(f"GLDv2 csv not found: {path} (expected train.csv or train_clean.csv of the GLDv2 release)")
    if max_classes is not None and (isinstance(max_classes, bool) or not isinstance(max_classes, int)
                                    or max_classes < 2):
        raise ValueError(f"max_classes must be None or an integer >= 2, got {max_classes!r}")
    by_class: dict[int, list[str]] = {}
    seen: dict[str, int] = {}
    with _csv_errors(path), open(path, newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or ())
        clean = {"landmark_id", "images"} <= fields
        if not clean and not {"id", "landmark_id"} <= fields:
            raise ValueError(f"{path}: expected columns landmark_id,images (train_clean.csv) or id,url,landmark_id "
                             f"(train.csv), got {sorted(fields)}")
        for line, row in enumerate(reader, 2):
            try:
                landmark = int(row["landmark_id"])
                ids = row["images"].split() if clean else [row["id"]]
                for i in ids:
                    gldv2_image_path(root, i)          # checks the id
                    if i in seen:
                        raise ValueError(f"image {i} listed twice (landmarks {seen[i]} and {landmark})")
                    seen[i] = landmark
            except (TypeError, ValueError, AttributeError) as exc:
                why = (exc if isinstance(exc, ValueError) and "invalid literal" not in str(exc) else
                    f"expected an integer landmark_id and image ids, got {dict(row)}")
                raise ValueError(f"{path}:{line}: {why}") from None
            by_class.setdefault(landmark, []).extend(ids)
    images = {lm: [gldv2_image_path(root, i) for i in ids] for lm, ids in by_class.items()}
    if check_files:
        missing = [p for ps in images.values() for p in ps if not p.is_file()]
        if missing:
            print(f"GLDv2: {len(missing)} image(s) listed in {csv_name} are missing under {Path(root) / 'train'} "
                  f"and are left out (first: {missing[0]})", file=sys.stderr)
            gone = set(missing)
            images = {lm: [p for p in ps if p not in gone] for lm, ps in images.items()}
    kept = sorted((lm for lm, ps in images.items() if len(ps) >= min_images_per_class),
                  key=lambda lm: (-len(images[lm]), lm))
    if max_classes is not None:
        kept = kept[:max_classes]
    kept.sort()
    if len(kept) < 2:
        raise ValueError(f"{path}: {len(kept)} landmark(s) with at least {min_images_per_class} available images; "
                         "training needs 2 or more")
    paths = [p for lm in kept for p in images[lm]]
    labels = [i for i, lm in enumerate(kept) for _ in images[lm]]
    return TrainingSet(paths, labels, [str(lm) for lm in kept], f"GLDv2 {csv_name}")


# ----------------------------------------------------------------------------------- batches

def batch_indices(n: int, batch_size: int, seed: int, step: int) -> np.ndarray:
    """The image indices of global batch ``step``: epochs are seeded permutations (``rng([seed, epoch])``),
    cut into ``n // batch_size`` batches (the last, incomplete one dropped)."""
    if batch_size > n:
        raise ValueError(f"batch size {batch_size} is larger than the training set ({n} images)")
    epoch, k = divmod(step, n // batch_size)
    return _epoch_order(n, seed, epoch)[k * batch_size:(k + 1) * batch_size]


@functools.lru_cache(maxsize=2)
def _epoch_order(n: int, seed: int, epoch: int) -> np.ndarray:
    """One epoch's permutation, drawn once per epoch rather than once per step (1.5M images: ~20 ms each)."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    order.flags.writeable = False
    return order


def sample_seed(seed: int, step: int, position: int) -> int:
    """The augmentation seed of one sample: fixed by where it sits in the run, not by worker or process."""
    return int(np.random.SeedSequence([seed, step, position]).generate_state(1)[0])


# ----------------------------------------------------------------------------------- pixels

@dataclass(frozen=True)
class Augmentation:
    """Random resized crop to ``size`` x ``size`` then colour jitter, the usual landmark-training recipe.

    crop_scale: range of the crop's area as a fraction of the image; crop_ratio: range of its aspect ratio.
    brightness, contrast, saturation: factors drawn in ``[1 - a, 1 + a]``; hue: shift in ``[-h, h]``.
    """

    size: int = 224
    crop_scale: tuple = (0.35, 1.0)
    crop_ratio: tuple = (3 / 4, 4 / 3)
    brightness: float = 0.3
    contrast: float = 0.3
    saturation: float = 0.3
    hue: float = 0.05

    def __post_init__(self):
        if isinstance(self.size, bool) or not isinstance(self.size, int) or self.size < 32:
            raise ValueError(f"size must be an integer >= 32 (a stride-32 network needs one output cell), got "
                             f"{self.size!r}")
        lo, hi = self.crop_scale
        if not 0 < lo <= hi <= 1:
            raise ValueError(f"crop_scale must satisfy 0 < low <= high <= 1, got {self.crop_scale}")
        if not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must satisfy 0 < low <= high, got {self.crop_ratio}")
        for k in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, k) < 1:
                raise ValueError(f"{k} must be in [0, 1), got {getattr(self, k)}")
        if not 0 <= self.hue <= 0.5:
            raise ValueError(f"hue must be in [0, 0.5], got {self.hue}")

    def crop_box(self, rng: np.random.Generator, height: int, width: int) -> tuple[int, int, int, int]:
        """(top, left, h, w): torchvision's RandomResizedCrop sampling, from ``rng``."""
        area = height * width
        log_ratio = (math.log(self.crop_ratio[0]), math.log(self.crop_ratio[1]))
        for _ in range(10):
            target = area * rng.uniform(*self.crop_scale)
            ratio = math.exp(rng.uniform(*log_ratio))
            w, h = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
            if 0 < w <= width and 0 < h <= height:
                return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
        # fall back to a centre crop with the ratio clamped to the allowed range
        ratio = min(max(width / height, self.crop_ratio[0]), self.crop_ratio[1])
        w, h = (width, int(round(width / ratio))) if width / height < ratio else (int(round(height * ratio)), height)
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, image: torch.Tensor, seed: int) -> torch.Tensor:
        """(3, H, W) uint8 -> (3, size, size) uint8, a function of ``seed`` alone."""
        rng = np.random.default_rng(seed)
        top, left, h, w = self.crop_box(rng, image.shape[1], image.shape[2])
        out = TF.resized_crop(image, top, left, h, w, [self.size, self.size], antialias=True)
        out = TF.adjust_brightness(out, rng.uniform(1 - self.brightness, 1 + self.brightness))
        out = TF.adjust_contrast(out, rng.uniform(1 - self.contrast, 1 + self.contrast))
        out = TF.adjust_saturation(out, rng.uniform(1 - self.saturation, 1 + self.saturation))
        return TF.adjust_hue(out, rng.uniform(-self.hue, self.hue)) if self.hue else out


def read_uint8(path) -> torch.Tensor:
    """An image file as a (3, H, W) uint8 RGB tensor (ImageReadError if it cannot be read)."""
    return torch.from_numpy(np.ascontiguousarray(load_image(path))).permute(2, 0, 1).contiguous()


def resized_for_eval(image: torch.Tensor, long_side: int) -> torch.Tensor:
    """(3, H, W) uint8 -> the whole image with its long side at ``long_side`` (validation: no crop)."""
    h, w = image.shape[1:]
    s = long_side / max(h, w)
    return TF.resize(image, [max(32, round(h * s)), max(32, round(w * s))], antialias=True)


class AugmentedImages(torch.utils.data.Dataset):
    """``dataset[(index, seed)]`` -> (uint8 (3, S, S) crop, label, indices that could not be read).

    An unreadable image is replaced by the next readable one in the list (``index + 1``, ``+ 2``, ...),
    with the same seed: every batch keeps its size, so processes stay in step and a resumed run sees
    the same pixels; the loop logs the unreadable ones.
    """

    def __init__(self, data: TrainingSet, augment: Augmentation):
        self.data, self.augment = data, augment

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, item):
        index, seed = item
        failed = []
        for k in range(len(self.data)):
            i = (index + k) % len(self.data)
            try:
                return self.augment(read_uint8(self.data.paths[i]), seed), int(self.data.labels[i]), failed
            except ImageReadError:
                failed.append(i)
        raise ValueError(f"{self.data.name}: none of its {len(self.data)} images can be read")


def collate(samples):
    """(images (B, 3, S, S) uint8, labels (B,) int64, indices of the unreadable images met)."""
    return (torch.stack([s[0] for s in samples]), torch.tensor([s[1] for s in samples], dtype=torch.int64),
            [i for s in samples for i in s[2]])


__all__ = ["TrainingSet", "BUNDLED_SPLIT", "bundled_training_set", "gldv2_training_set", "gldv2_image_path",
           "batch_indices", "sample_seed", "Augmentation", "AugmentedImages", "collate", "read_uint8",
           "resized_for_eval"]
