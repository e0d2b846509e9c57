"""Low-level int8 kernels: weight packing, GEMM with fused epilogues, activation quantization.

Inputs may be CPU torch tensors or numpy arrays; outputs follow the type of the activation
argument. Every kernel path gives bit-identical results (see the numerics contract in the
design notes); ``isa=`` forces one path for a call, ``use_isa`` for a block.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch

from . import _C
from ._dlpack import from_dlpack, to_dlpack
from ._validate import as_numpy, kernel_param, per_index, requant_params

MAX_K: int = _C.MAX_K
PANEL: int = _C.PANEL
# Every kernel path, slowest first; those this CPU runs.
_PATHS: tuple[str, ...] = ("scalar", "avx2", "avx_vnni", "avx512_vnni", "amx_int8")
_SUPPORTED_PATHS: tuple[str, ...] = tuple(_C.cpu_info()["supported_paths"])


def _threads(threads: int | None) -> int:
    if threads is None:
        return torch.get_num_threads()
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ValueError(f"threads must be a positive int, got {threads!r}")
    return threads


def _isa(isa: str | None) -> str:
    if isa is None:
        return ""
    if isa not in _PATHS:
        raise ValueError(f"isa must be one of {', '.join(map(repr, _PATHS))}, got {isa!r}")
    if isa not in _SUPPORTED_PATHS:
        raise RuntimeError(f"kernel path {isa!r} cannot run on this CPU; "
                           f"supported: {list(_SUPPORTED_PATHS)}")
    return isa


def get_isa() -> str:
    """The kernel path in use ('scalar', 'avx2', 'avx_vnni', 'avx512_vnni' or 'amx_int8')."""
    return _C.active_isa()


def set_isa(name: str) -> None:
    """Forces a kernel path for the whole process; raises if this CPU cannot run it."""
    _C.set_isa(_isa(name))


@contextlib.contextmanager
def use_isa(name: str):
    """Runs the block on the given kernel path, then restores the previous one."""
    previous = get_isa()
    set_isa(name)
    try:
        yield
    finally:
        _C.set_isa(previous)


@dataclass(frozen=True)
class PackedWeight:
    """int8 weights [N, K] packed once into the layout the GEMM kernels read.

    ``buffer`` is an ordinary uint8 tensor that starts with a header the kernels verify,
    so it can live in a module buffer and pass through custom ops.
    """

    buffer: torch.Tensor

    def __post_init__(self):
        view = as_numpy(self.buffer, "packed", np.uint8, 1)
        object.__setattr__(self, "_info", _C.packed_info(view))
        object.__setattr__(self, "_view", view)  # reused by every call

    @property
    def shape(self) -> tuple[int, int]:
        return (self._info["n"], self._info["k"])

    @property
    def out_features(self) -> int:
        return self._info["n"]

    @property
    def in_features(self) -> int:
        return self._info["k"]

    @property
    def nbytes(self) -> int:
        return self.buffer.numel()

    @property
    def layout(self) -> str:
        return f"panels of {PANEL} columns x K groups of 4 (every path reads it)"

    def unpack(self) -> torch.Tensor:
        """The int8 weight [N, K] back, for inspection."""
        out = np.empty(self.shape, dtype=np.int8)
        _C.unpack_weight(as_numpy(self.buffer, "packed", np.uint8, 1), out)
        return torch.from_numpy(out)

    def __repr__(self) -> str:
        n, k = self.shape
        return f"PackedWeight(N={n}, K={k}, bytes={self.nbytes}, path={get_isa()})"


def pack_weight(w) -> PackedWeight:
    """Packs an int8 weight [N, K] (torch tensor or numpy array)."""
    arr = as_numpy(w, "w", np.int8, 2)
    n, k = arr.shape
    if n < 1 or k < 1:
        raise ValueError(f"w must be non-empty, got shape {tuple(arr.shape)}")
    if k > MAX_K:
        raise ValueError(f"w has K={k} columns; the int32 accumulator bounds K to {MAX_K}")
    buf = torch.empty(_C.packed_size_bytes(n, k), dtype=torch.uint8)
    _C.pack_weight(arr, buf.numpy())
    return PackedWeight(buf)


def _packed_buffer(packed) -> np.ndarray:
    if isinstance(packed, PackedWeight):
        return packed._view
    return as_numpy(packed, "packed", np.uint8, 1)


# One-element zero-point arrays for the kernel, made once per value (np.array costs about
# half a microsecond, a tenth of a GEMV): read-only views of 0..255.
_ZP_VALUES = np.arange(256, dtype=np.int32)
_ZP_VALUES.flags.writeable = False
_ZP_ARRAYS = [_ZP_VALUES[z:z + 1] for z in range(256)]


def _activations(a, a_zero_point):
    """uint8 activations as they are; int8 ones shifted by +128 (zero point too)."""
    if type(a_zero_point) is int and 0 <= a_zero_point <= 255:  # the common case, fast
        t = type(a)
        if (t is torch.Tensor and a.dtype is torch.uint8) or (t is np.ndarray
                                                               and a.dtype == np.uint8):
            return as_numpy(a, "a", np.uint8, 2), _ZP_ARRAYS[a_zero_point], t is torch.Tensor
    is_torch = isinstance(a, torch.Tensor)
    signed = a.dtype == (torch.int8 if is_torch else np.int8) if hasattr(a, "dtype") else False
    arr = as_numpy(a, "a", np.int8 if signed else np.uint8, 2)
    lo, hi = (-128, 127) if signed else (0, 255)
    if type(a_zero_point) is int:  # the common case, without numpy reductions
        if not lo <= a_zero_point <= hi:
            raise ValueError(f"a_zero_point must be in [{lo}, {hi}] for {arr.dtype} activations")
        zp = np.array([a_zero_point + (128 if signed else 0)], np.int32)
    elif not signed:  # the kernel checks the range
        zp = kernel_param(a_zero_point, "a_zero_point", arr.shape[0], np.int32)
    else:
        zp = per_index(a_zero_point, "a_zero_point", arr.shape[0], np.int32)
        if zp.size and (zp.min() < lo or zp.max() > hi):
            raise ValueError(f"a_zero_point must be in [{lo}, {hi}] for {arr.dtype} activations")
        if signed:
            zp = zp + np.int32(128)
    if signed:
        arr = arr.view(np.uint8) ^ np.uint8(0x80)
    return arr, zp, is_torch


def _run(a, a_zero_point, packed, out_dtype, a_scale=None, w_scale=None, bias=None,
         relu=False, out_inv_scale=1.0, out_zero_point=0, threads=None, isa=None):
    # The common int32 call (a uint8 [M, K] CPU tensor, an int zero point, a PackedWeight)
    # in as few Python steps as possible: at M = 1 each costs about as much as the GEMV,
    # more when the GEMM has just pushed the interpreter out of cache. Everything else,
    # and any argument this path does not accept, goes through the checks below.
    if (out_dtype is np.int32 and type(a) is torch.Tensor and type(a_zero_point) is int
            and isa is None and type(packed) is PackedWeight and 0 <= a_zero_point <= 255
            and (threads is None or (type(threads) is int and threads > 0))):
        try:  # in and out as DLPack capsules: cheaper than numpy views (dlpack_io.h)
            cap = to_dlpack(a)
        except (TypeError, RuntimeError, BufferError):  # e.g. no storage: checked below
            cap = None
        out = None if cap is None else _C.gemm_s32_dlpack(
            cap, a_zero_point, packed._view, threads or torch.get_num_threads())
        if out is not None:
            return from_dlpack(out)
    buf = _packed_buffer(packed)
    arr, zp, is_torch = _activations(a, a_zero_point)
    # values (scales finite and > 0, bias finite) are checked by the kernel
    if a_scale is not None:
        a_scale = kernel_param(a_scale, "a_scale", arr.shape[0], np.float32)
    if w_scale is not None:
        w_scale = kernel_param(w_scale, "w_scale", lambda: _C.packed_info(buf)["n"], np.float32)
    if bias is not None:
        bias = as_numpy(bias, "bias", np.float32, 1)
    # the kernel allocates the output [M, N] (out_dtype) and returns it
    out = _C.gemm(arr, zp, buf, out_dtype, a_scale, w_scale, bias, bool(relu),
                  float(out_inv_scale), int(out_zero_point), _threads(threads), _isa(isa))
    return torch.from_numpy(out) if is_torch else out


def gemm_s32(a, a_zero_point, packed, *, threads=None, isa=None):
    """int32 [M, N] = sum_k (a[m, k] - a_zero_point) * w[n, k], exact.

    a: uint8 [M, K] (or int8, shifted internally); a_zero_point: int or per-row [M].
    """
    return _run(a, a_zero_point, packed, np.int32, threads=threads, isa=isa)


def gemm_f32(a, a_zero_point, a_scale, packed, w_scale, bias=None, *, relu=False,
             threads=None, isa=None):
    """float32 [M, N] = acc * a_scale[m] * w_scale[n] + bias[n], optional ReLU, fused."""
    return _run(a, a_zero_point, packed, np.float32, a_scale, w_scale, bias, relu,
                threads=threads, isa=isa)


def gemm_u8(a, a_zero_point, a_scale, packed, w_scale, out_scale, out_zero_point, bias=None,
            *, relu=False, threads=None, isa=None):
    """uint8 [M, N]: the float result requantized with out_scale and out_zero_point, fused."""
    inv, zp = requant_params(out_scale, out_zero_point)
    return _run(a, a_zero_point, packed, np.uint8, a_scale, w_scale, bias, relu, inv, zp,
                threads, isa)


def quantize_dynamic_u8(x, *, per_row: bool = True, threads=None):
    """Quantizes float32 x [M, K] to uint8 with parameters measured on the fly.

    Returns (q, scale, zero_point): per row (length M) or per tensor (length 1). Parameters
    follow torch.ao's MinMaxObserver for quint8 (range widened to include 0).
    """
    is_torch = isinstance(x, torch.Tensor)
    arr = as_numpy(x, "x", np.float32, 2)
    m, k = arr.shape
    if k < 1:
        raise ValueError("x must have at least one column")
    nparams = m if per_row else 1
    q = np.empty((m, k), dtype=np.uint8)
    scale = np.empty(nparams, dtype=np.float32)
    zp = np.empty(nparams, dtype=np.int32)
    if m == 0 and not per_row:
        scale[:], zp[:] = 1.0, 0
    elif not _C.quantize_dynamic_u8(arr, bool(per_row), q, scale, zp, _threads(threads)):
        raise ValueError("x contains NaN or Inf; cannot choose quantization parameters")
    if is_torch:
        return torch.from_numpy(q), torch.from_numpy(scale), torch.from_numpy(zp)
    return q, scale, zp


def vnni_peak_ops_per_second(threads: int = 1, iters: int = 2_000_000) -> float:
    """int8 ops/s of a tight vpdpbusd loop: the yardstick benchmarks compare against."""
    return _C.vnni_peak_ops_per_second(_threads(threads), int(iters))


def cpu_info() -> dict:
    """CPU features, the kernel paths this CPU can run, and the one in use (and why)."""
    info = dict(_C.cpu_info())
    try:
        info["active_path"] = _C.active_isa()
        info["active_path_reason"] = _C.active_isa_reason()
    except (ValueError, RuntimeError) as e:  # e.g. a bad INT8KIT_ISA: say why, don't raise
        info["active_path"] = None
        info["active_path_reason"] = f"error: {e}"
    info["threads"] = torch.get_num_threads()
    return info
