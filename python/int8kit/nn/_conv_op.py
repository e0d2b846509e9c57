"""int8kit::conv2d_dynamic: float NCHW in, float NCHW out, int8 conv inside.

The activation is quantized to uint8 per tensor (torch.ao MinMaxObserver parameters),
laid out channels-last (both in one C++ pass), convolved with the packed int8 weight with
the dequantize + bias (+ ReLU) epilogue fused, and returned as a channels_last-strided NCHW tensor, or a
contiguous one when ``channels_last`` is False. The fake implementation states only the
output shape and strides, so torch.compile / torch.export never touch the packed bytes.
Eager modules call ``conv2d_dynamic_impl`` directly (the dispatcher costs microseconds).
"""

from __future__ import annotations

import torch

from .. import _C


def _out_hw(h: int, w: int, p: list[int]) -> tuple[int, int]:
    _, _, kh, kw, sh, sw, ph, pw, dh, dw, _ = p
    return (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1, (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1


def conv2d_dynamic_impl(x: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor,
                        bias: torch.Tensor | None, params: list[int], relu: bool,
                        threads: int, channels_last: bool, isa: str = "") -> torch.Tensor:
    """Arguments are trusted (the module checks them): x float32 [N, C, H, W].

    One C++ call does the range scan, the quantize fused with the layout change, the conv
    and the output layout (the separate passes cost more than the kernel at small sizes).
    """
    x = x.detach()
    n, c, h, w = x.shape
    oc = params[1]
    oh, ow = _out_hw(h, w, params)
    nthreads = threads if threads > 0 else torch.get_num_threads()
    x_nhwc = x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    xa = (x.permute(0, 2, 3, 1) if x_nhwc else x.contiguous()).numpy()
    if channels_last:
        y = torch.empty((n, oh, ow, oc), dtype=torch.float32)
        out = y.permute(0, 3, 1, 2)
    else:
        out = y = torch.empty((n, oc, oh, ow), dtype=torch.float32)
    if n > 0:
        ok, _, _ = _C.conv2d_dynamic_f32(xa, x_nhwc, packed.numpy(), w_scale.numpy(),
                                         None if bias is None else bias.numpy(), bool(relu),
                                         y.numpy(), channels_last, nthreads, isa)
        if not ok:
            raise ValueError("x contains NaN or Inf; cannot quantize activations")
    return out


@torch.library.custom_op("int8kit::conv2d_dynamic", mutates_args=(), device_types="cpu")
def conv2d_dynamic(x: torch.Tensor, packed: torch.Tensor, w_scale: torch.Tensor,
                   bias: torch.Tensor | None, params: list[int], relu: bool = False,
                   threads: int = 0, channels_last: bool = False) -> torch.Tensor:
    """params: (in, out, kh, kw, sh, sw, ph, pw, dh, dw, groups); threads=0: torch's."""
    return conv2d_dynamic_impl(x, packed, w_scale, bias, params, relu, threads, channels_last)


@conv2d_dynamic.register_fake
def _(x, packed, w_scale, bias, params, relu=False, threads=0, channels_last=False):
    torch._check(x.dim() == 4, lambda: "x must be 4-D")
    oh, ow = _out_hw(x.shape[2], x.shape[3], params)
    y = x.new_empty((x.shape[0], params[1], oh, ow), dtype=torch.float32)
    return y.contiguous(memory_format=torch.channels_last) if channels_last else y
