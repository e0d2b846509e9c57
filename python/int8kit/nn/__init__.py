"""int8kit's quantized modules: float tensors in and out, integer kernels inside."""

from ._base import NotConvertibleError, QuantModuleBase
from .linear import QuantLinear
from .static import StaticQuantConv2d, StaticQuantLinear

__all__ = ["QuantLinear", "StaticQuantLinear", "StaticQuantConv2d", "QuantModuleBase", "NotConvertibleError"]
