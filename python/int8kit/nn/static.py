"""Static quantized modules: the input's scale and zero point are fixed by calibration.

They take and return ordinary float tensors like the dynamic modules, but quantize the
input with stored parameters (buffers input_scale, input_zero_point, saved in state_dict)
instead of measuring its range per call. They also expose the two halves of forward so a
chain of them can pass uint8 activations along without a float round trip:

  quantize_input(x)              float -> uint8 with the calibrated input parameters
  forward_quantized(q, out=None) uint8 -> float32, or -> uint8 requantized (fused in the
                                 kernel) with out=(scale, zero_point), the next layer's
                                 input parameters

forward(x) == forward_quantized(quantize_input(x)), so the chain and the float hand-off
compute the same values bit for bit (see static.QuantSequential).
"""

from __future__ import annotations

import functools

import numpy as np
import torch

from .. import _C
from ..qparams import choose_qparams, quantize
from ._base import (NotConvertibleError, check_float_input, checked_input_params,
                    use_custom_op)
from .._custom_ops import linear_static
from .._validate import requant_params, scale_tensor, zero_point_tensor
from ._conv_op import conv2d_dynamic_np, conv2d_static, nchw_numpy
from .conv import QuantConv2d, _resolve_padding
from .linear import QuantLinear, _numpy

def _quantize_fixed_np(a: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    """uint8 array of a's shape (a: C-contiguous float32), with the kernels' quantizer
    (bit-identical to gemm_u8's requantize epilogue); NaN/Inf raise instead of mapping
    silently to 0 or 255. One native call scans for NaN/Inf, then quantizes."""
    q = np.empty(a.shape, np.uint8)
    if not _C.quantize_u8(a.reshape(-1), scale, zero_point, q.reshape(-1), True):
        raise ValueError("x contains NaN or Inf; cannot quantize it")
    return q


def _quantize_fixed(x: torch.Tensor, scale: float, zero_point: int) -> torch.Tensor:
    """_quantize_fixed_np for a tensor: uint8, x's shape, contiguous."""
    return torch.from_numpy(_quantize_fixed_np(_numpy(x if x.dtype == torch.float32 else x.float()),
                                               scale, zero_point))


@functools.lru_cache(maxsize=1024)
def _requant(scale: float, zero_point) -> tuple[float, int]:
    return requant_params(scale, zero_point)


def _check_out(out):
    """out=(scale, zero_point) -> (1/scale as the kernels compute it, zero point)."""
    if out is None:
        return None
    if not isinstance(out, (tuple, list)) or len(out) != 2:
        raise TypeError(f"out must be a pair (scale, zero_point), got {out!r}")
    scale, zp = out
    if type(scale) is float and type(zp) is int:  # what input_params() gives: cached
        return _requant(scale, zp)
    if ((isinstance(zp, torch.Tensor) and zp.numel() == 1)
            or (isinstance(zp, np.ndarray) and zp.size == 1)):
        zp = zp.item()
    if isinstance(zp, (float, np.floating)) and float(zp).is_integer():
        zp = int(zp)  # 9.0 from a float tensor is zero point 9; 3.5 is refused
    return requant_params(scale, zp)


class _StaticMixin:
    """Buffers and helpers shared by the static modules."""

    def _init_static(self, relu: bool) -> None:
        self.relu = bool(relu)
        self.register_buffer("input_scale", torch.ones(1, dtype=torch.float32))
        self.register_buffer("input_zero_point", torch.zeros(1, dtype=torch.int32))

    def set_input_qparams(self, scale, zero_point) -> None:
        scale = scale_tensor(scale, "input scale").reshape(-1)
        zp = zero_point_tensor(zero_point, "input zero_point", 0, 255).reshape(-1)
        if scale.numel() != 1 or zp.numel() != 1:
            raise ValueError("input scale and zero_point must be single values (per tensor)")
        checked_input_params(float(scale), int(zp))
        self.input_scale.copy_(scale)
        self.input_zero_point.copy_(zp.to(torch.int32))

    def _fill(self, w, scale, zp, per_channel: bool, bias, input_scale, input_zero_point):
        """from_float's last step: weight w quantized with (scale, zp), bias, input params."""
        self._set_qweight(quantize(w, scale.reshape(-1) if per_channel else scale.reshape(()),
                                   zp.reshape(-1) if per_channel else zp.reshape(()),
                                   signed=True, axis=0 if per_channel else None))
        self.weight_scale.copy_(scale.reshape(-1))
        if bias is not None:
            self.bias.copy_(bias)
        self.set_input_qparams(input_scale, input_zero_point)
        return self

    def input_params(self) -> tuple[float, int]:
        """(scale, zero point) of the input as Python numbers, cached until the buffers are
        replaced or changed in place (their version counters move)."""
        b = self._buffers  # not self.input_scale: nn.Module's __getattr__ costs ~0.7 us
        s, z = b["input_scale"], b["input_zero_point"]
        try:
            key = (id(s), s._version, id(z), z._version)
        except RuntimeError:  # inference tensors (made or loaded under inference_mode) have
            return checked_input_params(float(s), int(z))  # no version counter to key on
        cache = self.__dict__.get("_input_params_cache")
        if cache is None or cache[0] != key:
            cache = (key, checked_input_params(float(s), int(z)))
            self.__dict__["_input_params_cache"] = cache
        return cache[1]

    def input_range(self) -> tuple[float, float]:
        """The float range the input quantizer represents: scale * ([0, 255] - zp)."""
        s, z = float(self.input_scale), int(self.input_zero_point)
        return s * (0 - z), s * (255 - z)

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        check_float_input(x)
        return _quantize_fixed(x, *self.input_params())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.forward_quantized(self.quantize_input(x))
        return y.to(x.dtype)

    def _static_repr(self) -> str:
        lo, hi = self.input_range()
        return (f"input=uint8 static [{lo:.4g}, {hi:.4g}] (scale={float(self.input_scale):.4g}, "
                f"zero_point={int(self.input_zero_point)}), relu={self.relu}")


def _weight_qparams(w: torch.Tensor, weight_qparams):
    """(scale [N or 1], zero point, per channel) for w: weight_qparams (numbers or tensors,
    e.g. a weight observer's; one scale means per tensor), else per-channel min/max."""
    if weight_qparams is None:
        try:
            return (*choose_qparams(w, symmetric=True, signed=True, axis=0), True)
        except ValueError as e:
            raise NotConvertibleError(f"weight: {e}") from None
    if not isinstance(weight_qparams, (tuple, list)) or len(weight_qparams) != 2:
        raise TypeError(f"weight_qparams must be None or a pair (scale, zero_point), got "
                        f"{weight_qparams!r}")
    scale = scale_tensor(weight_qparams[0], "weight_qparams scale").reshape(-1)
    zp = zero_point_tensor(weight_qparams[1], "weight_qparams zero_point", -128, 127)
    if bool((zp != 0).any()):
        raise NotConvertibleError("weight zero points must be 0 (symmetric signed weights)")
    n = scale.numel()
    if n not in (1, w.shape[0]):
        raise NotConvertibleError(f"weight scale has {n} values, expected 1 or {w.shape[0]}")
    return scale, torch.zeros(n, dtype=torch.int32), n > 1


class StaticQuantLinear(_StaticMixin, QuantLinear):
    """nn.Linear (optionally with a fused ReLU) with int8 weights and a uint8 input whose
    scale and zero point were fixed by calibration."""

    _float32_buffers = QuantLinear._float32_buffers + ("input_scale",)
    _kernel_buffers = QuantLinear._kernel_buffers + ("input_scale", "input_zero_point")

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 weight: str = "per_channel", relu: bool = False, threads: int | None = None):
        super().__init__(in_features, out_features, bias, weight=weight,
                         activation="per_tensor", threads=threads)
        self._init_static(relu)

    @classmethod
    def from_float(cls, linear, input_scale, input_zero_point, *, weight_qparams=None,
                   relu: bool = False, threads: int | None = None) -> "StaticQuantLinear":
        """From an nn.Linear and calibrated input parameters. weight_qparams: (scale,
        zero_point) from a weight observer (one scale: per tensor), else per-channel min/max."""
        base = QuantLinear.from_float(linear, threads=threads)  # checks the float module
        w = linear.weight.detach().float()
        scale, zp, per_channel = _weight_qparams(w, weight_qparams)
        mod = cls(linear.in_features, linear.out_features, linear.bias is not None,
                  weight="per_channel" if per_channel else "per_tensor", relu=relu,
                  threads=threads)
        return mod._fill(w, scale, zp, per_channel, base.bias, input_scale, input_zero_point)

    def _check_x(self, x) -> None:
        check_float_input(x)
        if x.dim() == 0 or x.shape[-1] != self.in_features:
            raise ValueError(f"x must have shape [..., {self.in_features}] (in_features), "
                             f"got {tuple(x.shape)}")

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        self._check_x(x)
        return _quantize_fixed(x, *self.input_params())

    def forward_float(self, x: torch.Tensor, out=None) -> torch.Tensor:
        """forward_quantized(quantize_input(x), out) in one native call (bit-identical):
        float32 [..., out_features], or uint8 requantized with out=(scale, zero_point)."""
        self._check_x(x)
        req = _check_out(out)
        inv, zp = req if req is not None else (1.0, 0)
        x2 = x.reshape(-1, self.in_features)
        if x2.dtype != torch.float32:
            x2 = x2.float()
        y = _C.linear_static(_numpy(x2), *self._kernel_views(), self.relu, req is not None,
                             inv, zp, self.threads or torch.get_num_threads())
        y = torch.from_numpy(y)
        return y if x.dim() == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = input  # named as in nn.Linear, so fc(input=x) runs as in float
        if use_custom_op(x):  # traced: the int8kit::linear_static op
            self._check_x(x)
            xf = x if x.dtype == torch.float32 else x.float()
            y = linear_static(xf.reshape(-1, self.in_features).detach(), self.packed,
                              self.weight_scale, self.bias, self.input_scale,
                              self.input_zero_point, self.out_features, self.relu,
                              self.threads or 0)  # detach: see QuantLinear
            y = y.reshape(*x.shape[:-1], self.out_features)
        else:
            y = self.forward_float(x)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def forward_quantized(self, q: torch.Tensor, out=None) -> torch.Tensor:
        """q: uint8 [..., in_features] -> float32 [..., out_features], or uint8 with out."""
        if q.dtype != torch.uint8 or q.dim() == 0 or q.shape[-1] != self.in_features:
            raise ValueError(f"q must be uint8 [..., {self.in_features}], got "
                             f"{q.dtype} {tuple(q.shape)}")
        req = _check_out(out)
        q2 = q.reshape(-1, self.in_features).contiguous()
        dtype = np.float32 if req is None else np.uint8
        y = _C.empty((q2.shape[0], self.out_features), dtype)
        if q2.shape[0]:
            inv, zp = req if req is not None else (1.0, 0)
            packed, w_scale, bias, in_scale, in_zp = self._kernel_views()
            _C.gemm(q2.numpy(), in_zp, packed, y, in_scale, w_scale, bias, self.relu, inv, zp,
                    self.threads or torch.get_num_threads(), "")
        return torch.from_numpy(y).reshape(*q.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, weight=int8 symmetric {self.weight_scheme}, "
                + self._static_repr())


class StaticQuantConv2d(_StaticMixin, QuantConv2d):
    """nn.Conv2d (optionally with a fused ReLU) with int8 weights and a uint8 input whose
    scale and zero point were fixed by calibration. uint8 activations in forward_quantized
    are NCHW tensors (channels_last strides avoid a transpose; the output has them)."""

    _float32_buffers = QuantConv2d._float32_buffers + ("input_scale",)
    _kernel_buffers = QuantConv2d._kernel_buffers + ("input_scale", "input_zero_point")

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 dilation=1, groups: int = 1, bias: bool = True, padding_mode: str = "zeros",
                 *, weight: str = "per_channel", relu: bool = False, threads: int | None = None):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation,
                         groups, bias, padding_mode, weight=weight, threads=threads)
        self._init_static(relu)

    @classmethod
    def from_float(cls, conv, input_scale, input_zero_point, *, weight_qparams=None,
                   relu: bool = False, threads: int | None = None) -> "StaticQuantConv2d":
        """From an nn.Conv2d and calibrated input parameters. weight_qparams: (scale,
        zero_point) from a weight observer (one scale: per tensor), else per-channel min/max."""
        base = QuantConv2d.from_float(conv, threads=threads)  # checks the float module
        w = conv.weight.detach().float()
        scale, zp, per_channel = _weight_qparams(w, weight_qparams)
        mod = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                  _resolve_padding(conv), conv.dilation, conv.groups, conv.bias is not None,
                  weight="per_channel" if per_channel else "per_tensor", relu=relu,
                  threads=threads)
        return mod._fill(w, scale, zp, per_channel, base.bias, input_scale, input_zero_point)

    def _check_shape(self, shape, what: str) -> None:
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ValueError(f"{what} must have shape [N, {self.in_channels} (in_channels), "
                             f"H, W], got {tuple(shape)}")
        (kh, kw), (ph, pw), (dh, dw) = self.kernel_size, self.padding, self.dilation
        if shape[2] + 2 * ph < dh * (kh - 1) + 1 or shape[3] + 2 * pw < dw * (kw - 1) + 1:
            raise ValueError(f"{what}'s spatial size {tuple(shape[2:])} (padded by "
                             f"{self.padding}) is smaller than the dilated kernel")

    def quantize_input(self, x: torch.Tensor) -> torch.Tensor:
        check_float_input(x)
        self._check_shape(x.shape, "x")
        # Quantized in memory order: a channels_last input stays channels_last.
        xa, nhwc = nchw_numpy(x if x.dtype == torch.float32 else x.float())
        q = torch.from_numpy(_quantize_fixed_np(xa, *self.input_params()))
        return q.permute(0, 3, 1, 2) if nhwc else q

    def forward_quantized(self, q: torch.Tensor, out=None) -> torch.Tensor:
        """q: uint8 [N, C, H, W] -> float32 [N, OC, OH, OW], or uint8 with out
        (channels_last strides: the kernels compute NHWC)."""
        # Few Python steps, and fewer torch calls: between a network's layers, with the
        # interpreter and torch out of cache, each costs microseconds (about 10% of a
        # ResNet-18 3x3 conv at batch 1; numpy's views here cost less than torch's).
        if not isinstance(q, torch.Tensor) or q.dtype != torch.uint8:
            raise ValueError(f"q must be a uint8 tensor, got {getattr(q, 'dtype', type(q))}")
        try:
            a = q.numpy()  # a uint8 tensor never requires grad
        except TypeError as e:
            raise ValueError(f"q must be a dense CPU tensor: {e}") from None
        if a.ndim != 4 or a.shape[1] != self.in_channels:
            self._check_shape(a.shape, "q")
        req = _check_out(out)
        a = a.transpose(0, 2, 3, 1)  # NHWC: no copy for channels_last strides
        # the kernel checks the spatial size and the buffers
        y = _C.conv2d_static(a if a.flags.c_contiguous else np.ascontiguousarray(a),
                             *self._kernel_views(), self.relu, req is not None,
                             *(req or (1.0, 0)), self.threads or torch.get_num_threads())
        return torch.from_numpy(y.transpose(0, 3, 1, 2))  # channels_last strides

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = input  # named as in nn.Conv2d, so conv(input=x) runs as in float
        if use_custom_op(x):  # traced: the int8kit::conv2d_static op
            check_float_input(x)
            self._check_shape(x.shape, "x")
            channels_last = (x.is_contiguous(memory_format=torch.channels_last)
                             and not x.is_contiguous())
            y = conv2d_static((x if x.dtype == torch.float32 else x.float()).detach(),
                              self.packed, self.weight_scale, self.bias, self._params,
                              self.input_scale, self.input_zero_point, self.relu,
                              self.threads or 0, channels_last)  # detach: see QuantLinear
        else:
            # Eager: one native call quantizes with the layout change, convolves and lays
            # the output out as x (the two halves cost ~20 us of Python and copies per layer).
            y = self.forward_float(x)
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def forward_float(self, x: torch.Tensor, out=None) -> torch.Tensor:
        """forward_quantized(quantize_input(x), out) in one native call (bit-identical):
        float32 in x's memory format, or uint8 (channels_last strides) requantized with
        out=(scale, zero_point)."""
        check_float_input(x)
        self._check_shape(x.shape, "x")
        req = _check_out(out)
        xa, nhwc = nchw_numpy(x if x.dtype == torch.float32 else x.float())
        w, ws, b = self._kernel_views()[:3]
        return conv2d_dynamic_np(xa, nhwc, w, ws, b, self._params, self.relu,
                                 self.threads or torch.get_num_threads(),
                                 nhwc or req is not None, x_qparams=self.input_params(),
                                 requant=req)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"stride={self.stride}, padding={self.padding}, dilation={self.dilation}, "
                f"groups={self.groups}, bias={self.bias is not None}, weight=int8 symmetric "
                f"{self.weight_scheme}, " + self._static_repr())


STATIC_MODULES: tuple[type, ...] = (StaticQuantLinear, StaticQuantConv2d)
