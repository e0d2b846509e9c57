"""QuantConv2d: a drop-in dynamic int8 replacement for nn.Conv2d (float in, float out)."""

from __future__ import annotations

import torch
from torch import nn

from .. import conv_ops
from ..qparams import choose_qparams, quantize
from ._base import (NotConvertibleError, QuantModuleBase, check_float_input, checked_bias,
                    use_custom_op)
from ._conv_op import conv2d_dynamic, conv2d_dynamic_np, nchw_numpy

WEIGHT_SCHEMES = ("per_channel", "per_tensor")


def _resolve_padding(conv: nn.Conv2d) -> tuple[int, int]:
    """nn.Conv2d's padding as a symmetric pair; 'same' needs an even total per side."""
    if conv.padding == "valid":
        return (0, 0)
    if conv.padding == "same":
        out = []
        for d, k in zip(conv.dilation, conv.kernel_size):
            total = d * (k - 1)
            if total % 2:
                raise NotConvertibleError("padding='same' with an even dilated kernel pads "
                                          "asymmetrically, which int8kit does not support")
            out.append(total // 2)
        return tuple(out)
    return tuple(conv.padding)


class QuantConv2d(QuantModuleBase):
    """nn.Conv2d with int8 weights and uint8 activations quantized per call (dynamic).

    weight: int8 symmetric, "per_channel" (one scale per output channel) or "per_tensor".
    activation: uint8 asymmetric per tensor, measured at each call (torch.ao MinMax rule);
    the padding is the real value 0, i.e. the activation zero point.
    Input: float32 / bfloat16 / float16 / float64 [N, C, H, W], contiguous or channels_last; the
    output has the input's dtype and memory format. Computation is channels-last inside.
    """

    _float32_buffers = ("weight_scale", "bias")

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 *, weight: str = "per_channel", threads: int | None = None):
        super().__init__()
        for name, v in (("in_channels", in_channels), ("out_channels", out_channels)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if padding_mode != "zeros":
            raise ValueError(f"padding_mode={padding_mode!r} is not supported; int8kit's "
                             "QuantConv2d pads with zeros only")
        if weight not in WEIGHT_SCHEMES:
            raise ValueError(f"weight must be one of {WEIGHT_SCHEMES}, got {weight!r}")
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"threads must be None or a positive int, got {threads!r}")
        p = conv_ops.conv_params(in_channels, out_channels, kernel_size, stride, padding,
                                 dilation, groups)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = p[2:4], p[4:6]
        self.padding, self.dilation, self.groups = p[6:8], p[8:10], p[10]
        self.padding_mode = "zeros"
        self.weight_scheme, self.threads = weight, threads
        self._params = list(p)
        n_scales = out_channels if weight == "per_channel" else 1
        self.register_buffer("weight_scale", torch.ones(n_scales, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_channels) if bias else None)
        self._set_qweight(torch.zeros(self._qweight_shape(), dtype=torch.int8))

    def _pack(self, w: torch.Tensor) -> torch.Tensor:
        if w.device.type == "meta":  # shape-only module: nothing to pack yet
            return torch.empty(0, dtype=torch.uint8, device="meta")
        return conv_ops.pack_conv_weight(w.detach().cpu().contiguous(), self.stride,
                                         self.padding, self.dilation, self.groups).buffer

    def _unpack(self) -> torch.Tensor:
        if self.packed.device.type == "meta" or self.packed.numel() == 0:
            return torch.empty(self._qweight_shape(), dtype=torch.int8, device=self.packed.device)
        return conv_ops.unpack_conv_weight(self.packed)

    def _qweight_shape(self) -> tuple[int, int, int, int]:
        return (self.out_channels, self.in_channels // self.groups, *self.kernel_size)

    @property
    def qweight(self) -> torch.Tensor:
        """The int8 weight [out_channels, in_channels/groups, KH, KW], unpacked from the
        kernel layout. A fresh copy on every access (read-only: writing to it changes
        nothing); it is what state_dict() saves under "qweight"."""
        return self._unpack()

    @classmethod
    def from_float(cls, conv: nn.Conv2d, *, weight: str = "per_channel",
                   activation: str = "per_tensor", threads: int | None = None) -> "QuantConv2d":
        """Quantizes a float nn.Conv2d's weight once (bias stays float32) and packs it."""
        if not isinstance(conv, nn.Conv2d):
            raise TypeError(f"conv must be an nn.Conv2d, got {type(conv).__name__}")
        if weight not in WEIGHT_SCHEMES:
            raise ValueError(f"weight must be one of {WEIGHT_SCHEMES}, got {weight!r}")
        if activation != "per_tensor":
            raise NotConvertibleError(f"activation={activation!r}: QuantConv2d quantizes "
                                      "activations per tensor only")
        if conv.padding_mode != "zeros":
            raise NotConvertibleError(f"padding_mode={conv.padding_mode!r} is not supported "
                                      "(zeros only)")
        w = conv.weight
        if w.device.type != "cpu":
            raise NotConvertibleError(f"weight is on device {w.device}; int8kit runs on CPU")
        if not w.is_floating_point():
            raise NotConvertibleError(f"weight has dtype {w.dtype}, expected floating point")
        k = w.shape[1] * w.shape[2] * w.shape[3]
        if k > conv_ops.MAX_K:
            raise NotConvertibleError(f"KH*KW*in_channels/groups={k} exceeds the int32-exact "
                                      f"bound MAX_K={conv_ops.MAX_K}")
        w = w.detach().float()
        axis = 0 if weight == "per_channel" else None
        try:
            scale, zp = choose_qparams(w, symmetric=True, signed=True, axis=axis)
        except ValueError as e:
            raise NotConvertibleError(f"weight: {e}") from None
        bias = checked_bias(conv.bias)
        mod = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                  _resolve_padding(conv), conv.dilation, conv.groups, bias is not None,
                  weight=weight, threads=threads)
        mod._set_qweight(quantize(w, scale, zp, signed=True, axis=axis))
        mod.weight_scale.copy_(scale.reshape(-1))
        if bias is not None:
            mod.bias.copy_(bias)
        return mod

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = input  # named as in nn.Conv2d, so layer(input=x) runs as in float
        check_float_input(x)
        shape = x.shape
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ValueError(f"x must have shape [N, {self.in_channels} (in_channels), H, W], "
                             f"got {tuple(shape)}")
        kh, kw = self.kernel_size
        (ph, pw), (dh, dw) = self.padding, self.dilation
        if shape[2] + 2 * ph < dh * (kh - 1) + 1 or shape[3] + 2 * pw < dw * (kw - 1) + 1:
            raise ValueError(f"x's spatial size {tuple(shape[2:])} (padded by "
                             f"{self.padding}) is smaller than the dilated kernel")
        xf = x if x.dtype == torch.float32 else x.float()  # keeps the memory format
        if use_custom_op(x):
            channels_last = (x.is_contiguous(memory_format=torch.channels_last)
                             and not x.is_contiguous())
            # detach: the ops have no gradient (eager outputs never require grad), and a
            # traced graph whose input requires grad would need one
            y = conv2d_dynamic(xf.detach(), self.packed, self.weight_scale, self.bias,
                               self._params, False, self.threads or 0, channels_last)
        else:  # eager: the layout read from numpy, buffers as cached numpy views
            xa, nhwc = nchw_numpy(xf)
            y = conv2d_dynamic_np(xa, nhwc, *self._kernel_views(), self._params, False,
                                  self.threads or torch.get_num_threads(), nhwc)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def dequantize_weight(self) -> torch.Tensor:
        """The float32 weight the kernels effectively use: qweight * scale (per channel)."""
        return self.qweight.float() * self.weight_scale.reshape(-1, 1, 1, 1)

    def scheme(self) -> str:
        return f"weight=int8 symmetric {self.weight_scheme}, activation=uint8 dynamic per_tensor"

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}, {self.scheme()}")
