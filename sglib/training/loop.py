"""Fine-tuning a backbone for retrieval: GeM (learned or fixed p) + projection + a margin loss, resumable and distributed.

The network is an :class:`~sglib.models.imagenet.ImageNetBackbone` with ``head`` = a ``Linear(C, dim)``
projection and ``gem_p`` = the GeM exponent; its training descriptor is exactly the extraction path's
single-scale one (``DescriptorSettings(scales=(1,), gem_p=None, regional=False)``):
``normalize(head(normalize(gem(feature_map(x), p))))``. The loss (:mod:`sglib.method.losses`) holds one
learned vector per class.

Choices, and why:

* The backbone runs in eval mode while its weights train: batch-norm statistics stay frozen (batches
  of 16-64 crops on a CPU give noisy ones) and EfficientNet's drop-connect is off, so a step is a
  function of (weights, batch) alone. That is what makes a resumed run bit-identical and two
  processes equal one on the union of their batches.
* The projection starts as the supervised whitening ("Lw", :mod:`sglib.models.whitening`) of the
  training images' GeM vectors (the kind of head the off-the-shelf baseline uses, here fitted at the crop
  size on the training classes), so step 0 is an off-the-shelf network with a whitening head,
  and each class vector as the mean of its images' descriptors ("imprinting"), so the margin loss
  starts from sensible logits instead of spending its first hundreds of steps finding the classes;
  ``projection_init="random"`` starts both from PyTorch's default initialisation instead.
* Learning rates: ``lr`` for the backbone, ``head_lr_mult * lr`` for the projection and the class
  vectors, ``p_lr_mult * lr`` for p (no weight decay on p, biases and norms). cirtorch trains p with
  10x the base rate, also the default here. Linear warm-up, then cosine decay to 0.
* Every random choice is a function of (seed, step, position) (:mod:`sglib.training.data`): the data
  order, the crops and the colours do not depend on workers, processes or interruptions. On the CPU a
  resumed run is bit-identical to an uninterrupted one (tested); on a GPU, cuDNN's algorithm choice is
  not made deterministic, so expect last-bit differences there.
* An unreadable image is replaced by the next readable one (and listed in ``failed.csv``), so batches
  keep their size; a loss or gradient that turns NaN or infinite stops the run with an error, keeping
  the last checkpoint.

Outputs in ``out_dir``: ``start.pt`` (the network before the first step), ``checkpoint.pt`` (resumable,
written atomically every ``checkpoint_every`` steps and at the end), ``model.pt`` (the final network;
:func:`sglib.models.load_trained` reads all three),
``log.csv`` (one row per step: loss, p, learning rate, gradient norm, throughput; validation mAP every
``val_every`` steps) and ``failed.csv`` (images that could not be read, skipped).

Distributed: under ``torchrun`` (RANK / WORLD_SIZE set) each process trains on its slice of every
global batch (``batch_size`` is the global size, a multiple of the process count) with
DistributedDataParallel: gloo on CPU, NCCL on GPU; rank 0 writes the files. A process that fails ends the
others at once with its reason, and one that runs no code for ``dist_timeout`` seconds (stopped, hung)
ends them after that (:func:`sglib.runtime.process_group`).
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import json
import math
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import tqdm

from .._settings import setting
from ..runtime import DEFAULT_DIST_TIMEOUT, check_dist_timeout, process_group, process_runs
from ..method.losses import LOSSES, make_loss
from ..method.pooling import gem
from ..method.descriptors import LEARNED_P_EPS
from ..models.imagenet import build_architecture, backbone_key, file_sha256, packaged_weights_path
from ..models.checkpoint import read_state_dict
from ..models.cvnet import load_cvnet
from ..models.trained import CVNET_BACKBONES, CVNET_TRAIN_RELU_PLUS, FORMAT, read_training_file, trained_backbone
from ..models.whitening import fit_learned_whitening
from ..data.preprocess import ImageReadError
from ..data.preprocess import normalize_pixels as normalize
from .data import (Augmentation, AugmentedImages, TrainingSet, batch_indices, collate, read_uint8, resized_for_eval,
                   sample_seed)

LOG_COLUMNS = ("step", "epoch", "loss", "gem_p", "lr", "grad_norm", "images_per_s", "failed", "val_map")
# columns that depend on the machine's speed, not on the computation
TIMING_COLUMNS = ("images_per_s",)
FAILED_COLUMNS = ("step", "image")
LW_SHRINKAGE = 0.3        # as the benchmark's training-split whitening (sglib.bundled.whitening)
LW_MAX_IMAGES = 2000      # the projection's initial whitening is fitted on at most this many images
DEFAULT_DIM, CVNET_DIM = 512, 2048   # CVNet keeps its trained 2048 x 2048 head
P_MAX = 20.0              # GeM p is kept in [1, P_MAX]: beyond, it is max pooling to float precision
# the process group's limit on one collective: a live process lags the others by at most rank 0's validation
# or head initialisation; a stopped or hung one is caught by the watch (dist_timeout) long before
COLLECTIVE_TIMEOUT_S = 2 * 3600.0


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the result of a run (a resumed run must have the same).

    The defaults train EfficientNet-Lite0 under ArcFace with a learned p, the paper's starting point.
    ``margin`` (radians) and ``scale`` are set for tens to thousands of classes and small batches; the
    face-recognition papers' 0.5 / 64 are the loss classes' own defaults.
    """

    backbone: str = setting("efficientnet_lite0", "an ImageNet backbone (efficientnet_lite0, mobilenet_v2, "
                                                  "resnet50, resnet101), or cvnet_r50 / cvnet_r101 (fine-tunes a "
                                                  "CVNet checkpoint)")
    weights: str | None = setting(None, "initial weights: torchvision state dict for resnet50/101, CVNet checkpoint "
                                        "for cvnet_r50/101 (default: the packaged ImageNet file)", parse=str)
    loss: str = setting("arcface", f"margin loss: {', '.join(LOSSES)}", metavar="{" + ",".join(LOSSES) + "}")
    margin: float = setting(0.2, "angular margin in radians (ArcFace, CurricularFace)")
    scale: float = setting(30.0, "logit scale s")
    learn_p: bool = setting(True, "learn GeM p (--no-learn-p keeps --p-init fixed, e.g. 4.6)")
    p_init: float = setting(3.0, "GeM p to start from (a CVNet checkpoint learning p starts from its own)")
    dim: int | None = setting(None, "descriptor size, the projection's output (default: 512; 2048 for "
                                    "cvnet_r50/101, whose head is kept)", parse=int)
    projection_init: str = setting("auto", "lw: the training split's whitening; random; keep: a CVNet "
                                           "checkpoint's head (auto: keep for CVNet, lw otherwise)",
                                   metavar="{auto,lw,random,keep}")
    optimizer: str = setting("adamw", "adamw or sgd", metavar="{adamw,sgd}")
    lr: float = setting(1e-4, "peak learning rate of the backbone")
    head_lr_mult: float = setting(10.0, "learning-rate multiplier of the projection and the loss's class centres")
    p_lr_mult: float = setting(10.0, "learning-rate multiplier of the learned p")
    weight_decay: float = setting(1e-4, "weight decay")
    momentum: float = setting(0.9, "SGD momentum (sgd only)")
    steps: int = setting(200, "optimiser steps")
    warmup_steps: int = setting(20, "linear warm-up steps before the cosine decay")
    batch_size: int = setting(32, "global batch (split over torchrun processes)")
    image_size: int = setting(224, "side of the square training crop")
    trainable_fraction: float = setting(1.0, "fraction of the backbone's parameter tensors trained, counted from "
                                             "the output end (1 = all)")
    clip_grad: float = setting(5.0, "gradient-norm clip")
    amp: bool = setting(True, "mixed precision on CUDA (bfloat16 where supported); ignored on CPU")
    seed: int = setting(0, "seed of the initial head, the batches and the augmentations")
    val_every: int = setting(50, "steps between validation mAPs")
    checkpoint_every: int = setting(50, "steps between checkpoints")

    def __post_init__(self):
        key = str(self.backbone).lower().replace("-", "_")
        object.__setattr__(self, "backbone", key if key in CVNET_BACKBONES else backbone_key(key))
        if self.dim is None:
            object.__setattr__(self, "dim", CVNET_DIM if self.cvnet else DEFAULT_DIM)
        if self.cvnet:
            if self.weights is None:
                raise ValueError(f"{key} starts from a CVNet checkpoint: pass its file as weights (--weights "
                                 f"CVPR2022_CVNet_R{CVNET_BACKBONES[key]}.pyth)")
            if self.dim != CVNET_DIM:
                raise ValueError(f"{key} keeps CVNet's 2048 x 2048 head: dim must be {CVNET_DIM}, got {self.dim}")
        elif self.projection_init == "keep":
            raise ValueError(f"projection_init='keep' keeps a CVNet checkpoint's trained head; {key} has none: use "
                             "'auto', 'lw' or 'random'")
        if self.loss not in LOSSES:
            raise ValueError(f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.projection_init not in ("auto", "lw", "random", "keep"):
            raise ValueError(f"projection_init must be 'auto', 'lw', 'random' or 'keep', got {self.projection_init!r}")
        for name in ("dim", "steps", "batch_size", "image_size", "val_every", "checkpoint_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        for name in ("warmup_steps", "seed"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or not 0 <= v < 2**32:
                raise ValueError(f"{name} must be an integer in [0, 2**32), got {v!r}")
        if self.warmup_steps >= self.steps:
            raise ValueError(f"warmup_steps ({self.warmup_steps}) must be smaller than steps ({self.steps}): the "
                             "schedule warms up, then decays")
        for name in ("scale", "lr", "head_lr_mult", "p_lr_mult", "clip_grad"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a finite number > 0, got {v!r}")
        for name, lo, hi, top in (("margin", 0, math.pi / 2, False), ("weight_decay", 0, 1, False),
                                  ("momentum", 0, 1, False), ("trainable_fraction", 0, 1, True),
                                  ("p_init", 1, P_MAX, True)):
            v = getattr(self, name)
            ok = (isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) and
                lo <= v and (v <= hi if top else v < hi) and not (name == "trainable_fraction" and v == 0))
            if not ok:
                raise ValueError(f"{name} must be a number in {'(' if name == 'trainable_fraction' else '['}{lo:g}, "
                                 f"{hi:g}{']' if top else ')'}, got {v!r}")
        for name in ("learn_p", "amp"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be True or False, got {getattr(self, name)!r}")
        if self.weights is not None and not isinstance(self.weights, str):
            raise ValueError(f"weights must be a path (str) or None, got {self.weights!r}")
        Augmentation(size=self.image_size)   # checks the size

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)

    @property
    def cvnet(self) -> bool:
        """Whether the network is a CVNet-layout ResNet (fine-tuned from a CVNet checkpoint)."""
        return self.backbone in CVNET_BACKBONES

    @property
    def head_init(self) -> str:
        """'lw', 'random' or 'keep': what ``projection_init='auto'`` means for this network."""
        if self.projection_init == "auto":
            return "keep" if self.cvnet else "lw"
        return self.projection_init



RUN_LOCK = "run.lock"


@contextlib.contextmanager
def run_folder_lock(out: Path):
    """Hold ``out/run.lock`` (host and pid of this process) while a run writes into ``out``.

    A second run into the same folder is refused, naming the first; a lock left by a process of this
    host that no longer runs (a killed run) is taken over. A lock from another host is never taken
    over: only a person can tell whether that run still runs.
    """
    lock = Path(out) / RUN_LOCK
    me = {"host": socket.gethostname(), "pid": os.getpid()}
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            try:
                holder = json.loads(lock.read_text())
                host, pid = str(holder["host"]), int(holder["pid"])
            except (OSError, ValueError, KeyError, TypeError):
                host, pid = "?", -1
            if host == me["host"] and not process_runs(pid):
                lock.unlink(missing_ok=True)   # a killed run's lock
                continue
            raise ValueError(f"{out} is in use by another training run (host {host}, pid {pid}): wait for it, "
                             f"train into another --out, or delete {lock} if that run no longer exists") from None
        with os.fdopen(fd, "w") as f:
            json.dump(me, f)
        break
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def lr_factor(step: int, config: TrainConfig) -> float:
    """Learning-rate multiplier of ``step`` (0-based): linear warm-up to 1, then cosine to 0 at ``steps``."""
    if step < config.warmup_steps:
        return (step + 1) / (config.warmup_steps + 1)
    span = max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * (step - config.warmup_steps) / span))


def training_descriptor(model, x: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) -> (B, dim) unit rows: the extraction path's single-scale, learned-p descriptor, with gradients."""
    pooled = gem(model.feature_map(x), model.learned_p, LEARNED_P_EPS)
    return F.normalize(model.descriptor_head(F.normalize(pooled, dim=-1)), dim=-1)


class _Trainee(nn.Module):
    """Network + loss in one module, so DistributedDataParallel averages the gradients of both."""

    def __init__(self, model, loss):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, x, labels):
        desc = training_descriptor(self.model, x)
        with torch.autocast(desc.device.type, enabled=False):   # margins and cosines in float32, even under AMP
            return self.loss(desc.float(), labels)


# ----------------------------------------------------------------------------------- set-up

def _base_network(config: TrainConfig):
    if config.cvnet:
        model = load_cvnet(config.weights, depth=CVNET_BACKBONES[config.backbone], relu_plus=CVNET_TRAIN_RELU_PLUS)
        if not config.learn_p:
            with torch.no_grad():
                model.learned_p.fill_(config.p_init)
        model.learned_p.requires_grad_(config.learn_p)
        if config.head_init == "random":
            model.head.fc.reset_parameters()
        return model.eval()
    weights = config.weights
    if weights is None:
        weights = packaged_weights_path(config.backbone)
    base = build_architecture(config.backbone, read_state_dict(weights), weights, file_sha256(weights))
    # eval mode from the start: frozen batch-norm statistics (see the module docstring)
    return trained_backbone(config.backbone, config.dim, config.p_init, config.learn_p, base.weights_id, base).eval()


def _freeze_early_layers(model, fraction: float) -> int:
    """Train only the last ``fraction`` of the backbone's parameter tensors (definition order = depth order).
    Returns how many tensors train."""
    params = model.body_parameters()
    keep = max(1, math.ceil(fraction * len(params)))
    for i, p in enumerate(params):
        p.requires_grad_(i >= len(params) - keep)
    return keep


def _eval_input(path, size: int, norm) -> torch.Tensor | None:
    """A whole image (long side ``size``) as a (1, 3, h, w) network input; None if it cannot be read (the training
    loop logs unreadable images when it meets them)."""
    try:
        return normalize(resized_for_eval(read_uint8(path), size)[None], norm)
    except ImageReadError:
        return None


@torch.no_grad()
def _pooled_vectors(model, data: TrainingSet, rows, size: int, p: float) -> tuple[np.ndarray, np.ndarray]:
    feats, kept = [], []
    for i in rows:     # one image at a time: thousands of decoded images would not fit in memory together
        x = _eval_input(data.paths[i], size, model.normalization)
        if x is not None:
            feats.append(F.normalize(gem(model.feature_map(x), p, LEARNED_P_EPS), dim=-1)[0].double().numpy())
            kept.append(i)
    return np.stack(feats), np.asarray(kept)


def _init_head(model, loss, data: TrainingSet, config: TrainConfig, progress: bool) -> None:
    """Projection := the Lw whitening of up to LW_MAX_IMAGES training images (seeded), truncated to ``dim``;
    each class vector := the mean of its images' projected descriptors (imprinting), where the sample has some."""
    rows = np.arange(len(data))
    if len(rows) > LW_MAX_IMAGES:
        rows = np.sort(np.random.default_rng([config.seed, 3]).choice(rows, LW_MAX_IMAGES, replace=False))
    if progress:
        print(f"fitting the initial projection (Lw whitening) on {len(rows)} training images")
    feats, rows = _pooled_vectors(model, data, rows, config.image_size, config.p_init)
    labels = data.labels[rows]
    i, j = np.triu_indices(len(rows), k=1)
    same = labels[i] == labels[j]
    if not same.any():
        raise ValueError("the projection's Lw initialisation needs two images of one class among the training "
                         "images: use projection_init='random'")
    w = fit_learned_whitening(feats, np.stack([i[same], j[same]], axis=1), dim=min(config.dim, feats.shape[1]),
                              shrinkage=LW_SHRINKAGE)
    head = model.descriptor_head
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[:w.out_dim] = w.projection
        head.bias[:w.out_dim] = -(w.projection @ w.mean)
        projected = F.normalize(head(torch.from_numpy(feats).float()), dim=-1)
        for c in np.unique(labels):
            loss.weight[c] = F.normalize(projected[torch.from_numpy(labels == c)].mean(0), dim=0)


def _param_groups(trainee: _Trainee, config: TrainConfig) -> list[dict]:
    model = trainee.model
    body_decay, body_plain = [], []
    for p in model.body_parameters():
        if p.requires_grad:
            (body_plain if p.ndim <= 1 else body_decay).append(p)
    head = [model.descriptor_head.weight, *trainee.loss.parameters()]
    groups = [
        {"params": body_decay, "lr_mult": 1.0, "weight_decay": config.weight_decay},
        {"params": body_plain, "lr_mult": 1.0, "weight_decay": 0.0},
        {"params": head, "lr_mult": config.head_lr_mult, "weight_decay": config.weight_decay},
        {"params": [model.descriptor_head.bias], "lr_mult": config.head_lr_mult, "weight_decay": 0.0},
    ]
    if config.learn_p:
        groups.append({"params": [model.learned_p], "lr_mult": config.p_lr_mult, "weight_decay": 0.0})
    return [g for g in groups if g["params"]]


def _optimizer(groups, config: TrainConfig):
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum)
    return torch.optim.AdamW(groups, lr=config.lr)


# ----------------------------------------------------------------------------------- validation

@torch.no_grad()
def class_map(desc: torch.Tensor, labels) -> float:
    """Mean average precision, each row querying all the others; positives share its label. (N, D) unit rows."""
    labels = torch.as_tensor(np.asarray(labels))
    if not torch.isfinite(desc).all():
        return math.nan          # a diverged network: no ranking to score
    sims = desc @ desc.T
    sims.fill_diagonal_(-math.inf)
    order = sims.argsort(dim=1, descending=True)[:, :-1]          # self last, dropped
    hits = (labels[order] == labels[:, None]).double()
    n_pos = hits.sum(1)
    precision = hits.cumsum(1) / torch.arange(1, hits.shape[1] + 1, dtype=torch.float64)
    ap = (precision * hits).sum(1) / n_pos.clamp(min=1)
    return float(ap[n_pos > 0].mean())


class _Validator:
    """Class-level mAP of held-out classes (whole images, long side ``image_size``), images decoded once."""

    def __init__(self, val: TrainingSet, config: TrainConfig, norm):
        inputs = [_eval_input(p, config.image_size, norm) for p in val.paths]
        kept = [k for k, x in enumerate(inputs) if x is not None]
        if len(kept) < 2:
            raise ValueError(f"{val.name}: {len(kept)} of its {len(val)} images can be read; the validation mAP needs "
                             "at least 2: hold out other classes or none (val=None, --val-classes 0)")
        self.inputs, self.labels = [inputs[k] for k in kept], val.labels[kept]

    @torch.no_grad()
    def __call__(self, model, device) -> float:
        desc = torch.cat([training_descriptor(model, x.to(device)).float().cpu() for x in self.inputs])
        return class_map(desc, self.labels)


# ----------------------------------------------------------------------------------- files

def _atomic_save(obj, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _model_state(model) -> dict:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _checkpoint(model, trainee, optimizer, scaler, config, data: TrainingSet, step: int, resumable: bool) -> dict:
    blob = {"format": FORMAT, "backbone": config.backbone, "model": _model_state(model), "step": step,
            "config": config.as_dict(), "classes": list(data.classes), "data": data.fingerprint(),
            "base_weights": getattr(model, "weights_id", config.weights),
            "relu_plus": getattr(model, "relu_plus", None)}
    if resumable:
        blob["state"] = {"loss": trainee.loss.state_dict(), "optimizer": optimizer.state_dict(),
                         "scaler": scaler.state_dict() if scaler is not None else {}}
    return blob


def _read_rows(path: Path, upto: int) -> list[dict]:
    """The rows of a run's csv up to step ``upto`` (a resumed run continues from there)."""
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [r for r in csv.DictReader(f) if int(r["step"]) <= upto]


def _rewrite_csv(path: Path, columns, rows: list[dict]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    os.replace(tmp, path)


def _append_csv(path: Path, columns, rows: list[dict]) -> None:
    with open(path, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=columns).writerows(rows)


def read_log(out_dir):
    """``log.csv`` of a run as a pandas DataFrame (val_map is NaN on steps without validation)."""
    import pandas as pd
    path = Path(out_dir) / "log.csv"
    if not path.is_file():
        raise ValueError(f"no training log at {path}: train first (python -m sglib train --out {out_dir})")
    return pd.read_csv(path)


# ----------------------------------------------------------------------------------- the run

@dataclass
class TrainRun:
    """What :func:`train` returns: the trained network (eval mode, CPU) and the run's folder."""

    model: nn.Module
    out_dir: Path
    step: int
    resumed_from: int

    @property
    def checkpoint(self) -> Path:
        return self.out_dir / "model.pt"


def _resumable(path: Path, config: TrainConfig, data: TrainingSet) -> dict:
    """The checkpoint in ``path`` if it resumes this run; ValueError saying why not otherwise."""
    blob = read_training_file(path)
    if (blob is None or not isinstance(blob.get("state"), dict) or
            not {"loss", "optimizer", "scaler"} <= set(blob["state"])):
        raise ValueError(f"{path} is not a resumable sglib training checkpoint: train into another folder")
    if blob["config"] != config.as_dict() or blob.get("data") != data.fingerprint():
        diff = {k: (blob["config"].get(k), v) for k, v in config.as_dict().items() if blob["config"].get(k) != v}
        raise ValueError(f"{path.parent} holds a run with another configuration or other training data "
                         f"(differences, saved -> now: {diff or 'the training images'}): resume it with the same "
                         "settings, or train into a new folder")
    return blob


def _distributed(device: str):
    """(rank, world size, this process's torch.device) under torchrun, (0, 1, device) without it."""
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    local = int(os.environ.get("LOCAL_RANK", 0))
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but no CUDA device is visible: use cpu")
        dev = torch.device("cuda", local if world > 1 else (torch.device(device).index or 0))
        torch.cuda.set_device(dev)
    elif device == "cpu":
        dev = torch.device("cpu")
    else:
        raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
    return rank, world, dev


def train(data: TrainingSet, config: TrainConfig, out_dir, val: TrainingSet | None = None, device: str = "cpu",
          num_workers: int = 2, progress: bool = True, dist_timeout: float = DEFAULT_DIST_TIMEOUT) -> TrainRun:
    """Train, or resume the run in ``out_dir`` where its last checkpoint left off; see the module docstring.

    Args:
        data: training images and labels (:func:`~sglib.training.data.bundled_training_set`,
            :func:`~sglib.training.data.gldv2_training_set`).
        val: held-out classes for the validation mAP (:meth:`TrainingSet.split_classes`), or None.
        device: ``cpu``, ``cuda`` or ``cuda:N`` (under torchrun, ``cuda`` means each process's LOCAL_RANK GPU).
        num_workers: image-decoding processes per training process.
        dist_timeout: under torchrun, seconds after which a process that runs no code (stopped, hung, on a
            lost machine) ends the run (:func:`sglib.runtime.process_group`); an exception on any process
            ends all of them at once. An argument, not a TrainConfig field: it does not change the result,
            and a resumed run may wait longer or shorter than the first.

    Returns:
        The :class:`TrainRun`: the trained network (eval mode, on the CPU), its folder, the last step
        and the step it resumed from.

    Raises:
        ValueError: ``out_dir`` holds a run with another configuration or other data (use a new folder),
            or the batch size does not split over the processes.

    Example:
        >>> from sglib.training import TrainConfig, bundled_training_set, train      # doctest: +SKIP
        >>> data, val = bundled_training_set("data").split_classes(8, seed=0)        # doctest: +SKIP
        >>> run = train(data, TrainConfig(steps=100), "runs/arcface", val)           # doctest: +SKIP
    """
    if not isinstance(config, TrainConfig):
        raise ValueError(f"config: expected a TrainConfig, got {type(config).__name__}")
    for name, value in (("data", data), ("val", val)):
        if not isinstance(value, TrainingSet) and not (name == "val" and value is None):
            raise ValueError(f"{name}: expected a TrainingSet (sglib.training.bundled_training_set, "
                             f"gldv2_training_set), got {type(value).__name__}")
    check_dist_timeout(dist_timeout)
    rank, world, dev = _distributed(device)
    if config.batch_size % world:
        raise ValueError(f"batch_size {config.batch_size} (the global batch) is not a multiple of the {world} processes")
    per_rank = config.batch_size // world
    batch_indices(len(data), config.batch_size, config.seed, 0)   # checks the batch fits the data
    out = Path(out_dir)
    # a process group made by the caller is the caller's to watch and to end
    own_group = world > 1 and not dist.is_initialized()
    with contextlib.ExitStack() as stack:
        if own_group:
            stack.enter_context(process_group("nccl" if dev.type == "cuda" else "gloo", COLLECTIVE_TIMEOUT_S,
                                              dist_timeout))
        if rank == 0:
            out.mkdir(parents=True, exist_ok=True)
            stack.enter_context(run_folder_lock(out))
        return _train(data, config, out, val, rank, world, dev, per_rank, num_workers, progress)


def _train(data, config, out, val, rank, world, dev, per_rank, num_workers, progress) -> TrainRun:
    """:func:`train` once the run folder is held (rank 0) and the processes are set up."""
    torch.manual_seed(config.seed)     # the class vectors' initial values
    model = _base_network(config)
    loss = make_loss(config.loss, config.dim, data.n_classes, config.margin, config.scale)
    n_trainable = _freeze_early_layers(model, config.trainable_fraction)
    trainee = _Trainee(model, loss)
    use_amp = config.amp and dev.type == "cuda"
    amp_dtype = torch.bfloat16 if use_amp and torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if use_amp and amp_dtype == torch.float16 else None

    ckpt_path, log_path, failed_path = out / "checkpoint.pt", out / "log.csv", out / "failed.csv"
    if rank == 0:
        for stale in out.glob(".*.tmp"):    # a save cut short by a kill
            stale.unlink(missing_ok=True)
    blob = _resumable(ckpt_path, config, data) if ckpt_path.is_file() else None
    start = 0
    if blob is not None:
        model.load_state_dict(blob["model"])
        trainee.loss.load_state_dict(blob["state"]["loss"])
        start = int(blob["step"])
    elif config.head_init == "lw" and rank == 0:
        _init_head(model, loss, data, config, progress)   # DDP copies rank 0's values to the others
    # on the device before the optimizer exists: its state (moments, momentum) must live beside the parameters
    model.to(dev, memory_format=torch.channels_last)
    trainee.to(dev)
    optimizer = _optimizer(_param_groups(trainee, config), config)
    if blob is not None:
        optimizer.load_state_dict(blob["state"]["optimizer"])
        if scaler is not None and blob["state"]["scaler"]:
            scaler.load_state_dict(blob["state"]["scaler"])
    elif rank == 0:    # the starting point, for before/after comparisons with the same head
        _atomic_save(_checkpoint(model, trainee, optimizer, scaler, config, data, 0, False), out / "start.pt")
    model.eval()                 # frozen batch-norm statistics, no drop-connect (see the module docstring)
    trainee.loss.train()
    ddp = (nn.parallel.DistributedDataParallel(trainee, device_ids=[dev.index] if dev.type == "cuda" else None)
        if world > 1 else trainee)
    validator = _Validator(val, config, model.normalization) if val is not None and rank == 0 else None

    if rank == 0:
        _rewrite_csv(log_path, LOG_COLUMNS, _read_rows(log_path, start) if start else [])
        _rewrite_csv(failed_path, FAILED_COLUMNS, _read_rows(failed_path, start) if start else [])
        if start == 0 and validator is not None:   # the starting point, as a row of step 0
            _append_csv(log_path, LOG_COLUMNS, [{"step": 0, "epoch": 0, "failed": 0,
                                                 "gem_p": f"{float(model.learned_p.detach()):.6f}",
                                                 "val_map": f"{validator(model, dev):.6f}"}])
    images = AugmentedImages(data, Augmentation(size=config.image_size))
    per_epoch = len(data) // config.batch_size

    def rank_batches():
        for step in range(start, config.steps):
            idx = batch_indices(len(data), config.batch_size, config.seed, step)
            mine = range(rank * per_rank, (rank + 1) * per_rank)
            yield [(int(idx[k]), sample_seed(config.seed, step, k)) for k in mine]

    loader = torch.utils.data.DataLoader(images, batch_sampler=rank_batches(), collate_fn=collate,
                                         num_workers=num_workers, persistent_workers=False)
    bar = tqdm(total=config.steps, initial=start, desc=f"train {config.loss}", disable=not progress or rank != 0)
    step, tick = start, time.perf_counter()
    if rank == 0:
        print(f"training {config.backbone} ({n_trainable} of {len(model.body_parameters())} backbone tensors) "
              f"+ GeM p={'learned' if config.learn_p else 'fixed'} + projection to {config.dim}, {config.loss}, "
              f"{len(data)} images of {data.n_classes} classes, {world} process(es) on {dev.type}"
              + (f", resuming at step {start}" if start else ""))
    for batch, labels, failed in loader:
        for group in optimizer.param_groups:
            group["lr"] = config.lr * group["lr_mult"] * lr_factor(step, config)
        optimizer.zero_grad(set_to_none=True)
        x = normalize(batch, model.normalization).to(dev, memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=amp_dtype, enabled=use_amp):
            value = ddp(x, labels.to(dev))
        (scaler.scale(value) if scaler is not None else value).backward()
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = nn.utils.clip_grad_norm_([p for p in trainee.parameters() if p.requires_grad],
                                             config.clip_grad)
        logged = value.detach().float()
        if world > 1:
            dist.all_reduce(logged)
            logged /= world
            gathered = [None] * world
            dist.all_gather_object(gathered, failed)
            failed = [i for part in gathered for i in part]
        # a scaler skips steps with infinite gradients on its own; anything else non-finite is divergence
        if not math.isfinite(float(logged)) or (scaler is None and not math.isfinite(float(grad_norm))):
            raise ValueError(f"training diverged at step {step + 1}: loss {float(logged)}, gradient norm "
                             f"{float(grad_norm)}; lower the learning rate (lr={config.lr:g}) or the scale "
                             f"({config.scale:g}). The last checkpoint (step {step - step % config.checkpoint_every})"
                             " is kept")
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        if config.learn_p:
            with torch.no_grad():
                model.learned_p.clamp_(1.0, P_MAX)   # p < 1 is no longer a pooling between mean and max
        step += 1
        if rank == 0:
            now = time.perf_counter()
            val_map = validator(model, dev) if validator is not None and (step % config.val_every == 0 or
                                                                          step == config.steps) else None
            p_now = float(model.learned_p.detach())
            _append_csv(log_path, LOG_COLUMNS, [{
                "step": step, "epoch": (step - 1) // per_epoch, "loss": f"{float(logged):.6f}",
                "gem_p": f"{p_now:.6f}", "lr": f"{config.lr * lr_factor(step - 1, config):.6g}",
                "grad_norm": f"{float(grad_norm):.6f}", "images_per_s": f"{config.batch_size / (now - tick):.2f}",
                "failed": len(failed), "val_map": "" if val_map is None else f"{val_map:.6f}"}])
            _append_csv(failed_path, FAILED_COLUMNS, [{"step": step, "image": data.paths[i]} for i in failed])
            bar.set_postfix(loss=f"{float(logged):.3f}", p=f"{p_now:.3f}",
                            **({} if val_map is None else {"val_mAP": f"{100 * val_map:.1f}"}))
            bar.update(1)
            if step % config.checkpoint_every == 0 or step == config.steps:
                _atomic_save(_checkpoint(model, trainee, optimizer, scaler, config, data, step, True), ckpt_path)
            tick = time.perf_counter()
        if world > 1 and step % config.checkpoint_every == 0:
            dist.barrier()     # no process runs ahead of a checkpoint it could be resumed from
    bar.close()
    if rank == 0:
        _atomic_save(_checkpoint(model, trainee, optimizer, scaler, config, data, step, False), out / "model.pt")
    if world > 1:
        dist.barrier()
    model.to("cpu").learned_p.requires_grad_(False)
    return TrainRun(model.eval(), out, step, start)


__all__ = ["TrainConfig", "TrainRun", "train", "lr_factor", "training_descriptor", "class_map", "read_log",
           "LOG_COLUMNS", "TIMING_COLUMNS"]
