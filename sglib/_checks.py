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


def check_float_tensor(x, name: str, ndim: int, nonempty: bool = True) -> None:
    """Raise ``ValueError`` unless ``x`` is a floating torch tensor of ``ndim`` dims with no empty dimension."""
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name}: expected a floating torch.Tensor, got {type(x).__name__} "
                         "(convert with torch.from_numpy(array).float())")
    if not x.dtype.is_floating_point:
        raise ValueError(f"{name}: expected a floating dtype (float32, float64, ...), got {x.dtype}")
    check_tensor(x, name, ndim=ndim)
    if nonempty and 0 in x.shape:
        raise ValueError(f"{name}: has an empty dimension, shape {tuple(x.shape)}")


def _finite(value) -> bool:
    """Whether a real number is finite as a float (a Python int beyond float range, 10**400, is not)."""
    try:
        return bool(np.isfinite(float(value)))
    except OverflowError:
        return False


def check_positive(value, name: str, allow_inf: bool = False) -> None:
    """Raise ``ValueError`` unless ``value`` is a number > 0 (finite unless ``allow_inf``)."""
    ok = (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool) and value > 0 and
        (_finite(value) or (allow_inf and value == np.inf)))
    if not ok:
        raise ValueError(f"{name}: expected a {'' if allow_inf else 'finite '}number > 0, got {value!r}")



def check_int(value, name: str, lo: int | None = None, hi: int | None = None, what: str = "") -> int:
    """``value`` as an int if it is an integer (Python or numpy, not bool) in ``[lo, hi]``, else ``ValueError``."""
    ok = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    if ok and (lo is None or value >= lo) and (hi is None or value <= hi):
        return int(value)
    if lo is None and hi is None:
        bounds = ""
    elif hi is None:
        bounds = f" >= {lo}"
    elif lo is None:
        bounds = f" <= {hi}"
    else:
        bounds = f" in [{lo}, {hi}]"
    raise ValueError(f"{name}: expected an integer{bounds}{' ' + what if what else ''}, got {value!r}")


def check_real(value, name: str, lo: float | None = None, hi: float | None = None, open_lo: bool = False,
               open_hi: bool = False) -> float:
    """``value`` as a float if it is a finite real number (Python or numpy, not bool) within the bounds, else
    ``ValueError``; ``open_lo`` / ``open_hi`` exclude the bound itself."""
    ok = (isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))
        and _finite(value))
    if ok:
        v = float(value)
        ok = (lo is None or (v > lo if open_lo else v >= lo)) and (hi is None or (v < hi if open_hi else v <= hi))
        if ok:
            return v
    if hi is None and lo is not None:
        bounds = f"{'>' if open_lo else '>='} {lo:g}"
    elif lo is None and hi is not None:
        bounds = f"{'<' if open_hi else '<='} {hi:g}"
    elif lo is None:
        bounds = "(any)"
    else:
        bounds = f"in {'(' if open_lo else '['}{lo:g}, {hi:g}{')' if open_hi else ']'}"
    raise ValueError(f"{name}: expected a finite number {bounds}, got {value!r}")


def check_box(value, name: str = "bbx") -> tuple:
    """``value`` as ``(x1, y1, x2, y2)`` floats if it is 4 finite real numbers with x2 > x1 and y2 > y1,
    else ``ValueError`` naming ``name`` (a string, NaN, inf, a wrong count or an empty box)."""
    try:
        flat = list(np.asarray(value, dtype=object).ravel())
    except Exception:   # an object numpy cannot even wrap
        flat = None
    real = flat is not None and all(isinstance(v, (int, float, np.integer, np.floating))
                                    and not isinstance(v, (bool, np.bool_)) for v in flat)
    if not real or len(flat) != 4 or not all(np.isfinite(float(v)) for v in flat):
        raise ValueError(f"{name}: expected 4 finite numbers (x1, y1, x2, y2), got {value!r}")
    box = tuple(float(v) for v in flat)
    if not (box[2] > box[0] and box[3] > box[1]):
        raise ValueError(f"{name}: {box} is an empty box (needs x2 > x1 and y2 > y1)")
    return box
