"""Argument checks shared by the public functions: each error names the argument."""

from __future__ import annotations

import numpy as np
import torch


def as_numpy(x, name: str, dtype: np.dtype, ndim: int | None = None) -> np.ndarray:
    """A C-contiguous numpy view of a CPU tensor or array, with dtype and rank checked.

    Never copies silently into another dtype: a wrong dtype is the caller's bug.
    """
    if isinstance(x, torch.Tensor):
        if x.device.type != "cpu":
            raise ValueError(f"{name} must be a CPU tensor, got device {x.device}")
        if x.is_sparse or x.layout != torch.strided:
            raise ValueError(f"{name} must be a dense (strided) tensor")
        arr = x.detach().numpy() if x.dtype != torch.bfloat16 else None
        if arr is None:
            raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got torch.bfloat16")
    elif isinstance(x, np.ndarray):
        arr = x
    else:
        raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(x).__name__}")
    if arr.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {arr.dtype}")
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {tuple(arr.shape)}")
    if not arr.flags.c_contiguous:
        raise ValueError(f"{name} must be contiguous (call .contiguous() first)")
    return arr


def per_index(value, name: str, n: int, dtype) -> np.ndarray:
    """A scalar or 1-D parameter of length 1 or n, as a contiguous numpy array."""
    if isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return np.array([value], dtype=dtype)
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    arr = np.ascontiguousarray(np.asarray(value))
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or arr.shape[0] not in (1, n):
        raise ValueError(f"{name} must be a scalar or 1-D of length 1 or {n}, got shape {arr.shape}")
    if np.dtype(dtype).kind == "i":
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must be integer, got {arr.dtype}")
    elif not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite")
    return arr.astype(dtype, copy=False)
