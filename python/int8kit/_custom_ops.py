"""int8kit kernels as torch.library custom ops, so torch.compile and torch.export trace them.

`linear_dynamic` quantizes float32 activations on the fly (uint8, per row or per tensor)
and runs the int8 GEMM with the dequantize + bias epilogue fused. Its fake implementation
only states the output shape, so tracing never touches the packed bytes.

`linear_dynamic_impl` is the same computation without the dispatcher: eager modules call
it directly because the custom-op dispatch costs several microseconds per call, which is
as long as a whole M=1 GEMM (tests check both routes give identical results).
"""

from __future__ import annotations

import numpy as np
import torch

from . import _C


def linear_dynamic_impl(x: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor,
                        bias: torch.Tensor | None, out_features: int, per_row: bool,
                        relu: bool, threads: int) -> torch.Tensor:
    """float32 [M, N] from float32 x [M, K]; arguments are trusted (modules check them).

    Calls the bindings directly: ops.py re-validates every argument on each call, which
    costs more than the kernels themselves at small M.
    """
    if not x.is_contiguous():
        x = x.contiguous()
    xa = (x.detach() if x.requires_grad else x).numpy()
    m, k = xa.shape
    if m == 0:
        return torch.empty((0, out_features), dtype=torch.float32)
    nthreads = threads if threads > 0 else torch.get_num_threads()
    nparams = m if per_row else 1
    q = np.empty((m, k), dtype=np.uint8)
    a_scale = np.empty(nparams, dtype=np.float32)
    a_zp = np.empty(nparams, dtype=np.int32)
    if not _C.quantize_dynamic_u8(xa, bool(per_row), q, a_scale, a_zp, nthreads):
        raise ValueError("x contains NaN or Inf; cannot quantize activations")
    out = np.empty((m, out_features), dtype=np.float32)
    _C.gemm(q, a_zp, packed.numpy(), out, a_scale, w_scale.numpy(),
            None if bias is None else bias.numpy(), bool(relu), 1.0, 0, nthreads, "")
    return torch.from_numpy(out)


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
