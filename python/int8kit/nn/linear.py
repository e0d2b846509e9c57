"""QuantLinear: a drop-in dynamic int8 replacement for nn.Linear (float in, float out)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .. import _C, ops
from .._dlpack import from_dlpack, to_dlpack
from .._custom_ops import _numpy, linear_dynamic
from ..qparams import choose_qparams, quantize
from ._base import (NotConvertibleError, QuantModuleBase, check_float_input, checked_bias,
                    use_custom_op)

WEIGHT_SCHEMES = ("per_channel", "per_tensor")
ACTIVATION_SCHEMES = ("per_row", "per_tensor")


def _choice(value, name: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value


class QuantLinear(QuantModuleBase):
    """y = x @ W.T + b with W in int8 and x quantized to uint8 on the fly, per call.

    weight: int8 symmetric, "per_channel" (one scale per output feature) or "per_tensor".
    activation: uint8 asymmetric over the full [0, 255] range, measured "per_row" (per
    token) or "per_tensor" at each call. The int32 accumulation is exact on every kernel
    path, so torch's 7-bit reduce_range workaround is not needed.
    Input: float32, bfloat16, float16 or float64 of shape [..., in_features]; output: same
    dtype (computed from float32).
    """

    _float32_buffers = ("weight_scale", "bias")
    # ReLU applied in the epilogue (set by quantize_dynamic where a ReLU follows the layer;
    # a class default, so modules pickled before it existed still load).
    relu: bool = False

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *,
                 weight: str = "per_channel", activation: str = "per_row",
                 threads: int | None = None):
        super().__init__()
        for name, v in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if in_features > ops.MAX_K:
            raise ValueError(f"in_features={in_features} exceeds the int32-exact bound "
                             f"MAX_K={ops.MAX_K}")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool)
                                    or threads < 1):
            raise ValueError(f"threads must be None or a positive int, got {threads!r}")
        self.in_features, self.out_features = in_features, out_features
        self.weight_scheme = _choice(weight, "weight", WEIGHT_SCHEMES)
        self.activation_scheme = _choice(activation, "activation", ACTIVATION_SCHEMES)
        self.threads = threads
        n_scales = out_features if weight == "per_channel" else 1
        self.register_buffer("weight_scale", torch.ones(n_scales, dtype=torch.float32))
        self.register_buffer("bias", torch.zeros(out_features) if bias else None)
        self._set_qweight(torch.zeros(out_features, in_features, dtype=torch.int8))

    def _pack(self, w: torch.Tensor) -> torch.Tensor:
        if w.device.type == "meta":  # shape-only module: nothing to pack yet
            return torch.empty(0, dtype=torch.uint8, device="meta")
        return ops.pack_weight(w.detach().cpu().contiguous()).buffer

    def _unpack(self) -> torch.Tensor:
        if self.packed.device.type == "meta" or self.packed.numel() == 0:
            return torch.empty(self._qweight_shape(), dtype=torch.int8, device=self.packed.device)
        return ops.PackedWeight(self.packed).unpack()

    def _qweight_shape(self) -> tuple[int, int]:
        return (self.out_features, self.in_features)

    @property
    def qweight(self) -> torch.Tensor:
        """The int8 weight [out_features, in_features], unpacked from the kernel layout.

        A fresh copy on every access (read-only: writing to it changes nothing); it is
        what state_dict() saves under "qweight"."""
        return self._unpack()

    @classmethod
    def from_float(cls, linear: nn.Linear, *, weight: str = "per_channel",
                   activation: str = "per_row", threads: int | None = None) -> "QuantLinear":
        """Quantizes a float nn.Linear's weight once (bias stays float32) and packs it."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        _choice(weight, "weight", WEIGHT_SCHEMES)
        _choice(activation, "activation", ACTIVATION_SCHEMES)
        w = linear.weight
        if w.device.type != "cpu":
            raise NotConvertibleError(f"weight is on device {w.device}; int8kit runs on CPU")
        if not w.is_floating_point():
            raise NotConvertibleError(f"weight has dtype {w.dtype}, expected floating point")
        if linear.in_features > ops.MAX_K:
            raise NotConvertibleError(f"in_features={linear.in_features} exceeds the "
                                      f"int32-exact bound MAX_K={ops.MAX_K}")
        w = w.detach().float()
        axis = 0 if weight == "per_channel" else None
        try:
            scale, zp = choose_qparams(w, symmetric=True, signed=True, axis=axis)
        except ValueError as e:  # NaN / Inf weights
            raise NotConvertibleError(f"weight: {e}") from None
        bias = checked_bias(linear.bias)
        mod = cls(linear.in_features, linear.out_features, bias is not None,
                  weight=weight, activation=activation, threads=threads)
        mod.weight_scale.copy_(scale.reshape(-1))
        if bias is not None:
            mod.bias.copy_(bias)
        mod._set_qweight(quantize(w, scale, zp, signed=True, axis=axis))
        return mod

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        x = input  # named as in nn.Linear, so layer(input=x) runs as in float
        # One test admits the common call (eager, float32 [..., in_features] on the CPU) in
        # as few Python steps as possible: at M = 1 each costs about as much as the GEMM,
        # several microseconds when the module is out of cache, as it is between a model's
        # layers. The tensor goes in and out as a DLPack capsule (dlpack_io.h says why);
        # the native call returns None for anything but a compact float32 CPU tensor with
        # in_features columns. Everything else is validated in full.
        if type(x) is torch.Tensor and x.dtype is torch.float32 and not use_custom_op(x):
            try:
                cap = to_dlpack(x)
            except (RuntimeError, TypeError, BufferError):  # e.g. no storage
                return self._forward_checked(x)
            y = _C.linear_dynamic_dlpack(cap, *self._kernel_views(),
                                         self.activation_scheme == "per_row", self.relu,
                                         self.threads or torch.get_num_threads())
            if y is not None:
                return from_dlpack(y)
        return self._forward_checked(x)

    def _run(self, x: np.ndarray) -> np.ndarray:
        """The fused native call on a float32 array [..., in_features] (reshapes in numpy:
        each torch call costs about a microsecond)."""
        x2 = x if x.ndim == 2 else x.reshape(-1, self.in_features)
        y = _C.linear_dynamic(x2, *self._kernel_views(), self.activation_scheme == "per_row",
                              self.relu, self.threads or torch.get_num_threads())
        return y if x.ndim == 2 else y.reshape(*x.shape[:-1], self.out_features)

    def _forward_checked(self, x: torch.Tensor) -> torch.Tensor:
        check_float_input(x)
        shape = x.shape
        if len(shape) == 0 or shape[-1] != self.in_features:
            raise ValueError(f"x must have shape [..., {self.in_features}] "
                             f"(in_features), got {tuple(shape)}")
        xf = x if x.dtype == torch.float32 else x.float()
        if use_custom_op(x):
            # detach: the ops have no gradient (eager outputs never require grad), and a
            # traced graph whose input requires grad would need one
            x2 = (xf if len(shape) == 2 else xf.reshape(-1, self.in_features)).detach()
            y = linear_dynamic(x2, self.packed, self.weight_scale, self.bias, self.out_features,
                               self.activation_scheme == "per_row", self.relu, self.threads or 0)
            y = y if len(shape) == 2 else y.reshape(*shape[:-1], self.out_features)
        else:
            y = torch.from_numpy(self._run(_numpy(xf)))
        return y if x.dtype == torch.float32 else y.to(x.dtype)

    def dequantize_weight(self) -> torch.Tensor:
        """The float32 weight the kernels effectively use: qweight * scale (per row)."""
        return self.qweight.float() * self.weight_scale.reshape(-1, 1)

    def scheme(self) -> str:
        return (f"weight=int8 symmetric {self.weight_scheme}, "
                f"activation=uint8 dynamic {self.activation_scheme}"
                + (", relu fused" if self.relu else ""))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, {self.scheme()}")
