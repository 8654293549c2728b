"""Input checks at the library boundary: precise ``ValueError`` messages instead of deep tracebacks."""
from __future__ import annotations

import numpy as np
import torch


def check_tensor(x, name: str, ndim: int | None = None, finite: bool = False) -> None:
    """Raise ``ValueError`` unless ``x`` is a floating tensor/array of ``ndim`` dims (and finite)."""
    if not isinstance(x, (torch.Tensor, np.ndarray)):
        raise ValueError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name}: expected {ndim} dimensions, got shape {tuple(x.shape)}")
    if finite:
        bad = ~torch.isfinite(x) if isinstance(x, torch.Tensor) else ~np.isfinite(x)
        if bool(bad.any()):
            n = int(bad.sum())
            raise ValueError(f"{name}: contains {n} NaN or infinite value(s)")


def to_tensor(x, name: str) -> torch.Tensor:
    """numpy or torch -> torch (no copy when possible)."""
    if isinstance(x, torch.Tensor):
        return x
    if isinstance(x, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(x))
    raise ValueError(f"{name}: expected a torch.Tensor or numpy array, got {type(x).__name__}")
