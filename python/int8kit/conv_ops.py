"""Low-level int8 conv2d: weight packing and conv on uint8 NHWC activations.

Activations are uint8 [N, H, W, C] (channels last), contiguous, with one zero point and one
scale for the whole tensor; padding reads the zero point (the real-valued input is padded
with 0). Weights are int8 [OC, IC/groups, KH, KW] (torch's layout), packed once. Outputs
are [N, OH, OW, OC]. Every kernel path gives bit-identical results; ``isa=`` forces one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from . import _C
from ._validate import as_numpy, kernel_param, per_index, positive_scalar, requant_params
from .ops import _isa, _threads

MAX_K: int = _C.MAX_K


def _pair(value, name: str, minimum: int) -> tuple[int, int]:
    try:
        vals = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    except TypeError:  # not iterable: 3.0, None
        vals = ()
    if len(vals) == 1:  # (k,): nn.Conv2d takes it for (k, k)
        vals = vals * 2
    if (len(vals) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, np.integer))
                              for v in vals)):
        raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")
    if min(vals) < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    return int(vals[0]), int(vals[1])


def conv_params(in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1,
                groups=1) -> tuple[int, ...]:
    """The 11-int parameter tuple the kernels take, validated (errors name the argument)."""
    kh, kw = _pair(kernel_size, "kernel_size", 1)
    sh, sw = _pair(stride, "stride", 1)
    if isinstance(padding, str):
        raise ValueError(f"padding must be an int or a pair of ints, got {padding!r} "
                         "(string padding is resolved by QuantConv2d.from_float)")
    ph, pw = _pair(padding, "padding", 0)
    dh, dw = _pair(dilation, "dilation", 1)
    if isinstance(groups, bool) or not isinstance(groups, (int, np.integer)) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if in_channels % groups or out_channels % groups:
        raise ValueError(f"in_channels ({in_channels}) and out_channels ({out_channels}) must "
                         f"be divisible by groups ({groups})")
    k = kh * kw * (in_channels // groups)
    if k > MAX_K:
        raise ValueError(f"KH*KW*in_channels/groups = {k} exceeds {MAX_K}, the bound that "
                         "keeps the int32 accumulator from overflowing")
    return (int(in_channels), int(out_channels), kh, kw, sh, sw, ph, pw, dh, dw, int(groups))


@dataclass(frozen=True)
class PackedConvWeight:
    """int8 conv weights packed once (per-group GEMM panels, or the depthwise layout).

    ``buffer`` is an ordinary uint8 tensor starting with a header the kernels verify.
    """

    buffer: torch.Tensor

    def __post_init__(self):
        info = _C.conv_packed_info(as_numpy(self.buffer, "packed", np.uint8, 1))
        object.__setattr__(self, "_info", dict(info))

    def __getattr__(self, name):
        info = self.__dict__.get("_info", {})
        if name in info:
            return info[name]
        raise AttributeError(name)

    @property
    def params(self) -> tuple[int, ...]:
        i = self._info
        return (i["in_channels"], i["out_channels"], *i["kernel_size"], *i["stride"],
                *i["padding"], *i["dilation"], i["groups"])

    def output_size(self, h: int, w: int) -> tuple[int, int]:
        _, _, kh, kw, sh, sw, ph, pw, dh, dw, _ = self.params
        oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
        ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
        if oh < 1 or ow < 1:
            raise ValueError(f"input {h}x{w} is smaller than the (dilated, padded) kernel")
        return oh, ow

    def __repr__(self) -> str:
        i = self._info
        return (f"PackedConvWeight({i['in_channels']}->{i['out_channels']}, "
                f"k={i['kernel_size']}, stride={i['stride']}, padding={i['padding']}, "
                f"dilation={i['dilation']}, groups={i['groups']}, layout={i['layout']})")


def pack_conv_weight(w, stride=1, padding=0, dilation=1, groups=1) -> PackedConvWeight:
    """Packs int8 w [OC, IC/groups, KH, KW] (torch tensor or numpy array)."""
    arr = as_numpy(w, "w", np.int8, 4)
    oc, icg, kh, kw = arr.shape
    if min(arr.shape) < 1:
        raise ValueError(f"w must be non-empty, got shape {tuple(arr.shape)}")
    params = conv_params(icg * groups if isinstance(groups, int) else icg, oc, (kh, kw),
                         stride, padding, dilation, groups)
    buf = torch.empty(_C.conv_packed_size_bytes(params), dtype=torch.uint8)
    _C.pack_conv_weight(arr, params, buf.numpy())
    return PackedConvWeight(buf)


def unpack_conv_weight(packed) -> torch.Tensor:
    """The int8 weight [OC, IC/groups, KH, KW] a packed conv weight holds (the inverse of
    pack_conv_weight)."""
    buf = _buffer(packed)
    i = _C.conv_packed_info(buf)
    out = torch.empty(i["out_channels"], i["in_channels"] // i["groups"], *i["kernel_size"],
                      dtype=torch.int8)
    _C.unpack_conv_weight(buf, out.numpy())
    return out


def _buffer(packed) -> np.ndarray:
    if isinstance(packed, PackedConvWeight):
        packed = packed.buffer
    return as_numpy(packed, "packed", np.uint8, 1)


def _zero_point(zp) -> int:
    if isinstance(zp, torch.Tensor):
        if zp.numel() != 1:
            raise ValueError("x_zero_point must be a single value (per-tensor quantization)")
        zp = zp.item()
    if isinstance(zp, bool) or not isinstance(zp, (int, np.integer)) or not 0 <= zp <= 255:
        raise ValueError(f"x_zero_point must be an int in [0, 255], got {zp!r}")
    return int(zp)


def _run(x, x_zero_point, packed, out_dtype, x_scale=1.0, w_scale=None, bias=None,
         relu=False, out_inv_scale=1.0, out_zero_point=0, threads=None, isa=None):
    buf = _buffer(packed)
    is_torch = isinstance(x, torch.Tensor)
    arr = as_numpy(x, "x", np.uint8, 4)
    # values (scales finite and > 0, bias finite), shapes and lengths: the kernel checks
    if out_dtype != np.int32:
        w_scale = kernel_param(w_scale, "w_scale",
                               lambda: _C.conv_packed_info(buf)["out_channels"], np.float32)
        x_scale = positive_scalar(x_scale, "x_scale")
        if bias is not None:
            bias = as_numpy(bias, "bias", np.float32, 1)
    # the kernel allocates the output [N, OH, OW, OC] (out_dtype) and returns it
    out = _C.conv2d(arr, _zero_point(x_zero_point), buf, out_dtype, float(x_scale), w_scale,
                    bias, bool(relu), float(out_inv_scale), int(out_zero_point),
                    _threads(threads), _isa(isa))
    return torch.from_numpy(out) if is_torch else out


def conv2d_s32(x, x_zero_point, packed, *, threads=None, isa=None):
    """int32 [N, OH, OW, OC]: the exact sum of (x - x_zero_point) * w over each window."""
    return _run(x, x_zero_point, packed, np.int32, threads=threads, isa=isa)


def conv2d_f32(x, x_zero_point, x_scale, packed, w_scale, bias=None, *, relu=False,
               threads=None, isa=None):
    """float32 [N, OH, OW, OC] = acc * x_scale * w_scale[oc] + bias[oc], optional ReLU."""
    return _run(x, x_zero_point, packed, np.float32, x_scale, w_scale, bias, relu,
                threads=threads, isa=isa)


def conv2d_u8(x, x_zero_point, x_scale, packed, w_scale, out_scale, out_zero_point,
              bias=None, *, relu=False, threads=None, isa=None):
    """uint8 [N, OH, OW, OC]: the float result requantized with out_scale, out_zero_point."""
    inv, zp = requant_params(out_scale, out_zero_point)
    return _run(x, x_zero_point, packed, np.uint8, x_scale, w_scale, bias, relu, inv, zp,
                threads, isa)


def conv2d_reference(x, x_zero_point, w, stride=1, padding=0, dilation=1, groups=1, *,
                     out_dtype=np.int32, x_scale=1.0, w_scale=None, bias=None, relu=False,
                     out_scale=1.0, out_zero_point=0):
    """The scalar oracle (direct int64 loops over the plain weight), for tests."""
    arr = as_numpy(x, "x", np.uint8, 4)
    wa = as_numpy(w, "w", np.int8, 4)
    params = conv_params(wa.shape[1] * groups, wa.shape[0], wa.shape[2:], stride, padding,
                         dilation, groups)
    buf = torch.empty(_C.conv_packed_size_bytes(params), dtype=torch.uint8)
    _C.pack_conv_weight(wa, params, buf.numpy())
    oh, ow = PackedConvWeight(buf).output_size(arr.shape[1], arr.shape[2])
    out = _C.empty((arr.shape[0], oh, ow, params[1]), out_dtype)
    if w_scale is not None:
        w_scale = per_index(w_scale, "w_scale", params[1], np.float32)
    if bias is not None:
        bias = as_numpy(bias, "bias", np.float32, 1)
    inv = float(np.float32(1.0) / np.float32(out_scale))
    _C.conv2d_reference(arr, _zero_point(x_zero_point), wa, params, out, float(x_scale),
                        w_scale, bias, bool(relu), inv, int(out_zero_point))
    return out
