"""Argument checks shared by the public functions: each error names the argument."""

from __future__ import annotations

import math

import numpy as np
import torch


# The dtypes as_numpy's fast path knows.
_NUMPY_DTYPE = {t: np.dtype(t) for t in (np.uint8, np.int8, np.int32, np.float32)}


def as_numpy(x, name: str, dtype: np.dtype, ndim: int | None = None) -> np.ndarray:
    """A C-contiguous numpy view of a CPU tensor or array, with dtype and rank checked.

    Never copies silently into another dtype: a wrong dtype is the caller's bug.
    """
    # The common case first, in few Python steps (at M = 1 each costs about as much as the
    # GEMM): a plain CPU tensor or array that already has the dtype, rank and layout.
    # numpy's view is checked, not torch's tensor: its attributes cost less to read. What
    # numpy cannot view (another device, sparse, requires_grad) raises; the checks below
    # then say what is wrong.
    t = type(x)
    if t is torch.Tensor:
        try:
            arr = x.numpy()
        except (TypeError, RuntimeError):
            arr = None
        if (arr is not None and arr.dtype is _NUMPY_DTYPE.get(dtype)
                and (ndim is None or arr.ndim == ndim) and arr.flags.c_contiguous):
            return arr
    elif t is np.ndarray:
        if (x.dtype is _NUMPY_DTYPE.get(dtype) and (ndim is None or x.ndim == ndim)
                and x.flags.c_contiguous):
            return x
    if isinstance(x, torch.Tensor):
        if not x.is_cpu:
            raise ValueError(f"{name} must be a CPU tensor, got device {x.device}")
        if x.layout != torch.strided or x.is_nested:
            raise ValueError(f"{name} must be a dense (strided) tensor")
        if x.dtype == torch.bfloat16:
            raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got torch.bfloat16")
        arr = x.detach().numpy()
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
    """A scalar or 1-D parameter of length 1 or n, as a contiguous numpy array of dtype.

    Integer parameters must hold integers (3.7 is an error, not 3) that fit the dtype;
    float parameters must stay finite after conversion (1e39 overflows float32).
    """
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a number or 1-D array, got bool")
    target = np.dtype(dtype)
    if type(value) in (int, float):  # fast path for plain scalars (most calls)
        return _scalar(value, name, target)
    if isinstance(value, torch.Tensor):
        if not value.is_cpu:
            raise ValueError(f"{name} must be a CPU tensor, got device {value.device}")
        try:
            value = value.detach().numpy()
        except (TypeError, RuntimeError) as e:  # sparse, bfloat16, ...
            raise TypeError(f"{name}: {e}") from None
    arr = np.asarray(value)
    if arr.ndim == 0:
        arr = arr.reshape(1)
    if arr.ndim != 1 or arr.shape[0] not in (1, n):
        what = "a single value" if n == 1 else f"a scalar or 1-D of length 1 or {n}"
        raise ValueError(f"{name} must be {what}, got shape {arr.shape}")
    if target.kind == "i":
        if arr.dtype.kind not in "iu":
            raise TypeError(f"{name} must hold integers, got dtype {arr.dtype}")
        info = np.iinfo(target)
        if arr.size:
            lo, hi = (int(arr[0]),) * 2 if arr.size == 1 else (int(arr.min()), int(arr.max()))
            if lo < info.min or hi > info.max:
                raise ValueError(f"{name} is out of range for {target}")
        return np.ascontiguousarray(arr, dtype=target)
    if arr.dtype.kind not in "iuf":
        raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
    with np.errstate(over="ignore"):
        out = np.ascontiguousarray(arr, dtype=target)
    if not np.all(np.isfinite(out)):
        raise ValueError(f"{name} must be finite (in {target} range)")
    return out


def kernel_param(value, name: str, n, dtype) -> np.ndarray:
    """A per-index parameter for a kernel that checks its length and values itself (range,
    finite, > 0): one that already has the kernel's dtype and is 1-D and contiguous goes as
    it is; anything else is converted and checked by per_index. n: the full length, or a
    function giving it (asked only then). Numpy reductions cost several microseconds each
    when a big kernel has just evicted the interpreter from cache."""
    arr = value
    if type(value) is torch.Tensor:  # numpy's view: its attributes cost less than torch's
        try:
            arr = value.numpy()  # raises for another device, sparse, requires_grad, ...
        except (TypeError, RuntimeError):
            arr = None
    if (type(arr) is np.ndarray and arr.dtype is _NUMPY_DTYPE[dtype] and arr.ndim == 1
            and arr.flags.c_contiguous):
        return arr
    return per_index(value, name, n() if callable(n) else n, dtype)


_FLOAT32_MAX = float(np.finfo(np.float32).max)
# Where float32 rounding overflows: from here up a float64 rounds to inf (2^128 - 2^103 is
# the midpoint between the largest float32 and 2^128; ties go to the even 2^128).
_FLOAT32_OVERFLOW = 2.0**128 - 2.0**103


def _scalar(value, name: str, target: np.dtype) -> np.ndarray:
    """per_index for a Python int or float: the same checks without numpy reductions."""
    if target.kind == "i":
        if type(value) is not int:
            raise TypeError(f"{name} must hold integers, got {value!r}")
        info = np.iinfo(target)
        if not info.min <= value <= info.max:
            raise ValueError(f"{name} is out of range for {target}")
    elif not (math.isfinite(value) and abs(value) <= _FLOAT32_MAX):
        raise ValueError(f"{name} must be finite (in {target} range)")
    return np.array([value], dtype=target)


def positive_scalar(v, name: str) -> float:
    """A single finite value > 0 (Python or numpy number, or a one-element tensor/array)."""
    if isinstance(v, (torch.Tensor, np.ndarray)):
        if (v.numel() if isinstance(v, torch.Tensor) else v.size) != 1:
            raise ValueError(f"{name} must be a single value, got shape {tuple(v.shape)}")
        v = v.item()
    if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a number, got {type(v).__name__}")
    v = float(v)
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name} must be finite and > 0, got {v}")
    return v


def requant_params(scale, zero_point, what: str = "out") -> tuple[float, int]:
    """A uint8 output's (1/scale, zero point) as the kernels take them, 1/scale rounded to
    float32 as they compute it. The scale must be finite and > 0 with a float32 reciprocal
    that is too (1e-42 and 1e39 are not); the zero point an integer in [0, 255]. Errors
    name `what`_scale and `what`_zero_point."""
    scale = positive_scalar(scale, f"{what}_scale")
    # float32(1 / float32(scale)) in float64 rounds as float32's own division does (53 >=
    # 2 * 24 + 2 bits: double rounding is harmless), without numpy's errstate (~2 us).
    s32 = float(np.float32(scale)) if scale < _FLOAT32_OVERFLOW else math.inf
    inv = 1.0 / s32 if s32 > 0 else math.inf
    if not 0 < inv < _FLOAT32_OVERFLOW:
        size = "small" if scale < 1 else "large"
        raise ValueError(f"{what}_scale={scale} is too {size}: 1/{what}_scale must be a "
                         "finite float32 > 0")
    inv = float(np.float32(inv))
    zp = (zero_point if type(zero_point) is int else
          int(per_index(zero_point, f"{what}_zero_point", 1, np.int32)[0]))
    if not 0 <= zp <= 255:
        raise ValueError(f"{what}_zero_point must be in [0, 255], got {zero_point}")
    return inv, zp


def _real_tensor(value, name: str, integer: bool) -> torch.Tensor | None:
    """value (a number, a sequence, an array or a tensor) as a detached tensor with a real
    dtype, an integer one if `integer`; None for integers beyond int64 (the caller's range
    error). Anything else (None, str, bool, complex, float where integers are due) raises a
    TypeError naming the argument."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
        kind = ("b" if t.dtype == torch.bool else "c" if t.is_complex()
                else "f" if t.is_floating_point() else "i")
        got = f"a tensor of dtype {t.dtype}"
    else:
        try:
            arr = np.asarray(value)
        except (TypeError, ValueError):  # ragged nesting
            arr = np.asarray(None)
        kind = arr.dtype.kind
        got = type(value).__name__ if arr.ndim == 0 else f"an array of dtype {arr.dtype}"
        # numpy keeps integers that int64 cannot hold as Python objects, or as uint64.
        big = (kind == "O" and arr.size and all(type(v) is int for v in arr.flat)
               or kind == "u" and arr.size and int(arr.max()) > np.iinfo(np.int64).max)
        if big and integer:
            return None
        if big:  # as a scale: float64 (inf past its range, refused by the caller)
            flat = [float(v) if abs(v) < 2**1024 else math.inf if v > 0 else -math.inf
                    for v in arr.flat]
            arr, kind = np.array(flat).reshape(arr.shape), "f"
        if kind in "iuf":
            t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.int64 if kind in "iu"
                                                      else None))
    if kind not in ("iu" if integer else "iuf"):
        want = "an integer" if integer else "a real number"
        raise TypeError(f"{name} must be {want} or a tensor (array, sequence) of them, "
                        f"got {got}")
    return t


def _first_bad(t: torch.Tensor, bad: torch.Tensor) -> str:
    """The first element of t where bad is True, with its index when t has several."""
    i = int(bad.reshape(-1).nonzero()[0])
    v = t.reshape(-1)[i].item()
    return f"{v!r}" if t.numel() == 1 else f"{v!r} at index {i}"


def scale_tensor(value, name: str = "scale") -> torch.Tensor:
    """A scale (per tensor or per channel) as a float32 tensor; each must be finite and > 0
    in float32 (1e39 is not)."""
    t = _real_tensor(value, name, integer=False)
    t32 = t.to(torch.float32)
    bad = ~(torch.isfinite(t32) & (t32 > 0))
    if bool(bad.any()):
        raise ValueError(f"{name} must be finite and in (0, {_FLOAT32_MAX:.6g}] (float32), "
                         f"got {_first_bad(t, bad)}")
    return t32


def zero_point_tensor(value, name: str, lo: int, hi: int, what: str = "") -> torch.Tensor:
    """An integer zero point (per tensor or per channel) as an int64 tensor, each in
    [lo, hi]; `what` ends the range error (e.g. " for 8-bit unsigned values")."""
    t = _real_tensor(value, name, integer=True)
    bad = None if t is None else (t < lo) | (t > hi)
    if t is None or bool(bad.any()):
        got = str(value) if t is None else _first_bad(t, bad)
        raise ValueError(f"{name} must be in [{lo}, {hi}]{what}, got {got}")
    return t.to(torch.int64)
