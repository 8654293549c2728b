"""Reading weight files: one place for the errors a user can hit with a bad or foreign file."""
from __future__ import annotations

import os
import pickle
import re
import zipfile

import torch
import torch.nn as nn

WRAPPER_KEYS = ("model_state", "state_dict", "model")   # CVNet / pycls, Lightning-style, others


class CheckpointError(ValueError):
    """A checkpoint or weights file is missing, unreadable, or does not hold the tensors a model needs."""


# torch.save writes a zip archive (PK..) since torch 1.6, a protocol-2 pickle (0x80 0x02) before
_TORCH_FILE_STARTS = (b"PK\x03\x04", b"\x80\x02")


def read_torch_file(path):
    """``torch.load`` of a file on the CPU, tensors and plain data only (``weights_only``).

    Raises:
        CheckpointError: the file is missing, is not a ``torch.save`` file (a text file, an image),
            holds Python objects other than tensors and plain data (never run), or is damaged.
    """
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory: expected a weights file")
    if not os.path.isfile(path):
        raise CheckpointError(f"weights file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head.startswith(b"PK") and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            if not any(n.endswith("data.pkl") for n in z.namelist()):   # every torch.save archive holds one
                raise CheckpointError(f"{path} is a zip archive but not a torch.save file (a numpy .npz?): expected "
                                      "weights saved with torch.save")
    if not head.startswith(_TORCH_FILE_STARTS):
        raise CheckpointError(f"{path} is not a torch.save file (it starts with {head!r}): expected weights saved "
                              "with torch.save, e.g. a CVNet checkpoint or an sglib training checkpoint")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:   # torch's weights_only refusal explains itself over many lines
        # torch words it "Unsupported global: GLOBAL x.y" or "unsupported GLOBAL x.y whose module ..." by version
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(f"{path} holds Python objects other than tensors and plain data{what}, which sglib "
                              "does not run: load it only if you trust it, and save its state_dict() instead") from None
    except Exception as exc:  # torch raises many types for a corrupt file
        first = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise CheckpointError(f"could not read weights file {path} (damaged?): {type(exc).__name__}: {first}") from exc


def read_state_dict(path) -> dict:
    """A state dict of tensors from a ``torch.save`` file: bare or under one of :data:`WRAPPER_KEYS`.

    A ``module.`` prefix on every key (DataParallel) is stripped.

    Raises:
        CheckpointError: missing file, unreadable file, or not a dict of tensors.
    """
    blob = read_torch_file(path)
    if isinstance(blob, dict):
        blob = next((blob[k] for k in WRAPPER_KEYS if isinstance(blob.get(k), dict)), blob)
    if not isinstance(blob, dict) or not blob or not all(isinstance(v, torch.Tensor) for v in blob.values()):
        raise CheckpointError(f"{path}: expected a state dict of tensors (bare or under one of {WRAPPER_KEYS})")
    if all(k.startswith("module.") for k in blob):
        blob = {k[len("module."):]: v for k, v in blob.items()}
    return blob


def load_state_strict(model: nn.Module, state: dict, path, label: str, optional_prefixes: tuple = ()) -> set:
    """Load ``state`` into ``model``: every tensor present with its shape and finite, no extra tensors.

    Tensors under ``optional_prefixes`` may be absent from the file. Returns the names of the
    optional tensors that were absent. Raises :class:`CheckpointError` naming the faulty tensors.
    """
    expected = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    unexpected = sorted(k for k in state if k not in expected and not k.endswith("num_batches_tracked"))
    if unexpected:
        raise CheckpointError(f"{path}: {len(unexpected)} tensor(s) that a {label} does not have: "
                              f"{', '.join(unexpected[:5])}{' ...' if len(unexpected) > 5 else ''}")
    absent = [k for k in expected if k not in state]
    missing = [k for k in absent if not k.startswith(optional_prefixes)]
    if missing:
        raise CheckpointError(f"{path}: missing {len(missing)} tensor(s) for a {label}: "
                              f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    for k, v in state.items():
        if k in expected and v.shape != expected[k].shape:
            raise CheckpointError(f"{path}: tensor '{k}' has shape {tuple(v.shape)}, expected "
                                  f"{tuple(expected[k].shape)} for a {label}")
        if k in expected and expected[k].is_floating_point() and not v.is_floating_point():
            raise CheckpointError(f"{path}: tensor '{k}' has dtype {v.dtype}, expected a floating dtype "
                                  f"({expected[k].dtype}) for a {label}")
        if v.is_floating_point() and not torch.isfinite(v).all():
            raise CheckpointError(f"{path}: tensor '{k}' contains NaN or infinite values")
        if k.endswith("running_var") and bool((v < 0).any()):
            raise CheckpointError(f"{path}: batch-norm variance '{k}' has negative values "
                                  f"(min {float(v.min()):.3g}); a variance is >= 0: the file is damaged")
    model.load_state_dict(state, strict=False)
    return set(absent)
