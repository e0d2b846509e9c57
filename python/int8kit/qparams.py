"""Quantization parameters, quantize and dequantize (the numerics contract of the design notes).

The formulas are written with the same torch operations, in the same order, as torch.ao's
MinMaxObserver / PerChannelMinMaxObserver, so the defaults agree with torch value for value:

    asymmetric: scale = (max(hi, 0) - min(lo, 0)) / (qmax - qmin)
                zero_point = clamp(qmin - round(min(lo, 0) / scale), qmin, qmax)
    symmetric:  scale = max(|lo|, |hi|) / ((qmax - qmin) / 2)
                zero_point = 0 (signed) or 2^(bits-1) (unsigned, 128 for 8 bits)

with scale >= float32 eps (a constant tensor gets a usable scale instead of 0), and
    q = clamp(round_half_even(x * (1 / scale)) + zero_point, qmin, qmax)   in float32
    x_hat = (q - zero_point) * scale.

A range wider than float32's largest value (max(hi, 0) - min(lo, 0) > 3.4e38, for example
[-2e38, 2e38]) has no float32 scale: it raises ValueError (torch.ao would return inf).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from ._validate import _FLOAT32_MAX, scale_tensor, zero_point_tensor

_EPS = torch.finfo(torch.float32).eps


class QParams(NamedTuple):
    """scale (float32) and zero_point (int32): 0-D per tensor, 1-D per channel."""

    scale: torch.Tensor
    zero_point: torch.Tensor


def qrange(bits: int = 8, signed: bool = False) -> tuple[int, int]:
    """(qmin, qmax) of a signed or unsigned integer with `bits` bits (2 to 8)."""
    if not isinstance(bits, int) or isinstance(bits, bool) or not 2 <= bits <= 8:
        raise ValueError(f"bits must be an int from 2 to 8, got {bits!r}")
    if signed:
        return -(1 << (bits - 1)), (1 << (bits - 1)) - 1
    return 0, (1 << bits) - 1


def _check_float(x, name: str) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got {x.dtype}")
    return x


def _check_axis(axis, ndim: int, name: str = "axis") -> int | None:
    if axis is None:
        return None
    if not isinstance(axis, int) or isinstance(axis, bool) or not -ndim <= axis < ndim:
        raise ValueError(f"{name} must be None or an int in [{-ndim}, {ndim - 1}], got {axis!r}")
    return axis % ndim


def _minmax(x: torch.Tensor, axis: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Range per tensor (0-D) or per slice along axis (1-D); NaN/Inf raise."""
    if x.numel() == 0:
        raise ValueError(f"x is empty (shape {tuple(x.shape)}); cannot measure its range")
    x = x.detach().float()
    if axis is None:
        lo, hi = torch.aminmax(x)
    else:
        lo, hi = torch.aminmax(x.movedim(axis, 0).reshape(x.shape[axis], -1), dim=1)
    # min/max propagate NaN and expose +-Inf, so checking them checks every element.
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("x contains NaN or Inf; cannot choose quantization parameters")
    return lo, hi


def qparams_from_range(lo, hi, bits: int = 8, symmetric: bool = False,
                       signed: bool = False) -> QParams:
    """Parameters for an observed range [lo, hi] (tensors: 0-D, or 1-D per channel)."""
    return _from_range(lo, hi, bits, symmetric, signed, "lo and hi")


def _from_range(lo, hi, bits: int, symmetric: bool, signed: bool, name: str,
                axis: int | None = None) -> QParams:
    """qparams_from_range; a range too wide for a float32 scale is reported as `name`'s
    (the range of channel i along `axis` when axis is given)."""
    qmin, qmax = qrange(bits, signed)
    lo, hi = torch.as_tensor(lo, dtype=torch.float32), torch.as_tensor(hi, dtype=torch.float32)
    if not bool(torch.isfinite(lo).all() and torch.isfinite(hi).all()):
        raise ValueError("lo and hi must be finite")
    if bool((lo > hi).any()):
        raise ValueError("lo must be <= hi")
    # Widen the range to include 0, so that 0.0 (padding, ReLU output) is exact.
    lo_neg = torch.min(lo, torch.zeros_like(lo))
    hi_pos = torch.max(hi, torch.zeros_like(hi))
    eps = torch.tensor(_EPS, dtype=torch.float32)
    if symmetric:
        scale = torch.max(-lo_neg, hi_pos) / (float(qmax - qmin) / 2)
        scale = torch.max(scale, eps)
        zp = torch.full_like(scale, 0 if signed else 1 << (bits - 1), dtype=torch.int32)
    else:
        scale = torch.max((hi_pos - lo_neg) / float(qmax - qmin), eps)
        zp = qmin - torch.round(lo_neg / scale).to(torch.int32)
        zp = torch.clamp(zp, qmin, qmax).to(torch.int32)
    # Finite lo and hi can still be too far apart: hi - lo overflows float32 to inf, and an
    # inf scale would quantize everything to the zero point.
    if not bool(torch.isfinite(scale).all()):
        lo, hi, scale = torch.broadcast_tensors(lo, hi, scale)
        i = tuple(int(j) for j in (~torch.isfinite(scale)).nonzero()[0])
        what = name if axis is None else f"{name} (channel {i[0]} along axis {axis})"
        raise ValueError(f"{what}: its range [{float(lo[i]):.6g}, {float(hi[i]):.6g}] is too "
                         "wide for a float32 scale (max(hi, 0) - min(lo, 0) must be at most "
                         f"{_FLOAT32_MAX:.6g})")
    return QParams(scale, zp)


def choose_qparams(x: torch.Tensor, bits: int = 8, symmetric: bool = False,
                   signed: bool = False, axis: int | None = None) -> QParams:
    """Scale and zero point for x, per tensor (axis=None) or per channel along `axis`.

    Defaults (8-bit unsigned asymmetric) equal torch.ao's MinMaxObserver for quint8 with
    per_tensor_affine; weights usually take symmetric=True, signed=True, axis=0.
    """
    _check_float(x, "x")
    axis = _check_axis(axis, x.dim())
    qrange(bits, signed)
    lo, hi = _minmax(x, axis)
    return _from_range(lo, hi, bits, symmetric, signed, "x", axis)


def _broadcast_params(scale, zero_point, x: torch.Tensor, axis: int | None,
                      zp_range: tuple[int, int, str]):
    """scale (float32) and zero point (int64) as tensors shaped to broadcast against x;
    zp_range: (lo, hi, what) the zero point must lie in."""
    scale = scale_tensor(scale, "scale")
    zp = zero_point_tensor(zero_point, "zero_point", *zp_range)
    if axis is None:
        if scale.numel() != 1 or zp.numel() != 1:
            raise ValueError("per-tensor scale and zero_point must have one element each "
                             f"(got {scale.numel()} and {zp.numel()}); pass axis= for per channel")
        return scale.reshape(()), zp.reshape(())
    n = x.shape[axis]
    if scale.dim() != 1 or zp.dim() != 1 or scale.numel() != n or zp.numel() != n:
        raise ValueError(f"per-channel scale and zero_point must be 1-D of length "
                         f"x.shape[{axis}]={n}, got {tuple(scale.shape)} and {tuple(zp.shape)}")
    shape = [1] * x.dim()
    shape[axis] = n
    return scale.reshape(shape), zp.reshape(shape)


def quantize(x: torch.Tensor, scale, zero_point, bits: int = 8, signed: bool = False,
             axis: int | None = None) -> torch.Tensor:
    """Integer tensor (int8 if signed else uint8; fewer bits use the low range of it).

    scale: finite, > 0 and with a finite float32 reciprocal; zero_point: an integer in
    [qmin, qmax]; either a number (per tensor) or 1-D of length x.shape[axis]. Values
    beyond the range, +Inf and -Inf included, saturate to qmin / qmax; NaN raises
    ValueError (it has no quantized value).
    """
    _check_float(x, "x")
    axis = _check_axis(axis, x.dim())
    qmin, qmax = qrange(bits, signed)
    what = f" for {bits}-bit {'signed' if signed else 'unsigned'} values"
    s, zp = _broadcast_params(scale, zero_point, x, axis, (qmin, qmax, what))
    inv = torch.reciprocal(s)
    tiny = ~torch.isfinite(inv)  # below ~2.9e-39: 1/scale is inf, and 0 * inf is NaN
    if bool(tiny.any()):
        raise ValueError(f"scale must be at least {1 / _FLOAT32_MAX:.6g} (1/scale must be a "
                         f"finite float32), got {float(s[tiny][0]):.6g}")
    if bool(torch.isnan(x).any()):  # NaN would become 0 (torch's float -> int conversion)
        raise ValueError("x contains NaN, which has no quantized value (+-Inf saturate)")
    # As torch does: multiply by the float32 reciprocal, round half to even, add zp, clamp.
    t = torch.round(x.detach().float() * inv)
    q = torch.clamp(t + zp.to(torch.float32), qmin, qmax)
    return q.to(torch.int8 if signed else torch.uint8)


def dequantize(q: torch.Tensor, scale, zero_point, axis: int | None = None) -> torch.Tensor:
    """float32 (q - zero_point) * scale. scale: finite and > 0; zero_point: an int32
    integer; either a number (per tensor) or 1-D of length q.shape[axis]."""
    if not isinstance(q, torch.Tensor):
        raise TypeError(f"q must be a torch.Tensor, got {type(q).__name__}")
    if q.is_floating_point() or q.is_complex() or q.dtype == torch.bool:
        raise TypeError(f"q must be an integer tensor, got {q.dtype}")
    axis = _check_axis(axis, q.dim())
    i32 = torch.iinfo(torch.int32)  # zero points are int32, as QParams holds them
    s, zp = _broadcast_params(scale, zero_point, q, axis, (i32.min, i32.max, " (int32)"))
    return (q.to(torch.float32) - zp.to(torch.float32)) * s
