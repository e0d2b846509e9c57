"""int8kit kernels as torch.library custom ops, so torch.compile and torch.export trace them.

`linear_dynamic` quantizes float32 activations on the fly (uint8, per row or per tensor)
and runs the int8 GEMM with the dequantize + bias epilogue fused. Its fake implementation
only states the output shape, so tracing never touches the packed bytes.

`linear_dynamic_impl` is the same computation without the dispatcher: the custom-op
dispatch costs several microseconds per call, as long as a whole M=1 GEMM, so eager
modules call the same native entry point (_C.linear_dynamic) directly, with numpy views of
their buffers made once (tests check every route gives identical results).
"""

from __future__ import annotations

import numpy as np
import torch

from . import _C


def _numpy(x: torch.Tensor) -> np.ndarray:
    """A C-contiguous numpy view of a CPU tensor (detached: the kernels have no autograd);
    a copy only when x is not contiguous. Checked in numpy: cheaper than asking torch."""
    try:
        a = x.numpy()
    except RuntimeError:  # requires grad (asking first costs more than this on every call)
        if not x.requires_grad:  # e.g. nested: the callers' checks say what is wrong
            raise TypeError("x has no numpy view") from None
        a = x.detach().numpy()
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def linear_dynamic_impl(x: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor,
                        bias: torch.Tensor | None, out_features: int, per_row: bool,
                        relu: bool, threads: int) -> torch.Tensor:
    """float32 [M, N] from float32 x [M, K]; arguments are trusted (modules check them).

    One fused native call (quantize into a scratch buffer, GEMM, epilogue): ops.py
    re-validates every argument on each call, which costs more than the kernels at small M.
    """
    xa = _numpy(x)
    nthreads = threads if threads > 0 else torch.get_num_threads()
    y = _C.linear_dynamic(xa, packed.numpy(), w_scale.numpy(),
                          None if bias is None else bias.numpy(), bool(per_row), bool(relu),
                          nthreads)
    return torch.from_numpy(y)


@torch.library.custom_op("int8kit::linear_dynamic", mutates_args=(), device_types="cpu")
def linear_dynamic(x: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor,
                   bias: torch.Tensor | None, out_features: int, per_row: bool = True,
                   relu: bool = False, threads: int = 0) -> torch.Tensor:
    """y[M, N] = dequant(quant(x) @ w.T) + bias; threads=0 means torch.get_num_threads()."""
    return linear_dynamic_impl(x, packed, w_scale, bias, out_features, per_row, relu, threads)


@linear_dynamic.register_fake
def _(x, packed, w_scale, bias, out_features, per_row=True, relu=False, threads=0):
    torch._check(x.dim() == 2, lambda: "x must be 2-D")
    return x.new_empty((x.shape[0], out_features), dtype=torch.float32)


@torch.library.custom_op("int8kit::linear_static", mutates_args=(), device_types="cpu")
def linear_static(x: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor,
                  bias: torch.Tensor | None, in_scale: torch.Tensor, in_zero_point: torch.Tensor,
                  out_features: int, relu: bool = False, threads: int = 0) -> torch.Tensor:
    """StaticQuantLinear's float path: x quantized with the calibrated (in_scale,
    in_zero_point), one-element tensors (a traced graph cannot read them as numbers)."""
    y = _C.linear_static(_numpy(x), packed.numpy(), w_scale.numpy(),
                         None if bias is None else bias.numpy(), in_scale.numpy(),
                         in_zero_point.numpy(), bool(relu), False, 1.0, 0,
                         threads if threads > 0 else torch.get_num_threads())
    return torch.from_numpy(y)


@linear_static.register_fake
def _(x, packed, w_scale, bias, in_scale, in_zero_point, out_features, relu=False, threads=0):
    torch._check(x.dim() == 2, lambda: "x must be 2-D")
    return x.new_empty((x.shape[0], out_features), dtype=torch.float32)
