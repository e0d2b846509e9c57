"""int8kit's quantized modules: float tensors in and out, integer kernels inside."""

from ._base import NotConvertibleError, QuantModuleBase
from .attention import QuantMultiheadAttention
from .conv import QuantConv2d
from .linear import QuantLinear
from .static import StaticQuantConv2d, StaticQuantLinear

__all__ = ["QuantLinear", "QuantConv2d", "QuantMultiheadAttention", "StaticQuantLinear",
           "StaticQuantConv2d", "QuantModuleBase", "NotConvertibleError"]
