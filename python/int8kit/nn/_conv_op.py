"""int8kit::conv2d_dynamic: float NCHW in, float NCHW out, int8 conv inside (and
int8kit::conv2d_static, the same with calibrated input parameters).

The activation is quantized to uint8 per tensor (torch.ao MinMaxObserver parameters),
laid out channels-last (both in one C++ pass), convolved with the packed int8 weight with
the dequantize + bias (+ ReLU) epilogue fused, and returned as a channels_last-strided NCHW tensor, or a
contiguous one when ``channels_last`` is False. The fake implementation states only the
output shape and strides, so torch.compile / torch.export never touch the packed bytes.
Eager modules call ``conv2d_dynamic_np`` directly with cached numpy views of their buffers
(the dispatcher, and each tensor-to-numpy call, cost microseconds).
"""

from __future__ import annotations

import numpy as np
import torch

from .. import _C
from ._base import checked_input_params


def _out_hw(h: int, w: int, p: list[int]) -> tuple[int, int]:
    _, _, kh, kw, sh, sw, ph, pw, dh, dw, _ = p
    return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def nchw_numpy(x: torch.Tensor) -> tuple[np.ndarray, bool]:
    """(array, nhwc): a 4-D tensor's data as a C-contiguous numpy array without a copy
    where possible: [N, H, W, C] (nhwc True) for channels_last strides, else [N, C, H, W].
    The layout is read from numpy's view, which costs less than asking torch."""
    a = (x.detach() if x.requires_grad else x).numpy()
    if a.flags.c_contiguous:
        return a, False
    t = a.transpose(0, 2, 3, 1)
    return (t, True) if t.flags.c_contiguous else (np.ascontiguousarray(a), False)


def conv2d_dynamic_np(xa: np.ndarray, x_nhwc: bool, packed: np.ndarray, w_scale: np.ndarray,
                      bias: np.ndarray | None, params: list[int], relu: bool, threads: int,
                      channels_last: bool, isa: str = "",
                      x_qparams: tuple[float, int] = (0.0, 0),
                      requant: tuple[float, int] | None = None) -> torch.Tensor:
    """The work of conv2d_dynamic on numpy views (xa from nchw_numpy); threads > 0.
    x_qparams (scale > 0, zero point): fixed input parameters (static quantization) instead
    of the measured range; NaN or Inf in x raise either way. requant (1/scale, zero point):
    a uint8 output, channels_last (which must be set)."""
    if x_nhwc:
        n, h, w, _ = xa.shape
    else:
        n, _, h, w = xa.shape
    oc = params[1]
    oh, ow = _out_hw(h, w, params)
    y = _C.empty((n, oh, ow, oc) if channels_last else (n, oc, oh, ow),
                 np.float32 if requant is None else np.uint8)
    if n > 0:
        ok, _, _ = _C.conv2d_dynamic_f32(xa, x_nhwc, packed, w_scale, bias, bool(relu), y,
                                         channels_last, threads, isa, *x_qparams,
                                         *(requant or (1.0, 0)))
        if not ok:
            raise ValueError("x contains NaN or Inf; cannot quantize activations")
    return torch.from_numpy(y.transpose(0, 3, 1, 2) if channels_last else y)


def conv2d_dynamic_impl(x: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor,
                        bias: torch.Tensor | None, params: list[int], relu: bool,
                        threads: int, channels_last: bool, isa: str = "",
                        x_qparams: tuple[float, int] = (0.0, 0)) -> torch.Tensor:
    """Arguments are trusted (the module checks them): x float32 [N, C, H, W].

    One C++ call does the range scan (or takes x_qparams, see conv2d_dynamic_np), the
    quantize fused with the layout change, the conv and the output layout (the separate
    passes cost more than the kernel at small sizes).
    """
    xa, x_nhwc = nchw_numpy(x)
    return conv2d_dynamic_np(xa, x_nhwc, packed.numpy(), w_scale.numpy(),
                             None if bias is None else bias.numpy(), params, relu,
                             threads if threads > 0 else torch.get_num_threads(),
                             channels_last, isa, x_qparams)


@torch.library.custom_op("int8kit::conv2d_dynamic", mutates_args=(), device_types="cpu")
def conv2d_dynamic(x: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor,
                   bias: torch.Tensor | None, params: list[int], relu: bool = False,
                   threads: int = 0, channels_last: bool = False) -> torch.Tensor:
    """params: (in, out, kh, kw, sh, sw, ph, pw, dh, dw, groups); threads=0: torch's."""
    return conv2d_dynamic_impl(x, packed, w_scale, bias, params, relu, threads, channels_last)


def _fake_out(x, params, channels_last):
    """The output the conv ops give for x: shape and strides only."""
    torch._check(x.dim() == 4, lambda: "x must be 4-D")
    oh, ow = _out_hw(x.shape[2], x.shape[3], params)
    y = x.new_empty((x.shape[0], params[1], oh, ow), dtype=torch.float32)
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y


@conv2d_dynamic.register_fake
def _(x, packed, w_scale, bias, params, relu=False, threads=0, channels_last=False):
    return _fake_out(x, params, channels_last)


@torch.library.custom_op("int8kit::conv2d_static", mutates_args=(), device_types="cpu")
def conv2d_static(x: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor,
                  bias: torch.Tensor | None, params: list[int], in_scale: torch.Tensor,
                  in_zero_point: torch.Tensor, relu: bool = False, threads: int = 0,
                  channels_last: bool = False) -> torch.Tensor:
    """conv2d_dynamic with x quantized by the calibrated (in_scale, in_zero_point),
    one-element tensors (a traced graph cannot read them as numbers)."""
    return conv2d_dynamic_impl(x, packed, w_scale, bias, params, relu, threads, channels_last,
                               x_qparams=checked_input_params(float(in_scale),
                                                              int(in_zero_point)))


@conv2d_static.register_fake
def _(x, packed, w_scale, bias, params, in_scale, in_zero_point, relu=False, threads=0,
      channels_last=False):
    return _fake_out(x, params, channels_last)
